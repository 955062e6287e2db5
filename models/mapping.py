"""Landmark-to-latent mapping network (seed 003, section 3.3): landmark motion -> a W+ offset.

    net = LandmarkMappingNetwork(num_ws=G.num_ws, w_dim=G.w_dim)          # "coords" (the default)
    delta = net(src_points, drv_points, crop_resolution)                 # (N, num_ws, w_dim)
    w = w_src + delta                                                     # reenacted latent

Landmarks are 68 iBUG points in aligned-crop pixels (the crops table's `crop_landmarks`; pixel centres
at integers, so a crop of R px spans -0.5 .. R - 0.5). They are normalised to [-1, 1] crop
coordinates first, so one trained network serves any crop resolution.

The input is the difference between the driving and the source landmark *representation*, behind
one small interface (`LandmarkEncoder`: `represent(points)` and `encode(difference)`), with two
implementations:
- "raster" (`RasterLandmarkEncoder`): seed 003's choice. Each of the 9 iBUG groups is drawn as an
  anti-aliased polyline (Gaussian pen) into its own channel of a small image (64 x 64 by default);
  the source's image is subtracted from the driving one's and a CNN (conv pairs + 2x average pooling
  down to 4 x 4, then a fully connected layer) encodes it. The drawing is differentiable in the
  points, though training does not need that.
- "coords" (`CoordinateLandmarkEncoder`): the 136 normalised coordinates' difference, through an MLP.
The default ("coords") was chosen by measurement on the synthetic task (docs/mapping.md): in the same
500 steps its held-out error is 26x below the zero-offset baseline against 9x for the 64 px raster
(11x at 32 px), and it trains 15x faster than the 64 px raster on a CPU core.

A shared head maps the encoder's features to the offset of the first `num_delta_ws` rows of W+ (all by
default; the rest stay 0). Its last layer starts at zero, so an untrained network predicts no motion
(the zero-offset baseline) rather than noise, and with `zero_at_rest` the output for identical source
and driving landmarks is exactly zero (the network returns f(d) - f(0)).

Training (`MappingTrainer`): MSE between w_src + delta and w_drv, times seed 003's weight 10, optionally
plus an image-space loss through the generator; Adam; checkpoints that resume bitwise. Reenactment:
`reenact_with_mapping`. docs/mapping.md has the details and measured numbers.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from models.landmarks.base import IBUG_GROUPS, NUM_LANDMARKS
from models.stylegan2 import Generator
from storage.errors import CheckpointError

__all__ = [
    "CHECKPOINT_FORMAT",
    "ENCODERS",
    "CoordinateLandmarkEncoder",
    "LandmarkEncoder",
    "LandmarkMappingNetwork",
    "LandmarkRasterizer",
    "MappingBatch",
    "MappingClip",
    "MappingTrainConfig",
    "MappingTrainer",
    "PairSampler",
    "RasterLandmarkEncoder",
    "evaluate_mapping",
    "load_mapping_network",
    "normalize_landmarks",
    "read_mapping_checkpoint",
    "reenact_with_mapping",
]

CHECKPOINT_FORMAT = "facereenact.mapping"
CHECKPOINT_VERSION = 1

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

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv1(self.act(self.conv0(x)))))


class RasterLandmarkEncoder(LandmarkEncoder):
    """Seed 003's input: rasterised landmark images, their difference through a CNN."""

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


# ---------------------------------------------------------------------------------------------------
# The mapping network


