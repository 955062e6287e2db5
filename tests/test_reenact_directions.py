"""`facereenact train-directions` and `facereenact run --mode directions` on the tiny generator: the
directions file with its provenance, the mp4, the cached latents equal to w_src + A (p_i - p_0)
computed directly, a run killed by SIGKILL that finishes on the rerun, one-line refusals of a file
made for another generator or landmark backend (before any work), and a batch manifest's job."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from models.directions import read_directions_checkpoint
from storage.cache import Workspace
from storage.latents import LatentCache
from storage.reenact import ReenactCache
from storage.video import probe
from tests import reenact_data
from tests.helpers import REPO_ROOT, assert_user_error, kill_cli_when
from tests.reenact_data import reenact_dirs

FRAMES = 6
BLANK = 3  # a driving frame without a face
TRAIN = ["--steps", "2", "--checkpoint-every", "1", "--fit-samples", "12", "--batch-size", "2",
         "--expression-dims", "2", "--identity-weight", "0", "--perceptual", "uncalibrated-alex",
         "--device", "cpu"]
RUN = ["--mode", "directions", "--invert-steps", "3", "--perceptual", "uncalibrated-alex", "--device", "cpu",
       "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, prefect_harness):
    root = tmp_path_factory.mktemp("reenact-directions")
    weights = reenact_data.tiny_weights(root)
    clip = reenact_data.driving_clip(root / "drive.mp4", FRAMES, blank=(BLANK,))
    return root, weights, clip


@pytest.fixture(scope="module")
def directions(inputs, prefect_api_env):
    """A directions file made by the CLI in a subprocess (2 steps: the file, not its quality)."""
    from tests.helpers import run_cli

    root, weights, _ = inputs
    out = root / "directions.pt"
    proc = run_cli("train-directions", "--weights", weights, "--out", out, *TRAIN, env=prefect_api_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out reenactment loss" in proc.stdout and "training A" in proc.stderr  # summary, bar
    return out


def test_train_directions_cli_file(inputs, directions, cli):
    root, weights, _ = inputs
    ckpt, A, pose = read_directions_checkpoint(directions)
    assert (A.d_in, A.layers, A.num_ws, A.w_dim) == (5, 8, 8, 64) and pose.dims == 5
    made = ckpt["provenance"]
    from models.checkpoints import load_generator

    assert made["generator"]["weights_sha256"] == load_generator(weights).weights_sha256()
    assert made["landmarks"]["backend"] == "faceapi" and made["steps"] == 2
    assert made["pose_vector"]["fitted_on"] == 12 and directions.with_name("directions.loss.png").is_file()
    # the same command again: nothing more to train; other settings: refused, the file untouched
    before = directions.read_bytes()
    again = cli("train-directions", "--weights", weights, "--out", directions, *TRAIN)
    assert again.returncode == 0 and "trained 0 steps" in again.stdout, again.stderr[-2000:]
    other = cli("train-directions", "--weights", weights, "--out", directions, *TRAIN, "--layers", "4")
    assert_user_error(other, "other settings", "layers")
    assert directions.read_bytes() == before
    assert_user_error(cli("train-directions", "--weights", weights, "--out", root / "x.pt", *TRAIN,
                          "--expression-dims", "0"), "expression_dims")


def test_run_directions_resumes_after_sigkill(inputs, directions, tmp_path, prefect_api_env, cli):
    root, weights, clip = inputs
    cache, out = tmp_path / "cache", tmp_path / "out.mp4"
    args = ["run", "--source", reenact_data.source(), "--driving", clip, "--weights", weights,
            "--directions", directions, *RUN, "-o", out, "--cache", cache]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env, "FACEREENACT_LEASE_SECONDS": "1.5"}
    # killed once its reenact table exists: during the directions pass or the render
    kill_cli_when(args, env, lambda: bool(reenact_dirs(cache)), delay=0.05, log=tmp_path / "kill.log")
    assert not out.exists()
    # the recorded job is stale once its lease lapsed; `facereenact resume JOB` finishes it
    time.sleep(1.6)
    (job,) = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
    assert (job["kind"], job["state"]) == ("reenact", "stale"), job
    done = cli("resume", job["job"], "--cache", cache)
    assert done.returncode == 0, done.stderr[-3000:]
    (job,) = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
    assert job["state"] == "finished" and job["pending"] == 0, job
    assert probe(out).frame_count == FRAMES
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["provenance"]["mode"] == "directions"
    # the cached latents are w_src + A (p_i - p_0), p_0 the first driving frame
    ws = Workspace(cache)
    (table_dir,) = reenact_dirs(cache)
    table = ReenactCache.at(ws, str(table_dir.relative_to(cache)))
    assert record["provenance"]["directions"]["sha256"] == table.table.provenance["directions"]["sha256"]
    crops = next(t for t in ws.tables(table_dir.parent.name, "crops"))
    points = torch.from_numpy(np.asarray(crops.read("crop_landmarks"), np.float32))
    (latents,) = list(LatentCache.all(ws))
    w_src = torch.from_numpy(latents.read([0])[0])
    _, A, pose = read_directions_checkpoint(directions)
    status = table.table.status()
    good = [i for i in range(FRAMES) if bool(torch.isfinite(points[i]).all())]
    with torch.no_grad():
        expect = (w_src + A(pose(points[good]) - pose(points[good[0]:good[0] + 1]))).numpy()
    np.testing.assert_allclose(table.read("latents")[good], expect, rtol=1e-5, atol=1e-5)
    assert all(status[i] == 1 for i in good)
    moved = np.abs(expect - w_src.numpy()).max(axis=(1, 2))
    assert moved[0] == 0 and moved[1:].max() > 0  # the first frame is the source; the others move


def test_refusals_before_any_work(inputs, directions, tmp_path, cli):
    root, weights, clip = inputs
    cache = tmp_path / "cache"

    def run(path, *extra):
        return cli("run", "--source", reenact_data.source(), "--driving", clip, "--weights", weights,
                   "--directions", path, *RUN, *extra, "-o", tmp_path / "o.mp4", "--cache", cache)

    ckpt = torch.load(directions, weights_only=True)
    ckpt["provenance"]["landmarks"]["backend"] = "fan"
    torch.save(ckpt, tmp_path / "fan.pt")
    assert_user_error(run(tmp_path / "fan.pt"), "fan.pt", "landmark backend 'fan'")
    ckpt = torch.load(directions, weights_only=True)
    ckpt["provenance"]["generator"]["weights_sha256"] = "0" * 64
    torch.save(ckpt, tmp_path / "other.pt")
    assert_user_error(run(tmp_path / "other.pt"), "other.pt", "trained for the generator")
    assert_user_error(run(tmp_path / "missing.pt"), "missing.pt", "not found")
    assert_user_error(run(directions, "--variant", "free"), "variant")
    assert_user_error(cli("run", "--source", reenact_data.source(), "--driving", clip, "--weights", weights,
                          *RUN, "-o", tmp_path / "o.mp4", "--cache", cache), "--directions")
    assert not cache.exists() or not any(cache.rglob("crops-*"))  # nothing prepared


def test_batch_manifest_job(inputs, directions, tmp_path):
    from flows.batch import load_jobs
    from storage.errors import InputError

    root, _, clip = inputs
    manifest = root / "jobs.json"
    manifest.write_text(json.dumps([{"source": str(reenact_data.source()), "driving": clip.name,
                                     "output": "out-batch.mp4", "mode": "directions",
                                     "options": {"directions": directions.name, "directions_batch": 2}}]))
    (job,) = load_jobs(manifest)
    assert job.mode == "directions" and job.options["directions"] == str(directions)
    manifest.write_text(json.dumps([{"source": str(reenact_data.source()), "driving": clip.name,
                                     "output": "out-batch.mp4", "mode": "directions",
                                     "options": {"directions": directions.name, "steps": 3}}]))
    with pytest.raises(InputError, match="unknown option"):
        load_jobs(manifest)


def test_train_directions_refuses_before_prefect(inputs, tmp_path, cli):
    root, weights, _ = inputs
    out = tmp_path / "d.pt"
    assert_user_error(cli("train-directions", "--weights", tmp_path / "none.pt", "--out", out, *TRAIN),
                      "none.pt", "not found")
    assert_user_error(cli("train-directions", "--weights", weights, "--out", out, *TRAIN[:-4]),
                      "lpips-vgg16", "uncalibrated")  # the default calibrated LPIPS, not on disk here
    assert_user_error(cli("train-directions", "--weights", weights, "--out", out, "--cache", tmp_path / "c",
                          *TRAIN), "cache not found")
    nowhere = tmp_path / "no" / "d.pt"
    assert_user_error(cli("train-directions", "--weights", weights, "--out", nowhere, *TRAIN),
                      "folder does not exist")
    assert not out.exists() and not (tmp_path / "c").exists()
