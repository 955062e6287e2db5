"""Write a file under a temporary name and rename it into place only when it is complete.

A crash, an exception or a kill while writing leaves the target untouched (the old file, or none);
only a dot-named `.NAME.partial-XXXX` file may stay behind in the same directory. The rename is atomic
because the temporary file lives in the target's directory (same filesystem).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from storage.errors import InputError

# Every temporary path handed out in this process, so that an interrupted process can remove the ones
# still on disk before it exits (flows/cli/interrupts.py: it ends without unwinding the stack).
PARTIALS: set[Path] = set()


def partial_path(target: str | Path) -> Path:
    """A fresh temporary path beside `target` that keeps its suffix (tools pick formats by suffix)."""
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.partial-{secrets.token_hex(4)}{target.suffix}")
    PARTIALS.add(tmp)
    return tmp


def remove_partials() -> None:
    """Remove every temporary file of `partial_path` still on disk (an interrupted process's)."""
    for tmp in list(PARTIALS):
        with contextlib.suppress(OSError):
            tmp.unlink()


def commit(tmp: str | Path, target: str | Path) -> None:
    """fsync `tmp`, rename it onto `target`, and fsync the directory so the rename survives a crash."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    PARTIALS.discard(Path(tmp))
    with contextlib.suppress(OSError):  # not every platform/filesystem can fsync a directory
        fd = os.open(Path(target).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """`with atomic_output(p) as tmp: write tmp` -> p appears complete on success, never partially.

    Creates the target's parent directories. On an exception the temporary file is removed and the
    exception propagates.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _raise_user_error(err, target)
        raise
    tmp = partial_path(target)
    try:
        yield tmp
        commit(tmp, target)
    except OSError as err:  # a full disk, a quota, a read-only folder: one line naming the target
        _raise_user_error(err, target)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        PARTIALS.discard(tmp)


def _raise_user_error(err: OSError, target: Path) -> None:
    from storage.files import user_error_from_os_error

    user_error = user_error_from_os_error(err, target)
    if user_error is not None:
        raise user_error from None


def check_writable(target: str | Path) -> None:
    """Refuse, before any work, an output that could not be written: its path is a folder, a file
    stands where its folder would be, or the folder it would go into is not writable (a read-only
    mount, no permission). Tested by making and removing a file there, which is what counts: root
    ignores permission bits and a read-only mount ignores them too. One-line InputError."""
    target = Path(target)
    if target.is_dir():
        raise InputError("the output is a folder, not a file", path=target)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:  # the folder new ones would be made in
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write the output: {folder} is a file, not a folder", path=target)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError as err:
        raise InputError(f"cannot write the output: folder {folder} is not writable ({err.strerror})",
                         path=target) from None
    os.close(fd)
    os.unlink(probe)
