"""Limits on what the pipeline agrees to decode.

One knob for now: the largest frame or image, in pixels, that video and image loading accept. A
decoded RGB frame costs 3 bytes per pixel, and a small file can declare an enormous size (a
"decompression bomb"), so sizes are checked from the header, before anything is decoded.
"""

from __future__ import annotations

import os

from storage.errors import InputError

# 2**27 = 134 MP: above 8K video (33 MP) and 100 MP camera stills; one RGB frame is then 400 MB.
DEFAULT_MAX_PIXELS = 2**27
MAX_PIXELS_ENV = "FACEREENACT_MAX_PIXELS"


def max_pixels(override: int | None = None) -> int:
    """The pixel limit: `override` when given, else $FACEREENACT_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"max_pixels must be positive, got {override}")
        return override
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise InputError(f"{MAX_PIXELS_ENV} must be a positive integer number of pixels, got {raw!r}")
    return value


def check_pixels(width: int, height: int, path: object, what: str, limit: int | None = None) -> None:
    """Raise InputError naming `path` when width x height is above the pixel limit."""
    limit = max_pixels(limit)
    if width * height > limit:
        raise InputError(
            f"{what} size {width}x{height} ({width * height / 1e6:.1f} MP) is above the limit of "
            f"{limit / 1e6:.1f} MP; raise {MAX_PIXELS_ENV} to accept it", path=path)


# Optimisation steps of any stage (inversion, projection, mapping training): far above any real
# setting (1000 per frame is a lot), far below "runs for ever". Checked by the CLI's parser and in
# batch manifests' job options.
MAX_STEPS = 1_000_000
