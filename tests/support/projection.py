"""What the projection tests share (tests/test_projection.py, tests/test_projection_speed.py):
driving sequences made from the tiny generator itself, and a projection config with few steps whose
step counts are exact. Their fixtures (one_thread, faceapi, lpips) are in tests/conftest.py."""

from __future__ import annotations

import torch

from models.projection import ProjectionConfig


def g_noise(G) -> list[torch.Tensor]:
    """G's own noise maps, (r, r) each, in noise_layers() order."""
    return [layer.noise_const.clone() for _, layer in G.synthesis.noise_layers()]


def known_sequence(G, faceapi, frames: int, step: float, seed: int = 1):
    """Latents w_t = w_0 + t step (w_1 - w_0), their renders (G's noise) and faceapi landmarks."""
    g = torch.Generator().manual_seed(seed)
    w0, w1 = G.mapping(torch.randn(2, G.z_dim, generator=g))
    ws = torch.stack([w0 + t * step * (w1 - w0) for t in range(frames)])
    with torch.no_grad():
        images = G.synthesis(ws, noise=[m.expand(frames, 1, -1, -1) for m in g_noise(G)])
        points = faceapi((images + 1) / 2).points
    return ws, images, points


def quick(**changes) -> ProjectionConfig:
    """Defaults with few steps, no early stopping and frame 0 on the long schedule (the step counts are
    then exact)."""
    return ProjectionConfig(**{"perceptual": "uncalibrated", "steps_first": 4, "steps_next": 3,
                               "early_stop_patience": 0, "warm_first_frame": False, **changes})
