"""Identity net (face-api's port of dlib's ResNet) and dlib-style chip alignment, against dlib's outputs."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from skimage import data

from models.face_shape import MIRROR_68
from models.identity import (
    DLIB_ALIGN_POINTS,
    DLIB_MEAN_FACE,
    RECOGNITION_MANIFEST,
    IdentityEncoder,
    align_face_chips,
    dlib_chip_transform,
    identity_similarity,
    similarity_transform,
)
from storage.errors import CheckpointError


@pytest.fixture(scope="module")
def encoder() -> IdentityEncoder:
    return IdentityEncoder.from_weights()


@pytest.fixture(scope="module")
def dlib_refs(faces_fixture_dir, astronaut_points):
    points = torch.tensor(astronaut_points, dtype=torch.float32)[None]
    chip = torch.from_numpy(np.load(faces_fixture_dir / "astronaut_dlib_chip150.npy")).permute(2, 0, 1)[None]
    descriptor = np.load(faces_fixture_dir / "astronaut_dlib_descriptor128.npy")
    descriptor = torch.from_numpy(descriptor).float()[None]
    return points, chip.float() / 255, descriptor


def test_dlib_chip_gives_dlibs_descriptor(encoder, dlib_refs):
    _, chip, descriptor = dlib_refs
    with torch.no_grad():
        ours = encoder.embed(chip)
    cos = identity_similarity(ours, descriptor).item()
    print(f"dlib chip -> descriptor: cosine {cos:.5f}, distance {(ours - descriptor).norm():.4f}")
    assert ours.shape == (1, 128)
    assert cos > 0.999  # measured 0.99964
    assert (ours - descriptor).norm() < 0.06  # dlib calls < 0.6 the same person
    expected = torch.tensor([-0.0788, 0.0203, 0.0176, -0.0808, -0.1588, -0.0263])
    torch.testing.assert_close(ours[0, :6], expected, atol=5e-4, rtol=0)


def test_alignment_from_dlib_points_reproduces_dlibs_chip(encoder, astronaut_image, dlib_refs):
    points, chip, descriptor = dlib_refs
    with torch.no_grad():
        ours = encoder.align(astronaut_image, points)
        desc = encoder.from_landmarks(astronaut_image, points)
    diff = (ours - chip).abs() * 255
    cos = identity_similarity(desc, descriptor).item()
    print(f"chip vs dlib's: mean {diff.mean():.3f} max {diff.max():.3f} (0..255); "
          f"descriptor cosine {cos:.5f}")
    assert diff.mean() < 1.0 and diff.max() <= 2.0  # measured 0.50 / 1.00: dlib rounds down to uint8
    assert cos > 0.999  # measured 0.99965


def test_same_person_close_other_images_far(encoder, astronaut_image, dlib_refs):
    points = dlib_refs[0]
    mirrored_points = points[:, MIRROR_68].clone()
    mirrored_points[..., 0] = astronaut_image.shape[-1] - 1 - mirrored_points[..., 0]
    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        desc = encoder.from_landmarks(astronaut_image, points)
        mirrored = encoder.from_landmarks(astronaut_image.flip(-1), mirrored_points)
        other = encoder.from_landmarks(cat, points)
    assert (desc - mirrored).norm() < 0.4  # measured 0.20
    assert (desc - other).norm() > 0.6  # measured 0.72
    assert identity_similarity(desc, mirrored) > identity_similarity(desc, other)


def test_gradients_reach_image_and_points(encoder, astronaut_image, dlib_refs):
    points = dlib_refs[0].clone().requires_grad_(True)
    image = astronaut_image.clone().requires_grad_(True)
    desc = encoder.from_landmarks(image, points)
    target = dlib_refs[2]
    loss = 1 - identity_similarity(desc, target).sum()
    loss.backward()
    for grad in (image.grad, points.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the chip only sees the face: far corners of the image get no gradient
    assert image.grad[..., :40, :40].abs().sum() == 0


def test_similarity_transform_recovers_a_known_one():
    torch.manual_seed(0)
    src = torch.rand(2, 10, 2, dtype=torch.float64) * 100
    angle, scale, shift = 0.3, 2.5, torch.tensor([7.0, -4.0], dtype=torch.float64)
    rot = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                               dtype=torch.float64)
    dst = src @ rot.T + shift
    tform = similarity_transform(src, dst)
    torch.testing.assert_close(tform[:, :, :2], rot.expand(2, 2, 2))
    torch.testing.assert_close(tform[:, :, 2], shift.expand(2, 2))


def test_chip_transform_of_the_template_itself():
    # Landmarks exactly at the template's chip positions: dlib's chip is the identity up to its own
    # half-pixel shift (the rectangle is centred on size / 2, pixel centres on 0 .. size - 1).
    size, padding = 150, 0.25
    points = torch.zeros(1, 68, 2, dtype=torch.float64)
    template = (padding + torch.from_numpy(DLIB_MEAN_FACE)) / (2 * padding + 1) * size
    points[0, 17:] = template
    tform = dlib_chip_transform(points, size, padding)
    expected = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]], dtype=torch.float64)
    torch.testing.assert_close(tform, expected)
    assert len(DLIB_ALIGN_POINTS) == 33


def test_large_faces_are_antialiased():
    # a face 8x the chip's scale: the chip of a fine checkerboard is its average, not aliasing
    size = 150
    points = torch.zeros(1, 68, 2)
    points[0, 17:] = torch.from_numpy((0.25 + DLIB_MEAN_FACE) / 1.5 * size * 8).float()
    board = (torch.arange(1200)[:, None] + torch.arange(1200)[None]) % 2
    image = board.float().expand(1, 3, 1200, 1200)
    chip = align_face_chips(image, points)
    assert (chip[..., 20:130, 20:130] - 0.5).abs().max() < 0.05


def test_truncated_recognition_weights_are_a_one_line_error(tmp_path):
    for f in RECOGNITION_MANIFEST.parent.glob("face_recognition_model*"):
        shutil.copy(f, tmp_path / f.name)
    shard = tmp_path / "face_recognition_model.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError) as info:
        IdentityEncoder.from_weights(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "face_recognition_model.bin" in message and "truncated" in message
    manifest = tmp_path / RECOGNITION_MANIFEST.name
    manifest.write_text(manifest.read_text()[:-200])
    with pytest.raises(CheckpointError, match="bad JSON"):
        IdentityEncoder.from_weights(manifest)
