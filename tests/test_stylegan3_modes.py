"""Every mode with a StyleGAN3 generator, end to end on tiny inputs: `run` (projection, mapping,
mapping + refine) with a tiny random SG3 (models.stylegan3.random_generator, 32 px, W+ 8 x 64 like the
tiny StyleGAN2's) and with the official-format fixture pickle as a user runs it, `invert`,
`train-mapping`, `evaluate`, `generate`, `batch`, `demo --weights`. A mapping checkpoint or cached
latents made for a StyleGAN2 generator are refused for an SG3 one in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from storage.cache import Workspace
from storage.latents import LatentCache
from storage.reenact import ReenactCache
from tests import reenact_data
from tests.helpers import assert_user_error
from tests.mapping_cache import train_checkpoint
from tests.support.manifests import yaml_manifest

pytestmark = pytest.mark.usefixtures("prefect_harness")
FRAMES = 3
NOISE_NOTE = "none: the generator has no noise inputs"


@pytest.fixture(scope="module")
def sg3(tmp_path_factory):
    from models.checkpoints import save_native
    from models.stylegan3 import random_generator

    root = tmp_path_factory.mktemp("sg3-modes")
    weights = save_native(random_generator(32), root / "tiny-sg3.safetensors")
    clip = reenact_data.driving_clip(root / "drive.mp4", FRAMES)
    shutil.copy(reenact_data.source(), root / "face.jpg")
    return root, weights, clip


@pytest.fixture(scope="module")
def projected(sg3):
    """`run` in projection mode (the reenact flow), once for the module."""
    from flows.reenact import reenact

    root, weights, clip = sg3
    cache, out = root / "cache", root / "out" / "projected.mp4"
    summary = reenact(str(reenact_data.source()), str(clip), str(out), str(cache), str(weights),
                      device="cpu", **reenact_data.OPTIONS)
    return cache, out, summary


def test_run_projection(projected):
    from storage.video import probe

    cache, out, summary = projected
    assert summary["failed_frames"] == 0 and probe(out).frame_count == FRAMES
    assert np.isfinite(summary["metrics"]["landmark_nme"])
    ws = Workspace(cache)
    p = ReenactCache.at(ws, summary["tables"]["reenact"]).table.provenance
    assert p["generator"]["architecture"] == "stylegan3" and p["generator"]["noise_inputs"] == 0
    assert p["noise_maps"] == NOISE_NOTE  # the projection's frozen noise: there is none, and it says so
    source = LatentCache.at(ws, summary["tables"]["source_latents"])
    assert source.table.provenance["noise_maps"] == NOISE_NOTE  # the source's inversion says so too
    assert source.read([0]).shape == (1, 8, 64)


def test_run_mapping_and_refine_and_sg2_artifacts_refused(sg3, projected, cli, tmp_path):
    from flows.reenact import reenact
    from tasks import resources

    root, weights, clip = sg3
    G = resources.generator(str(weights), "cpu")
    # train-mapping on latents recorded as this SG3's (the flow the CLI runs)
    checkpoint = train_checkpoint(tmp_path, "sg3-mapping", 10, G.fingerprint())
    cache = root / "cache"
    for refine in (0, 2):
        summary = reenact(str(reenact_data.source()), str(clip), str(tmp_path / f"m{refine}.mp4"), str(cache),
                          str(weights), mode="mapping", mapping=checkpoint, refine_steps=refine, device="cpu",
                          invert_steps=3, perceptual="uncalibrated-alex")
        assert summary["failed_frames"] == 0 and summary["mode"] == "mapping"
    # a checkpoint trained for the tiny StyleGAN2 (same W+ shape, 8 x 64) is refused in one line
    sg2 = resources.generator(str(reenact_data.tiny_weights(root)), "cpu")
    assert (sg2.num_ws, sg2.w_dim) == (G.num_ws, G.w_dim)
    sg2_checkpoint = train_checkpoint(tmp_path, "sg2-mapping", 2, sg2.fingerprint())
    proc = cli("run", "--source", root / "face.jpg", "--driving", clip, "-o", tmp_path / "x.mp4",
               "--cache", cache, "--weights", weights, "--mode", "mapping", "--mapping", sg2_checkpoint,
               "--invert-steps", "3", "--perceptual", "uncalibrated-alex", "--device", "cpu", "--quiet")
    assert_user_error(proc, "mapping network was trained for the generator with weights sha256")


def test_cached_latents_of_a_stylegan2_are_not_reused_for_a_stylegan3(sg3, projected, tmp_path):
    """The same clip through the tiny StyleGAN2 into the same cache: its tables are keyed by that
    generator's fingerprint, so nothing made with the SG3 is reused (and vice versa)."""
    from flows.reenact import reenact

    root, weights, clip = sg3
    cache, _, sg3_summary = projected
    sg2_weights = reenact_data.tiny_weights(root)
    summary = reenact(str(reenact_data.source()), str(clip), str(tmp_path / "sg2.mp4"), str(cache),
                      str(sg2_weights), device="cpu", **reenact_data.OPTIONS)
    assert summary["tables"]["reenact"] != sg3_summary["tables"]["reenact"]
    assert summary["tables"]["source_latents"] != sg3_summary["tables"]["source_latents"]
    assert summary["computed"]["projected"] == FRAMES  # computed anew, not read from the SG3's table
    ws = Workspace(cache)
    sg2_p = LatentCache.at(ws, summary["tables"]["source_latents"]).table.provenance
    assert "architecture" not in sg2_p["generator"] and "noise_maps" not in sg2_p


