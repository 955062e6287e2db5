"""A frame progress bar on stderr (tqdm) that a stage drives: `start(done, total)` once, when the stage
knows where it resumes, then `update(n)` per stored batch of frames. Disabled, it does nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["FrameBar"]

T = TypeVar("T")


class FrameBar:
    """`with FrameBar("projecting", enabled) as bar: stage(..., progress=bar)`."""

    def __init__(self, desc: str, enabled: bool = True) -> None:
        self.desc, self.enabled = desc, enabled
        self._bar: Any = None

    def start(self, done: int, total: int) -> None:
        """The stage resumes after `done` of `total` frames; no bar when nothing is left."""
        if not self.enabled or done >= total:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=self.desc, unit="frame", file=sys.stderr, leave=False,
                         dynamic_ncols=True)
        if done:
            self._bar.update(done)

    def update(self, frames: int) -> None:
        if self._bar is not None:
            self._bar.update(frames)

    def wrap(self, records: Iterable[T], total: int) -> Iterator[T]:
        """`records` counted one frame each (a stream of per-frame records)."""
        self.start(0, total)
        for record in records:
            yield record
            self.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> FrameBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
