"""`facereenact train-encoder` and `facereenact invert --init encoder` as a user runs them, on the tiny
generator and the inversion tests' three short clips (tests/invert_data.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from storage.cache import Workspace
from storage.latents import LatentCache
from storage.provenance import sha256_file
from tests import invert_data
from tests.helpers import assert_user_error
from tests.invert_data import BATCH, FRAMES

PERCEPTUAL = ["--perceptual", "uncalibrated-alex", "--device", "cpu"]
SMALL_MODEL = {"channels": 8, "max_channels": 16, "fpn_channels": 8}


@pytest.fixture(scope="module")
def data(invert_dataset) -> invert_data.Dataset:
    return invert_dataset


def _train(weights: Path, out: Path, steps: int = 2) -> Path:
    from models import load_generator
    from stages.train_encoder import train_encoder_to

    train_encoder_to(load_generator(weights), out, steps,
                     {"perceptual": "none", "lambda_lpips": 0.0, "batch_size": 2, "eval_samples": 2,
                      "model": SMALL_MODEL}, device="cpu", log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def encoder(data, tmp_path_factory) -> Path:
    return _train(data.weights, tmp_path_factory.mktemp("encoder") / "encoder.pt")


def test_train_encoder_command_trains_resumes_and_refuses(data, tmp_path, cli):
    out = tmp_path / "encoder.pt"
    args = ["train-encoder", "--weights", data.weights, "--out", out, "--perceptual", "none",
            "--batch-size", "2", "--device", "cpu", "--quiet"]
    proc = cli(*args, "--steps", "3", "--checkpoint-every", "2", check=True)
    assert "trained 3 steps in this run (3 in all, resumed from step 0)" in proc.stdout
    assert "held-out loss" in proc.stdout and out.is_file() and out.with_suffix(".loss.png").is_file()
    proc = cli(*args, "--steps", "4", check=True)
    assert "trained 1 step in this run (4 in all, resumed from step 3)" in proc.stdout
    before = out.read_bytes()
    # Other settings, or another generator, for the same --out: one line, before any work.
    proc = cli(*args, "--steps", "6", "--learning-rate", "0.01")
    assert_user_error(proc, str(out), "differs in settings", code=3)
    from models.checkpoints import save_native
    from tests.tiny import tiny_generator

    other = save_native(tiny_generator(seed=7), tmp_path / "other-G.safetensors")
    proc = cli("train-encoder", "--weights", other, *args[3:], "--steps", "6")
    assert_user_error(proc, str(out), "differs in generator", code=3)
    assert out.read_bytes() == before
    # With a cache: the frames `invert` made with this generator join the samples.
    proc = cli(*args[:4], tmp_path / "cached.pt", *args[5:], "--steps", "1", "--cache", data.reference,
               "--json", check=True)
    assert '"cache_frames": 21' in proc.stdout


def test_invert_init_encoder_caches_under_the_encoders_provenance(data, encoder, tmp_path, cli):
    cache = data.fresh_cache(tmp_path / "cache")
    proc = cli("invert", data.videos, "--cache", cache, "--weights", data.weights, "--init", "encoder",
               "--encoder", encoder, "--steps", "2", "--batch-size", str(BATCH), *PERCEPTUAL, "--quiet")
    assert proc.returncode == 0, proc.stderr
    ws = Workspace(cache)
    tables = list(LatentCache.all(ws))
    assert len(tables) == len(FRAMES) and all(t.is_complete() for t in tables)
    sha = sha256_file(encoder)
    for table in tables:
        assert table.provenance["init"] == {"kind": "encoder", "encoder_sha256": sha}
        assert table.provenance["settings"]["steps"] == 2
        assert table.provenance["settings"]["initial_noise_factor"] == 0.0
    # `resume JOB` runs the same job (the encoder is in its record): nothing new, no w_avg tables.
    import json

    (job,) = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
    resumed = cli("resume", job["job"], "--cache", cache)
    assert resumed.returncode == 0 and "inputs changed" not in resumed.stdout, resumed.stderr[-2000:]
    assert len(list(LatentCache.all(ws))) == len(FRAMES)
    # The stored latents are the encoder's prediction refined by 2 steps (not a w_avg start): with 0
    # steps they are the prediction itself.
    zero = data.fresh_cache(tmp_path / "zero")
    cli("invert", data.videos, "--cache", zero, "--weights", data.weights, "--init", "encoder",
        "--encoder", encoder, "--steps", "0", *PERCEPTUAL, "--quiet", check=True)
    from models import load_generator
    from models.encoder import load_encoder

    G = load_generator(data.weights)
    E = load_encoder(encoder, G)
    for table in LatentCache.all(Workspace(zero)):
        media = table.location.split("/")[1]
        crops = Workspace(zero).open_table(f"media/{media}/crops-{table.provenance['crops_table']}")
        crop = torch.from_numpy(crops.read("crop")).permute(0, 3, 1, 2).float() / 127.5 - 1
        np.testing.assert_allclose(table.read(), E(crop).numpy(), atol=1e-5)
    # The same command with the w_avg start makes other tables in the same cache, never reusing these.
    cli("invert", data.videos, "--cache", cache, "--weights", data.weights, "--steps", "1", *PERCEPTUAL,
        "--quiet", check=True)
    again = list(LatentCache.all(Workspace(cache)))
    assert len(again) == 2 * len(FRAMES)
    assert sum("init" in t.provenance for t in again) == len(FRAMES)


def test_a_bad_or_foreign_encoder_is_refused_before_any_work(data, tmp_path, cli):
    cache = tmp_path / "cache"
    args = ["invert", data.videos, "--cache", cache, "--weights", data.weights, *PERCEPTUAL]
    from models.checkpoints import save_native
    from tests.tiny import tiny_generator

    other = save_native(tiny_generator(seed=7), tmp_path / "other-G.safetensors")
    foreign = _train(other, tmp_path / "foreign.pt", steps=1)
    proc = cli(*args, "--init", "encoder", "--encoder", foreign)
    assert_user_error(proc, str(foreign), "trained for another generator", code=3)
    proc = cli(*args, "--init", "encoder", "--encoder", data.weights)
    assert_user_error(proc, str(data.weights), code=3)
    proc = cli(*args, "--init", "encoder", "--encoder", tmp_path / "absent.pt")
    assert_user_error(proc, "absent.pt", "no such encoder file", code=3)
    proc = cli(*args, "--init", "encoder")
    assert_user_error(proc, "--init encoder needs --encoder", code=2)
    proc = cli(*args, "--encoder", foreign)
    assert_user_error(proc, "--encoder is used with --init encoder only", code=2)
    assert not cache.exists()


def test_run_inverts_the_source_from_the_encoder(data, encoder, tmp_path, cli):
    from tests import reenact_data

    clip = reenact_data.driving_clip(tmp_path / "drive.mp4", frames=3)
    cache, out = tmp_path / "cache", tmp_path / "out.mp4"
    args = ["run", "--source", reenact_data.source(), "--driving", clip, "--weights", data.weights,
            "-o", out, "--cache", cache, *reenact_data.CLI_OPTIONS]
    proc = cli(*args, "--init", "encoder", "--encoder", tmp_path / "absent.pt")
    assert_user_error(proc, "no such encoder file", code=3)
    assert not out.exists()
    proc = cli(*args, "--init", "encoder", "--encoder", encoder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (source_latents,) = [t for t in LatentCache.all(Workspace(cache)) if t.num_frames == 1]
    assert source_latents.provenance["init"]["encoder_sha256"] == sha256_file(encoder)
    assert source_latents.provenance["settings"]["steps"] == 3 and source_latents.is_complete()
