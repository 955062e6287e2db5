"""An inversion encoder: aligned face crop -> W+ latent, in one forward pass (plain torch).

    E = InversionEncoder.for_generator(G)             # sized from G; w_avg and the spread of w from G
    out = E.encode(crops)                             # crops (N, 3, R, R) in [-1, 1], R = G's resolution
    out.latents     # (N, num_ws, w_dim): w_avg + scale * (base + delta_i), delta_0 = 0
    out.deltas      # (N, num_ws - 1, w_dim): the per-layer offsets from layer 0 (in w units)
    E(crops)        # = E.encode(crops).latents

The design follows the encoders of pSp (Richardson et al. 2021, "Encoding in Style") and e4e (Tov et
al. 2021, "Designing an Encoder for StyleGAN Image Manipulation"), written here from their papers:

- a convolutional pyramid of residual blocks (stride 2 each) with a small feature-pyramid top-down
  path, tapped at three scales; the coarse W+ layers read the coarsest tap, the middle ones the
  middle tap, the fine ones the finest (pSp's coarse / medium / fine split, scaled to num_ws);
- e4e's parametrisation: one base code from the coarse features, shared by every layer, plus a
  per-layer offset delta_i for layers i >= 1 (`deltas`), all relative to the generator's mean w and in
  units of the RMS spread of mapped w per coordinate (a well-conditioned output for any generator);
- e4e's progressive training: only the first `active_deltas` offsets are on (the others are exactly
  0), and the trainer switches them on one at a time, so the encoder first learns a W code and
  widens to W+ only as far as it pays; together with e4e's delta regulariser (the L2 norm of each
  delta_i, `delta_regularization`) this keeps predicted codes close to W, where edits behave.
  (e4e's latent discriminator is not used here.)

`models/inversion.py`'s optimisation refines the prediction (`stages/encoder_init.py`);
`stages/train_encoder.py` trains the encoder on the generator's own samples. Checkpoints
(`save_encoder_checkpoint`, `read_encoder_checkpoint`, `load_encoder`) are torch files read
weights-only and checked against the generator they are used with.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.training_files import check_envelope, load_checked_state
from storage.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "EncoderOutput", "InversionEncoder",
           "delta_regularization", "layer_groups", "load_encoder", "read_encoder_checkpoint",
           "save_encoder_checkpoint"]

CHECKPOINT_FORMAT = "facereenact-inversion-encoder"
CHECKPOINT_VERSION = 1


def layer_groups(num_ws: int) -> tuple[int, int]:
    """(n_coarse, n_medium): how many W+ layers read the coarse and the medium tap (the rest read the
    fine one). pSp's split of 18 layers (3 coarse, 4 medium, 11 fine) scaled to num_ws, each >= 1."""
    if num_ws < 3:
        return 1, max(0, num_ws - 1)
    coarse = max(1, round(num_ws * 3 / 18))
    medium = max(1, min(num_ws - coarse - 1, round(num_ws * 4 / 18)))
    return coarse, medium


class _ResidualDown(nn.Module):
    """conv3x3 (stride 2) - lrelu - conv3x3, plus a strided 1x1 shortcut: halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.leaky_relu(self.conv1(x), 0.2))
        return F.leaky_relu(y + self.skip(x), 0.2) * (1 / math.sqrt(2))


class _StyleHead(nn.Module):
    """One W+ layer's code from a feature map: area-pool to pool x pool, then a two-layer MLP."""

    def __init__(self, channels: int, pool: int, w_dim: int) -> None:
        super().__init__()
        self.pool = pool
        self.hidden = nn.Linear(channels * pool * pool, w_dim)
        self.out = nn.Linear(w_dim, w_dim)
        nn.init.normal_(self.out.weight, std=0.01 / math.sqrt(w_dim))  # start near w_avg
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, self.pool).flatten(1)
        return self.out(F.leaky_relu(self.hidden(x), 0.2))


@dataclass
class EncoderOutput:
    latents: torch.Tensor       # (N, num_ws, w_dim) W+ codes
    deltas: torch.Tensor        # (N, num_ws - 1, w_dim) offsets of layers 1.. from layer 0, in w units


