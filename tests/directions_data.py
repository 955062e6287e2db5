"""A tiny face generator for the latent-direction tests: the astronaut's face crop (64 px), moved by
a rotation, scale, shift and a mouth opening that are linear functions of the first two W+ rows, and
tinted by the others.

A tiny random StyleGAN2 (tests/tiny.py) draws no face: face-api's landmarks on its images are
collapsed, chaotic points (their fitted yaw swings by 80 degrees along a short line in W), so p and a
linear A mean nothing there. This generator has the generator interface the directions code uses
(mapping, synthesis, num_ws, w_dim, z_dim, img_resolution, w_avg, fingerprint) and draws a real face
whose landmarks move smoothly but not linearly with w (grid_sample of a photo), which is what learning
directions needs. The CLI tests use the tiny StyleGAN2 (a real checkpoint file) instead.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.clips import base_points, photo

SIZE = 64


@lru_cache(maxsize=1)
def face_crop() -> tuple[torch.Tensor, np.ndarray]:
    """(3, 64, 64) face crop of the astronaut in [-1, 1] and its (68, 2) face-api points there."""
    points = np.asarray(base_points(), np.float64)
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    half = 0.8 * float((points.max(axis=0) - points.min(axis=0)).max())
    x0, y0 = centre - half
    scale = SIZE / (2 * half)
    matrix = np.array([[scale, 0, -x0 * scale - 0.5 + scale / 2], [0, scale, -y0 * scale - 0.5 + scale / 2]])
    crop = cv2.warpAffine(photo(), matrix, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    image = torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1
    return image, points @ matrix[:, :2].T + matrix[:, 2]


class WarpFaceGenerator(nn.Module):
    """ws (N, 4, 16) -> (N, 3, 64, 64) in [-1, 1]: the face crop rotated by up to ~0.3 rad, scaled,
    shifted, its mouth opened (rows 0-1) and tinted (rows 2-3)."""

    num_ws, w_dim, z_dim, img_resolution = 4, 16, 16, SIZE
    source_path = None

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        image, points = face_crop()
        self.register_buffer("base", image[None])
        self.register_buffer("w_avg", torch.zeros(self.w_dim))
        # rotation (rad), log scale, shift x, shift y (fraction of the half-image), mouth opening
        gains = torch.tensor([0.25, 0.05, 0.04, 0.04, 0.8])
        self.register_buffer("pose_map", torch.randn(self.w_dim, 5, generator=g) / self.w_dim ** 0.5 * gains)
        self.register_buffer("tint_map", torch.randn(self.w_dim, 3, generator=g) / self.w_dim ** 0.5 * 0.15)
        lip = (torch.tensor(points[57], dtype=torch.float32) + 0.5) / SIZE * 2 - 1  # normalised coords
        self.register_buffer("lip", lip)

    def mapping(self, z: torch.Tensor, c=None, *, truncation_psi: float = 1.0, **_) -> torch.Tensor:
        w = self.w_avg.lerp(z.to(self.w_avg), truncation_psi)
        return w[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const", **_) -> torch.Tensor:
        n = ws.shape[0]
        angle, log_scale, tx, ty, mouth = (ws[:, :2].mean(1) @ self.pose_map).unbind(-1)
        scale = log_scale.exp()
        cos, sin = angle.cos() / scale, angle.sin() / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], -1), torch.stack([sin, cos, ty], -1)], 1)
        grid = F.affine_grid(theta, (n, 3, SIZE, SIZE), align_corners=False)
        # mouth: the content below the upper lip moves down by up to 0.12 (sampled from higher up)
        d = grid - self.lip
        bump = torch.exp(-(d.square().sum(-1)) / (2 * 0.18 ** 2)) * torch.sigmoid(d[..., 1] * 40 + 2)
        shift = torch.stack([torch.zeros_like(bump), bump * mouth.clamp(-0.5, 1.5)[:, None, None] * 0.08], -1)
        image = F.grid_sample(self.base.expand(n, -1, -1, -1), grid - shift, align_corners=False,
                              padding_mode="reflection")
        tint = (ws[:, 2:].mean(1) @ self.tint_map)[:, :, None, None]
        return (image + tint).clamp(-1, 1)

    def fingerprint(self) -> dict:
        return {"weights_sha256": self.weights_sha256(), "img_resolution": SIZE, "num_ws": self.num_ws,
                "w_dim": self.w_dim}

    def weights_sha256(self) -> str:
        return "warp-face-test-generator-0"
