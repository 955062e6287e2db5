"""What the training checkpoints of the project's small networks share (the mapping network, the
latent directions, the inversion encoder): tensors moved to the CPU before saving, the envelope check
on reading (format name, version, required fields), and the restore of the optimiser and the loss
history on resume. Each network keeps its own format name, version and fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from storage.errors import CheckpointError

__all__ = ["check_envelope", "restore_history", "restore_optimizer", "to_cpu"]


def to_cpu(obj: Any) -> Any:
    """`obj` (tensors in dicts and lists, as an optimiser's state) with every tensor detached on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    return obj


def check_envelope(ckpt: Any, path: str | Path, what: str, format_name: str, version: int,
                   required: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """`ckpt` as read from `path`, refused (one-line CheckpointError naming `what`, e.g. "directions
    file") unless it has format `format_name`, version `version` and each `required` field of its type."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != format_name:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        article = "an" if what[:1] in "aeiou" else "a"
        raise CheckpointError(f"not {article} {what} (format {found!r}, expected {format_name!r})", path=path)
    if ckpt.get("format_version") != version:
        raise CheckpointError(f"{what} version {ckpt.get('format_version')!r} is not supported "
                              f"(this build reads {version})", path=path)
    for key, kind in required.items():
        if not isinstance(ckpt.get(key), kind):
            name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise CheckpointError(f"{what} lacks {key!r} (or it is not a {name})", path=path)
    return ckpt


def restore_optimizer(optimizer: torch.optim.Optimizer, state: Any, path: str | Path) -> None:
    """Load a saved optimiser state; one that does not fit the model is a CheckpointError."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"optimizer state does not fit the model ({err})", path=path) from None


def restore_history(saved: Mapping[str, Any], fields: Iterable[str]) -> dict[str, list[float]]:
    """The loss history of a checkpoint (one tensor per field) as lists of floats (missing: empty)."""
    return {name: [float(v) for v in saved.get(name, torch.zeros(0)).tolist()] for name in fields}
