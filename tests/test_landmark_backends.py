"""The contract every landmark backend of the registry (models.landmarks.available_landmark_backends)
keeps, whatever its net: shapes and dtypes of what it returns, determinism (the same call twice is
bitwise the same; an image in a batch is the image alone), bad inputs refused with one line, bad weight
files refused with one line naming the file, and its name offered by every command's `--landmarks`.

A backend registered without offline weights in tests/support/landmarks.py fails here, so a new
backend gets the contract by being registered. Each backend's accuracy and its own conventions are
tested in its own module (test_landmarks_faceapi.py, test_landmarks_fan.py).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from models.landmarks import NUM_LANDMARKS, LandmarkResult, available_landmark_backends, load_landmark_backend
from storage.errors import CheckpointError, FacereenactError, WeightsMissingError
from tests.support.landmarks import WEIGHTS

BACKENDS = available_landmark_backends()
COMMANDS = ["prepare", "invert", "run", "batch"]  # every command that takes --landmarks


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tmp_path_factory):
    name = request.param
    if name not in WEIGHTS:
        pytest.fail(f"landmark backend {name!r} is registered but has no offline weights in "
                    "tests/support/landmarks.py WEIGHTS")
    if name == "fan":
        pytest.importorskip("face_alignment.models")
    weights = WEIGHTS[name](tmp_path_factory.mktemp(f"landmarks-{name}"))
    return load_landmark_backend(name, weights=weights)


def images(n: int = 2, size: tuple[int, int] = (96, 120), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


BOXES = torch.tensor([[10.0, 12.0, 80.0, 90.0], [30.0, 5.0, 110.0, 85.0]])


def test_registry_lists_the_builtin_backends():
    assert {"faceapi", "fan"} <= set(BACKENDS)


def test_shapes_dtypes_and_provenance(backend):
    assert backend.name in BACKENDS and not backend.training
    with torch.no_grad():
        result = backend(images(), BOXES)
    assert isinstance(result, LandmarkResult)
    assert result.points.shape == (2, NUM_LANDMARKS, 2) and result.points.dtype == torch.float32
    assert torch.isfinite(result.points).all()
    assert result.crops is not None and result.crops.shape == (2, 4)
    if result.heatmaps is not None:
        assert result.heatmaps.shape[:2] == (2, NUM_LANDMARKS)
    # the whole image when no box is given
    with torch.no_grad():
        whole = backend(images(1))
    assert whole.points.shape == (1, NUM_LANDMARKS, 2)
    # one frame as the face tracker calls it: (68, 2) float64 in frame pixels
    frame = (images(1)[0].permute(1, 2, 0) * 255).round().byte().numpy()
    points = backend.predict_frame(frame, BOXES[0].numpy())
    assert points.shape == (NUM_LANDMARKS, 2) and points.dtype == np.float64 and np.isfinite(points).all()
    provenance = backend.provenance()
    assert provenance["backend"] == backend.name
    assert re.fullmatch(r"[0-9a-f]{64}", provenance["weights_sha256"])


def test_deterministic_and_batch_independent(backend):
    x = images(3, seed=1)
    boxes = torch.cat([BOXES, BOXES[:1]])
    with torch.no_grad():
        a, b = backend(x, boxes).points, backend(x, boxes).points
        single = backend(x[1:2], boxes[1:2]).points
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:2], single, atol=1e-4, rtol=1e-5)


def test_gradients_when_differentiable(backend):
    if not backend.differentiable:
        pytest.skip(f"{backend.name} is not differentiable")
    x = images(1, seed=2).requires_grad_(True)
    (grad,) = torch.autograd.grad(backend(x, BOXES[:1]).points.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("bad", ["no batch axis", "grey", "uint8", "boxes of another batch"])
def test_bad_inputs_are_one_line_errors(backend, bad):
    x, boxes = images(1), BOXES[:1]
    if bad == "no batch axis":
        x = x[0]
    elif bad == "grey":
        x = x[:, :1]
    elif bad == "uint8":
        x = (x * 255).byte()
    else:
        boxes = BOXES
    with pytest.raises(ValueError) as info, torch.no_grad():
        backend(x, boxes)
    assert "\n" not in str(info.value) and ("images" in str(info.value) or "boxes" in str(info.value))
    with pytest.raises(ValueError, match="uint8 RGB frame"):
        backend.predict_frame(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_weight_files_are_one_line_errors_naming_the_file(name, tmp_path):
    missing = tmp_path / "missing.weights"
    with pytest.raises(WeightsMissingError) as info:
        load_landmark_backend(name, weights=missing)
    assert "\n" not in str(info.value) and str(missing) in str(info.value)
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"<html>not found</html>")
    with pytest.raises(CheckpointError) as info:
        load_landmark_backend(name, weights=garbage)
    assert "\n" not in str(info.value) and str(garbage) in str(info.value)
    with pytest.raises(FacereenactError, match=r"unknown landmark backend 'nope' \(known: "):
        load_landmark_backend("nope")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_backend_is_offered_by_the_cli(command, cli):
    """`--landmarks` of every command that takes it accepts every registered backend (argparse's
    choices, as `--help` prints them) and refuses another name with a usage error."""
    proc = cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    offered = {tuple(c.split(",")) for c in re.findall(r"--landmarks \{([\w,-]+)\}", proc.stdout)}
    assert offered and all(set(choices) == set(BACKENDS) for choices in offered), (command, offered)
    refused = cli(command, "--landmarks", "no-such-backend")
    assert refused.returncode == 2 and "no-such-backend" in refused.stderr
