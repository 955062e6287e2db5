"""Which torch device to run on: one rule for every stage ("auto", "cpu", "cuda", "cuda:1", ...)."""

from __future__ import annotations

import torch

from storage.errors import InputError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a user's `--device` choice.

    "auto": the first GPU when CUDA is available, else the CPU. "cuda" (or "cuda:N") on a machine
    without a usable GPU is the user's to fix, so it is an InputError rather than torch's traceback.
    """
    text = str(device).strip().lower()
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
