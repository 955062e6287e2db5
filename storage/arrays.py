"""Arrays from users' .npy / .npz files (W+ codes), with the size their header declares checked
before anything is allocated.

A .npy header is a few dozen bytes that state the shape; numpy allocates that shape before it reads
the data, so a 200-byte file claiming (10**7, 18, 512) floats would ask for 350 GB, and an .npz
(a zip) can hold a deflated entry that inflates to gigabytes. Here the declared size is held against
the limit and against the bytes the file (or the zip entry) actually holds, first. Object arrays
(pickles) are refused outright.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from storage.errors import InputError
from storage.files import require_regular_file

MAX_ARRAY_BYTES = 1 << 30  # 1 GiB: ~29,000 frames of 18 x 512 float32 W+ codes
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def load_array(path: str | os.PathLike[str], *, key: str | None = None,
               max_bytes: int = MAX_ARRAY_BYTES, what: str = "array") -> np.ndarray:
    """The array of a .npy file, or the array `key` of an .npz file (its only one when `key` is None).

    InputError naming the file for anything else: not a regular file, not .npy/.npz, a pickled
    (object) array, a declared size above `max_bytes` or beyond the bytes stored, a truncated file.
    """
    path = require_regular_file(path, f"a {what} file")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            f.seek(0)
            if magic == _NPY_MAGIC:
                return _read_npy(f, path.stat().st_size, path, max_bytes, what)
            if magic.startswith(_ZIP_MAGIC):
                return _read_npz(f, path, key, max_bytes, what)
    except OSError as err:
        raise InputError(f"cannot read {what} ({err.strerror or err})", path=path) from None
    raise InputError(f"not a .npy or .npz file (cannot read {what})", path=path)


def _read_npz(f: IO[bytes], path: Path, key: str | None, max_bytes: int, what: str) -> np.ndarray:
    try:
        with zipfile.ZipFile(f) as zf:
            names = [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
            if key is None and len(names) != 1:
                raise InputError(f".npz holds {len(names)} arrays; expected one", path=path)
            name = key if key is not None else names[0]
            if name not in names:
                raise InputError(f".npz has no array {name!r} (has {names[:10]})", path=path)
            info = zf.getinfo(f"{name}.npy")
            if info.file_size > max_bytes + 4096:
                raise InputError(f".npz entry {name!r} declares {info.file_size} bytes, above the "
                                 f"limit of {max_bytes} for {what}", path=path)
            with zf.open(info) as member:
                return _read_npy(member, info.file_size, path, max_bytes, what)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as err:
        raise InputError(f"cannot read {what}: damaged .npz ({' '.join(str(err).split())[:160]})",
                         path=path) from None


def _read_npy(f: IO[bytes], size: int, path: Path, max_bytes: int, what: str) -> np.ndarray:
    """One .npy stream of `size` bytes in all, its header checked before its data is read."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    except (ValueError, EOFError, SyntaxError) as err:
        raise InputError(f"cannot read {what}: malformed .npy header ({' '.join(str(err).split())[:160]})",
                         path=path) from None
    if dtype.hasobject:
        raise InputError(f"{what} holds Python objects (a pickle), not numbers; refused", path=path)
    count = 1
    for n in shape:
        count *= int(n)
    declared = count * dtype.itemsize
    if declared > max_bytes:
        raise InputError(f"{what} of shape {tuple(shape)} {dtype} declares {declared} bytes, above the "
                         f"limit of {max_bytes}; refused before reading", path=path)
    if declared > size - offset:
        raise InputError(f"{what} of shape {tuple(shape)} {dtype} needs {declared} bytes but the file holds "
                         f"{max(0, size - offset)} (truncated?)", path=path)
    data = f.read(declared)
    if len(data) != declared:
        raise InputError(f"{what} is truncated ({len(data)} of {declared} bytes)", path=path)
    array = np.frombuffer(data, dtype=dtype, count=count)
    order = "F" if fortran_order else "C"
    return array.reshape(shape, order=order).copy()


__all__ = ["MAX_ARRAY_BYTES", "load_array"]
