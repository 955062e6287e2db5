"""Input files that are files: the check every reader of user paths makes before it opens one.

`open()` on a FIFO blocks until someone writes to it, and a character device (/dev/zero,
/dev/urandom) or a socket never ends; ffmpeg, Pillow, numpy, torch and PyYAML would wait or read
forever. So a path given as a video, image, manifest, W+ file or checkpoint must name a regular file
(after following symlinks), and anything else is refused at once, with a one-line InputError.
"""

from __future__ import annotations

import errno
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


def require_readable_file(path: str | os.PathLike[str], what: str) -> Path:
    """`require_regular_file`, then readable and not empty: every check a reader of a user's file
    makes before it opens it (a missing file, a directory, a FIFO / device / socket, no read
    permission, 0 bytes), each a one-line InputError naming the file."""
    path = require_regular_file(path, what)
    if not os.access(path, os.R_OK):
        raise InputError("permission denied", path=path)
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)", path=path)
    return path


# errno values that mean "the disk refused the write": full, over quota, over the file-size limit.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# What ffmpeg prints when the disk refuses its output (it reports strerror of the same errnos).
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "File too large")


def disk_full_message(text: str) -> bool:
    """Whether a subprocess's error text (ffmpeg's) says the disk refused a write."""
    return any(words in text for words in _DISK_FULL_WORDS)


def user_error_from_os_error(err: OSError, path: str | os.PathLike[str] | None = None) -> InputError | None:
    """The one-line user error an OSError stands for when it is the disk's or the folder's doing (full,
    over quota or over the file-size limit; permission denied; read-only), naming `path` (default: the
    error's own file name); None for anything else (a bug keeps its traceback). Exit 2: the place
    given for the output cannot be used."""
    where = path if path is not None else err.filename
    reason = err.strerror or str(err)
    if err.errno in DISK_FULL_ERRNOS:
        return InputError(f"no space left to write it ({reason}); free some space or write elsewhere",
                          path=where)
    if err.errno in _DENIED_ERRNOS:
        return InputError(f"cannot write or read it ({reason}); choose a folder you can write to",
                          path=where)
    return None
