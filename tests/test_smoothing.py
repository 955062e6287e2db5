"""Temporal smoothing on synthetic face motion with known truth: jitter, error and lag."""

from __future__ import annotations

import numpy as np
import pytest

from models.alignment import ffhq_quad
from models.detection import FaceFlag
from models.face_shape import MEAN_SHAPE_68
from models.smoothing import SmoothingConfig, one_euro, savgol, smooth_landmarks, smooth_quads
from storage.errors import NoFaceError
from tests.support.motion import head_motion, jitter, lag_frames

DEFAULTS = [SmoothingConfig(method="one_euro"), SmoothingConfig(method="savgol")]


@pytest.mark.parametrize("fps", [25.0, 30.0])
@pytest.mark.parametrize("config", DEFAULTS, ids=lambda c: c.method)
def test_defaults_cut_jitter_and_error_without_lag(config: SmoothingConfig, fps: float):
    true, noisy = head_motion(fps)
    smoothed, filled = smooth_landmarks(noisy, config, fps)
    assert smoothed.shape == noisy.shape and not filled.any()
    assert jitter(smoothed) < jitter(noisy) / 3
    err_in, err_out = np.abs(noisy - true).mean(), np.abs(smoothed - true).mean()
    assert err_out < err_in / 1.5
    assert abs(lag_frames(smoothed, true)) <= 1
    # The lag estimate itself works: a copy delayed by 2 frames is found 2 frames late.
    assert lag_frames(np.roll(true, 2, axis=0), true) == 2


@pytest.mark.parametrize("config", DEFAULTS, ids=lambda c: c.method)
def test_defaults_keep_speech_rate_mouth_motion(config: SmoothingConfig):
    """A 4 Hz, 10 px peak-to-peak mouth movement at 30 fps keeps over half its amplitude."""
    fps, T = 30.0, 240
    t = np.arange(T) / fps
    lm = np.repeat((MEAN_SHAPE_68 * 60 + 256)[None], T, axis=0)
    lm[:, 48:68, 1] += 5 * np.sin(2 * np.pi * 4.0 * t)[:, None]
    smoothed, _ = smooth_landmarks(lm, config, fps)
    kept = np.std(smoothed[30:-30, 57, 1]) / np.std(lm[30:-30, 57, 1])
    assert 0.5 < kept <= 1.05


@pytest.mark.parametrize("config", DEFAULTS, ids=lambda c: c.method)
def test_missing_frames_are_interpolated_and_reported(config: SmoothingConfig):
    fps = 30.0
    true, noisy = head_motion(fps)
    flags = np.full(len(true), FaceFlag.TRACKED, np.uint8)
    gone = np.r_[0:3, 50:56, 120, len(true) - 2 : len(true)]
    noisy[gone[: len(gone) // 2]] = np.nan  # half as NaN rows
    flags[gone] = FaceFlag.LOST  # all flagged LOST (flagged frames count as missing even if finite)
    smoothed, filled = smooth_landmarks(noisy, config, fps, flags=flags)
    assert np.isfinite(smoothed).all()
    np.testing.assert_array_equal(np.flatnonzero(filled), gone)
    inner = slice(10, -10)
    assert np.abs(smoothed[inner] - true[inner]).mean() < 0.6 * np.nanmean(np.abs(noisy - true))


def test_no_face_at_all_is_an_error():
    with pytest.raises(NoFaceError):
        smooth_landmarks(np.full((5, 68, 2), np.nan), SmoothingConfig(), 30.0)


def test_quad_parameters_are_smoothed():
    fps = 30.0
    true, noisy = head_motion(fps)
    q_true, q_noisy = ffhq_quad(true), ffhq_quad(noisy)
    for config in DEFAULTS:
        q_smooth, _ = smooth_quads(q_noisy, config, fps)
        assert q_smooth.shape == (len(true), 4)
        assert jitter(q_smooth) < jitter(q_noisy) / 3
        assert np.abs(q_smooth - q_true).mean() < np.abs(q_noisy - q_true).mean()


def test_one_euro_units_follow_the_face_scale():
    """Smoothing is done in face-size units: the same motion at 3x the size gives 3x the result."""
    fps = 25.0
    _, noisy = head_motion(fps)
    config = SmoothingConfig()
    small, _ = smooth_landmarks(noisy, config, fps)
    big, _ = smooth_landmarks(noisy * 3, config, fps)
    np.testing.assert_allclose(big, small * 3, rtol=1e-9, atol=1e-6)


def test_causal_one_euro_lags_and_zero_phase_does_not():
    fps = 30.0
    true, noisy = head_motion(fps)
    causal = one_euro(noisy, fps, zero_phase=False, scale=149.0)
    both = one_euro(noisy, fps, zero_phase=True, scale=149.0)
    assert lag_frames(causal, true) >= 1
    assert lag_frames(both, true) == 0
    assert jitter(causal) < jitter(noisy) / 2


def test_savgol_short_clips_and_exact_polynomials():
    t = np.arange(5, dtype=float)[:, None]
    quadratic = 0.5 * t**2 - 2 * t + 1
    np.testing.assert_allclose(savgol(quadratic, 7, 2), quadratic, atol=1e-9)  # window shrunk to 5
    np.testing.assert_array_equal(savgol(np.ones((2, 3)), 7, 2), np.ones((2, 3)))


def test_config_validation_and_provenance():
    assert SmoothingConfig().provenance() == {
        "method": "one_euro",
        "min_cutoff": 2.0,
        "beta": 10.0,
        "d_cutoff": 8.0,
        "zero_phase": True,
    }
    sg = SmoothingConfig(method="savgol", window=9, beta=99.0)
    assert sg.provenance() == {"method": "savgol", "window": 9, "polyorder": 2}  # beta unused
    assert SmoothingConfig(method="none").provenance() == {"method": "none"}
    with pytest.raises(ValueError, match="method"):
        SmoothingConfig(method="kalman")
    with pytest.raises(ValueError, match="odd window"):
        SmoothingConfig(method="savgol", window=8)
    with pytest.raises(ValueError, match="min_cutoff"):
        SmoothingConfig(min_cutoff=0)
