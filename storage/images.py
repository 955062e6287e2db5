"""Still images: load any common photo as RGB uint8, save atomically.

`load_image` is what a source face goes through: EXIF orientation applied (phones store portraits
sideways and set a tag), every mode made 8-bit RGB (grayscale, palette, CMYK, 16-bit, float,
transparency composited over white), and every file the pipeline cannot use refused with a one-line
InputError naming it. The pixel limit (storage.limits) is checked from the header, before decoding,
so a small file declaring an enormous image (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from storage.atomic import atomic_output
from storage.errors import InputError
from storage.files import require_readable_file
from storage.limits import MAX_PIXELS_ENV, check_pixels, max_pixels

# What transparent pixels become. White, as an image viewer shows them.
BACKGROUND = (255, 255, 255)


def load_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """The image at `path` as an (H, W, 3) uint8 RGB array, upright (EXIF orientation applied).

    Multi-frame files (GIF, TIFF) give their first frame. Raises InputError for a missing, empty,
    unreadable, truncated or oversized file (over `max_pixels`, default storage.limits.max_pixels()).
    """
    path = require_readable_file(path, "an image file")  # a FIFO or /dev/zero: refused, never opened
    with warnings.catch_warnings():
        # Our own limit decides; PIL's warning (and its error at twice its limit) are turned into
        # the same one-line error below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                check_pixels(image.width, image.height, path, "image", max_pixels)
                image.load()
                rgb = _to_rgb(ImageOps.exif_transpose(image))
        except Image.DecompressionBombError as err:
            raise _bomb_error(err, path, max_pixels) from None
        except UnidentifiedImageError:
            raise InputError("not a readable image (corrupt, or not an image format Pillow knows)",
                             path=path) from None
        except (OSError, SyntaxError, ValueError) as err:
            message = str(err).split("\n")[0]
            if "truncated" in message.lower() or "broken data stream" in message.lower():
                raise InputError("image file is truncated (cut off before its end)", path=path) from None
            raise InputError(f"image cannot be decoded ({message})", path=path) from None
    return rgb


def _bomb_error(err: Exception, path: Path, limit: int | None) -> InputError:
    """Pillow refuses images over twice Image.MAX_IMAGE_PIXELS while opening, before our own check
    sees the size: say the same thing our check says."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{int(found.group(1)) / 1e6:.1f} MP" if found else "its size"
    limit = min(max_pixels(limit), 2 * (Image.MAX_IMAGE_PIXELS or 0) or max_pixels(limit))
    return InputError(f"image size ({size}) is above the limit of {limit / 1e6:.1f} MP; raise "
                      f"{MAX_PIXELS_ENV} to accept it", path=path)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grayscale: rescale the full range, don't clip it at 255.
        values = np.asarray(image).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or values.max(initial=0) <= 65535 else values.max()
        gray = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        # Floating point: 0..1 when it fits there, else taken as 0..255.
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0) <= 1.0 else 1.0
        gray = np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(array)


def save_image(path: str | Path, array: np.ndarray, *, quality: int = 95) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 array; the format follows the suffix (.png, .jpg, ...).

    The file appears complete or not at all (written under a temporary name, then renamed).
    `quality` applies to JPEG and WebP.
    """
    path = Path(path).expanduser().absolute()
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 array, got {array.shape} {array.dtype}")
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise InputError(f"unknown image extension {path.suffix!r}", path=path)
    image = Image.fromarray(np.ascontiguousarray(array))
    options = {"quality": quality} if image_format in ("JPEG", "WEBP") else {}
    with atomic_output(path) as tmp:
        image.save(tmp, format=image_format, **options)
    return path
