"""Synthetic head motion with known truth, and the measures of smoothing (jitter, lag), shared by
tests/test_smoothing.py and tests/benchmarks/bench_geometry.py."""

from __future__ import annotations

import numpy as np

from models.face_shape import MEAN_SHAPE_68


def head_motion(fps: float, T: int = 240, noise: float = 1.0, seed: int = 0):
    """68 points of a face ~150 px wide (FFHQ |x| = 149 px) moving like a head: a 0.5 Hz sway of 15 px
    plus 0.5 px/frame drift in x, a 0.3 Hz nod of 8 px in y. Returns (true, noisy) (T, 68, 2)."""
    t = np.arange(T) / fps
    offset = np.stack(
        [15 * np.sin(2 * np.pi * 0.5 * t) + 0.5 * np.arange(T), 8 * np.sin(2 * np.pi * 0.3 * t + 1)], axis=-1
    )
    true = MEAN_SHAPE_68 * 60 + 256 + offset[:, None, :]
    noisy = true + np.random.default_rng(seed).normal(0.0, noise, true.shape)
    return true, noisy


def jitter(x: np.ndarray) -> float:
    """Mean absolute second difference over time."""
    return float(np.abs(np.diff(x, n=2, axis=0)).mean())


def lag_frames(smoothed: np.ndarray, true: np.ndarray, max_shift: int = 5) -> int:
    """The integer shift k that best aligns smoothed[t + k] with true[t] (k > 0: smoothed trails)."""
    T, m = len(true), max_shift
    err = {k: np.abs(smoothed[m + k : T - m + k] - true[m : T - m]).mean() for k in range(-m, m + 1)}
    return min(err, key=err.get)
