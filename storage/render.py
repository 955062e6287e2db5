"""Composition of output frames: panels side by side and the preview grid. numpy + PIL only.

    to_uint8(images)                      # (n, 3, R, R) floats in [-1, 1] -> (n, R, R, 3) uint8
    side_by_side([look, driving, result]) # one row, every panel scaled to the last one's height
    preview_grid(rows)                    # rows of panels stacked (first, middle, last frame)

The reenact stage's layouts (docs/reenact.md): "result" is the generated frame alone; "side-by-side"
is look | driving | result, as in the videos of Uzolas 2021's posts. Panels are scaled with bicubic
resampling when they grow by less than 2x and nearest-neighbour above that (a 32 px crop blown up
for viewing stays crisp instead of smeared); scaling never changes the result panel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = ["LAYOUTS", "preview_grid", "resize_to_height", "side_by_side", "to_uint8"]

LAYOUTS = ("result", "side-by-side")


def to_uint8(images) -> np.ndarray:
    """Generator output (n, 3, H, W) floats in [-1, 1] (numpy or torch, on the CPU) -> (n, H, W, 3)
    uint8, rounded the way NVIDIA's scripts save images: (x + 1) * 127.5, clipped."""
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4 or array.shape[1] != 3:
        raise ValueError(f"expected (n, 3, H, W) images, got {array.shape}")
    out = np.clip(np.rint((array + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def _check(panel: np.ndarray) -> np.ndarray:
    panel = np.asarray(panel)
    if panel.ndim != 3 or panel.shape[2] != 3 or panel.dtype != np.uint8:
        raise ValueError(f"panels are (H, W, 3) uint8, got {panel.shape} {panel.dtype}")
    return panel


def resize_to_height(panel: np.ndarray, height: int) -> np.ndarray:
    """`panel` scaled (aspect kept) to `height` rows."""
    panel = _check(panel)
    h, w = panel.shape[:2]
    if h == height:
        return panel
    width = max(1, round(w * height / h))
    method = Image.NEAREST if height >= 2 * h else Image.BICUBIC
    return np.asarray(Image.fromarray(panel).resize((width, height), method))


def side_by_side(panels: Sequence[np.ndarray], height: int | None = None) -> np.ndarray:
    """Panels left to right, each scaled to `height` (default: the last panel's, the result's)."""
    if not panels:
        raise ValueError("side_by_side: no panels")
    height = int(height or _check(panels[-1]).shape[0])
    return np.ascontiguousarray(np.concatenate([resize_to_height(p, height) for p in panels], axis=1))


def preview_grid(rows: Sequence[Sequence[np.ndarray]], height: int = 256) -> np.ndarray:
    """Rows of panels (e.g. look | driving | result of the first, middle and last frames), each row
    `side_by_side` at `height` and the rows stacked; rows of different widths are padded white."""
    if not rows:
        raise ValueError("preview_grid: no rows")
    lines = [side_by_side(row, height) for row in rows]
    width = max(line.shape[1] for line in lines)
    padded = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255)
              for line in lines]
    return np.ascontiguousarray(np.concatenate(padded, axis=0))