class LandmarkMappingNetwork(nn.Module):
    """(source, driving) landmarks in crop pixels -> delta w (N, num_ws, w_dim); w = w_src + delta.

    `net.config` holds the constructor arguments (what a checkpoint stores); the initial weights are a
    function of them alone (`init_seed`), whatever the caller's random state.
    """

    def __init__(
        self,
        num_ws: int,                        # rows of W+ of the generator the latents belong to
        w_dim: int,                         # width of w
        representation: str = "coords",     # "coords" or "raster" (see ENCODERS)
        hidden_features: int = 512,         # width of the encoder's output and the head's hidden layer
        num_delta_ws: int | None = None,    # predict offsets for the first N rows of W+ only (the
                                            # coarse layers carry pose and expression); None = all
        zero_at_rest: bool = True,          # subtract the output for a zero difference, so identical
                                            # landmarks give exactly delta = 0
        init_seed: int = 0,                 # seed of the initial weights
        encoder_options: dict[str, Any] | None = None,  # extra constructor arguments of the encoder
                                            # (raster: size, sigma, channels, max_channels;
                                            # coords: layers, input_gain)
    ) -> None:
        super().__init__()
        if representation not in ENCODERS:
            raise ValueError(f"representation must be one of {', '.join(ENCODERS)}, got {representation!r}")
        num_delta_ws = num_ws if num_delta_ws is None else int(num_delta_ws)
        if not 1 <= num_delta_ws <= num_ws:
            raise ValueError(f"num_delta_ws must be in 1..{num_ws}, got {num_delta_ws}")
        encoder_options = dict(encoder_options or {})
        self.config: dict[str, Any] = dict(
            num_ws=num_ws, w_dim=w_dim, representation=representation, hidden_features=hidden_features,
            num_delta_ws=num_delta_ws, zero_at_rest=zero_at_rest, init_seed=init_seed,
            encoder_options=encoder_options)
        self.num_ws, self.w_dim, self.num_delta_ws = num_ws, w_dim, num_delta_ws
        self.representation, self.zero_at_rest = representation, zero_at_rest
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.encoder = ENCODERS[representation](out_features=hidden_features, **encoder_options)
            self.hidden = nn.Linear(hidden_features, hidden_features)
            self.act = nn.LeakyReLU(0.2)
            self.out = nn.Linear(hidden_features, num_delta_ws * w_dim)
        with torch.no_grad():  # start at the zero-offset baseline (see the module docstring)
            self.out.weight.zero_()
            self.out.bias.zero_()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LandmarkMappingNetwork:
        return cls(**config)

    def forward(
        self,
        src_landmarks: torch.Tensor,        # (N, 68, 2) source landmarks, aligned-crop pixels
        drv_landmarks: torch.Tensor,        # (N, 68, 2) driving landmarks, aligned-crop pixels
        crop_resolution: int | float,       # side of the crops those pixels belong to
    ) -> torch.Tensor:
        src = check_landmarks(src_landmarks, "mapping: src_landmarks")
        drv = check_landmarks(drv_landmarks, "mapping: drv_landmarks", src.shape[0])
        device = self.out.weight.device
        src = normalize_landmarks(src.to(device, torch.float32), crop_resolution)
        drv = normalize_landmarks(drv.to(device, torch.float32), crop_resolution)
        return self.delta_from_normalized(src, drv)

    def delta_from_normalized(self, src: torch.Tensor, drv: torch.Tensor) -> torch.Tensor:
        """forward() on normalised [-1, 1] crop coordinates."""
        n = src.shape[0]
        difference = self.encoder.represent(drv) - self.encoder.represent(src)
        if self.zero_at_rest:  # one extra row: the features of "no motion"
            difference = torch.cat([difference, torch.zeros_like(difference[:1])])
        delta = self.out(self.act(self.hidden(self.encoder.encode(difference))))
        if self.zero_at_rest:
            # f(d) - f(0); rows without any motion are set to 0 outright (the batched matmuls would
            # leave ~1e-8 of rounding where exactly 0 is meant)
            moving = difference[:n].flatten(1).any(dim=1)
            delta = torch.where(moving[:, None], delta[:n] - delta[n:], 0.0)
        delta = delta.reshape(n, self.num_delta_ws, self.w_dim)
        if self.num_delta_ws < self.num_ws:
            delta = torch.cat([delta, delta.new_zeros(n, self.num_ws - self.num_delta_ws, self.w_dim)], dim=1)
        return delta

    def check_generator(self, G: Generator) -> None:
        if (G.num_ws, G.w_dim) != (self.num_ws, self.w_dim):
            raise ValueError(f"mapping network is for W+ ({self.num_ws}, {self.w_dim}), the generator's is "
                             f"({G.num_ws}, {G.w_dim})")

    def extra_repr(self) -> str:
        return (f"representation={self.representation!r}, num_ws={self.num_ws}, w_dim={self.w_dim}, "
                f"num_delta_ws={self.num_delta_ws}, zero_at_rest={self.zero_at_rest}")


