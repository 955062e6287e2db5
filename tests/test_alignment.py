"""FFHQ alignment on scikit-image's astronaut() with dlib's 68 points (shared/fixtures/faces)."""

from __future__ import annotations

import numpy as np
import pytest

from models.alignment import (
    AlignTransform,
    align,
    align_torch,
    crop_mask,
    crop_to_frame,
    face_region_mask,
    ffhq_quad,
    frame_from_crop_matrix,
    landmarks_to_crop,
    paste_back,
    quad_corners,
)


def recipe_quad(lm: np.ndarray) -> np.ndarray:
    """The FFHQ quad corners straight from the recipe (ffhq-dataset's order: top-left, bottom-left,
    bottom-right, top-right), written out independently of models.alignment."""
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) / 2 - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def expected_in_crop(lm: np.ndarray, frame_points: np.ndarray, R: int) -> np.ndarray:
    """Where frame points land in an R x R crop whose outer pixel edges are the recipe's quad: solve
    the affine map from three quad corners to the crop's corners (-0.5 / R - 0.5 in pixel-centre
    coordinates)."""
    quad = recipe_quad(lm)
    src = np.c_[quad[[0, 1, 3]], np.ones(3)]
    dst = np.array([[-0.5, -0.5], [-0.5, R - 0.5], [R - 0.5, -0.5]])
    m = np.linalg.solve(src, dst)  # (3, 2): [x y 1] @ m = [u v]
    return np.c_[frame_points, np.ones(len(frame_points))] @ m


@pytest.mark.parametrize("R", [64, 256, 1024])
def test_crop_shape_and_eyes_where_ffhq_puts_them(astronaut, astronaut_points, R):
    t = AlignTransform.from_landmarks(astronaut_points, R)
    crop = align(astronaut, t)
    assert crop.shape == (R, R, 3) and crop.dtype == np.uint8

    np.testing.assert_allclose(quad_corners(t.quad), recipe_quad(astronaut_points), atol=1e-9)
    eyes = np.stack([astronaut_points[36:42].mean(0), astronaut_points[42:48].mean(0)])
    np.testing.assert_allclose(landmarks_to_crop(eyes, t), expected_in_crop(astronaut_points, eyes, R),
                               atol=1e-6)
    # FFHQ's layout: for this near-frontal face 2|eye_to_eye| wins, so the eyes are R/4 apart, level,
    # a little above the middle.
    left, right = landmarks_to_crop(eyes, t)
    assert abs(np.hypot(*(right - left)) / R - 0.25) < 0.01
    assert abs(left[1] - right[1]) < 0.01 * R and 0.44 * R < left[1] < 0.5 * R


def test_crop_content_sits_at_the_transformed_landmarks(astronaut, astronaut_points):
    """At 1024 (upsampling, no antialias blur) the crop's pixel at each landmark's crop position
    matches the frame's pixel at the landmark."""
    import cv2

    t = AlignTransform.from_landmarks(astronaut_points, 1024)
    crop = align(astronaut, t).astype(np.float32)
    in_crop = landmarks_to_crop(astronaut_points, t).astype(np.float32)
    sample = cv2.remap(crop, in_crop[:, None, 0], in_crop[:, None, 1], cv2.INTER_LINEAR)[:, 0]
    xs, ys = astronaut_points[:, 0].astype(int), astronaut_points[:, 1].astype(int)
    frame_px = astronaut[ys, xs].astype(np.float32)
    assert np.abs(sample - frame_px).mean() < 6.0
    # A wrong transform (off by a few pixels) does much worse: the test can tell.
    shifted = cv2.remap(crop, in_crop[:, None, 0] + 40, in_crop[:, None, 1], cv2.INTER_LINEAR)[:, 0]
    assert np.abs(shifted - frame_px).mean() > 15.0


def test_inverse_transform_round_trip(astronaut_points):
    for R in (64, 256, 1024):
        t = AlignTransform.from_landmarks(astronaut_points, R)
        np.testing.assert_allclose(t.frame_from_crop @ t.crop_from_frame, np.eye(3), atol=1e-12)
        in_crop = landmarks_to_crop(astronaut_points, t)
        assert np.abs(crop_to_frame(in_crop, t) - astronaut_points).max() < 1e-6
    # Same region at any resolution: crop coordinates scale with R about the pixel-edge origin.
    a = AlignTransform.from_landmarks(astronaut_points, 256)
    b = AlignTransform.from_landmarks(astronaut_points, 1024)
    np.testing.assert_allclose(
        (landmarks_to_crop(astronaut_points, a) + 0.5) * 4, landmarks_to_crop(astronaut_points, b) + 0.5,
        atol=1e-9
    )


