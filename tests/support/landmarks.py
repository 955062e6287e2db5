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


class _FaceShapedHeatmaps(torch.nn.Module):
    """A stand-in FAN (TorchScript, as face-alignment 1.3-1.4 shipped it): Gaussian heatmaps at the
    mean face shape, placed in the 64 x 64 heatmap as face-alignment frames a detector box, scaled by
    the input's mean brightness (so heatmaps and soft-argmax points carry gradients to the image).
    Unlike random weights it passes the tracker's plausibility checks: a run can prepare a clip with it."""

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        import numpy as np

        from models.face_shape import MEAN_SHAPE_68
        from models.landmarks.fan import CENTER_Y_OFFSET, HEATMAP_SIZE, REFERENCE_SCALE, SCALE_FACTOR

        shape = np.asarray(MEAN_SHAPE_68, dtype=np.float64)
        lo, hi = shape.min(axis=0), shape.max(axis=0)
        # the crop is 2 SCALE_FACTOR / REFERENCE_SCALE box sides wide, its centre CENTER_Y_OFFSET box
        # heights above the box's; box_from_landmarks' box is the points' extent * 1.1
        box = HEATMAP_SIZE * REFERENCE_SCALE / (2 * SCALE_FACTOR)
        centre = np.array([HEATMAP_SIZE / 2 - 0.5, HEATMAP_SIZE / 2 - 0.5 + CENTER_Y_OFFSET * box])
        points = (shape - (lo + hi) / 2) * (box / 1.1 / max(hi - lo)) + centre
        grid = torch.arange(HEATMAP_SIZE, dtype=torch.float32)
        px = torch.tensor(points[:, 0], dtype=torch.float32)[:, None, None]
        py = torch.tensor(points[:, 1], dtype=torch.float32)[:, None, None]
        distance2 = (grid[None, None, :] - px) ** 2 + (grid[None, :, None] - py) ** 2
        maps = torch.exp(-distance2 / (2 * sigma ** 2))
        self.register_buffer("maps", maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps[None] * (0.5 + x.mean(dim=(1, 2, 3)))[:, None, None, None]


def face_shaped_fan(folder: Path) -> Path:
    """The stand-in FAN of `_FaceShapedHeatmaps`, saved under face-alignment's TorchScript file name."""
    import warnings

    from models.landmarks.fan import FAN_TORCHSCRIPT_FILE

    path = folder / FAN_TORCHSCRIPT_FILE
    with warnings.catch_warnings():  # torch's deprecation notice of TorchScript: the format is the point
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_FaceShapedHeatmaps()), str(path))
    return path
