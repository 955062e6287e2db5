"""FAN backend plumbing with FAN's architecture and random weights in a temporary torch hub cache.

The real weights are not in the repository and nothing downloads here: the tests save face-alignment's
`FAN` with random weights under the file names and formats face-alignment uses, and check the
backend against face-alignment's own heatmap decoding.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from models.face_shape import MIRROR_68
from models.landmarks import load_landmark_backend
from models.landmarks.fan import (
    FAN_STATE_DICT_FILE,
    FAN_TORCHSCRIPT_FILE,
    FanLandmarks,
    fan_regions,
    heatmap_argmax,
    heatmap_soft_argmax,
)
from storage.errors import CheckpointError, WeightsMissingError
from tests.support.landmarks import random_fan, save_state_dict

FAN = pytest.importorskip("face_alignment.models").FAN
fa_utils = pytest.importorskip("face_alignment.utils")

BOX = torch.tensor([[60.0, 50.0, 150.0, 160.0]])


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache and weights dir; downloading is made to fail loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FACEREENACT_HOME", str(tmp_path / "home"))

    def no_download(*args, **kwargs):
        raise AssertionError("something tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(fa_utils, "download_url_to_file", no_download)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


@pytest.fixture(scope="module")
def fan1(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A one-hourglass FAN with seeded random weights, and its state-dict file (made once)."""
    net = random_fan(1, seed=7)
    path = tmp_path_factory.mktemp("fan1") / FAN_STATE_DICT_FILE
    save_state_dict(net, path)
    return net, path


def install(fan1, hub: Path) -> None:
    shutil.copy(fan1[1], hub / FAN_STATE_DICT_FILE)


def image(seed: int = 1, size: tuple[int, int] = (200, 240)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, *size, generator=g)


def test_missing_weights_name_file_place_and_fetch_command(hub):
    with pytest.raises(WeightsMissingError) as info:
        load_landmark_backend("fan")
    message = str(info.value)
    assert "\n" not in message
    for fragment in (FAN_STATE_DICT_FILE, str(hub), "facereenact weights fetch fan-2d"):
        assert fragment in message


def test_real_architecture_from_the_hub_cache(hub):
    # FAN(4), the real file's network, in the real file's format and place (not run: the forward
    # pass is the same code for any number of hourglasses and is tested on FAN(1) below)
    save_state_dict(random_fan(4), hub / FAN_STATE_DICT_FILE)
    backend = load_landmark_backend("fan")
    assert isinstance(backend, FanLandmarks) and backend.differentiable and backend.flip_input
    assert isinstance(backend.net, FAN) and backend.net.num_modules == 4
    assert backend.weights_path == str(hub / FAN_STATE_DICT_FILE)
    assert len(backend.provenance()["weights_sha256"]) == 64


def test_matches_face_alignments_own_decoding(hub, fan1):
    install(fan1, hub)
    backend = load_landmark_backend("fan", coordinates="argmax", flip_input=False)
    assert not backend.differentiable
    with torch.no_grad():
        result = backend(image(7), BOX)
    assert result.points.shape == (1, 68, 2) and result.heatmaps.shape == (1, 68, 64, 64)
    torch.testing.assert_close(result.crops, fan_regions(BOX))
    # a small slice of the seeded net's heatmaps (diffusers style)
    expected = torch.tensor([-0.073008, -0.075302, -0.083838, -0.083452])
    torch.testing.assert_close(result.heatmaps[0, 0, 30, 30:34], expected, atol=1e-4, rtol=1e-3)
    # face-alignment's get_preds_fromhm on the same heatmaps, and its crop framing of the same box
    x0, y0, x1, y1 = BOX[0].tolist()
    center = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2 - 0.12 * (y1 - y0)])
    scale = (x1 - x0 + y1 - y0) / 195.0
    hm = result.heatmaps.numpy()
    idx = hm.reshape(1, 68, -1).argmax(axis=-1)
    # the pure-Python body of their numba function (compiling it would take seconds)
    preds, _ = fa_utils._get_preds_fromhm.py_func(hm, idx, None, None)
    crop_px = heatmap_argmax(result.heatmaps)
    torch.testing.assert_close(crop_px, torch.from_numpy(preds) - 0.5)  # theirs: pixel edges
    theirs = torch.stack([fa_utils.transform(torch.from_numpy(p), center, scale, 64, invert=True)
                          for p in preds[0]])
    # they truncate image coordinates to integers; ours agree within that (+ half a pixel of convention)
    assert (result.points[0] - theirs).abs().max() <= 1.5