def test_quad_vectorised_over_frames(astronaut_points):
    stack = np.stack([astronaut_points, astronaut_points + [10.0, -3.0], astronaut_points * 1.5])
    quads = ffhq_quad(stack)
    assert quads.shape == (3, 4)
    np.testing.assert_allclose(quads[1], ffhq_quad(astronaut_points) + [10.0, -3.0, 0.0, 0.0])
    np.testing.assert_allclose(quads[2], ffhq_quad(astronaut_points) * 1.5)
    mats = frame_from_crop_matrix(quads, 256)
    assert mats.shape == (3, 3, 3)
    np.testing.assert_allclose(mats[0], AlignTransform(quads[0], 256).frame_from_crop)


def frame_to_crop_coords(t: AlignTransform, shape) -> np.ndarray:
    """(H, W, 2) crop coordinates of every frame pixel."""
    H, W = shape[:2]
    ys, xs = np.mgrid[0:H, 0:W]
    return landmarks_to_crop(np.stack([xs, ys], -1).astype(np.float64), t)


@pytest.mark.parametrize("R", [256, 1024])
def test_paste_back_unmodified_crop(astronaut, astronaut_points, R):
    t = AlignTransform.from_landmarks(astronaut_points, R)
    crop = align(astronaut, t)
    out = paste_back(astronaut, crop, t, feather=0.1)
    assert out.shape == astronaut.shape and out.dtype == np.uint8

    uv = frame_to_crop_coords(t, astronaut.shape)
    margin = 0.1 * R + 2  # the feathered band, plus the interpolation kernel
    inner = ((uv > margin) & (uv < R - 1 - margin)).all(-1)
    outer = ((uv < -2) | (uv > R + 1)).any(-1)
    assert inner.sum() > 10000 and outer.sum() > 10000
    err = np.abs(out.astype(int) - astronaut.astype(int))
    # Two resamplings: ~0.9 grey levels at 256, ~1.5 at 1024 (the antialias box filter of the way back).
    assert err[inner].mean() < 2.0
    np.testing.assert_array_equal(out[outer], astronaut[outer])

    # A black crop blacks out the inside exactly and still leaves the outside untouched.
    dark = paste_back(astronaut, np.zeros_like(crop), t, feather=0.1)
    assert dark[inner].max() == 0
    np.testing.assert_array_equal(dark[outer], astronaut[outer])


def test_paste_back_face_region_mask(astronaut, astronaut_points):
    R = 256
    t = AlignTransform.from_landmarks(astronaut_points, R)
    mask = face_region_mask(landmarks_to_crop(astronaut_points, t), R)
    assert mask.shape == (R, R) and mask.min() >= 0 and mask.max() <= 1
    nose, corner = landmarks_to_crop(astronaut_points[30:31], t)[0].round().astype(int), (5, 5)
    assert mask[nose[1], nose[0]] > 0.99 and mask[corner] == 0
    dark = paste_back(astronaut, np.zeros((R, R, 3), np.uint8), t, mask=mask)
    x, y = astronaut_points[30].astype(int)
    assert dark[y, x].max() == 0  # the nose is replaced
    assert (dark[20, 20] == astronaut[20, 20]).all()  # the background is not
    # The default whole-crop mask also replaces the hair beside the face; the face mask does not.
    x, y = crop_to_frame(np.array([0.15 * R, 0.5 * R]), t).round().astype(int)
    assert dark[y, x].max() > 0
    whole = paste_back(astronaut, np.zeros((R, R, 3), np.uint8), t)
    assert whole[y, x].max() == 0
    assert (whole.sum(-1) == 0).sum() > (dark.sum(-1) == 0).sum()


def test_crop_mask_feather():
    m = crop_mask(100, 0.1)
    assert m[50, 50] == 1.0 and m[0, 50] < 0.01 and m[50, 99] < 0.01
    assert 0.3 < m[5, 50] < 0.7  # half-way through the 10-pixel ramp
    assert (crop_mask(8, 0.0) == 1).all()


