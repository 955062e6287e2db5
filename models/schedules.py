"""The learning-rate and w-noise ramps of NVIDIA's StyleGAN2 projector, one place for every optimiser.

Both are functions of t = step / steps, the fraction of the run done (step 0-based):

    learning_rate_at:  peak * cos_ramp * min(1, t / rampup), where
                       cos_ramp = 0.5 - 0.5 cos(pi * min(1, (1 - t) / rampdown))
                       a linear warm-up over the first `rampup` of the run, flat, then a half-cosine
                       fall to 0 over the last `rampdown`;
    w_noise_factor_at: initial * max(0, 1 - t / ramp_length) ** 2
                       the std of the Gaussian noise added to w (in units of the spread of mapped w),
                       decaying quadratically to 0 at `ramp_length` of the run.

Source: Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR 2020), whose
projector (stylegan2-ada-pytorch projector.py) uses rampup 0.05, rampdown 0.25, initial noise 0.05
and noise ramp 0.75. The inversion (models.inversion) and the projection (models.projection) use
these functions; the floating-point operations are in a fixed order, so a schedule is reproducible
to the bit.
"""

from __future__ import annotations

import math

__all__ = ["learning_rate_at", "w_noise_factor_at"]


def learning_rate_at(
    peak: float,            # the learning rate between the ramps
    step: int,              # 0-based step
    steps: int,             # steps in the run (> 0)
    rampup: float,          # fraction of the run over which the rate rises linearly from 0, in [0, 1]
                            # (0: no warm-up)
    rampdown: float,        # fraction of the run over which it falls to 0 (half cosine), in (0, 1]
) -> float:
    """Adam's learning rate at `step` of `steps`: linear warm-up, then cosine ramp-down."""
    t = step / steps
    ramp = 0.5 - 0.5 * math.cos(min(1.0, (1.0 - t) / rampdown) * math.pi)
    return peak * ramp * (min(1.0, t / rampup) if rampup > 0 else 1.0)


def w_noise_factor_at(
    initial: float,         # noise std at step 0, in units of the spread of mapped w
    step: int,              # 0-based step
    steps: int,             # steps in the run (> 0)
    ramp_length: float,     # fraction of the run after which there is no noise, in (0, 1]
) -> float:
    """Std of the w noise at `step` of `steps`: quadratic decay from `initial` to 0."""
    t = step / steps
    return initial * max(0.0, 1.0 - t / ramp_length) ** 2
