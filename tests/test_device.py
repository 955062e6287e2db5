"""models/device.resolve_device and the shared model loaders of tasks/resources.py."""

from __future__ import annotations

import pytest
import torch

from models.device import resolve_device
from storage.errors import InputError
from tasks import resources


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("gpu please")
    with pytest.raises(InputError, match="not supported"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU is available"):
            resolve_device("cuda")
    else:
        with pytest.raises(InputError, match="GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_models_are_loaded_once_per_name_and_device():
    resources.clear()
    a = resources.landmark_backend("faceapi", "cpu")
    assert resources.landmark_backend("faceapi", "cpu") is a
    if not torch.cuda.is_available():
        assert resources.landmark_backend("faceapi", "auto") is a  # "auto" resolves first
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
    assert resources.face_detector("haar") is resources.face_detector("haar")
    with pytest.raises(InputError, match="unknown landmark backend"):
        resources.landmark_backend("dlib", "cpu")
