"""models/schedules.py: NVIDIA's projector's learning-rate and w-noise ramps, and that the inversion and
the projection configs use them (to the bit: their schedules were written out twice before)."""

from __future__ import annotations

import math

import pytest

from models.inversion import InversionConfig
from models.projection import ProjectionConfig
from models.schedules import learning_rate_at, w_noise_factor_at


def _old_inversion_lr(c: InversionConfig, step: int) -> float:
    """InversionConfig.learning_rate_at as it was written before models.schedules (operation order kept)."""
    t = step / c.steps
    ramp = min(1.0, (1.0 - t) / c.lr_rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return c.learning_rate * ramp * min(1.0, t / c.lr_rampup)


def _old_noise(initial: float, step: int, steps: int, ramp_length: float) -> float:
    t = step / steps
    return initial * max(0.0, 1.0 - t / ramp_length) ** 2


def test_learning_rate_ramps():
    peak, steps = 0.1, 1000
    lr = [learning_rate_at(peak, s, steps, rampup=0.05, rampdown=0.25) for s in range(steps)]
    assert lr[0] == 0.0
    assert lr[25] == pytest.approx(0.05)                # half way up the linear warm-up (5 %)
    assert lr[50] == lr[300] == lr[750] == peak         # flat between the ramps, exactly the peak
    assert lr[875] == pytest.approx(peak * 0.5)         # half way down the cosine (last 25 %)
    assert 0 < lr[999] < 1e-5
    assert all(a <= b for a, b in zip(lr[:51], lr[1:51], strict=False))        # rises
    assert all(a >= b for a, b in zip(lr[750:], lr[751:], strict=False))       # falls


def test_learning_rate_matches_nvidia_formula():
    """The projector's own arrangement (peak times one combined ramp) agrees to rounding."""
    for steps, up, down in ((1000, 0.05, 0.25), (37, 0.3, 0.9), (5, 1.0, 1.0)):
        for s in range(steps):
            t = s / steps
            ramp = (0.5 - 0.5 * math.cos(min(1.0, (1.0 - t) / down) * math.pi)) * min(1.0, t / up)
            assert learning_rate_at(0.07, s, steps, up, down) == pytest.approx(0.07 * ramp, rel=1e-14, abs=0)


def test_w_noise_ramp():
    noise = [w_noise_factor_at(0.05, s, 1000, ramp_length=0.75) for s in range(1000)]
    assert noise[0] == 0.05
    assert noise[375] == pytest.approx(0.05 * 0.25)     # quadratic: half way, a quarter
    assert noise[750] == noise[999] == 0.0
    assert all(a >= b for a, b in zip(noise, noise[1:], strict=False))


@pytest.mark.parametrize("changes", [{}, {"steps": 37, "lr_rampup": 0.3, "lr_rampdown": 0.7,
                                          "noise_ramp_length": 0.33, "learning_rate": 0.037,
                                          "initial_noise_factor": 0.2}])
def test_inversion_config_uses_the_ramps_bitwise(changes):
    c = InversionConfig(**changes)
    for s in range(c.steps):
        assert c.learning_rate_at(s) == _old_inversion_lr(c, s)
        assert c.learning_rate_at(s) == learning_rate_at(c.learning_rate, s, c.steps, c.lr_rampup,
                                                         c.lr_rampdown)
        assert c.w_noise_factor_at(s) == _old_noise(c.initial_noise_factor, s, c.steps, c.noise_ramp_length)


@pytest.mark.parametrize("first", [True, False])
def test_projection_config_uses_the_ramps_bitwise(first):
    c = ProjectionConfig(lr_rampup=0.2, lr_rampdown=0.9, noise_ramp_length=0.5,
                         initial_noise_factor_next=0.01)
    steps = c.steps_first if first else c.steps_next
    peak = c.learning_rate if first else c.learning_rate_next
    initial = c.initial_noise_factor if first else c.initial_noise_factor_next
    same = InversionConfig(steps=steps, learning_rate=peak, lr_rampup=0.2, lr_rampdown=0.9)
    for s in range(steps):
        # the projection's schedule was the inversion's, written out again: now both are one function
        assert c.learning_rate_at(s, steps, first) == _old_inversion_lr(same, s)
        assert c.w_noise_factor_at(s, steps, first) == _old_noise(initial, s, steps, 0.5)