# ---------------------------------------------------------------------------------------------------
# Training data


@dataclass
class MappingBatch:
    """Training pairs: the same person's source and driving frames, their landmarks and latents."""

    src_landmarks: torch.Tensor         # (N, 68, 2) aligned-crop pixels
    drv_landmarks: torch.Tensor         # (N, 68, 2)
    w_src: torch.Tensor                 # (N, num_ws, w_dim)
    w_drv: torch.Tensor                 # (N, num_ws, w_dim)
    crop_resolution: int                # side of the crops the landmarks are in

    def __post_init__(self) -> None:
        self.src_landmarks = check_landmarks(self.src_landmarks, "batch: src_landmarks")
        n = self.src_landmarks.shape[0]
        self.drv_landmarks = check_landmarks(self.drv_landmarks, "batch: drv_landmarks", n)
        if self.w_src.ndim != 3 or self.w_src.shape[0] != n:
            raise ValueError(f"batch: w_src must be ({n}, num_ws, w_dim), got {tuple(self.w_src.shape)}")
        if self.w_drv.shape != self.w_src.shape:
            raise ValueError(f"batch: w_drv {tuple(self.w_drv.shape)} != w_src {tuple(self.w_src.shape)}")

    def __len__(self) -> int:
        return self.src_landmarks.shape[0]

    def to(self, device: str | torch.device) -> MappingBatch:
        return MappingBatch(*(t.to(device, torch.float32) for t in (
            self.src_landmarks, self.drv_landmarks, self.w_src, self.w_drv)), self.crop_resolution)


@dataclass
class MappingClip:
    """One video's frames for training: landmarks and latents in frame order (numpy arrays, torch
    tensors, or anything indexable by a frame number, e.g. zarr arrays: frames are read on demand).

    A frame is usable when `valid` says so (the caller's: done in both the crops and the latents
    table) and, always, when its landmarks and latent are finite. Pairs are (source, driving) frames
    of this clip: source `source_index` (seed 003: one representative frontal, closed-mouth frame per
    person) or, when None, any usable frame.
    """

    landmarks: Any                      # (T, 68, 2) aligned-crop pixels
    latents: Any                        # (T, num_ws, w_dim)
    crop_resolution: int
    source_index: int | None = None
    valid: Any = None                   # (T,) bool, or None = all frames
    name: str = ""                      # for error messages


