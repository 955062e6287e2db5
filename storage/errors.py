"""User-facing errors.

Every problem a user can cause or fix (a bad file, a missing weight, a stale cache) is raised as a
subclass of `FacereenactError`. The CLI prints its message as one line and exits with `exit_code`;
anything else is a bug and keeps its traceback. Messages name the file and the problem, and where
there is a fix, the command that applies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FacereenactError(Exception):
    """Base of all errors that are the user's to fix. `str(err)` is a single line."""

    exit_code: int = 2

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        message = " ".join(str(message).split())  # one line, always
        if path is not None:
            message = f"{path}: {message}"
        super().__init__(message)
        self.path = None if path is None else str(path)


class InputError(FacereenactError):
    """A video, image, manifest or argument the pipeline cannot use."""

    exit_code = 2


class NoFaceError(InputError):
    """No usable face where one is required (a source image, or every frame of a video)."""


class CheckpointError(FacereenactError):
    """A checkpoint that is truncated, malformed, of an unknown format, or refused as unsafe."""

    exit_code = 3


class WeightsMissingError(FacereenactError):
    """A weight file that is not on disk; the message names the file, where we looked, and the fetch
    command."""

    exit_code = 4


class CacheError(FacereenactError):
    """A cache that is unreadable, corrupt, or made with settings that must not be mixed in."""

    exit_code = 5


class JobFailedError(FacereenactError):
    """A job that finished its work but left frames or jobs failed (listed in its `summary`: the
    summary a successful run returns, or None)."""

    exit_code = 6

    def __init__(self, message: str, *, path: str | Path | None = None, summary: Any = None) -> None:
        super().__init__(message, path=path)
        self.summary = summary
