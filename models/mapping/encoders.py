"""Landmark inputs of the mapping network: crop coordinates, and the encoders of their motion.

Landmarks are 68 iBUG points in aligned-crop pixels (the crops table's `crop_landmarks`; pixel centres
at integers, so a crop of R px spans -0.5 .. R - 0.5). `normalize_landmarks` turns them into [-1, 1]
crop coordinates, so one trained network serves any crop resolution.

The network's input is the difference between the driving and the source landmark *representation*,
behind one small interface (`LandmarkEncoder`: `represent(points)` and `encode(difference)`), with two
implementations (`ENCODERS`):
- "raster" (`RasterLandmarkEncoder`): Choe 2023's choice. Each of the 9 iBUG groups is drawn as an
  anti-aliased polyline (Gaussian pen, `LandmarkRasterizer`) into its own channel of a small image
  (64 x 64 by default); the source's image is subtracted from the driving one's and a CNN (conv pairs
  + 2x average pooling down to 4 x 4, then a fully connected layer) encodes it. The drawing is
  differentiable in the points, though training does not need that.
- "coords" (`CoordinateLandmarkEncoder`): the 136 normalised coordinates' difference, through an MLP.
The default ("coords") was chosen by measurement on the synthetic task (docs/mapping.md).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from models.landmarks.base import IBUG_GROUPS, NUM_LANDMARKS

__all__ = ["ENCODERS", "CoordinateLandmarkEncoder", "LandmarkEncoder", "LandmarkRasterizer",
           "RasterLandmarkEncoder", "check_landmarks", "normalize_landmarks"]

# Closed outlines among the iBUG groups (the last point joins the first).
_CLOSED_GROUPS = frozenset({"eye_left", "eye_right", "mouth_outer", "mouth_inner"})


# ---------------------------------------------------------------------------------------------------
# Landmark coordinates


def check_landmarks(points: torch.Tensor, name: str, n: int | None = None) -> torch.Tensor:
    """`points` as a float (N, 68, 2) tensor; ValueError on another shape (or another N)."""
    if not isinstance(points, torch.Tensor):
        points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    if points.ndim != 3 or tuple(points.shape[1:]) != (NUM_LANDMARKS, 2):
        raise ValueError(f"{name}: expected (N, 68, 2) landmarks, got shape {tuple(points.shape)}")
    if n is not None and points.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows, got {points.shape[0]}")
    return points if points.is_floating_point() else points.float()


def normalize_landmarks(points: torch.Tensor, crop_resolution: int | float) -> torch.Tensor:
    """Aligned-crop pixel coordinates -> [-1, 1] crop coordinates (the crop's outer pixel edges are
    -1 and 1, as in grid_sample with align_corners=False): (p + 0.5) / R * 2 - 1."""
    if not crop_resolution > 0:
        raise ValueError(f"crop_resolution must be > 0, got {crop_resolution}")
    return (points + 0.5) * (2.0 / crop_resolution) - 1.0


# ---------------------------------------------------------------------------------------------------
# Representations and encoders


class LandmarkEncoder(nn.Module):
    """The one interface of the landmark representations: features of the driving-minus-source
    difference.

    Subclasses set `kind` and `differentiable` (whether `represent` carries gradients to the points)
    and implement `represent(points) -> (N, *shape)` and `encode(difference) -> (N, out_features)`;
    `out_features` is set in the constructor. Points are normalised crop coordinates (N, 68, 2).
    """

    kind: ClassVar[str] = "?"
    differentiable: ClassVar[bool] = False
    out_features: int

    def represent(self, points: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, difference: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, src: torch.Tensor, drv: torch.Tensor) -> torch.Tensor:
        return self.encode(self.represent(drv) - self.represent(src))


class LandmarkRasterizer(nn.Module):
    """(N, 68, 2) normalised points -> (N, 9, size, size) line drawings: one channel per iBUG group (in
    IBUG_GROUPS order), its polyline (eyes and lips closed) drawn with a Gaussian pen of std `sigma`
    raster pixels, about 1 on the line and exp(-d^2 / 2 sigma^2) at distance d from it.

    Drawing: each segment is sampled at `samples_per_segment` evenly spaced points, each stamping a
    Gaussian weighted by the length it stands for / (sigma sqrt(2 pi)), so a line's profile integrates
    the pen along it (spacing must stay under ~1.5 sigma; the default keeps it there for face-sized
    polylines). A Gaussian is separable, so a group's image is one batched matmul of the stamps'
    row and column profiles. Differentiable in the points everywhere.
    """

    def __init__(
        self,
        size: int = 64,                     # image side in pixels; the crop [-1, 1]^2 maps onto it
        sigma: float = 1.0,                 # pen std in pixels of this image
        samples_per_segment: int | None = None,  # stamps per segment; None = max(4, size // 16)
    ) -> None:
        super().__init__()
        if size < 4:
            raise ValueError(f"raster size must be >= 4, got {size}")
        if not sigma > 0:
            raise ValueError(f"raster sigma must be > 0, got {sigma}")
        self.size, self.sigma = int(size), float(sigma)
        self.samples_per_segment = (max(4, self.size // 16) if samples_per_segment is None
                                    else int(samples_per_segment))
        starts, ends, bounds = [], [], [0]
        for name, idx in IBUG_GROUPS.items():
            points = list(range(idx.start, idx.stop))
            pairs = list(zip(points[:-1], points[1:], strict=True))
            if name in _CLOSED_GROUPS:
                pairs.append((points[-1], points[0]))
            starts += [a for a, _ in pairs]
            ends += [b for _, b in pairs]
            bounds.append(len(starts) * self.samples_per_segment)
        self.register_buffer("seg_start", torch.tensor(starts), persistent=False)
        self.register_buffer("seg_end", torch.tensor(ends), persistent=False)
        k = self.samples_per_segment
        self.register_buffer("fractions", (torch.arange(k, dtype=torch.float32) + 0.5) / k, persistent=False)
        self.group_bounds = bounds  # stamps of group g: bounds[g] .. bounds[g + 1]
        self.register_buffer("centres", torch.arange(self.size, dtype=torch.float32), persistent=False)

    @property
    def channels(self) -> int:
        return len(self.group_bounds) - 1

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        points = check_landmarks(points, "rasterize")
        n, k = points.shape[0], self.samples_per_segment
        px = (points + 1.0) * (self.size / 2.0) - 0.5          # raster pixels, centres at integers
        a, b = px[:, self.seg_start], px[:, self.seg_end]       # (N, S, 2)
        stamps = (a[:, :, None] + self.fractions[:, None] * (b - a)[:, :, None]).reshape(n, -1, 2)
        length = torch.linalg.vector_norm(b - a, dim=-1)        # (N, S)
        weight = (length / (k * self.sigma * math.sqrt(2 * math.pi))).repeat_interleave(k, dim=1)
        inv = -0.5 / self.sigma ** 2
        gx = torch.exp((self.centres - stamps[..., 0:1]).square() * inv)            # (N, M, X)
        gy = torch.exp((self.centres - stamps[..., 1:2]).square() * inv) * weight[..., None]  # (N, M, Y)
        images = [gy[:, lo:hi].transpose(1, 2) @ gx[:, lo:hi]
                  for lo, hi in zip(self.group_bounds[:-1], self.group_bounds[1:], strict=True)]
        return torch.stack(images, dim=1)                       # (N, G, Y, X)

    def extra_repr(self) -> str:
        return (f"size={self.size}, sigma={self.sigma:g}, samples_per_segment={self.samples_per_segment}, "
                f"channels={self.channels}")


class _ConvBlock(nn.Module):
    """Two 3x3 convolutions with leaky ReLU, then 2x average pooling."""

    def __init__(
        self,
        in_channels: int,       # feature maps in
        out_channels: int,      # feature maps out (both convolutions)
    ) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv1(self.act(self.conv0(x)))))


class RasterLandmarkEncoder(LandmarkEncoder):
    """Choe 2023's input: rasterised landmark images, their difference through a CNN."""

    kind = "raster"
    differentiable = True

    def __init__(
        self,
        out_features: int = 512,    # feature width handed to the mapping head
        size: int = 64,             # raster side; a power of two >= 8 (blocks halve it down to 4)
        sigma: float = 1.0,         # polyline half-width in raster pixels
        channels: int = 32,         # feature maps of the first block, doubled per block
        max_channels: int = 256,    # cap on the feature maps
    ) -> None:
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"raster size must be a power of two >= 8, got {size}")
        self.rasterizer = LandmarkRasterizer(size, sigma)
        blocks, c_in, c_out, r = [], self.rasterizer.channels, channels, size
        while r > 4:
            blocks.append(_ConvBlock(c_in, c_out))
            c_in, c_out, r = c_out, min(2 * c_out, max_channels), r // 2
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in * 4 * 4, out_features)
        self.act = nn.LeakyReLU(0.2)
        self.out_features = out_features

    def represent(self, points: torch.Tensor) -> torch.Tensor:
        return self.rasterizer(points)

    def encode(self, difference: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(self.blocks(difference).flatten(1)))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, out_features={self.out_features}"


