"""Hostile files for the reliability suite: small files that ask for huge allocations (bombs), files
that are not files (FIFOs, devices, sockets), malformed checkpoints. Each builder writes into a folder
and returns the path; nothing here runs the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------------ checkpoints
def native_config_bomb(folder: Path, like: Path) -> Path:
    """A native checkpoint of a few hundred bytes whose config asks for a ~10 GB generator."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(like), "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    config.update(img_resolution=1024, z_dim=4096, w_dim=4096, channel_base=1 << 20, channel_max=4096)
    path = folder / "bomb.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={**meta, "config": json.dumps(config)})
    return path


def rosinality_config_bomb(folder: Path) -> Path:
    """A rosinality .pt of ~200 kB whose tensor shapes (well-formed, tiny) imply 4096 channels at
    every resolution to 256 px: a ~8 GB generator if it were built before its tensors are checked."""
    import torch

    sd = {"style.1.weight": torch.zeros(64, 64), "input.input": torch.zeros(1, 4096, 1, 1),
          "to_rgb1.conv.weight": torch.zeros(1, 3, 8, 1, 1)}
    for j in range(6):
        sd[f"convs.{2 * j}.conv.weight"] = torch.zeros(1, 4096, 1, 1, 1)
        sd[f"to_rgbs.{j}.conv.weight"] = torch.zeros(1)
    path = folder / "bomb.pt"
    torch.save({"g_ema": sd}, path)
    return path


@contextlib.contextmanager
def _fake_persistence():
    """A stand-in `torch_utils.persistence` module, so that pickle can write records the way NVIDIA's
    networks are written (only while building the file; the loader never imports anything)."""
    def _reconstruct_persistent_obj(meta):  # noqa: ANN001, ANN202 (never called)
        raise AssertionError("not for loading")

    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    saved = {name: sys.modules.get(name) for name in (package.__name__, module.__name__)}
    sys.modules.update({package.__name__: package, module.__name__: module})
    try:
        yield _reconstruct_persistent_obj
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


class _Record:
    def __init__(self, reconstruct, class_name: str, state: dict) -> None:  # noqa: ANN001
        self.reconstruct, self.class_name, self.state = reconstruct, class_name, state

    def __reduce__(self):  # noqa: ANN204
        return self.reconstruct, ({"type": "class", "class_name": self.class_name, "state": self.state},)


def nvidia_pickle(path: Path, g_state: dict, nest: int = 0) -> Path:
    """An NVIDIA-style network pickle {"G_ema": Generator record with `g_state`}; `nest` > 0 hangs a
    chain of that many sub-modules under G_ema.mapping (deep nesting)."""
    with _fake_persistence() as reconstruct:
        state = dict(g_state)
        if nest:
            inner = _Record(reconstruct, "MappingNetwork", {"_modules": {}})
            for _ in range(nest):
                inner = _Record(reconstruct, "MappingNetwork", {"_modules": {"m": inner}})
            state["_modules"] = {"mapping": inner}
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 10 * nest + 1000))  # pickle recurses once per level
        try:
            data = pickle.dumps({"G_ema": _Record(reconstruct, "Generator", state)}, protocol=2)
        finally:
            sys.setrecursionlimit(limit)
    path.write_bytes(data)
    return path


def nvidia_config_bomb(folder: Path) -> Path:
    """An NVIDIA pickle of ~300 bytes: a Generator record whose init kwargs ask for a 1024 px network
    with 4096 channels everywhere (~20 GB), and no tensors at all."""
    kwargs = {"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 1024, "img_channels": 3,
              "mapping_kwargs": {}, "synthesis_kwargs": {"channel_base": 1 << 20, "channel_max": 4096}}
    return nvidia_pickle(folder / "bomb.pkl", {"_init_kwargs": kwargs, "_modules": {}})


def torch_zip_bomb(folder: Path) -> Path:
    """A real torch zip file with one more entry, deflated, that says it inflates to 3.75 GiB."""
    import torch

    plain = folder / "plain.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(4, 4)}}, plain)
    path = folder / "zipbomb.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info.filename), compress_type=zipfile.ZIP_STORED)
        member = f"{zin.namelist()[0].split('/')[0]}/data/99"
        zout.writestr(member, b"\0" * (1 << 16), compress_type=zipfile.ZIP_DEFLATED)
    plain.unlink()
    return claim_size(path, member, BOMB_CLAIM)


BOMB_CLAIM = 0xF000_0000  # bytes an entry claims to inflate to (3.75 GiB, within plain zip's 32 bits)


def claim_size(path: Path, member: str, size: int) -> Path:
    """Rewrite the uncompressed size a zip entry declares (local header and central directory), as a
    decompression bomb declares it; deflating gigabytes of zeros for real would take a minute. The
    readers size their buffers from this field."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(member).header_offset
    assert data[local:local + 4] == b"PK\x03\x04"
    data[local + 22:local + 26] = size.to_bytes(4, "little")
    central = _central_entry(data, name)
    data[central + 24:central + 28] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def _central_entry(data: bytearray, name: bytes) -> int:
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        length = int.from_bytes(data[at + 28:at + 30], "little")
        if bytes(data[at + 46:at + 46 + length]) == name:
            return at
        at += 4
    raise AssertionError(f"{name!r} not in the central directory")


# ------------------------------------------------------------------------------------------ arrays
def npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "<f4") -> Path:
    """A .npy file whose header declares `shape` and which holds 256 bytes."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
        f.write(b"\0" * 256)
    return path


def npz_bomb(path: Path) -> Path:
    """An .npz whose 'w' entry (a .npy header, then zeros, deflated) says it inflates to 3.75 GiB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (BOMB_CLAIM // (8 * 64 * 4), 8, 64)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("w.npy", header.getvalue() + b"\0" * (1 << 16))
    return claim_size(path, "w.npy", BOMB_CLAIM)


# --------------------------------------------------------------------------------------- manifests
def billion_laughs(path: Path) -> Path:
    """Nine lines of YAML aliases that stand for 10**9 strings."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    lines.append("jobs: [*i]")
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- files that are not
def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path
