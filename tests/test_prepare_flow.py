"""The prepare flows end to end (Prefect test server, real detector and landmark net, tiny clips):
tables and their provenance, frames without a face, resumption, idempotence, images."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from flows.prepare import prepare, prepare_image, prepare_video
from models.alignment import AlignTransform
from models.detection import FaceFlag
from storage.cache import Workspace
from storage.errors import InputError, NoFaceError
from storage.images import save_image
from storage.provenance import sha256_file
from storage.video import VideoWriter
from tests.clips import BLANK_GREY, photo, write_test_clip
from tests.support.cache_files import chunk_mtimes

pytestmark = pytest.mark.usefixtures("prefect_harness")

FRAMES, BLANK, R = 20, 9, 64


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("clips") / "driving.mp4"
    return path, write_test_clip(path, "all", frames=FRAMES, blank=(BLANK,))


def tables(cache: Path, key: str) -> dict[str, list]:
    ws = Workspace(cache)
    found: dict[str, list] = {}
    for table in ws.tables(key):
        found.setdefault(table.stage, []).append(table)
    return found


def arrays(cache: Path, key: str) -> dict[str, np.ndarray]:
    out = {}
    for stage, stage_tables in tables(cache, key).items():
        (table,) = stage_tables
        for name in table.fields:
            out[f"{stage}.{name}"] = table.read(name)
    return out


def test_video_end_to_end(clip, tmp_path):
    path, truth = clip
    cache = tmp_path / "cache"
    result = prepare_video(str(path), str(cache), resolution=R)
    key = sha256_file(path)
    assert result["key"] == key and result["kind"] == "video" and result["frames"] == FRAMES
    assert result["landmarks"]["computed"] == FRAMES and result["landmarks"]["lost"] == 1
    assert result["crops"]["computed"] == FRAMES and result["crops"]["interpolated"] == 1

    ws = Workspace(cache)
    media = dict(ws.media(key).attrs)
    assert media["source"] == str(path) and media["kind"] == "video"
    assert media["probe"]["frame_count"] == FRAMES
    found = tables(cache, key)
    (marks,), (crops,) = found["landmarks"], found["crops"]
    assert marks.is_complete() and crops.is_complete()
    # Provenance: what made them, down to the weights' sha256; crops name the landmarks table.
    assert marks.provenance["tracker"]["detector"] == "ssd"  # the default, with its weights' hash
    assert len(marks.provenance["tracker"]["weights_sha256"]) == 64
    assert marks.provenance["landmarks"]["backend"] == "faceapi"
    assert len(marks.provenance["landmarks"]["weights_sha256"]) == 64
    assert crops.provenance["landmarks_table"] == marks.key
    assert crops.provenance["smoothing"]["method"] == "one_euro" and crops.provenance["resolution"] == R

    flags = marks.read("flag")
    points = marks.read("points")
    assert flags[BLANK] == FaceFlag.LOST and np.isnan(points[BLANK]).all()
    assert np.isnan(marks.read("box")[BLANK]).all()
    assert (flags[np.arange(FRAMES) != BLANK] != FaceFlag.LOST).all() and flags[0] == FaceFlag.DETECTED
    known = np.arange(FRAMES) != BLANK
    assert np.linalg.norm(points[known] - truth[known], axis=-1).mean() < 1.5

    interpolated = crops.read("interpolated")
    assert interpolated.tolist() == [int(i == BLANK) for i in range(FRAMES)]  # kept, flagged, filled
    smoothed = crops.read("landmarks")
    assert np.isfinite(smoothed).all()
    assert np.linalg.norm(smoothed[known] - truth[known], axis=-1).mean() < 1.5
    crop = crops.read("crop")
    assert crop.shape == (FRAMES, R, R, 3) and crop.dtype == np.uint8
    assert abs(float(crop[BLANK].mean()) - BLANK_GREY) < 3  # the blank frame is cropped where the face was
    for i in (0, 13):
        t = AlignTransform(crops.read_frame("quad", i), R)
        np.testing.assert_allclose(crops.read_frame("frame_from_crop", i), t.frame_from_crop)
        inside = crops.read_frame("crop_landmarks", i)
        eyes = inside[36:42].mean(0), inside[42:48].mean(0)
        assert eyes[1][0] - eyes[0][0] == pytest.approx(R / 4, abs=1.0)  # FFHQ layout


def test_second_run_does_nothing_and_other_smoothing_reuses_landmarks(clip, tmp_path):
    path, _ = clip
    cache = tmp_path / "cache"
    prepare_video(str(path), str(cache), resolution=R)
    before = chunk_mtimes(cache)
    again = prepare_video(str(path), str(cache), resolution=R)
    assert again["landmarks"]["computed"] == 0 and again["crops"]["computed"] == 0
    assert chunk_mtimes(cache) == before  # not one chunk rewritten

    other = prepare_video(str(path), str(cache), resolution=R, smoothing={"method": "savgol", "window": 5})
    assert other["landmarks"]["computed"] == 0 and other["crops"]["computed"] == FRAMES
    found = tables(cache, sha256_file(path))
    assert len(found["landmarks"]) == 1 and len(found["crops"]) == 2
    assert {t.provenance["smoothing"]["method"] for t in found["crops"]} == {"one_euro", "savgol"}


def test_resume_after_a_crash_gives_the_same_arrays(clip, tmp_path):
    """The state a crash in the landmarks stage leaves: frames 0..6 done, the rest pending, no
    crops table yet. The rerun tracks from frame 7 on (seeded from frames < 7) and ends equal."""
    path, _ = clip
    cache = tmp_path / "cache"
    prepare_video(str(path), str(cache), resolution=R)
    key = sha256_file(path)
    expected = arrays(cache, key)
    (marks,), (crops,) = tables(cache, key)["landmarks"], tables(cache, key)["crops"]
    marks.reset(range(7, FRAMES))
    shutil.rmtree(cache / crops.location)
    resumed = prepare_video(str(path), str(cache), resolution=R)
    assert resumed["landmarks"]["computed"] == FRAMES - 7 and resumed["crops"]["computed"] == FRAMES
    # ... and a crash in the crops stage: the rerun crops only the frames not done.
    crops = tables(cache, key)["crops"][0]
    crops.reset([3, 4, 15])
    assert prepare_video(str(path), str(cache), resolution=R)["crops"]["computed"] == 3
    got = arrays(cache, key)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def two_faces() -> np.ndarray:
    """The astronaut at full size on the left and at 0.5x on the right of a 512 x 768 picture."""
    frame = np.full((512, 768, 3), 90, np.uint8)
    frame[:, :512] = photo()
    frame[128:384, 512:] = cv2.resize(photo(), (256, 256), interpolation=cv2.INTER_AREA)
    return frame


def test_image_largest_face_by_default_and_selectable(tmp_path):
    save_image(tmp_path / "two.png", two_faces())
    cache = tmp_path / "cache"
    big = prepare_image(str(tmp_path / "two.png"), str(cache), resolution=R)
    small = prepare_image(str(tmp_path / "two.png"), str(cache), resolution=R, face_index=1)
    assert big["frames"] == 1 and big["landmarks"]["detected"] == 1 and big["crops"]["computed"] == 1
    ws = Workspace(cache)
    big_points = ws.open_table(big["landmarks"]["table"]).read_frame("points", 0)
    small_points = ws.open_table(small["landmarks"]["table"]).read_frame("points", 0)
    assert big_points[:, 0].max() < 512 and small_points[:, 0].min() > 512
    face_width = lambda p: np.ptp(p[:, 0])  # noqa: E731
    assert face_width(small_points) == pytest.approx(face_width(big_points) / 2, rel=0.1)
    crops = ws.open_table(big["crops"]["table"])
    assert crops.provenance["smoothing"] == {"method": "none"} and crops.read("interpolated").tolist() == [0]
    with pytest.raises(NoFaceError, match="no face found in the image at face index 2"):
        prepare_image(str(tmp_path / "two.png"), str(cache), resolution=R, face_index=2)


def test_no_face_is_an_error_and_nothing_is_done(tmp_path):
    cache = tmp_path / "cache"
    save_image(tmp_path / "wall.png", np.full((200, 300, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="no face found in the image"):
        prepare_image(str(tmp_path / "wall.png"), str(cache))
    with VideoWriter(tmp_path / "empty-room.mp4", 25) as writer:
        for k in range(5):
            writer.write(np.full((96, 128, 3), 100 + k, np.uint8))
    with pytest.raises(NoFaceError, match="no face found in any of the 5 frames"):
        prepare_video(str(tmp_path / "empty-room.mp4"), str(cache))
    ws = Workspace(cache)
    assert all(t.counts()["done"] == 0 for t in ws.tables())
    assert not list(ws.tables(stage="crops"))


def test_batch_keeps_going_past_a_bad_input(clip, tmp_path):
    path, _ = clip
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="1 of 2 inputs failed .*bad.mp4: not a readable video"):
        prepare([str(tmp_path / "bad.mp4"), str(path)], str(cache), resolution=R)
    (marks,) = tables(cache, sha256_file(path))["landmarks"]
    assert marks.is_complete()  # the good one was prepared
    with pytest.raises(InputError, match="is a still image, not a video"):
        save_image(tmp_path / "face.png", photo())
        prepare_video(str(tmp_path / "face.png"), str(cache))