class PairSampler:
    """Random (source, driving) pairs from clips, deterministic given its seed; its state (a
    torch.Generator's) goes into the trainer's checkpoint so a resumed run draws the same pairs."""

    def __init__(self, clips: Sequence[MappingClip], seed: int = 0) -> None:
        if not clips:
            raise ValueError("PairSampler: no clips")
        resolutions = {int(c.crop_resolution) for c in clips}
        if len(resolutions) != 1:
            raise ValueError(f"PairSampler: clips have different crop resolutions {sorted(resolutions)}")
        self.crop_resolution = resolutions.pop()
        self.clips = list(clips)
        self.usable: list[np.ndarray] = []      # per clip: usable frame indices
        for clip in self.clips:
            self.usable.append(self._usable_frames(clip))
        if self.source_frames_missing():
            raise ValueError(f"PairSampler: source frame not usable in {self.source_frames_missing()}")
        counts = np.array([len(u) for u in self.usable])
        if counts.sum() == 0:
            raise ValueError("PairSampler: no usable frames (no finite landmarks and latents)")
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.generator = torch.Generator().manual_seed(int(seed))
        first = next(i for i, u in enumerate(self.usable) if len(u))
        self.num_ws, self.w_dim = np.asarray(self.clips[first].latents[int(self.usable[first][0])]).shape

    @staticmethod
    def _usable_frames(clip: MappingClip) -> np.ndarray:
        points = np.asarray(clip.landmarks[:], dtype=np.float32)
        latents = clip.latents
        if points.ndim != 3 or points.shape[1:] != (NUM_LANDMARKS, 2):
            raise ValueError(f"clip {clip.name!r}: landmarks must be (T, 68, 2), got {points.shape}")
        if len(latents) != len(points):
            raise ValueError(f"clip {clip.name!r}: {len(points)} landmark frames, {len(latents)} latents")
        ok = np.isfinite(points).all(axis=(1, 2))
        if clip.valid is not None:
            valid = np.asarray(clip.valid, dtype=bool)
            if valid.shape != ok.shape:
                raise ValueError(f"clip {clip.name!r}: valid has shape {valid.shape}, expected {ok.shape}")
            ok &= valid
        frames = np.flatnonzero(ok)
        if isinstance(latents, (np.ndarray, torch.Tensor)):  # in memory: one vectorised check
            finite = np.isfinite(np.asarray(latents[frames])).reshape(len(frames), -1).all(axis=1)
        else:  # e.g. a zarr array: read the candidate frames one by one
            finite = np.array([bool(np.isfinite(np.asarray(latents[int(i)])).all()) for i in frames],
                              dtype=bool)
        return frames[finite] if len(frames) else frames

    def source_frames_missing(self) -> list[str]:
        return [c.name or str(i) for i, c in enumerate(self.clips)
                if c.source_index is not None and c.source_index not in set(self.usable[i].tolist())]

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    def sample(self, batch_size: int) -> MappingBatch:
        """`batch_size` pairs: driving frames uniform over all usable frames, each with its clip's
        source frame (or a uniform usable frame of the same clip)."""
        drv_global = torch.randint(self.num_frames, (batch_size,), generator=self.generator).numpy()
        src_u = torch.rand(batch_size, generator=self.generator, dtype=torch.float64).numpy()
        clip_ids = np.searchsorted(self.offsets, drv_global, side="right") - 1
        src_pts, drv_pts, w_src, w_drv = [], [], [], []
        for k, (c, g) in enumerate(zip(clip_ids, drv_global, strict=True)):
            clip, usable = self.clips[c], self.usable[c]
            d = int(usable[g - self.offsets[c]])
            s = (clip.source_index if clip.source_index is not None
                 else int(usable[int(src_u[k] * len(usable))]))
            src_pts.append(np.asarray(clip.landmarks[s], dtype=np.float32))
            drv_pts.append(np.asarray(clip.landmarks[d], dtype=np.float32))
            w_src.append(np.asarray(clip.latents[s], dtype=np.float32))
            w_drv.append(np.asarray(clip.latents[d], dtype=np.float32))
        return MappingBatch(*(torch.from_numpy(np.stack(a)) for a in (src_pts, drv_pts, w_src, w_drv)),
                            self.crop_resolution)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "num_frames": self.num_frames}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_frames"]) != self.num_frames:
            raise ValueError(f"sampler state is for {int(state['num_frames'])} usable frames, these clips "
                             f"have {self.num_frames}")
        self.generator.set_state(state["generator"])


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class MappingTrainConfig:
    """Settings of a training run; all of them go into the checkpoint."""

    learning_rate: float = 1e-3         # Adam. Seed 003 used 2e-4 (over ~113k steps); on the synthetic
                                        # task 1e-3 gets 26x below the baseline in 500 steps, 2e-4 9x
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8              # torch's default. Seed 003 used 1e-4: on the synthetic task that
                                        # stalls the raster encoder at the baseline for 300+ steps (its
                                        # gradients are below 1e-4); docs/mapping.md
    batch_size: int = 32                # pairs per step (seed 003)
    lambda_mse: float = 10.0            # weight of the latent MSE (seed 003, eq. 3.7)
    lambda_image: float = 0.0           # weight of the image-space loss through G (off by default)
    image_loss: str = "mse"             # "mse", or a models.losses.PERCEPTUAL_CHOICES key (LPIPS)
    seed: int = 0                       # seed of the pair sampler

    def __post_init__(self) -> None:
        from models.losses import PERCEPTUAL_CHOICES

        for name in ("learning_rate", "adam_eps"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("lambda_mse", "lambda_image"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.lambda_mse == 0 and self.lambda_image == 0:
            raise ValueError("lambda_mse and lambda_image are both 0: nothing to train")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.image_loss != "mse" and self.image_loss not in PERCEPTUAL_CHOICES:
            raise ValueError(f"image_loss must be 'mse' or one of {', '.join(PERCEPTUAL_CHOICES)}, "
                             f"got {self.image_loss!r}")
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))

    def replace(self, **changes: Any) -> MappingTrainConfig:
        return dataclasses.replace(self, **changes)


