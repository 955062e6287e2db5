"""Which torch device to run on: one rule for every stage ("auto", "cpu", "cuda", "cuda:1", ...)."""

from __future__ import annotations

import torch

from storage.errors import InputError

__all__ = ["pin_device", "pinned_device", "resolve_device"]

# The GPU index (among the visible ones) this process is pinned to, or None: set once in a worker
# process by its pool's initializer (flows/runners.py), so "cuda" and "auto" mean that GPU there.
_PINNED: int | None = None


def pin_device(index: int | None) -> None:
    """Make "cuda" / "auto" mean cuda:`index` in this process (None: unpinned)."""
    global _PINNED
    _PINNED = None if index is None else int(index)


def pinned_device() -> int | None:
    return _PINNED


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a user's `--device` choice.

    "auto": the first GPU when CUDA is available, else the CPU. "cuda" (or "cuda:N") on a machine
    without a usable GPU is the user's to fix, so it is an InputError rather than torch's traceback.
    """
    text = str(device).strip().lower()
    if _PINNED is not None and text in ("auto", "cuda") and torch.cuda.is_available():
        text = f"cuda:{_PINNED}"  # this worker process's own GPU (flows/runners.py)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(text)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {text!r} asked for, but no CUDA GPU is available here "
                             "(use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {text!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    elif resolved.type != "cpu":
        raise InputError(f"device {text!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return resolved
