"""`facereenact evaluate` on short clips the tests make (tests/clips.py: the astronaut photo moved by
known motion): a clip against itself, a shifted copy, a side-by-side result with and without its
sidecar, a result with sub-frames, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from stages.evaluate import evaluate_result
from storage.errors import InputError, NoFaceError
from storage.video import VideoWriter
from tests.clips import FPS, clip_frames, photo, write_test_clip
from tests.helpers import assert_user_error

FRAMES = 10


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    write_test_clip(d / "driving.mp4", "all", frames=FRAMES)
    images, _ = clip_frames("all", FRAMES)
    with VideoWriter(d / "shifted.mp4", FPS) as writer:       # the face 8 px off, down and right
        for image in images:
            writer.write(np.roll(image, (8, 8), axis=(0, 1)))
    with VideoWriter(d / "panels.mp4", FPS) as writer:        # look | driving | result, 256 px each
        for image in images:
            writer.write(np.concatenate([np.full_like(image, 90), image[:, ::-1], image], axis=1))
    with VideoWriter(d / "sub.mp4", 2 * FPS) as writer:       # key frames + blank sub-frames between
        for image in images:
            writer.write(image)
            writer.write(np.full_like(image, 118))
    Image.fromarray(photo()).save(d / "source.png")
    Image.fromarray(np.full((200, 200, 3), 118, np.uint8)).save(d / "blank.png")
    return d


def test_clip_against_itself_and_a_shifted_copy(files):
    same = evaluate_result(files / "driving.mp4", files / "source.png", files / "driving.mp4")
    assert same["frames_compared"] == FRAMES and same["no_face_result"] == 0
    assert same["landmark_nme"] == pytest.approx(0, abs=1e-9)
    assert same["landmark_jitter"] == same["driving_landmark_jitter"] > 0
    assert same["identity_similarity"] > 0.95                 # the clip is the source photo, moved
    assert same["seconds_per_frame"] is None and same["coordinates"] == "frame"
    shifted = evaluate_result(files / "shifted.mp4", files / "source.png", files / "driving.mp4")
    # 8 px on both axes = 11.3 px against an outer-eye distance of ~70 px at this size: NME ~0.15
    assert 0.08 < shifted["landmark_nme"] < 0.3, shifted


def test_side_by_side_from_the_sidecar_or_the_frame_shape(files):
    auto = evaluate_result(files / "panels.mp4", files / "source.png", files / "driving.mp4")
    assert auto["crop_result"] == "right" and auto["notes"]   # guessed from the 3:1 frame, and said so
    assert auto["landmark_nme"] == pytest.approx(0, abs=0.02)  # the panel re-encoded in a wider frame
    whole = evaluate_result(files / "panels.mp4", files / "source.png", files / "driving.mp4",
                            crop_result="none")
    assert whole["landmark_nme"] is None or whole["landmark_nme"] > 0.05
    (files / "panels.mp4.json").write_text(json.dumps(
        {"settings": {"layout": "side-by-side", "subframes": False}, "fps": "25", "frames": FRAMES,
         "metrics": {"seconds_per_frame": 1.25}}))
    try:
        side = evaluate_result(files / "panels.mp4", files / "source.png", files / "driving.mp4")
    finally:
        (files / "panels.mp4.json").unlink()
    assert side["crop_result"] == "right" and not side["notes"] and side["seconds_per_frame"] == 1.25
    assert side["landmark_nme"] == pytest.approx(auto["landmark_nme"])


def test_subframes_are_skipped(files):
    report = evaluate_result(files / "sub.mp4", files / "source.png", files / "driving.mp4")
    assert report["subframes"] and report["frames_compared"] == FRAMES and report["no_face_result"] == 0
    assert report["landmark_nme"] == pytest.approx(0, abs=0.02)  # re-encoded at another rate


def test_errors(files, tmp_path, run_cli):
    with pytest.raises(NoFaceError, match="no face found in the source image"):
        evaluate_result(files / "driving.mp4", files / "blank.png", files / "driving.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(InputError):
        evaluate_result(corrupt, files / "source.png", files / "driving.mp4")
    (tmp_path / "bad.mp4").write_bytes((files / "driving.mp4").read_bytes())
    (tmp_path / "bad.mp4.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable JSON sidecar"):
        evaluate_result(tmp_path / "bad.mp4", files / "source.png", files / "driving.mp4")
    missing = tmp_path / "missing.mp4"
    proc = run_cli("evaluate", missing, "--source", files / "source.png", "--driving", files / "driving.mp4")
    assert_user_error(proc, str(missing), code=2)


def test_cli_table_and_json(files, cli):
    args = ["evaluate", files / "shifted.mp4", "--source", files / "source.png", "--driving",
            files / "driving.mp4"]
    table = cli(*args, check=True).stdout
    assert "landmark NME" in table and "seconds per frame" in table and "n/a" in table
    report = json.loads(cli(*args, "--json", check=True).stdout)
    assert report["landmark_nme"] > 0.08 and report["frames_compared"] == FRAMES