class CoordinateLandmarkEncoder(LandmarkEncoder):
    """The 136 normalised coordinates; their difference through an MLP."""

    kind = "coords"
    differentiable = True

    def __init__(
        self,
        out_features: int = 512,    # feature width handed to the mapping head (and the hidden width)
        layers: int = 3,            # fully connected layers with leaky ReLU
        input_gain: float = 10.0,   # landmark motions are 1-10 % of the crop (0.02-0.2 in [-1, 1]
                                    # units); the gain brings the MLP's input to about unit scale
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        widths = [NUM_LANDMARKS * 2] + [out_features] * layers
        self.mlp = nn.Sequential(*[m for i in range(layers)
                                   for m in (nn.Linear(widths[i], widths[i + 1]), nn.LeakyReLU(0.2))])
        self.input_gain = float(input_gain)
        self.out_features = out_features

    def represent(self, points: torch.Tensor) -> torch.Tensor:
        return points.flatten(1)

    def encode(self, difference: torch.Tensor) -> torch.Tensor:
        return self.mlp(difference * self.input_gain)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, out_features={self.out_features}, input_gain={self.input_gain:g}"


ENCODERS: dict[str, type[LandmarkEncoder]] = {
    "coords": CoordinateLandmarkEncoder,
    "raster": RasterLandmarkEncoder,
}