def test_torchscript_archive_gives_the_same_network(hub, fan1):
    net = fan1[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; face-alignment 1.3-1.4 shipped it
        traced = torch.jit.trace(net, torch.rand(1, 3, 64, 64), check_trace=False)
        traced.save(str(hub / FAN_TORCHSCRIPT_FILE))
        from_script = load_landmark_backend("fan", flip_input=False)
    assert from_script.weights_path.endswith(FAN_TORCHSCRIPT_FILE)
    with torch.no_grad():
        x = torch.rand(2, 3, 64, 64)  # fully convolutional: a small input is enough to compare
        torch.testing.assert_close(from_script.net(x)[-1], net(x)[-1], atol=1e-5, rtol=1e-4)
        result = from_script(image(3), BOX)
    assert result.heatmaps.shape == (1, 68, 64, 64) and torch.isfinite(result.points).all()


def test_gradients_reach_the_image(hub, fan1):
    install(fan1, hub)
    backend = load_landmark_backend("fan", flip_input=False)  # soft-argmax coordinates
    images = image(4).requires_grad_(True)
    result = backend(images, BOX)
    # the points (soft-argmax of the heatmaps) and the heatmaps (Uzolas 2021's loss) carry gradients
    (grad,) = torch.autograd.grad(result.points.sum() + result.heatmaps[:, 30].mean(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    x1 = int(result.crops[0, 2])
    assert x1 + 2 < images.shape[-1] and grad[..., x1 + 2:].abs().sum() == 0  # none right of the region


def test_whole_image_when_no_box_and_flip_averaging_is_mirror_symmetric(hub, fan1):
    install(fan1, hub)
    backend = load_landmark_backend("fan")  # flip_input=True, as face-alignment
    half = image(5, (120, 40))
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)  # a left-right symmetric 120 x 80 image
    with torch.no_grad():
        result = backend(symmetric)
    torch.testing.assert_close(result.crops, torch.tensor([[-20.5, -0.5, 99.5, 119.5]]))
    # averaging in the mirrored pass makes the heatmaps of a symmetric crop mirror-symmetric
    hm = result.heatmaps
    torch.testing.assert_close(hm.flip(-1)[:, MIRROR_68], hm, atol=1e-5, rtol=1e-4)


def test_soft_argmax_finds_subpixel_peaks():
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centres = torch.tensor([[20.3, 40.6], [0.2, 63.0], [31.5, 31.5]])
    hm = torch.stack([torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5 ** 2)) for x, y in centres])[None]
    hm = hm - 0.05  # a background below zero is ignored
    soft = heatmap_soft_argmax(hm)[0]
    assert (soft[[0, 2]] - centres[[0, 2]]).abs().max() < 0.05
    assert (soft[1] - centres[1]).abs().max() < 1.0  # at the border the window is one-sided
    hard = heatmap_argmax(hm)[0]
    # face-alignment's rule (a tie goes to the first pixel)
    expected = torch.tensor([[20.25, 40.75], [0.0, 63.0], [31.25, 31.25]])
    torch.testing.assert_close(hard, expected)
    flat = torch.zeros(1, 1, 64, 64)
    assert torch.equal(heatmap_soft_argmax(flat), torch.zeros(1, 1, 2))  # no mass: the peak pixel


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong-keys"])
def test_bad_weight_files_are_one_line_errors(hub, fan1, damage):
    path = hub / FAN_STATE_DICT_FILE
    if damage == "garbage":
        path.write_bytes(b"<html>not found</html>")
    elif damage == "wrong-keys":
        torch.save({"conv1.weight": torch.zeros(3)}, path)
    else:
        install(fan1, hub)
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(CheckpointError) as info:
        load_landmark_backend("fan")
    message = str(info.value)
    assert "\n" not in message and FAN_STATE_DICT_FILE in message
