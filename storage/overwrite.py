"""Never overwrite an input: every command checks its outputs against its inputs before any work.

An output is refused when it is the same file as an input of the same run or batch: the same path
once symlinks are resolved (realpath), or the same file under another name (same device and inode:
a hard link). A user who types `-o clip.mp4` for `--driving clip.mp4`, or whose output name is a link
to a source photo, gets one line and exit 2 instead of a lost file. Two outputs of one batch that are
the same file are refused too (the second job would overwrite the first's result).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from storage.errors import InputError

__all__ = ["check_outputs_not_inputs", "same_file"]


def same_file(a: str | Path, b: str | Path) -> bool:
    """True when `a` and `b` name one file: one realpath, or (both existing) one device and inode."""
    a, b = os.path.expanduser(str(a)), os.path.expanduser(str(b))
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def check_outputs_not_inputs(outputs: Iterable[tuple[str, str | Path]],
                             inputs: Iterable[tuple[str, str | Path | None]]) -> None:
    """Refuse (InputError, exit 2) any output that is the same file as an input, or as an earlier
    output. `outputs` and `inputs` are (what, path) pairs: `what` names it in the message ("output",
    "preview", "job 3 (line 4), source"); inputs whose path is None (an option not given, a registry
    name) are skipped. Call before any work."""
    given = [(what, path) for what, path in inputs if path is not None and str(path) != ""]
    seen: list[tuple[str, str | Path]] = []
    for what, path in outputs:
        for other, input_path in given:
            if same_file(path, input_path):
                how = "is" if str(path) == str(input_path) else f"is the same file as {input_path}:"
                raise InputError(f"the {what} {how} the {other}; refusing to overwrite an input "
                                 "(choose another output path)", path=path)
        for other, earlier in seen:
            if same_file(path, earlier):
                raise InputError(f"the {what} is the same file as the {other} ({earlier}); each output "
                                 "needs its own path", path=path)
        seen.append((what, path))
