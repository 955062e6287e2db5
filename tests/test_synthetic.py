"""models/synthetic.py: clips with known motion (the ground truth of the tracking tests)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from models.synthetic import (
    MOTIONS,
    Pose,
    ThinPlateSpline,
    motion,
    mouth_points,
    render_frame,
    write_clip,
)
from storage.video import probe, read_frames
from tests.clips import base_points, photo


def test_thin_plate_spline_interpolates_and_keeps_affine_maps():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (20, 2))
    dst = src + rng.normal(0, 3, src.shape)
    tps = ThinPlateSpline(src, dst)
    np.testing.assert_allclose(tps(src), dst, atol=1e-8)
    # An affine map is reproduced everywhere (the bending part is zero).
    affine = np.array([[1.1, 0.2], [-0.1, 0.9]])
    tps = ThinPlateSpline(src, src @ affine.T + [3, -4])
    grid = rng.uniform(-50, 150, (100, 2))
    np.testing.assert_allclose(tps(grid), grid @ affine.T + [3, -4], atol=1e-7)
    with pytest.raises(ValueError):
        ThinPlateSpline(src[:2], dst[:2])


def test_motion_laws():
    assert set(MOTIONS) == {"still", "shift", "rotate", "scale", "mouth", "all"}
    shift = motion("shift", 25, shift=20)
    assert shift[0] == Pose() and max(p.dx for p in shift) == pytest.approx(20, abs=0.1)
    mouth = motion("mouth", 25, mouth=12)
    assert mouth[0].mouth == 0 and mouth[12].mouth == pytest.approx(12) and mouth[-1].mouth < 1e-9
    assert all(p.angle == 0 and p.scale == 1 for p in mouth)
    everything = motion("all", 25)
    assert any(p.dx and p.angle and p.scale != 1 and p.mouth for p in everything)
    with pytest.raises(ValueError, match="unknown motion"):
        motion("wobble", 10)


def test_head_motion_frames_match_their_truth():
    points = base_points()
    rest, truth0 = render_frame(photo(), points, Pose(), 256)
    centre = (points.min(0) + points.max(0)) / 2
    np.testing.assert_allclose(truth0, points - centre + 127.5, atol=1e-9)  # face in the middle at rest
    # An integer shift moves the pixels exactly (bicubic sampling at integer offsets is a copy).
    moved, truth = render_frame(photo(), points, Pose(dx=7, dy=-3), 256)
    np.testing.assert_allclose(truth, truth0 + [7, -3], atol=1e-9)
    np.testing.assert_array_equal(moved[10:200, 20:220], rest[13:203, 13:213])
    # Rotation is counter-clockwise on screen: a point right of the centre goes up.
    _, turned = render_frame(photo(), points, Pose(angle=90), 256)
    right_eye = truth0[42:48].mean(0) - 127.5  # on the image's right, above the centre
    np.testing.assert_allclose(turned[42:48].mean(0) - 127.5, [right_eye[1], -right_eye[0]], atol=1e-9)
    # Scale about the face centre.
    _, zoomed = render_frame(photo(), points, Pose(scale=1.5), 256)
    np.testing.assert_allclose(zoomed - 127.5, 1.5 * (truth0 - 127.5), atol=1e-9)


def test_rotated_frame_content_follows_the_truth():
    """The pixels around each true point of a rotated frame are those around the point at rest."""
    points = base_points()
    rest, truth0 = render_frame(photo(), points, Pose(), 256)
    turned, truth = render_frame(photo(), points, Pose(angle=20, scale=1.2, dx=5), 256)
    # Undo the known similarity on the turned frame: it must give back the frame at rest.
    m = cv2.estimateAffinePartial2D(truth, truth0)[0]
    back = cv2.warpAffine(turned, m, (256, 256), flags=cv2.INTER_CUBIC)
    face = (slice(int(truth0[:, 1].min()), int(truth0[:, 1].max())),
            slice(int(truth0[:, 0].min()), int(truth0[:, 0].max())))
    assert np.abs(back[face].astype(int) - rest[face]).mean() < 6  # two resamplings of a sharp photo
    assert math.isclose(np.hypot(*m[:, 0]), 1 / 1.2, rel_tol=1e-6)


def test_mouth_opening_moves_lower_lip_and_chin_only():
    points = base_points()
    rest, truth0 = render_frame(photo(), points, Pose(), 256)
    opened, truth = render_frame(photo(), points, Pose(mouth=10), 256)
    moved = np.linalg.norm(truth - truth0, axis=1)
    assert moved[57] == pytest.approx(10) and moved[66] == pytest.approx(10) and moved[8] == pytest.approx(10)
    assert moved[62] == 0 and moved[51] == 0 and moved[:4].max() == 0 and moved[17:48].max() == 0
    np.testing.assert_allclose(truth, mouth_points(points, 10) - (points.min(0) + points.max(0)) / 2 + 127.5)
    # Above the nose the warp spills over by a fraction of a pixel at most; the lips change a lot.
    top = slice(0, int(truth0[27:36, 1].min()))
    assert np.abs(opened[top].astype(int) - rest[top]).mean() < 1.5
    lips = (slice(int(truth0[51, 1]), int(truth[8, 1])), slice(int(truth0[48, 0]), int(truth0[54, 0])))
    assert np.abs(opened[lips].astype(int) - rest[lips]).mean() > 10
    # The content that sat at the lower lip at rest is now 10 px lower (template match).
    x, y = np.round(truth0[57]).astype(int)
    patch = rest[y - 4:y + 5, x - 6:x + 7]
    score = cv2.matchTemplate(opened, patch, cv2.TM_SQDIFF)
    _, _, (mx, my), _ = cv2.minMaxLoc(score)
    assert abs(mx + 6 - x) <= 1 and abs(my + 4 - (y + 10)) <= 1


def test_write_clip_encodes_every_frame(tmp_path):
    poses = motion("all", 6)
    truth = write_clip(tmp_path / "clip.mp4", photo(), base_points(), poses, fps=25, size=(160, 128))
    info = probe(tmp_path / "clip.mp4")
    assert (info.frame_count, info.width, info.height, info.fps) == (6, 160, 128, 25)
    assert truth.shape == (6, 68, 2)
    frames = list(read_frames(tmp_path / "clip.mp4"))
    errors = [np.abs(frames[3].astype(int) - render_frame(photo(), base_points(), pose, (160, 128))[0]).mean()
              for pose in poses]
    assert errors[3] < 5 and int(np.argmin(errors)) == 3  # H.264 at crf 18 on a detailed 160 x 128 frame
