"""`facereenact resume JOB` and `facereenact status --job`: a recorded job run again from its record in
the cache computes only its missing and failed frames, and ends with the latents of an uninterrupted
run (bit for bit: fixed batches, per-frame seeds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows import cli
from storage.cache import Workspace
from storage.latents import LatentCache
from tests.helpers import assert_user_error
from tests.reliability.inputs import CLIP_FRAMES
from tests.support.cache_files import chunk_mtimes

SETTINGS = {"steps": 1, "batch_size": 2, "perceptual": "uncalibrated-alex", "device": "cpu"}


@pytest.fixture(scope="module")
def data(reliability_inputs, prefect_harness):
    return reliability_inputs


def run(capsys, *argv):
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    import subprocess

    return subprocess.CompletedProcess(argv, code, out, err)


def test_resume_recomputes_only_missing_and_failed_frames(data, tmp_path, capsys, monkeypatch):
    from flows.invert import invert_dataset

    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    cache = data.copy_prepared(tmp_path / "cache")
    summary = invert_dataset(str(data.clip), str(cache), str(data.weights), **SETTINGS)
    ws = Workspace(cache)
    (latents,) = LatentCache.all(ws)
    reference = latents.read()  # the uninterrupted run's latents, before the damage below
    # What a crash and a bad frame leave: frame 3 pending (killed before its status), frame 0 failed.
    latents.table.reset([3])
    latents.fail([0], "inversion raised RuntimeError: CUDA error (simulated lost worker)")
    before = {k: v for k, v in chunk_mtimes(cache).items() if "/latents-" in k}

    status = run(capsys, "status", cache, "--job", summary["job"][:12], "--json")
    report = json.loads(status.stdout)
    assert status.returncode == 0 and report["job"] == summary["job"]
    (row,) = report["jobs"]
    assert (row["frames"], row["done"], row["failed"], row["pending"]) == (CLIP_FRAMES, CLIP_FRAMES - 2, 1, 1)
    (table,) = report["tables"]  # per video
    assert table["media"] == str(data.clip.resolve()) and table["errors"] == {
        "0": "inversion raised RuntimeError: CUDA error (simulated lost worker)"}

    resumed = run(capsys, "resume", summary["job"][:14], "--cache", cache)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("inverted 2 frames in this run, 0 failed, 2 skipped")
    after = {k: v for k, v in chunk_mtimes(cache).items() if "/latents-" in k}
    rewritten = sorted({int(k.split("/c/")[1].split("/")[0]) for k, v in after.items() if before.get(k) != v})
    assert rewritten == [0, 3]  # only the failed and the missing frame
    (latents,) = LatentCache.all(Workspace(cache))
    np.testing.assert_array_equal(latents.read(), reference)
    assert Workspace(cache).jobs()[summary["job"]]["state"] == "finished"

    # A second resume has nothing left to do.
    again = run(capsys, "resume", summary["job"], "--cache", cache)
    assert again.returncode == 0 and again.stdout.startswith("inverted 0 frames in this run")


def test_resume_of_an_unknown_job_is_one_line(data, tmp_path, cli):
    cache = data.copy_prepared(tmp_path / "cache")
    assert_user_error(cli("resume", "invert-nope", "--cache", cache), "no job 'invert-nope'", code=2)
    assert_user_error(cli("resume", "x", "--cache", tmp_path / "none"), "no cache here", code=5)
