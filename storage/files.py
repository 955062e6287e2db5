"""Input files that are files: the check every reader of user paths makes before it opens one.

`open()` on a FIFO blocks until someone writes to it, and a character device (/dev/zero,
/dev/urandom) or a socket never ends; ffmpeg, Pillow, numpy, torch and PyYAML would wait or read
forever. So a path given as a video, image, manifest, W+ file or checkpoint must name a regular file
(after following symlinks), and anything else is refused at once, with a one-line InputError.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from storage.errors import InputError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is ("a FIFO (named pipe)", ...), else None."""
    return next((name for test, name in _KINDS if test(mode)), None)


def require_regular_file(path: str | os.PathLike[str], what: str = "an input file") -> Path:
    """`path` (absolute, `~` expanded) when it names a regular file; InputError naming it otherwise:
    missing, a directory, or a FIFO / device / socket (refused before anything opens it)."""
    path = Path(path).expanduser().absolute()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except OSError as err:
        raise InputError(f"cannot read it ({err.strerror or err})", path=path) from None
    if stat.S_ISDIR(mode):
        raise InputError(f"is a directory, not {what}", path=path)
    kind = special_kind(mode)
    if kind is not None:
        raise InputError(f"is {kind}, not a regular file; refused as {what} (reading it could block "
                         "or never end)", path=path)
    return path
