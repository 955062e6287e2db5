"""Tiny random-weight StyleGAN2 generators for fast tests.

    from tests.tiny import tiny_generator
    G = tiny_generator()                 # 32 px, z_dim = w_dim = 64, 8 ws, ~0.1 M parameters
    ws = G.w_avg.expand(1, G.num_ws, -1) # start point of an inversion
    img = G.synthesis(ws)                # (1, 3, 32, 32) in a few milliseconds on one CPU core

It is `models.demo.random_generator` at 32 px: the real `models.stylegan2.Generator` (same code path
as a loaded checkpoint), only small and random. Unlike a freshly constructed one, every tensor is
non-trivial: biases and noise strengths are random (freshly built they are 0 or 1, which would hide a
mixed-up or ignored tensor), and `w_avg` is the mean of mapped z (not zeros), so truncation and "start
from w_avg" behave as with real weights. The same seed gives the same generator.
"""

from __future__ import annotations

from typing import Any

from models.demo import random_generator
from models.stylegan2 import Generator


def tiny_generator(resolution: int = 32, **kwargs: Any) -> Generator:
    """`random_generator` at `resolution` (32 px by default); other arguments as there."""
    return random_generator(resolution=resolution, **kwargs)