def test_odd_frame_sizes_float_frames_and_borders(astronaut, astronaut_points):
    """An odd-sized frame cut so that the face's crop reaches past its top edge."""
    frame = np.ascontiguousarray(astronaut[57:440, 141:501])  # 383 x 360
    lm = astronaut_points - [141, 57]
    t = AlignTransform.from_landmarks(lm, 255)
    assert t.corners[:, 1].min() < -30  # the quad sticks out above
    crop = align(frame, t)
    assert crop.shape == (255, 255, 3)
    const = align(frame, t, border="constant")
    above = crop_to_frame(np.array([128.0, 5.0]), t)
    assert above[1] < -30 and const[5, 128].max() == 0 and crop[5, 128].max() > 0
    # Inside the frame both borders agree.
    inside = landmarks_to_crop(lm, t).round().astype(int)
    np.testing.assert_array_equal(const[inside[:, 1], inside[:, 0]], crop[inside[:, 1], inside[:, 0]])

    f32 = align(frame.astype(np.float32) / 255, t)
    assert f32.dtype == np.float32
    assert np.abs(f32 * 255 - crop).mean() < 1.0

    out = paste_back(frame, crop, t)
    assert out.shape == frame.shape
    uv = frame_to_crop_coords(t, frame.shape)
    inner = ((uv > 0.1 * 255 + 2) & (uv < 255 - 0.1 * 255 - 3)).all(-1)
    assert np.abs(out.astype(int) - frame.astype(int))[inner].mean() < 1.5


@pytest.mark.parametrize(
    "box", [(57, 440, 141, 501), (136, 399, 100, 401), (101, 172, 190, 263)], ids=["edge", "overhang", "tiny"]
)
def test_reflect_border_is_the_mirrored_frame(astronaut, astronaut_points, box):
    """Cropping a frame whose quad sticks out equals cropping the frame explicitly mirrored
    (numpy's "symmetric" pad) far enough that the quad fits: the border is reflected at the frame's
    own edge, also when the quad overhangs by more than it covers (overhang) and when it is many times
    the frame (tiny: 71 x 73 pixels, reflected repeatedly)."""
    y0, y1, x0, x1 = box
    frame = np.ascontiguousarray(astronaut[y0:y1, x0:x1])
    lm = astronaut_points - [x0, y0]
    pad = 300
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    for R in (255, 128):  # no antialias shrink here: its box grid would differ with the padding
        t = AlignTransform.from_landmarks(lm, R)
        t_padded = AlignTransform(t.quad + [pad, pad, 0, 0], R)
        assert (t_padded.corners > 0).all() and (t_padded.corners < padded.shape[1::-1]).all()
        diff = np.abs(align(frame, t).astype(int) - align(padded, t_padded).astype(int))
        assert diff.mean() < 0.05 and diff.max() <= 2


def test_align_torch_matches_cv2_and_is_differentiable(astronaut, astronaut_points):
    torch = pytest.importorskip("torch")
    for R in (256, 64):  # upsampling; then 2.7x downsampling (antialiased on both paths)
        t = AlignTransform.from_landmarks(astronaut_points, R)
        img = torch.tensor(astronaut).permute(2, 0, 1)[None].float().div(255).requires_grad_(True)
        out = align_torch(img, t.frame_from_crop, R)
        assert out.shape == (1, 3, R, R)
        ref = align(astronaut.astype(np.float32) / 255, t)
        diff = np.abs(out[0].permute(1, 2, 0).detach().numpy() - ref)
        assert diff.mean() < 0.02
        out.mean().backward()
        assert img.grad is not None and img.grad.abs().sum() > 0
    # Batched with per-image transforms.
    quads = ffhq_quad(np.stack([astronaut_points, astronaut_points + [30.0, 0.0]]))
    batch = torch.tensor(astronaut).permute(2, 0, 1)[None].float().div(255).repeat(2, 1, 1, 1)
    out = align_torch(batch, frame_from_crop_matrix(quads, 128), 128)
    assert out.shape == (2, 3, 128, 128) and not torch.allclose(out[0], out[1])


def test_bad_inputs(astronaut_points):
    with pytest.raises(ValueError, match="68, 2"):
        AlignTransform.from_landmarks(astronaut_points[:5], 256)
    with pytest.raises(ValueError, match="degenerate"):
        AlignTransform(np.zeros(4), 256)
    t = AlignTransform.from_landmarks(astronaut_points, 64)
    with pytest.raises(ValueError, match="transform is for 64x64"):
        paste_back(np.zeros((100, 100, 3), np.uint8), np.zeros((32, 32, 3), np.uint8), t)
    with pytest.raises(ValueError, match="border"):
        align(np.zeros((100, 100, 3), np.uint8), t, border="wrap")
