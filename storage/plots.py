"""Line plots as PNG files, drawn with Pillow (matplotlib is not a dependency).

    plot_curves(steps, {"loss": losses, "baseline": base}, "loss.png", log_y=True)

Enough for loss curves in a run's output folder: axes with ticks at round values (decades on a log
scale), one colour per curve, a legend, a title. Non-finite values (and values <= 0 on a log scale)
leave gaps. The file is written atomically (storage.images.save_image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.0e}" if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2) else f"{value:g}"


def plot_curves(
    x: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    log_y: bool = False,
    size: tuple[int, int] = (800, 480),
) -> Path:
    """Draw `curves` (name -> values, each as long as `x`) against `x` into the PNG at `path`."""
    from storage.images import save_image

    xs = np.asarray(x, dtype=np.float64)
    ys = {name: np.asarray(v, dtype=np.float64) for name, v in curves.items()}
    for name, v in ys.items():
        if v.shape != xs.shape:
            raise ValueError(f"plot_curves: curve {name!r} has {v.shape[0]} values for {xs.shape[0]} "
                             "x values")
    width, height = size
    left, right, top, bottom = 80, 20, 40, 50
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def transform(v: np.ndarray) -> np.ndarray:
        if not log_y:
            return v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)

    finite_x = xs[np.isfinite(xs)]
    all_y = np.concatenate([transform(v) for v in ys.values()]) if ys else np.zeros(0)
    all_y = all_y[np.isfinite(all_y)]
    x0, x1 = (float(finite_x.min()), float(finite_x.max())) if finite_x.size else (0.0, 1.0)
    y0, y1 = (float(all_y.min()), float(all_y.max())) if all_y.size else (0.0, 1.0)
    if x1 <= x0:
        x1 = x0 + 1.0
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if log_y:
        y0, y1 = math.floor(y0), math.ceil(y1)

    def px(xv: float) -> float:
        return left + (xv - x0) / (x1 - x0) * (width - left - right)

    def py(yv: float) -> float:
        return height - bottom - (yv - y0) / (y1 - y0) * (height - top - bottom)

    # grid and ticks, then the frame over the grid lines that fall on it
    for tx in _nice_ticks(x0, x1):
        draw.line([px(tx), height - bottom, px(tx), height - bottom + 4], fill=(0, 0, 0))
        draw.text((px(tx) - 10, height - bottom + 6), _label(tx), fill=(0, 0, 0), font=font)
    y_ticks = range(int(y0), int(y1) + 1) if log_y else _nice_ticks(y0, y1)
    for ty in y_ticks:
        draw.line([left, py(ty), width - right, py(ty)], fill=(225, 225, 225))
        draw.text((4, py(ty) - 6), _label(10.0 ** ty if log_y else ty), fill=(0, 0, 0), font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    if title:
        draw.text((left, 12), title, fill=(0, 0, 0), font=font)
    if xlabel:
        draw.text(((left + width - right) / 2 - 10, height - 20), xlabel, fill=(0, 0, 0), font=font)

    # curves (a gap at every non-finite value) and the legend
    for k, (name, values) in enumerate(ys.items()):
        colour = COLOURS[k % len(COLOURS)]
        tv = transform(values)
        run: list[tuple[float, float]] = []
        for xv, yv in [*zip(xs, tv, strict=True), (math.nan, math.nan)]:
            if math.isfinite(xv) and math.isfinite(yv):
                run.append((px(xv), py(yv)))
                continue
            if len(run) > 1:
                draw.line(run, fill=colour, width=2)
            elif len(run) == 1:
                draw.point(run, fill=colour)
            run = []
        lx, ly = width - right - 170, top + 8 + 14 * k
        draw.line([lx, ly + 6, lx + 20, ly + 6], fill=colour, width=2)
        draw.text((lx + 26, ly), name, fill=(0, 0, 0), font=font)
    return save_image(path, np.asarray(image))
