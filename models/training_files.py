"""What the training checkpoints of the project's small networks share (the mapping network, the
latent directions, the inversion encoder): tensors moved to the CPU before saving, the envelope check
on reading (format name, version, required fields), the weights checked against the model built from
the config, the step a resume starts at, and the restore of the optimiser and the loss history. Each
network keeps its own format name, version and fields."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from storage.errors import CheckpointError

__all__ = ["check_envelope", "check_resume_steps", "load_checked_state", "restore_history",
           "restore_optimizer", "to_cpu"]


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


def load_checked_state(model: torch.nn.Module, state: Mapping[str, Any], path: str | Path, what: str) -> None:
    """Load `state` into `model` after checking it has exactly the model's tensors, shaped as the model's,
    and finite; anything else is a one-line CheckpointError naming `what` (e.g. "encoder weights")."""
    expected = model.state_dict()
    bad = [k for k, v in expected.items()
           if not isinstance(state.get(k), torch.Tensor) or tuple(state[k].shape) != tuple(v.shape)]
    unexpected = sorted(set(state) - set(expected))
    if bad or unexpected:
        raise CheckpointError(f"{what} do not match its config (missing or misshapen: {bad[:3]}, "
                              f"unexpected: {unexpected[:3]})", path=path)
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise CheckpointError(f"{what} contain NaN or infinite values", path=path)
    model.load_state_dict(state)


def check_resume_steps(saved_steps: int, steps: int, path: str | Path) -> int:
    """The step a training run resumes at: `saved_steps`, refused when it is beyond the `steps` asked for."""
    if saved_steps > steps:
        raise CheckpointError(f"holds {saved_steps} steps, more than --steps {steps}; pass --steps "
                              f">= {saved_steps} to continue it, or another --out", path=path)
    return saved_steps


def restore_optimizer(optimizer: torch.optim.Optimizer, state: Any, path: str | Path) -> None:
    """Load a saved optimiser state; one that does not fit the model is a CheckpointError."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"optimizer state does not fit the model ({err})", path=path) from None


def restore_history(saved: Mapping[str, Any], fields: Iterable[str]) -> dict[str, list[float]]:
    """The loss history of a checkpoint (one tensor per field) as lists of floats (missing: empty)."""
    return {name: [float(v) for v in saved.get(name, torch.zeros(0)).tolist()] for name in fields}