def test_invert_cli(sg3, cli, tmp_path):
    root, weights, clip = sg3
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "a.mp4")
    cache = tmp_path / "cache"
    proc = cli("invert", videos, "--cache", cache, "--weights", weights, "--steps", "2", "--batch-size", "4",
               "--perceptual", "uncalibrated-alex", "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (table,) = LatentCache.all(Workspace(cache))
    assert table.read().shape == (FRAMES, 8, 64) and np.isfinite(table.read()).all()
    assert table.table.provenance["noise_maps"] == NOISE_NOTE
    assert table.table.provenance["generator"]["architecture"] == "stylegan3"


def test_generate_evaluate_and_demo_cli(sg3, projected, cli, tmp_path, sg3_pickle):
    root, weights, clip = sg3
    _, out, _ = projected
    proc = cli("generate", "--weights", sg3_pickle, "--seeds", "0-1", "--psi", "0.7",
               "--out", tmp_path / "gen")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["seed0000.png", "seed0001.png"]
    # evaluate reads only videos (no generator); the random SG3's frames hold no face to find, which
    # it reports in one line (a real checkpoint's result is evaluated like any other)
    assert_user_error(cli("evaluate", out, "--source", root / "face.jpg", "--driving", clip, "--json"),
                      "no face found", code=2)
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["provenance"]["generator"]["architecture"] == "stylegan3"
    proc = cli("demo", "--weights", weights, "--out", tmp_path / "demo", "--frames", "2", "--steps", "2",
               "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "demo" / "reenacted.mp4").is_file()
    assert_user_error(cli("demo", "--weights", tmp_path / "missing.pkl", "--out", tmp_path / "d2"),
                      "missing.pkl", code=None)


def test_batch_cli(sg3, cli, tmp_path):
    root, weights, clip = sg3
    shutil.copy(clip, tmp_path / "drive.mp4")
    shutil.copy(root / "face.jpg", tmp_path / "face.jpg")
    manifest = yaml_manifest(tmp_path / "jobs.yaml", [
        {"name": "sg3", "source": "face.jpg", "driving": "drive.mp4", "output": "out/sg3.mp4",
         "options": dict(reenact_data.OPTIONS)}])
    proc = cli("batch", manifest, "--cache", tmp_path / "cache", "--weights", weights, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "sg3.mp4").is_file()


@pytest.fixture(scope="module")
def sg3_pickle(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "stylegan3" / "sg3t_tiny64.pkl"
    if not path.is_file():
        pytest.skip(f"StyleGAN3 fixture not found at {path}")
    return path


def test_run_with_the_official_format_pickle_as_a_user_runs_it(sg3, sg3_pickle, run_cli, prefect_api_env,
                                                                tmp_path):
    """`facereenact run --weights stylegan3-...pkl` in its own process (64 px fixture, few steps)."""
    root, _, clip = sg3
    out = tmp_path / "out.mp4"
    proc = run_cli("run", "--source", root / "face.jpg", "--driving", clip, "-o", out, "--cache",
                   tmp_path / "cache", "--weights", sg3_pickle, "--steps-first", "2", "--steps-next", "1",
                   "--invert-steps", "1", "--perceptual", "uncalibrated-alex", "--device", "cpu", "--quiet",
                   env=prefect_api_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and "reenacted 3 frames" in proc.stdout
