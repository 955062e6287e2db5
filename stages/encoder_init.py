"""Encoder-initialised inversion: the encoder's W+ prediction, then K steps of the usual objective.

    config = encoder_config(InversionConfig(steps=50), "encoder.pt", G)   # checks the file against G
    init = encoder_start(G, targets, config)       # (N, num_ws, w_dim), or None for a plain config
    result = invert(G, targets, config, init=init, ...)

`EncoderInversionConfig` is an `InversionConfig` with the encoder's file and sha256 added, and the
refinement's own defaults (160 steps, the first 5/8 of them pixel-only, no w noise, noise maps
starting at G's noise_const: see docs/inversion.md). Its provenance records the encoder's sha256
(not its path) under "settings" and "init", so latents refined from an encoder never share a cache
key with w_avg-started ones, nor with another encoder's. `settings_of(config)` /
`config_from_settings` carry it across process boundaries as plain data (the "encoder_sha256" key
selects this class).

The tasks call `encoder_start` in the worker: the encoder is loaded once per (file, sha256, device),
and a file whose content is not the one the job was started with is refused (CheckpointError), so a
worker can never refine from another encoder than the one in the table's provenance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from models.encoder import InversionEncoder, load_encoder
from models.inversion import InversionConfig
from models.stylegan2 import Generator
from storage.errors import CheckpointError

__all__ = ["EncoderInversionConfig", "config_class", "encoder_config", "encoder_start", "load_checked"]

PREDICT_BATCH = 32  # crops per encoder forward pass


@dataclass(frozen=True)
class EncoderInversionConfig(InversionConfig):
    """InversionConfig for a refinement from the encoder's prediction. `steps` may be 0 (the
    prediction as it is)."""

    steps: int = 160                    # refinement steps (bench_invert.py's trade-off table), the
    pixel_warmup: float = 0.625         # first 5/8 of them (100 of 160) on MSE and the regularisers
                                        # only (tiny generator: 0.99x the 1000-step reference's loss in
                                        # 13.7x fewer CPU seconds; 100 full steps: 1.04x in 9.9x)
    initial_noise_factor: float = 0.0   # no w noise: the prediction is near the optimum already (tiny
                                        # generator, 100 steps: loss 0.037 without, 0.040 with 0.05)
    noise_start: str = "const"          # noise maps start at G's noise_const, which the encoder's
                                        # training renders used (100 steps: 1.04x the 1000-step
                                        # reference's loss, 1.07x from random maps; docs/inversion.md)
    encoder_path: str = ""              # the encoder checkpoint (where to load it; not in provenance)
    encoder_sha256: str = ""            # sha256 of that file (in provenance)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.encoder_path or len(self.encoder_sha256) != 64:
            raise ValueError("an encoder-initialised inversion needs the encoder's path and sha256")

    def provenance(self) -> dict:
        record = super().provenance()
        record["settings"].pop("encoder_path")
        record["init"] = {"kind": "encoder", "encoder_sha256": self.encoder_sha256}
        return record


def config_class(settings: Mapping[str, Any]) -> type[InversionConfig]:
    """The config class of settings as plain data: EncoderInversionConfig when they name an encoder."""
    return EncoderInversionConfig if settings.get("encoder_sha256") else InversionConfig


def encoder_config(config: InversionConfig, encoder: str | Path | None, G: Generator,
                   steps: int | None = None) -> InversionConfig:
    """`config` turned into an EncoderInversionConfig for the encoder file at `encoder` (None: `config`
    unchanged), after checking the file against G: one-line CheckpointError for a missing, broken or
    foreign file. Settings given explicitly in `config` (those that differ from InversionConfig's
    defaults) are kept; the others take the refinement defaults. `steps`, when given, are the
    refinement's steps whatever they are (a request's resolved steps, even InversionConfig's 1000)."""
    if encoder is None:
        return config
    from storage.provenance import sha256_file

    path = Path(encoder).expanduser().resolve()
    load_checked(str(path), "", str(G.w_avg.device), G)
    defaults = InversionConfig()
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(InversionConfig)
              if getattr(config, f.name) != getattr(defaults, f.name)}
    if steps is not None:
        fields["steps"] = steps
    return EncoderInversionConfig(**fields, encoder_path=str(path), encoder_sha256=sha256_file(path))


def load_checked(path: str, sha256: str, device: str, G: Generator) -> InversionEncoder:
    """The encoder at `path` on `device`, checked against G and (when given) the file's sha256."""
    from storage.provenance import sha256_file

    if not Path(path).is_file():
        raise CheckpointError("no such encoder file (train one with facereenact train-encoder)", path=path)
    actual = sha256_file(path)
    if sha256 and actual != sha256:
        raise CheckpointError(f"encoder file changed since the job started (sha256 {actual[:12]}..., the "
                              f"job's {sha256[:12]}...); rerun the command to start a job for it", path=path)
    return _load(path, actual, device, G.weights_sha256(), G)


@lru_cache(maxsize=4)
def _load(path: str, sha256: str, device: str, generator_sha256: str, G: Generator) -> InversionEncoder:
    return load_encoder(path, G, device=device)


@torch.no_grad()
def encoder_start(G: Generator, targets: torch.Tensor, config: InversionConfig) -> torch.Tensor | None:
    """The encoder's W+ prediction for `targets` (N, 3, R, R) in [-1, 1], on G's device, when `config`
    is an EncoderInversionConfig; None otherwise (invert then starts from w_avg)."""
    if not isinstance(config, EncoderInversionConfig):
        return None
    device = G.w_avg.device
    E = load_checked(config.encoder_path, config.encoder_sha256, str(device), G)
    targets = targets.to(device, torch.float32)
    return torch.cat([E(targets[i:i + PREDICT_BATCH]) for i in range(0, targets.shape[0], PREDICT_BATCH)])
