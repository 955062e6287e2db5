"""`facereenact generate` on the tiny official-format fixture, run as a user runs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli.generate import parse_seeds
from models import load_generator
from storage.errors import InputError
from tests.helpers import assert_user_error


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).byte().numpy()


def test_generate_from_seeds_and_wplus(run_cli, stylegan_fixture_dir, tmp_path):
    pkl = stylegan_fixture_dir / "sg2_tiny64.pkl"
    ref = np.load(stylegan_fixture_dir / "sg2_tiny64_ref.npz")
    np.save(tmp_path / "codes.npy", ref["wplus"][:2])
    out = tmp_path / "out"

    proc = run_cli("generate", "--weights", pkl, "--seeds", "0,7-8", "--psi", "0.7", "--out", out,
                   "--device", "cpu", check=True)
    assert "wrote 3 image(s)" in proc.stdout
    proc = run_cli("generate", "--weights", pkl, "--wplus", tmp_path / "codes.npy", "--out", out,
                   "--device", "cpu", check=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "seed0000.png", "seed0007.png", "seed0008.png", "wplus0000.png", "wplus0001.png"]

    # Seeds: the same z as NVIDIA's generate.py, rendered by the library.
    G = load_generator(pkl)
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in (0, 7, 8)]))
    with torch.no_grad():
        expected = _to_uint8(G(z.float(), truncation_psi=0.7, noise_mode="const"))
    for image, name in zip(expected, ["seed0000.png", "seed0007.png", "seed0008.png"], strict=True):
        assert _png(out / name).shape == (64, 64, 3)
        assert np.abs(_png(out / name).astype(int) - image).max() <= 1, name

    # W+ codes: NVIDIA's own rendering of the same codes, quantised.
    nvidia = _to_uint8(torch.from_numpy(ref["img_wplus"][:2]))
    for i in range(2):
        assert np.abs(_png(out / f"wplus{i:04d}.png").astype(int) - nvidia[i]).max() <= 1


def test_generate_user_errors(cli, stylegan_fixture_dir, tmp_path):
    pkl = stylegan_fixture_dir / "sg2_tiny64.pkl"
    np.save(tmp_path / "bad.npy", np.zeros((3, 512), np.float32))
    proc = cli("generate", "--weights", pkl, "--wplus", tmp_path / "bad.npy", "--out", tmp_path / "o")
    assert_user_error(proc, "bad.npy", "(N, 10, 512)", code=2)
    proc = cli("generate", "--weights", tmp_path / "missing.pkl", "--seeds", "0", "--out", tmp_path / "o")
    assert_user_error(proc, "missing.pkl", "not found", code=2)
    proc = cli("generate", "--weights", "not-a-registered-name", "--seeds", "0", "--out", tmp_path / "o")
    assert_user_error(proc, "not-a-registered-name", code=4)
    assert not (tmp_path / "o").exists()


def test_parse_seeds():
    assert parse_seeds("0,1,5-7") == [0, 1, 5, 6, 7]
    for bad in ("a", "3-1", "1,,2", "-5"):
        with pytest.raises(InputError, match="--seeds"):
            parse_seeds(bad)
