"""Folders the tests need that the machine may not give (read-only ones)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def readonly_folder(t: Path) -> Path:
    """A folder no file can be made in: mode 0o555, or /sys when running as root (root ignores
    permission bits; sysfs refuses new files to everyone)."""
    folder = t / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    if _writable(folder):
        folder = Path("/sys")
        if _writable(folder):
            pytest.skip("no read-only folder here (running as root, and /sys accepts files)")
    return folder