class InversionEncoder(nn.Module):
    """CNN from aligned crops to W+ (see the module docstring). `config` holds the constructor
    arguments without the w statistics (those are buffers in the state dict)."""

    def __init__(
        self,
        img_resolution: int,                # crop resolution it takes (the generator's)
        num_ws: int,                        # W+ layers of the generator
        w_dim: int,                         # width of w
        channels: int = 32,                 # feature maps after the stem; doubled per level
        max_channels: int = 256,            # cap on feature maps per level
        fpn_channels: int = 64,             # feature maps of the three taps (top-down path)
        head_pool: int = 2,                 # each head reads its tap area-pooled to head_pool^2 cells
        input_resolution: int = 256,        # crops larger than this are area-resized to it first
        w_avg: torch.Tensor | None = None,  # (w_dim,) generator's mean w (the output's centre); 0 if None
        w_scale: float = 1.0,               # RMS per coordinate of mapped w about w_avg (the output's
                                            # unit): the projector's spread / sqrt(w_dim)
    ) -> None:
        super().__init__()
        for name, value in (("img_resolution", img_resolution), ("input_resolution", input_resolution)):
            if value < 8 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 8, got {value}")
        if num_ws < 1 or w_dim < 1 or channels < 1 or max_channels < 1 or fpn_channels < 1 or head_pool < 1:
            raise ValueError("num_ws, w_dim, channels, max_channels, fpn_channels and head_pool must be >= 1")
        if not (math.isfinite(w_scale) and w_scale > 0):
            raise ValueError(f"w_scale must be a finite number > 0, got {w_scale}")
        self.config: dict[str, Any] = dict(
            img_resolution=img_resolution, num_ws=num_ws, w_dim=w_dim, channels=channels,
            max_channels=max_channels, fpn_channels=fpn_channels, head_pool=head_pool,
            input_resolution=input_resolution)
        self.img_resolution, self.num_ws, self.w_dim = img_resolution, num_ws, w_dim
        self.input_resolution = min(img_resolution, input_resolution)

        # Pyramid: stem at the input resolution, then residual blocks down to the coarse tap.
        res = self.input_resolution
        self.tap_resolutions = (max(4, res // 16), max(4, res // 8), max(4, res // 4))  # coarse, medium, fine
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        blocks, widths, c = [], [], channels
        while res > self.tap_resolutions[0]:
            out = min(c * 2, max_channels)
            blocks.append(_ResidualDown(c, out))
            c, res = out, res // 2
            widths.append((res, c))
        self.blocks = nn.ModuleList(blocks)
        width_at = dict(widths)
        self.lateral = nn.ModuleList(nn.Conv2d(width_at[r], fpn_channels, 1) for r in self.tap_resolutions)

        n_coarse, n_medium = layer_groups(num_ws)
        self.layer_tap = [0] * n_coarse + [1] * n_medium + [2] * (num_ws - n_coarse - n_medium)
        self.heads = nn.ModuleList(_StyleHead(fpn_channels, head_pool, w_dim) for _ in range(num_ws))
        w_avg = torch.zeros(w_dim) if w_avg is None else w_avg.detach().float().reshape(-1).cpu()
        if tuple(w_avg.shape) != (w_dim,):
            raise ValueError(f"w_avg must be ({w_dim},), got {tuple(w_avg.shape)}")
        self.register_buffer("w_avg", w_avg.clone())
        self.register_buffer("w_scale", torch.tensor(float(w_scale)))
        # e4e's progressive training: offsets of layers 1..active_deltas are on. A buffer, so that a
        # checkpoint carries it.
        self.register_buffer("active_deltas", torch.tensor(num_ws - 1, dtype=torch.long))

    @classmethod
    def for_generator(cls, G: Any, w_stats: tuple[torch.Tensor, float] | None = None,
                      **options: Any) -> InversionEncoder:
        """An encoder sized for G, centred on `w_stats` = (mean w, spread as `mapped_w_stats` gives it;
        default: 10,000 mapped z with RandomState(123), as the inversion's start), on G's device."""
        from models.stylegan2 import mapped_w_stats

        mean, spread = w_stats if w_stats is not None else mapped_w_stats(G)
        model = cls(G.img_resolution, G.num_ws, G.w_dim, w_avg=mean, w_scale=spread / math.sqrt(G.w_dim),
                    **options)
        return model.to(G.w_avg.device)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> InversionEncoder:
        return cls(**config)

    def set_active_deltas(self, count: int) -> None:
        """Switch on the offsets of layers 1..count (clamped to [0, num_ws - 1])."""
        self.active_deltas.fill_(max(0, min(int(count), self.num_ws - 1)))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The three taps (coarse, medium, fine), each (N, fpn_channels, r, r)."""
        x = images
        if x.shape[-1] != self.input_resolution:
            x = F.interpolate(x, size=(self.input_resolution, self.input_resolution), mode="area")
        x = F.leaky_relu(self.stem(x), 0.2)
        taps: dict[int, torch.Tensor] = {}
        for block in self.blocks:
            x = block(x)
            taps[x.shape[-1]] = x
        coarse = self.lateral[0](taps[self.tap_resolutions[0]])
        medium = self.lateral[1](taps[self.tap_resolutions[1]])
        if medium.shape[-1] != coarse.shape[-1]:
            medium = medium + F.interpolate(coarse, size=medium.shape[-2:], mode="nearest")
        fine = self.lateral[2](taps[self.tap_resolutions[2]])
        if fine.shape[-1] != medium.shape[-1]:
            fine = fine + F.interpolate(medium, size=fine.shape[-2:], mode="nearest")
        return [coarse, medium, fine]

    def encode(self, images: torch.Tensor) -> EncoderOutput:
        """W+ codes of crops (N, 3, R, R) in [-1, 1]; ValueError for any other shape."""
        r = self.img_resolution
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, r, r) or images.shape[0] < 1:
            raise ValueError(f"InversionEncoder: images must be (N, 3, {r}, {r}) in [-1, 1], got "
                             f"{tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"InversionEncoder: images must be float in [-1, 1], got {images.dtype}")
        taps = self.features(images)
        codes = torch.stack([head(taps[self.layer_tap[i]]) for i, head in enumerate(self.heads)], dim=1)
        base, deltas = codes[:, :1], codes[:, 1:]
        on = torch.arange(1, self.num_ws, device=codes.device) <= self.active_deltas
        deltas = deltas * on[None, :, None].to(deltas.dtype)
        latents = self.w_avg + self.w_scale * torch.cat([base, base + deltas], dim=1)
        out = EncoderOutput(latents, deltas * self.w_scale)
        assert tuple(out.latents.shape) == (images.shape[0], self.num_ws, self.w_dim)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images).latents

    def check_generator(self, G: Any) -> None:
        """ValueError unless G's crops and W+ are this encoder's."""
        have = (G.img_resolution, G.num_ws, G.w_dim)
        want = (self.img_resolution, self.num_ws, self.w_dim)
        if have != want:
            raise ValueError(f"encoder is for {want[0]} px crops and W+ ({want[1]}, {want[2]}), the "
                             f"generator has {have[0]} px and ({have[1]}, {have[2]})")

    def extra_repr(self) -> str:
        n_coarse, n_medium = layer_groups(self.num_ws)
        return (f"img_resolution={self.img_resolution}, input_resolution={self.input_resolution}, "
                f"num_ws={self.num_ws}, w_dim={self.w_dim}, taps={self.tap_resolutions}, "
                f"layers coarse/medium/fine={n_coarse}/{n_medium}/{self.num_ws - n_coarse - n_medium}, "
                f"active_deltas={int(self.active_deltas)}, w_scale={float(self.w_scale):.4g}")


def delta_regularization(deltas: torch.Tensor) -> torch.Tensor:
    """e4e's delta regulariser per frame: sum over layers i >= 1 of the L2 norm |delta_i| (N,)."""
    if deltas.ndim != 3:
        raise ValueError(f"delta_regularization: deltas must be (N, num_ws - 1, w_dim), got "
                         f"{tuple(deltas.shape)}")
    return deltas.norm(dim=2).sum(dim=1)


# ---------------------------------------------------------------------------------------------------
# Checkpoints

_REQUIRED = {"model_config": dict, "model": dict, "step": int, "provenance": dict}


def save_encoder_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> Path:
    """Write `checkpoint` (format fields added) atomically: the file is complete or absent."""
    import io

    from storage.atomic import atomic_output

    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **checkpoint}, buffer)
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


