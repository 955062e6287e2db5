"""storage/media.py: a video or an image as one medium, keyed by content."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from storage.errors import InputError
from storage.images import save_image
from storage.media import media_kind, open_medium
from storage.provenance import sha256_file
from storage.video import VideoWriter


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    with VideoWriter(path, 25) as writer:
        for k in range(6):
            writer.write(np.full((48, 64, 3), 40 * k, np.uint8))
    return path


def test_video_medium(clip):
    medium = open_medium(clip)
    described = (medium.kind, medium.frame_count, medium.width, medium.height, medium.fps)
    assert described == ("video", 6, 64, 48, 25)
    assert medium.key == sha256_file(clip)
    info = medium.info()
    assert info["source"] == str(clip) and info["kind"] == "video" and info["probe"]["fps"] == "25/1"
    frames = list(medium.frames(2))
    assert len(frames) == 4 and abs(int(frames[0].mean()) - 80) <= 2  # frame 2 first
    assert len(list(medium.frames(1, 3))) == 2


def test_image_medium_and_content_key(tmp_path):
    image = np.zeros((30, 40, 3), np.uint8)
    save_image(tmp_path / "face.png", image)
    medium = open_medium(tmp_path / "face.png")
    described = (medium.kind, medium.frame_count, medium.width, medium.height, medium.fps)
    assert described == ("image", 1, 40, 30, None)
    (frame,) = medium.frames()
    np.testing.assert_array_equal(frame, image)
    assert list(medium.frames(1)) == []
    # The key is the content's: a copy under another name has the same key, an edit another one.
    shutil.copy(tmp_path / "face.png", tmp_path / "copy.png")
    assert open_medium(tmp_path / "copy.png").key == medium.key
    save_image(tmp_path / "copy.png", image + 1)
    assert open_medium(tmp_path / "copy.png").key != medium.key


def test_kind_by_suffix_then_content(tmp_path, clip):
    save_image(tmp_path / "photo.png", np.zeros((8, 8, 3), np.uint8))
    shutil.copy(tmp_path / "photo.png", tmp_path / "photo_without_suffix")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    assert media_kind(tmp_path / "photo_without_suffix") == "image"
    assert media_kind(tmp_path / "broken.jpg") == "image"  # so it gets the image error
    assert media_kind(clip) == "video"
    assert media_kind(tmp_path / "notes.txt") == "video"
    with pytest.raises(InputError, match="not a readable image"):
        open_medium(tmp_path / "broken.jpg")
    with pytest.raises(InputError, match="not a readable video"):
        open_medium(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file"):
        open_medium(tmp_path / "missing.mp4")