HISTORY_FIELDS = ("step", "loss", "mse", "baseline_mse", "image")


class MappingTrainer:
    """Adam on a LandmarkMappingNetwork from batches of pairs; checkpoints resume bitwise.

        trainer = MappingTrainer(net, MappingTrainConfig(), sampler=PairSampler(clips),
                                 provenance=latents_provenance, generator=G)
        trainer.train(steps=1000)            # draws config.batch_size pairs per step from the sampler
        trainer.save("mapping.pt")           # atomic; model, Adam, step, RNG states, history, provenance
        trainer = MappingTrainer.resume("mapping.pt", sampler=PairSampler(clips), generator=G)

    The sampler is re-seeded with `config.seed` at construction, so a run is a function of the model's
    config, the training config and the clips. `train_step(batch)` takes batches from elsewhere.
    Per step, `history` records the total loss, the latent MSE, the zero-offset baseline's MSE on the
    same batch (how much motion there was to predict) and the image loss (NaN when off).
    """

    def __init__(
        self,
        model: LandmarkMappingNetwork,
        config: MappingTrainConfig | None = None,
        *,
        sampler: PairSampler | None = None,     # where train() draws its pairs
        generator: Generator | None = None,     # needed for the image loss; its fingerprint is recorded
        provenance: dict[str, Any] | None = None,  # the provenance of the latents trained from
    ) -> None:
        self.model = model
        self.config = config if config is not None else MappingTrainConfig()
        self.device = model.out.weight.device
        self.sampler = sampler
        if sampler is not None:
            self._check_sampler(sampler)
            sampler.generator.manual_seed(self.config.seed)
        self.generator = generator
        if generator is not None:
            model.check_generator(generator)
        if self.config.lambda_image > 0 and generator is None:
            raise ValueError("lambda_image > 0 needs the generator (generator=G)")
        self.latents_provenance = dict(provenance or {})
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.config.learning_rate,
                                          betas=self.config.adam_betas, eps=self.config.adam_eps)
        self.step = 0
        self.history: dict[str, list[float]] = {name: [] for name in HISTORY_FIELDS}
        self._perceptual = None
        if self.config.lambda_image > 0 and self.config.image_loss != "mse":
            from models.losses import PerceptualLoss

            self._perceptual = PerceptualLoss.from_choice(self.config.image_loss).to(self.device)

    def _check_sampler(self, sampler: PairSampler) -> None:
        if (sampler.num_ws, sampler.w_dim) != (self.model.num_ws, self.model.w_dim):
            raise ValueError(f"clips hold ({sampler.num_ws}, {sampler.w_dim}) latents, the network is for "
                             f"({self.model.num_ws}, {self.model.w_dim})")

    # -- steps --------------------------------------------------------------------------------------

    def losses(self, batch: MappingBatch) -> dict[str, torch.Tensor]:
        """The loss terms of a batch (with gradients to the model): total, mse, baseline_mse, image."""
        batch = batch.to(self.device)
        if tuple(batch.w_src.shape[1:]) != (self.model.num_ws, self.model.w_dim):
            raise ValueError(f"batch latents are {tuple(batch.w_src.shape[1:])}, the network is for "
                             f"({self.model.num_ws}, {self.model.w_dim})")
        c = self.config
        delta = self.model(batch.src_landmarks, batch.drv_landmarks, batch.crop_resolution)
        w = batch.w_src + delta
        terms = {"mse": (w - batch.w_drv).square().mean(),                       # seed 003, eq. 3.6
                 "baseline_mse": (batch.w_src - batch.w_drv).square().mean().detach()}
        total = c.lambda_mse * terms["mse"]
        if c.lambda_image > 0:
            G = self.generator
            images = G.synthesis(w, noise_mode="const")
            with torch.no_grad():
                targets = G.synthesis(batch.w_drv, noise_mode="const")
            if self._perceptual is None:
                terms["image"] = (images - targets).square().mean()
            else:
                terms["image"] = self._perceptual(images, targets).mean()
            total = total + c.lambda_image * terms["image"]
        terms["total"] = total
        return terms

    def train_step(self, batch: MappingBatch) -> dict[str, float]:
        """One Adam step on `batch`; returns its loss terms. A non-finite loss raises before the step
        (the model stays as it was)."""
        self.model.train()
        terms = self.losses(batch)
        if not bool(torch.isfinite(terms["total"])):
            raise FloatingPointError(f"mapping training: loss became {float(terms['total'])} at step "
                                     f"{self.step} (lower learning_rate, or check the latents)")
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        self.step += 1
        values = {name: float(t.detach()) for name, t in terms.items()}
        record = {"step": float(self.step), "loss": values["total"], "mse": values["mse"],
                  "baseline_mse": values["baseline_mse"], "image": values.get("image", float("nan"))}
        for name in HISTORY_FIELDS:
            self.history[name].append(record[name])
        return record

    def train(
        self,
        steps: int,
        batches: Iterable[MappingBatch] | None = None,   # None: draw from the sampler
        callback: Callable[[dict[str, float]], None] | None = None,  # after every step
    ) -> dict[str, float] | None:
        """Run `steps` steps; returns the last step's record (None for 0 steps)."""
        if batches is None:
            if self.sampler is None:
                raise ValueError("train: no batches and no sampler")
            batches = (self.sampler.sample(self.config.batch_size) for _ in range(steps))
        record = None
        for _, batch in zip(range(steps), batches, strict=False):
            record = self.train_step(batch)
            if callback is not None:
                callback(record)
        return record

    # -- checkpoints --------------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        from storage.provenance import base_provenance, code_version

        record = base_provenance("mapping")
        record["latents"] = self.latents_provenance
        if self.generator is not None:
            record["generator"] = self.generator.fingerprint()
        else:  # the latents' own record of the generator they were inverted with, if any
            record["generator"] = self.latents_provenance.get("generator")
        record["code_version"] = code_version()
        record["model"] = self.model.config
        record["training"] = dataclasses.asdict(self.config)
        if self._perceptual is not None:
            record["image_loss"] = self._perceptual.provenance()
        return record

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint as a dict of tensors and plain values (what `save` writes)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.sampler is not None:
            rng["sampler"] = self.sampler.state_dict()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model_config": self.model.config,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "step": self.step,
            "rng": rng,
            "train_config": dataclasses.asdict(self.config),
            "history": {name: torch.tensor(values, dtype=torch.float64)
                        for name, values in self.history.items()},
            "provenance": self.provenance(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the checkpoint atomically (complete or absent; storage.atomic)."""
        import io

        from storage.atomic import atomic_output

        buffer = io.BytesIO()
        torch.save(self.checkpoint(), buffer)
        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        return path

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        *,
        sampler: PairSampler | None = None,
        generator: Generator | None = None,
        provenance: dict[str, Any] | None = None,   # the latents' provenance now; must match the
                                                    # checkpoint's when given
        device: str | torch.device = "cpu",
    ) -> MappingTrainer:
        """A trainer in the state `save` left: the next steps are the ones an uninterrupted run takes."""
        ckpt, model = _read_checkpoint(path)
        model = model.to(device)
        try:
            config = MappingTrainConfig(**ckpt["train_config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"unusable training settings ({err})", path=path) from None
        recorded = ckpt["provenance"].get("latents", {})
        if provenance is not None:
            from storage.provenance import provenance_key

            if provenance_key(provenance) != provenance_key(recorded):
                raise CheckpointError(f"checkpoint was trained from other latents (provenance "
                                      f"{provenance_key(recorded)}, these are {provenance_key(provenance)}); "
                                      "start a new checkpoint for them", path=path)
        _check_generator_fingerprint(ckpt, generator, path)
        trainer = cls(model, config, sampler=None, generator=generator, provenance=recorded)
        try:
            trainer.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"optimizer state does not fit the model ({err})", path=path) from None
        trainer.step = int(ckpt["step"])
        trainer.history = {name: [float(v) for v in ckpt["history"].get(name, torch.zeros(0)).tolist()]
                           for name in HISTORY_FIELDS}
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if sampler is not None:
            trainer._check_sampler(sampler)
            if "sampler" not in rng:
                raise CheckpointError("checkpoint has no sampler state (it was trained from batches "
                                      "given to train_step)", path=path)
            try:
                sampler.load_state_dict(rng["sampler"])
            except (ValueError, KeyError, RuntimeError, TypeError) as err:
                raise CheckpointError(f"sampler state does not fit these clips ({err})", path=path) from None
            trainer.sampler = sampler
        return trainer

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw the loss curves (latent MSE and the zero-offset baseline) into a PNG."""
        return plot_history(self.history, path)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def plot_history(history: dict[str, Sequence[float]], path: str | os.PathLike[str]) -> Path:
    """Loss curves of a trainer's (or a checkpoint's) history as a PNG (log scale)."""
    from storage.plots import plot_curves

    steps = [float(s) for s in history["step"]]
    curves = {"latent MSE": history["mse"], "zero-offset baseline": history["baseline_mse"]}
    if any(math.isfinite(float(v)) for v in history.get("image", [])):
        curves["image loss"] = history["image"]
    return plot_curves(steps, {k: [float(v) for v in vals] for k, vals in curves.items()}, path,
                       title="mapping network training", xlabel="step", log_y=True)


# ---------------------------------------------------------------------------------------------------
# Checkpoint reading


_REQUIRED = {"model_config": dict, "model": dict, "optimizer": dict, "step": int, "rng": dict,
             "train_config": dict, "history": dict, "provenance": dict}


def read_mapping_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict, read with torch.load(weights_only=True) (nothing in the file can run) and
    checked (format, fields, model weights against the model config); anything else is a one-line
    CheckpointError."""
    return _read_checkpoint(path)[0]


def _read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], LandmarkMappingNetwork]:
    from models.checkpoints import load_torch_weights_only

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError("empty file (0 bytes)", path=path)
    ckpt = load_torch_weights_only(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"not a mapping-network checkpoint (format {found!r}, expected "
                              f"{CHECKPOINT_FORMAT!r})", path=path)
    if ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"mapping checkpoint version {ckpt.get('format_version')!r} is not supported "
                              f"(this build reads {CHECKPOINT_VERSION})", path=path)
    for key, kind in _REQUIRED.items():
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"mapping checkpoint lacks {key!r} (or it is not a {kind.__name__})",
                                  path=path)
    return ckpt, _model_from_checkpoint(ckpt, path)


def _model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> LandmarkMappingNetwork:
    try:
        model = LandmarkMappingNetwork.from_config(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"unusable model config ({err})", path=path) from None
    state = ckpt["model"]
    expected = model.state_dict()
    bad = [k for k, v in expected.items()
           if not isinstance(state.get(k), torch.Tensor) or tuple(state[k].shape) != tuple(v.shape)]
    unexpected = sorted(set(state) - set(expected))
    if bad or unexpected:
        raise CheckpointError(f"model weights do not match its config (missing or misshapen: {bad[:3]}, "
                              f"unexpected: {unexpected[:3]})", path=path)
    if not all(bool(torch.isfinite(v).all()) for v in state.values()):
        raise CheckpointError("model weights contain NaN or infinite values", path=path)
    model.load_state_dict(state)
    return model


def _check_generator_fingerprint(ckpt: dict[str, Any], G: Generator | None,
                                 path: str | os.PathLike[str]) -> None:
    if G is None:
        return
    recorded = ckpt["provenance"].get("generator") or {}
    config = ckpt["model_config"]
    if (G.num_ws, G.w_dim) != (config.get("num_ws"), config.get("w_dim")):
        raise CheckpointError(f"mapping network is for W+ ({config.get('num_ws')}, {config.get('w_dim')}), "
                              f"the generator's is ({G.num_ws}, {G.w_dim})", path=path)
    want = recorded.get("weights_sha256") if isinstance(recorded, dict) else None
    if want and want != G.weights_sha256():
        raise CheckpointError(f"mapping network was trained on latents of another generator (weights "
                              f"sha256 {want[:12]}..., this one {G.weights_sha256()[:12]}...)", path=path)


def load_mapping_network(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    generator: Generator | None = None,     # when given: must be the generator it was trained for
) -> LandmarkMappingNetwork:
    """The trained network of a checkpoint, in eval mode with requires_grad off."""
    ckpt, model = _read_checkpoint(path)
    _check_generator_fingerprint(ckpt, generator, path)
    model.provenance = ckpt["provenance"]
    return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------
# Evaluation and reenactment


@torch.no_grad()
def evaluate_mapping(model: LandmarkMappingNetwork, batches: Iterable[MappingBatch]) -> dict[str, float]:
    """Latent MSE of w_src + delta against w_drv over held-out batches, beside the zero-offset
    baseline's (w_src against w_drv): `ratio` = baseline / model (> 1: better than predicting no
    motion)."""
    was_training = model.training
    model.eval()
    device = model.out.weight.device
    sq_model = sq_base = 0.0
    count = 0
    for batch in batches:
        batch = batch.to(device)
        delta = model(batch.src_landmarks, batch.drv_landmarks, batch.crop_resolution)
        sq_model += float((batch.w_src + delta - batch.w_drv).square().sum())
        sq_base += float((batch.w_src - batch.w_drv).square().sum())
        count += batch.w_src.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_mapping: no batches")
    mse, base = sq_model / count, sq_base / count
    return {"mse": mse, "baseline_mse": base, "ratio": base / mse if mse > 0 else float("inf")}


@torch.no_grad()
def reenact_with_mapping(
    G: Generator,
    model: LandmarkMappingNetwork,
    w_src: torch.Tensor,                    # (num_ws, w_dim) or (1, num_ws, w_dim): the source's latent
    src_landmarks: torch.Tensor,            # (68, 2) or (1, 68, 2): the source's crop landmarks
    driving_landmarks: torch.Tensor,        # (T, 68, 2): the driving frames' crop landmarks
    batch_size: int = 8,                    # frames per network + generator pass
    *,
    crop_resolution: int | None = None,     # side of the landmarks' crops; None = G.img_resolution
    on_images: Callable[[int, torch.Tensor], None] | None = None,  # gets (first frame, images
                                            # (B, 3, R, R) in [-1, 1] on G's device) per batch; None
                                            # = no generator pass (latents only)
    noise: list[torch.Tensor] | None = None,  # the source's noise maps ((1, 1, r, r) per noise layer,
                                            # e.g. from its inversion); None = noise_mode "const"
) -> torch.Tensor:
    """Reenacted latents (T, num_ws, w_dim) on the CPU: w_t = w_src + model(src, driving_t).

    One mapping pass and (with `on_images`) one generator pass per frame, `batch_size` frames at a
    time; nothing is kept but the latents, so a long video streams through `on_images`.
    """
    model.check_generator(G)
    device = G.w_avg.device
    w_src = w_src.reshape(-1, *w_src.shape[-2:]) if w_src.ndim == 3 else w_src[None]
    if tuple(w_src.shape) != (1, G.num_ws, G.w_dim):
        raise ValueError(f"reenact: w_src must be ({G.num_ws}, {G.w_dim}), got {tuple(w_src.shape)}")
    src = check_landmarks(src_landmarks[None] if src_landmarks.ndim == 2 else src_landmarks,
                          "reenact: src_landmarks", 1)
    drv = check_landmarks(driving_landmarks, "reenact: driving_landmarks")
    if batch_size < 1:
        raise ValueError(f"reenact: batch_size must be >= 1, got {batch_size}")
    for name, t in (("w_src", w_src), ("src_landmarks", src)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"reenact: {name} has non-finite values")
    bad = torch.nonzero(~torch.isfinite(drv).flatten(1).all(dim=1)).flatten().tolist()
    if bad:
        raise ValueError(f"reenact: driving landmarks of {len(bad)} frames are not finite (first: {bad[:5]})")
    if noise is not None:
        noise = [n.to(device, torch.float32) for n in noise]
    resolution = G.img_resolution if crop_resolution is None else crop_resolution
    was_training = model.training
    model.eval()
    w_src = w_src.to(device, torch.float32)
    src = src.to(device, torch.float32)
    out = []
    try:
        for start in range(0, drv.shape[0], batch_size):
            d = drv[start:start + batch_size].to(device, torch.float32)
            ws = w_src + model(src.expand(d.shape[0], -1, -1), d, resolution)
            if on_images is not None:
                maps = None if noise is None else [n.expand(d.shape[0], -1, -1, -1) for n in noise]
                on_images(start, G.synthesis(ws, noise_mode="const", noise=maps))
            out.append(ws.cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, G.num_ws, G.w_dim)
    return torch.cat(out)
