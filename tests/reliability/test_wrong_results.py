"""Wrong results a user would not notice: a face "tracked" through frames where there is none, and an
anamorphic video squeezed. Real detector and landmark net, real ffmpeg; no Prefect."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from models.detection import FaceFlag, FaceTracker, make_detector
from models.face_track import face_visible, track_frames
from models.landmarks import load_landmark_backend
from storage.video import ffmpeg_exe, probe, read_frames
from tests.clips import clip_frames, write_test_clip


@pytest.fixture(scope="module")
def tracker_parts():
    return load_landmark_backend("faceapi"), make_detector("haar")


def test_faceless_frames_are_lost_not_tracked(tracker_parts):
    """A fade to near-black (3% brightness) and a frame of constant 3: the landmark net, run where the
    face was, answers with a face anyway; these frames must come out LOST (then filled from their
    neighbours by plan_crops), while a dim but visible face (15%) is still tracked."""
    backend, detector = tracker_parts
    frames, _ = clip_frames("all", frames=10)
    frames = [f.copy() for f in frames]
    frames[3] = (frames[3] * 0.03).astype(np.uint8)
    frames[4] = (frames[4] * 0.03).astype(np.uint8)
    frames[5] = np.full_like(frames[5], 3)
    frames[8] = (frames[8] * 0.15).astype(np.uint8)
    faces = list(track_frames(frames, FaceTracker(detector, backend.predict_frame)))
    flags = [face.flag for face in faces]
    assert flags[3] == flags[4] == flags[5] == FaceFlag.LOST, flags
    assert all(np.isnan(faces[i].points).all() for i in (3, 4, 5))
    assert flags[0] == FaceFlag.DETECTED and FaceFlag.LOST not in (flags[1], flags[2], flags[8]), flags
    assert flags[6] == FaceFlag.DETECTED  # found again once the face is back


def test_face_visible_thresholds():
    frame = np.zeros((64, 64, 3), np.uint8)
    points = np.stack(np.meshgrid(np.linspace(10, 50, 17), np.linspace(10, 50, 4)), -1).reshape(-1, 2)[:68]
    assert not face_visible(frame, points)
    frame[::2] = 200  # stripes: contrast
    assert face_visible(frame, points)
    assert not face_visible(frame, points + 1000)  # off the frame


@pytest.mark.parametrize("sar, coded", [("2/1", (64, 128)), ("1/2", (128, 64))])
def test_anamorphic_video_is_shown_with_square_pixels(tmp_path, sar, coded):
    """A clip stored squeezed (coded width x height, sample aspect ratio `sar`) decodes to what a
    player shows: the original 128x128 picture, not the squeezed one."""
    original = tmp_path / "clip.mp4"
    write_test_clip(original, "mouth", frames=3, size=128)
    squeezed = tmp_path / "anamorphic.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(original), "-vf",
                    f"scale={coded[0]}:{coded[1]},setsar={sar}", "-c:v", "libx264", "-crf", "12",
                    str(squeezed)], check=True)
    info = probe(squeezed)
    assert (info.coded_width, info.coded_height) == coded
    assert (info.width, info.height) == (128, 128)
    assert any("anamorphic" in w for w in info.warnings)
    with read_frames(original) as a, read_frames(squeezed) as b:
        for want, got in zip(a, b, strict=True):
            assert got.shape == (128, 128, 3)
            # Half the detail along one axis is gone; the picture is in place.
            assert np.abs(got.astype(float) - want.astype(float)).mean() < 8
