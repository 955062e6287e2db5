"""Temporal smoothing of per-frame face geometry: landmarks (T, 68, 2) and crop quads (T, 4).

Jittery landmarks make jittery crops and jittery output; smoothing is applied over time, per value:

- `one_euro`: the One-Euro filter (Casiez et al., CHI 2012), a first-order low-pass whose cutoff rises
  with the signal's speed: cutoff = min_cutoff + beta * |speed|. Slow motion is smoothed hard (jitter
  dominates), fast motion passes with little lag. By default it runs forward and then backward over
  the clip (`zero_phase`), as filtfilt does: this pipeline has the whole video, and a causal filter
  trails moving faces by about a frame. `zero_phase=False` gives the classic causal filter.
- `savgol`: Savitzky-Golay (scipy.signal.savgol_filter): a centred moving polynomial fit, zero lag,
  keeps polynomial motion up to `polyorder` exactly.

Values are divided by a face scale before filtering (the median FFHQ half-crop side |x| of the clip,
see `face_scale`), so that `beta` is in 1 / (face sizes per second) and one config behaves the same
on a 200-pixel face and on a 1000-pixel one. Frames without a face (NaN rows, or flagged LOST) are
filled by linear interpolation first (`models.detection.interpolate_missing`) and reported back as
filled, never dropped.

The crop transform is smoothed through its quad parameters (centre c, half-axis x): those move
smoothly with the face, while averaging 3x3 matrices has no meaning of its own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from models.alignment import ffhq_quad
from models.detection import interpolate_missing
from models.face_shape import check_points

__all__ = [
    "SmoothingConfig",
    "face_scale",
    "one_euro",
    "savgol",
    "smooth",
    "smooth_landmarks",
    "smooth_quads",
]

METHODS = ("one_euro", "savgol", "none")


@dataclass(frozen=True)
class SmoothingConfig:
    """How to smooth per-frame geometry over time. Goes into cache provenance via `provenance()`.

    Args:
        method: "one_euro", "savgol" or "none".
        min_cutoff: One-Euro cutoff (Hz) at rest. Lower: smoother still faces, more lag when causal.
        beta: One-Euro speed coefficient, in 1 / (face sizes per second). Higher: fast motion is
            followed more closely, and more jitter passes during motion.
        d_cutoff: One-Euro cutoff (Hz) of the speed estimate.
        zero_phase: One-Euro forward then backward (no lag; needs the whole clip). False: causal.
        window: Savitzky-Golay window, frames (odd; shrunk to fit short clips).
        polyorder: Savitzky-Golay polynomial order (< window).

    Defaults, for 25-30 fps video of talking heads (measurements in docs/faces.md): One-Euro
    min_cutoff 2 Hz, beta 10, d_cutoff 8 Hz, zero-phase; Savitzky-Golay 7 frames, order 2. Both cut
    the jitter of 1-pixel landmark noise on a moving head 4-5x and the error to the true motion
    1.7-2x with no lag, and keep most of a 4 Hz (speech-rate) mouth movement: smoothing harder (lower
    min_cutoff or beta, longer window) flattens lip motion, which reenactment must keep.
    """

    method: str = "one_euro"
    min_cutoff: float = 2.0
    beta: float = 10.0
    d_cutoff: float = 8.0
    zero_phase: bool = True
    window: int = 7
    polyorder: int = 2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"smoothing method must be one of {METHODS}, got {self.method!r}")
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise ValueError("one_euro needs min_cutoff > 0, d_cutoff > 0, beta >= 0")
        if self.window < 1 or self.window % 2 == 0 or not 0 <= self.polyorder < self.window:
            raise ValueError(
                f"savgol needs an odd window > polyorder >= 0, got {self.window}, {self.polyorder}"
            )

    def provenance(self) -> dict:
        """The settings that determine the result: the method and its own parameters only."""
        keys = {
            "one_euro": ("min_cutoff", "beta", "d_cutoff", "zero_phase"),
            "savgol": ("window", "polyorder"),
            "none": (),
        }[self.method]
        return {"method": self.method, **{k: getattr(self, k) for k in keys}}

    def replace(self, **changes) -> SmoothingConfig:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------------
# Filters on complete (T, ...) arrays


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass with this cutoff (Hz), sampled every dt seconds."""
    r = 2.0 * math.pi * cutoff * dt
    return r / (r + 1.0)


def _one_euro_causal(x: np.ndarray, dt: float, min_cutoff: float, beta: float, d_cutoff: float) -> np.ndarray:
    out = np.empty_like(x)
    y = x[0].copy()
    speed = np.zeros_like(y)
    a_d = _alpha(d_cutoff, dt)
    out[0] = y
    for t in range(1, x.shape[0]):
        speed += a_d * ((x[t] - y) / dt - speed)
        y += _alpha(min_cutoff + beta * np.abs(speed), dt) * (x[t] - y)
        out[t] = y
    return out


