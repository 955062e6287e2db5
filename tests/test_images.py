"""storage/images.py: every kind of still image in, RGB uint8 out; bad files as one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage.errors import InputError
from storage.images import load_image, save_image
from tests.reliability.inputs import png_header_only

RNG = np.random.default_rng(0)
PICTURE = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # H=48, W=64: rotations show


def test_png_roundtrip_exact(tmp_path: Path) -> None:
    path = save_image(tmp_path / "p.png", PICTURE)
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (48, 64, 3) and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, PICTURE)
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_jpeg_roundtrip_close(tmp_path: Path) -> None:
    y, x = np.mgrid[0:48, 0:64]
    smooth = np.stack([x * 4, y * 5, 255 - x * 2], axis=2).astype(np.uint8)  # JPEG-friendly gradients
    loaded = load_image(save_image(tmp_path / "p.jpg", smooth))
    assert np.abs(loaded.astype(int) - smooth).mean() < 2


@pytest.mark.parametrize(("orientation", "k"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_applied(tmp_path: Path, orientation: int, k: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"
    Image.fromarray(PICTURE).save(path, exif=exif)
    # 6 = "rotate 90 clockwise to display", 8 = counter-clockwise, 3 = 180.
    np.testing.assert_array_equal(load_image(path), np.rot90(PICTURE, k=k))


def test_modes_become_rgb(tmp_path: Path) -> None:
    gray = PICTURE[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = load_image(tmp_path / "gray.png")
    assert out.shape == (48, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)

    # 16-bit: the full range is rescaled, not clipped at 255.
    deep = np.array([[0, 257 * 100, 32768, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png")[0, :, 0], [0, 100, 128, 255])

    # Transparency: composited over white.
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 10, 10)
    rgba[..., 3] = [[0, 255, 128], [0, 255, 128]]
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    out = load_image(tmp_path / "alpha.png").astype(int)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [200, 10, 10])
    assert np.abs(out[0, 2] - [228, 133, 133]).max() <= 1

    palette = Image.fromarray(PICTURE).quantize(8)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    assert load_image(tmp_path / "palette.png").shape == (48, 64, 3)

    Image.fromarray(PICTURE).convert("CMYK").save(tmp_path / "cmyk.jpg")
    cmyk = load_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (48, 64, 3) and np.abs(cmyk.astype(int) - PICTURE).mean() < 12


def _one_line_error(path: Path, fragment: str, **kwargs) -> None:
    with pytest.raises(InputError) as caught:
        load_image(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    assert fragment.lower() in message.lower(), message


def test_bad_files(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "missing.png", "no such file")
    (tmp_path / "empty.png").write_bytes(b"")
    _one_line_error(tmp_path / "empty.png", "empty file")
    (tmp_path / "random.jpg").write_bytes(RNG.integers(0, 256, 5000, np.uint8).tobytes())
    _one_line_error(tmp_path / "random.jpg", "not a readable image")
    (tmp_path / "notes.txt").write_text("not an image\n")
    _one_line_error(tmp_path / "notes.txt", "not a readable image")
    _one_line_error(tmp_path, "is a directory")
    for suffix in ("png", "jpg"):
        whole = save_image(tmp_path / f"whole.{suffix}", PICTURE).read_bytes()
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(whole[: len(whole) // 2])
        _one_line_error(cut, "truncated")


def test_decompression_bombs_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Over our limit (2**27 pixels) but under Pillow's own: our check, from the header.
    _one_line_error(png_header_only(tmp_path / "big.png", 12_000, 12_000), "12000x12000")
    # Far over Pillow's hard limit too: the same kind of message.
    _one_line_error(png_header_only(tmp_path / "bomb.png", 100_000, 100_000), "above the limit")
    # A real small image against a small limit, by argument and by environment.
    path = save_image(tmp_path / "small.png", PICTURE)
    _one_line_error(path, "above the limit", max_pixels=1000)
    monkeypatch.setenv("FACEREENACT_MAX_PIXELS", "1000")
    _one_line_error(path, "FACEREENACT_MAX_PIXELS")
    monkeypatch.setenv("FACEREENACT_MAX_PIXELS", str(64 * 48))
    assert load_image(path).shape == (48, 64, 3)


def test_save_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    save_image(target, PICTURE)
    before = target.read_bytes()
    # XBM holds only 1-bit images: Pillow fails mid-save; the old file stays, nothing else appears.
    with pytest.raises(OSError):
        save_image(tmp_path / "out.xbm", PICTURE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    with pytest.raises(ValueError):
        save_image(target, PICTURE.astype(np.float32))
    with pytest.raises(InputError, match="unknown image extension"):
        save_image(tmp_path / "out.nope", PICTURE)
    assert target.read_bytes() == before
    save_image(tmp_path / "nested" / "dir" / "gray.png", PICTURE[..., 0])
    assert load_image(tmp_path / "nested" / "dir" / "gray.png").shape == (48, 64, 3)
