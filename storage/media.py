"""A medium: a video, or a still image treated as a one-frame video, behind one small interface.

The prepare stage runs both through the same tables: `open_medium(path)` checks the file (every
problem a one-line InputError naming it), and `Medium.frames(start)` yields (H, W, 3) uint8 RGB
frames from `start` on. Media are keyed in the cache by the sha256 of their content, so a renamed
or copied file finds its cached results again and an edited one never does.

Which is which: files with a still-image suffix are images (so a broken .jpg gets the image error,
not a video one); anything else is an image when Pillow opens it as a single frame, and otherwise a
video (animated GIFs are videos).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from storage.images import load_image
from storage.provenance import sha256_file
from storage.video import VideoInfo, probe, read_frames

__all__ = ["IMAGE_SUFFIXES", "Medium", "media_kind", "open_medium"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".jfif"})


def media_kind(path: str | Path) -> str:
    """"image" or "video", from the suffix, else from whether Pillow reads it as one still frame."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if not path.is_file():  # missing, a folder, a FIFO (open() would block), a device: probe refuses it
        return "video"
    try:
        from PIL import Image

        with Image.open(path) as image:
            return "image" if getattr(image, "n_frames", 1) == 1 else "video"
    except Exception:  # not an image Pillow knows (or not readable): the video checks will say why
        return "video"


@dataclass(frozen=True)
class Medium:
    """One input file, checked.

    path:        the file, absolute
    kind:        "video" or "image"
    key:         sha256 of the file's content (its name in the cache)
    width, height, frame_count: of the frames `frames()` yields (an image has one)
    fps:         the video's rate (exact fraction); None for an image
    video:       probe's VideoInfo for a video, None for an image
    """

    path: Path
    kind: str
    key: str
    width: int
    height: int
    frame_count: int
    fps: Fraction | None
    video: VideoInfo | None = None

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.video.warnings if self.video is not None else ()

    def info(self) -> dict[str, Any]:
        """Attributes of the medium's cache group: where it came from and what it is."""
        data: dict[str, Any] = {
            "source": str(self.path),
            "size": self.path.stat().st_size,
            "kind": self.kind,
            "width": self.width,
            "height": self.height,
            "frame_count": self.frame_count,
        }
        if self.video is not None:
            data["probe"] = self.video.to_dict()
        return data

    def frames(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Frames `start` .. `stop` - 1 (to the end when None), one at a time."""
        if self.kind == "image":
            if start <= 0 and (stop is None or stop > 0):
                yield load_image(self.path)
            return
        with read_frames(self.path, start=start, stop=stop) as stream:
            yield from stream


def open_medium(path: str | Path) -> Medium:
    """Check a video or image file and describe it. Raises InputError (one line, naming the file)
    for a missing, empty, corrupt, audio-only, frameless or oversized file."""
    path = Path(path).expanduser().absolute()
    if media_kind(path) == "image":
        image = load_image(path)  # decodes once: a truncated or corrupt image fails here, not later
        height, width = image.shape[:2]
        return Medium(path, "image", sha256_file(path), width, height, 1, None)
    info = probe(path)
    return Medium(path, "video", sha256_file(path), info.width, info.height, info.frame_count, info.fps,
                  info)
