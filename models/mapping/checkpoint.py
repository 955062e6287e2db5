"""The mapping network's checkpoint format: what `MappingTrainer.save` writes and every reader checks.

A checkpoint is a torch.save'd dict of tensors and plain values (`CHECKPOINT_FORMAT`, version
`CHECKPOINT_VERSION`): the model's config and weights, Adam's state, the step, the RNG states, the
training settings, the loss history and the provenance (latents, generator fingerprint, code version).
It is read with torch.load(weights_only=True), so nothing in the file can run, and checked (format,
fields, model weights against the model config, generator fingerprint); anything wrong is a one-line
CheckpointError.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from models.mapping.network import LandmarkMappingNetwork
from models.stylegan2 import Generator
from models.training_files import check_envelope, load_checked_state, to_cpu
from storage.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "check_generator_fingerprint", "load_mapping_network",
           "new_checkpoint", "read_checkpoint", "read_mapping_checkpoint", "write_checkpoint"]

CHECKPOINT_FORMAT = "facereenact.mapping"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------------------
# Writing


def new_checkpoint(
    *,
    model: LandmarkMappingNetwork,      # its config and weights (copied to the CPU)
    optimizer_state: dict[str, Any],    # Adam's state_dict (copied to the CPU)
    step: int,                          # steps taken
    rng: dict[str, Any],                # "torch" (and "cuda", "sampler") RNG states
    train_config: dict[str, Any],       # dataclasses.asdict(MappingTrainConfig)
    history: dict[str, torch.Tensor],   # per-step loss curves, float64 (N,) each
    provenance: dict[str, Any],         # latents, generator fingerprint, code version, settings
) -> dict[str, Any]:
    """The checkpoint dict, in the field order every reader expects (what `write_checkpoint` saves)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_config": model.config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": to_cpu(optimizer_state),
        "step": step,
        "rng": rng,
        "train_config": train_config,
        "history": history,
        "provenance": provenance,
    }


def write_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write `ckpt` (a `new_checkpoint` dict) atomically: complete or absent (storage.atomic)."""
    from storage.atomic import atomic_output

    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return path


# ---------------------------------------------------------------------------------------------------
# Reading


_REQUIRED = {"model_config": dict, "model": dict, "optimizer": dict, "step": int, "rng": dict,
             "train_config": dict, "history": dict, "provenance": dict}


def read_mapping_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict, read with torch.load(weights_only=True) (nothing in the file can run) and
    checked (format, fields, model weights against the model config); anything else is a one-line
    CheckpointError."""
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], LandmarkMappingNetwork]:
    """The checked checkpoint dict (as `read_mapping_checkpoint`) and its model with the weights loaded."""
    from models.checkpoints import load_torch_weights_only

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError("empty file (0 bytes)", path=path)
    ckpt = load_torch_weights_only(path)
    check_envelope(ckpt, path, "mapping-network checkpoint", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, _REQUIRED)
    return ckpt, _model_from_checkpoint(ckpt, path)


def _model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> LandmarkMappingNetwork:
    try:
        model = LandmarkMappingNetwork.from_config(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"unusable model config ({err})", path=path) from None
    load_checked_state(model, ckpt["model"], path, "model weights")
    return model


def check_generator_fingerprint(ckpt: dict[str, Any], G: Generator | None,
                                path: str | os.PathLike[str]) -> None:
    """CheckpointError unless `G` (when given) is the generator the checkpoint's latents came from:
    the same W+ shape and, where the checkpoint recorded it, the same weights sha256."""
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
    ckpt, model = read_checkpoint(path)
    check_generator_fingerprint(ckpt, generator, path)
    model.provenance = ckpt["provenance"]
    return model.to(device).eval().requires_grad_(False)