def one_euro(
    values: np.ndarray,
    fps: float,
    min_cutoff: float = 2.0,
    beta: float = 10.0,
    d_cutoff: float = 8.0,
    *,
    scale: float = 1.0,
    zero_phase: bool = True,
) -> np.ndarray:
    """One-Euro filter over axis 0 of a finite (T, ...) array sampled at `fps`; each value filtered on
    its own. `scale` divides the values first (so `beta` is per scale unit per second)."""
    values = np.asarray(values, dtype=np.float64)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not np.isfinite(values).all():
        raise ValueError("one_euro needs finite values; fill missing frames first (interpolate_missing)")
    if values.shape[0] < 2:
        return values.copy()
    x = values.reshape(values.shape[0], -1) / scale
    dt = 1.0 / fps
    y = _one_euro_causal(x, dt, min_cutoff, beta, d_cutoff)
    if zero_phase:
        y = _one_euro_causal(y[::-1].copy(), dt, min_cutoff, beta, d_cutoff)[::-1]
    return (y * scale).reshape(values.shape)


def savgol(values: np.ndarray, window: int = 7, polyorder: int = 2) -> np.ndarray:
    """Savitzky-Golay over axis 0 of a finite (T, ...) array. Clips shorter than `window` use the
    longest odd window that fits (unchanged when that is not above `polyorder`)."""
    from scipy.signal import savgol_filter

    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError("savgol needs finite values; fill missing frames first (interpolate_missing)")
    T = values.shape[0]
    window = min(window, T if T % 2 else T - 1)
    if window <= polyorder:
        return values.copy()
    return savgol_filter(values, window, polyorder, axis=0, mode="interp")


# --------------------------------------------------------------------------------------------------
# Smoothing with missing frames


def smooth(
    values: np.ndarray,
    config: SmoothingConfig,
    fps: float,
    *,
    flags: np.ndarray | None = None,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth a (T, ...) per-frame array over time.

    Missing frames (NaN, or flagged LOST in `flags`) are interpolated first. Returns (smoothed float64
    array, filled (T,) bool). Raises NoFaceError when no frame is known.
    """
    filled_values, filled = interpolate_missing(values, flags)
    if config.method == "one_euro":
        out = one_euro(
            filled_values,
            fps,
            config.min_cutoff,
            config.beta,
            config.d_cutoff,
            scale=scale,
            zero_phase=config.zero_phase,
        )
    elif config.method == "savgol":
        out = savgol(filled_values, config.window, config.polyorder)
    else:
        out = filled_values
    return out, filled


def face_scale(landmarks: np.ndarray) -> float:
    """Median FFHQ half-crop side |x| (pixels) over the frames with landmarks: the unit smoothing
    parameters are expressed in. 1.0 when no frame has landmarks."""
    lm = check_points(landmarks)
    quads = ffhq_quad(lm.reshape(-1, 68, 2))
    half = np.hypot(quads[:, 2], quads[:, 3])
    half = half[np.isfinite(half) & (half > 0)]
    return float(np.median(half)) if half.size else 1.0


def smooth_landmarks(
    landmarks: np.ndarray, config: SmoothingConfig, fps: float, *, flags: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth (T, 68, 2) landmarks (NaN rows = no face) in units of the clip's face size.
    Returns (smoothed (T, 68, 2), filled (T,) bool)."""
    lm = check_points(landmarks)
    if lm.ndim != 3:
        raise ValueError(f"expected (T, 68, 2) landmarks, got shape {lm.shape}")
    return smooth(lm, config, fps, flags=flags, scale=face_scale(lm))


def smooth_quads(
    quads: np.ndarray, config: SmoothingConfig, fps: float, *, flags: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth (T, 4) crop quad parameters (cx, cy, xx, xy) (NaN rows = no face), in units of the
    median |x|. Build the per-frame transforms from the result (AlignTransform(quad, R)).
    Returns (smoothed (T, 4), filled (T,) bool)."""
    quads = np.asarray(quads, dtype=np.float64)
    if quads.ndim != 2 or quads.shape[1] != 4:
        raise ValueError(f"expected (T, 4) quad parameters, got shape {quads.shape}")
    half = np.hypot(quads[:, 2], quads[:, 3])
    half = half[np.isfinite(half) & (half > 0)]
    scale = float(np.median(half)) if half.size else 1.0
    return smooth(quads, config, fps, flags=flags, scale=scale)