def read_encoder_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], InversionEncoder]:
    """(the checkpoint dict, its encoder on the CPU), read weights-only (nothing in the file can run)
    and checked: format, fields, weights against the config, finite values. Anything else is a
    one-line CheckpointError."""
    from models.checkpoints import load_torch_weights_only

    path = Path(path)
    if not path.exists():
        raise CheckpointError("no such encoder file (train one with facereenact train-encoder)", path=path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError("empty file (0 bytes)", path=path)
    ckpt = load_torch_weights_only(path)
    check_envelope(ckpt, path, "inversion-encoder checkpoint", CHECKPOINT_FORMAT, CHECKPOINT_VERSION,
                   _REQUIRED)
    try:
        model = InversionEncoder.from_config(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"unusable encoder config ({err})", path=path) from None
    load_checked_state(model, ckpt["model"], path, "encoder weights")
    return ckpt, model


def check_encoder_generator(ckpt: dict[str, Any], model: InversionEncoder, G: Any,
                            path: str | os.PathLike[str]) -> None:
    """CheckpointError unless the encoder was trained for G (same crops, W+ and weights sha256)."""
    try:
        model.check_generator(G)
    except ValueError as err:
        raise CheckpointError(str(err), path=path) from None
    want = (ckpt["provenance"].get("generator") or {}).get("weights_sha256")
    if want != G.weights_sha256():
        raise CheckpointError(f"encoder was trained for another generator (weights sha256 "
                              f"{str(want)[:12]}..., this one {G.weights_sha256()[:12]}...); train one for "
                              "it with facereenact train-encoder", path=path)


def load_encoder(path: str | os.PathLike[str], G: Any, device: str | torch.device | None = None
                 ) -> InversionEncoder:
    """The encoder of a checkpoint, checked against G, in eval mode with requires_grad off, on
    `device` (default G's). `.provenance` holds the checkpoint's record."""
    ckpt, model = read_encoder_checkpoint(path)
    check_encoder_generator(ckpt, model, G, path)
    model.provenance = ckpt["provenance"]
    device = device if device is not None else G.w_avg.device
    return model.to(device).eval().requires_grad_(False)
