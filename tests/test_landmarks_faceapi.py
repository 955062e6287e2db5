"""face-api landmark backend: accuracy against dlib on astronaut(), gradients, conventions, weight files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from models.detection import box_from_landmarks
from models.face_shape import MIRROR_68
from models.landmarks import IBUG_GROUPS, group_weights, landmark_group_ids, load_landmark_backend
from models.landmarks.base import crop_square
from models.landmarks.faceapi import LANDMARK_MANIFEST, FaceApiLandmarks
from models.tfjs_weights import read_tfjs_weights
from storage.errors import CheckpointError, InputError, WeightsMissingError


@pytest.fixture(scope="module")
def backend() -> FaceApiLandmarks:
    return load_landmark_backend("faceapi")


@pytest.fixture(scope="module")
def dlib68(astronaut_points) -> torch.Tensor:
    return torch.tensor(astronaut_points, dtype=torch.float32)


def dlib_box(points: torch.Tensor) -> torch.Tensor:
    """The project's face box for dlib's points (what the detectors and the tracker give)."""
    box = box_from_landmarks(points.numpy())
    return torch.tensor([[box.x0, box.y0, box.x1, box.y1]], dtype=torch.float32)


def test_astronaut_within_a_few_pixels_of_dlib(backend, astronaut_image, dlib68):
    with torch.no_grad():
        result = backend(astronaut_image, dlib_box(dlib68))
    assert result.points.shape == (1, 68, 2) and result.heatmaps is None
    err = (result.points[0] - dlib68).norm(dim=1)
    print(f"face-api vs dlib on astronaut: mean {err.mean():.2f} px, max {err.max():.2f} px")
    assert err.mean() < 3.5  # measured 2.32
    assert err.max() < 8.0  # measured 5.47
    # every group lands near its dlib counterpart, not just the average
    for name, idx in IBUG_GROUPS.items():
        assert err[idx].mean() < 5.0, name
    # a small slice of the output (diffusers style)
    expected = torch.tensor([[176.4363, 99.1709], [176.6736, 111.9249], [177.9199, 124.2880]])
    torch.testing.assert_close(result.points[0, :3], expected, atol=0.02, rtol=0)


def test_astronaut_with_the_haar_detectors_box(backend, astronaut_image, dlib68):
    # the offline pipeline end to end: models/detection's Haar box, then face-api's landmarks
    from models.detection import make_detector

    frame = (astronaut_image[0].permute(1, 2, 0) * 255).round().byte().numpy()
    (face,) = make_detector("haar").detect(frame)
    with torch.no_grad():
        points = backend(astronaut_image, torch.tensor([[face.x0, face.y0, face.x1, face.y1]])).points
    err = (points[0] - dlib68).norm(dim=1)
    print(f"face-api (Haar box) vs dlib on astronaut: mean {err.mean():.2f} px, max {err.max():.2f} px")
    assert err.mean() < 3.5 and err.max() < 8.0  # measured 2.42 / 5.71


def test_predict_frame_drives_the_face_tracker(backend, astronaut_image, dlib68):
    # backend.predict_frame is the tracker's landmarks_fn: detect on frame 0, track on a moved frame 1
    from models.detection import FaceFlag, FaceTracker, make_detector

    frame = (astronaut_image[0].permute(1, 2, 0) * 255).round().byte().numpy()
    moved = np.roll(frame, (6, -4), axis=(0, 1))  # the face 6 px down, 4 px left
    results = list(FaceTracker(make_detector("haar"), backend.predict_frame).track([frame, moved]))
    assert [r.flag for r in results] == [FaceFlag.DETECTED, FaceFlag.TRACKED]
    for result, shift in zip(results, ([0, 0], [-4, 6]), strict=True):
        assert result.landmarks.shape == (68, 2) and result.landmarks.dtype == np.float64
        err = np.linalg.norm(result.landmarks - (dlib68.numpy() + shift), axis=1)
        assert err.mean() < 3.5, err.mean()


def test_gradients_reach_the_image_inside_the_crop_only(backend, astronaut_image, dlib68):
    image = astronaut_image.clone().requires_grad_(True)
    box = dlib_box(dlib68)
    result = backend(image, box)
    result.points[..., 1].sum().backward()
    grad = image.grad
    assert torch.isfinite(grad).all()
    x0, y0, x1, y1 = result.crops[0].tolist()
    inside = grad[..., int(y0) + 2:int(y1) - 2, int(x0) + 2:int(x1) - 2]
    assert inside.abs().sum() > 0
    outside = grad.clone()
    outside[..., max(int(y0) - 1, 0):int(y1) + 2, max(int(x0) - 1, 0):int(x1) + 2] = 0
    assert outside.abs().sum() == 0


def test_whole_image_is_the_crop_when_no_box(backend, astronaut_image):
    # Cutting the crop out of the image and giving no box is the same as giving the box of those
    # pixels (112 px: no resampling, so no border effects either).
    x0, y0, side = 170, 75, 112
    box = torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32) - 0.5
    with torch.no_grad():
        full = backend(astronaut_image, box).points
        cut = backend(astronaut_image[..., y0:y0 + side, x0:x0 + side]).points
    torch.testing.assert_close(cut + torch.tensor([x0, y0]), full, atol=1e-3, rtol=0)


def test_batch_matches_single_images(backend, astronaut_image, dlib68):
    images = torch.cat([astronaut_image, astronaut_image.flip(-1)])
    box = dlib_box(dlib68)
    boxes = torch.cat([box, torch.tensor([[512 - box[0, 2], box[0, 1], 512 - box[0, 0], box[0, 3]]])])
    with torch.no_grad():
        both = backend(images, boxes).points
        second = backend(images[1:], boxes[1:]).points
    torch.testing.assert_close(both[1:], second, atol=1e-4, rtol=0)
    # the mirrored face's points are the mirrored points, re-ordered by IBUG_MIRROR (within a few px)
    mirrored = both[1, MIRROR_68].clone()
    mirrored[:, 0] = 511 - mirrored[:, 0]
    assert (mirrored - both[0]).norm(dim=1).mean() < 3.0


def test_crop_square_resamples_exactly_and_antialiases():
    image = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).view(2, 3, 8, 10)
    same = crop_square(image, torch.tensor([[1.5, 0.5, 5.5, 4.5]] * 2), 4)  # pixels 2-5, rows 1-4
    torch.testing.assert_close(same, image[..., 1:5, 2:6])
    # shrinking 4x is a 4x4 box average, not a sample of every 4th pixel
    stripes = torch.zeros(1, 3, 16, 16)
    stripes[..., ::2] = 1.0
    small = crop_square(stripes, torch.tensor([[-0.5, -0.5, 15.5, 15.5]]), 4)
    torch.testing.assert_close(small, torch.full_like(small, 0.5))


def test_ibug_groups_cover_the_68_points_once():
    ids = landmark_group_ids()
    assert ids.shape == (68,) and ids.min() == 0 and ids.max() == len(IBUG_GROUPS) - 1
    weights = group_weights({"jaw": 0.05, "brow_left": 1, "brow_right": 1, "nose_bridge": 0.1,
                             "nose_lower": 1, "eye_left": 1, "eye_right": 1, "mouth_outer": 5,
                             "mouth_inner": 5})
    assert weights[0] == pytest.approx(0.05) and weights[30] == pytest.approx(0.1) and weights[67] == 5
    with pytest.raises(ValueError, match="missing"):
        group_weights({"jaw": 1.0})


def test_unknown_backend_is_a_user_error():
    with pytest.raises(InputError, match="unknown landmark backend 'nope'"):
        load_landmark_backend("nope")


# --- TF.js weight files ---------------------------------------------------------------------------


def test_tfjs_reader_dequantises_and_follows_shards(tmp_path):
    q = np.array([0, 1, 255, 128], dtype=np.uint8)
    f32 = np.array([[1.5, -2.0, 3.25]], dtype="<f4")
    f16 = np.array([0.5, -1.0], dtype="<f2")
    q16 = np.array([0, 65535], dtype="<u2")
    blob = q.tobytes() + f32.tobytes() + f16.tobytes() + q16.tobytes()
    (tmp_path / "a.bin").write_bytes(blob[:7])  # a tensor split across two shards
    (tmp_path / "b.bin").write_bytes(blob[7:])
    manifest = [{"paths": ["a.bin", "b.bin"], "weights": [
        {"name": "q", "shape": [2, 2], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "f", "shape": [1, 3], "dtype": "float32"},
        {"name": "h", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "w", "shape": [2], "dtype": "float32",
         "quantization": {"dtype": "uint16", "scale": 0.001, "min": 2.0}},
    ]}]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    weights = read_tfjs_weights(tmp_path / "m.json")
    np.testing.assert_allclose(weights["q"], [[-1.0, -0.5], [126.5, 63.0]])
    np.testing.assert_array_equal(weights["f"], f32)
    np.testing.assert_array_equal(weights["h"], [0.5, -1.0])
    np.testing.assert_allclose(weights["w"], [2.0, 2.0 + 65.535], rtol=1e-6)
    assert all(v.dtype == np.float32 for v in weights.values())


def test_vendored_landmark_weights_decode_to_the_manifest_shapes():
    weights = read_tfjs_weights(LANDMARK_MANIFEST)
    assert weights["dense0/conv0/filters"].shape == (3, 3, 3, 32)
    assert weights["fc/weights"].shape == (256, 136)
    assert len(weights) == 49  # 2 + 3 x 3 in dense0, 4 x 3 in dense1-3, 2 in fc


@pytest.fixture
def weights_copy(tmp_path):
    for f in LANDMARK_MANIFEST.parent.glob("face_landmark_68_model*"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / LANDMARK_MANIFEST.name


def assert_one_line(err: Exception, *fragments: str) -> None:
    message = str(err)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_truncated_bin_is_a_one_line_error(weights_copy):
    shard = weights_copy.parent / "face_landmark_68_model.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as info:
        FaceApiLandmarks.from_weights(weights_copy)
    assert_one_line(info.value, "face_landmark_68_model.bin", "truncated", "356840", "1000")


def test_truncated_manifest_is_a_one_line_error(weights_copy):
    weights_copy.write_text(weights_copy.read_text()[:500])
    with pytest.raises(CheckpointError) as info:
        load_landmark_backend("faceapi", weights=weights_copy)
    assert_one_line(info.value, str(weights_copy), "bad JSON")


def test_missing_shard_and_manifest(weights_copy):
    (weights_copy.parent / "face_landmark_68_model.bin").unlink()
    with pytest.raises(CheckpointError) as info:
        FaceApiLandmarks.from_weights(weights_copy.parent)  # a folder works too
    assert_one_line(info.value, "face_landmark_68_model.bin", "missing")
    with pytest.raises(WeightsMissingError) as info:
        FaceApiLandmarks.from_weights(weights_copy.parent / "nothing.json")
    assert_one_line(info.value, "nothing.json", "not found")


def test_wrong_network_in_manifest_is_a_one_line_error(weights_copy):
    # the recognition net's files are valid TF.js, but not this net
    for f in LANDMARK_MANIFEST.parent.glob("face_recognition_model*"):
        shutil.copy(f, weights_copy.parent / f.name)
    with pytest.raises(CheckpointError) as info:
        FaceApiLandmarks.from_weights(weights_copy.parent / "face_recognition_model-weights_manifest.json")
    assert_one_line(info.value, "lack tensor 'dense0/conv0/filters'")
