"""Weights for every landmark backend, made offline, for the backend contract suite
(tests/test_landmark_backends.py) and the backends' own tests.

`WEIGHTS[name](folder)` -> what `load_landmark_backend(name, weights=...)` takes: None where the
backend's weights ship with the package (faceapi), else a file made in `folder` (FAN: face-alignment's
network with seeded random weights, in face-alignment's state-dict format). A new backend adds its
entry here; the contract suite fails for a registered backend without one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def random_fan(num_modules: int, seed: int = 0) -> torch.nn.Module:
    """face-alignment's FAN with `num_modules` hourglasses and seeded random weights."""
    from face_alignment.models import FAN

    torch.manual_seed(seed)
    net = FAN(num_modules).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as a trained net has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def save_state_dict(net: torch.nn.Module, path: Path) -> Path:
    # face-alignment's 2DFAN4-11f355bf06.pth.tar is a plain state dict in torch's old (pre-zip) format
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    return path


def _fan_weights(folder: Path) -> Path:
    from models.landmarks.fan import FAN_STATE_DICT_FILE

    return save_state_dict(random_fan(1, seed=7), folder / FAN_STATE_DICT_FILE)


WEIGHTS: dict[str, Callable[[Path], Path | None]] = {
    "faceapi": lambda folder: None,  # vendored
    "fan": _fan_weights,
}
