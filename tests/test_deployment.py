"""The deployments of deployments/prefect.yaml end to end: `prefect server start` (SQLite), a process
work pool "gpu", `prefect deploy --all`, the nightly batch's cron read back, a run of the nightly
deployment (a small manifest on a tiny generator) picked up by `prefect worker start`: the mp4s of the
good jobs exist, the bad job is listed with its reason, the run ends FAILED with the batch's one-line
error. Server and worker are stopped by their process groups."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from storage.cache import Workspace
from storage.video import probe
from tests.prefect_server import PREFECT, prefect, prefect_server, start, stop, wait_for_run
from tests.reenact_data import OPTIONS
from tests.reliability.inputs import CLIP_FRAMES, inputs


@pytest.fixture(scope="module")
def data(tmp_path_factory, prefect_harness):
    return inputs(tmp_path_factory)


def test_nightly_batch_runs_on_a_process_worker(data, tmp_path):
    from tests.helpers import REPO_ROOT

    cache = data.copy_prepared(tmp_path / "cache")  # the driving clip prepared at 32 px already
    for name in ("clip.mp4", "face.png"):
        shutil.copy(data.root / name, tmp_path / name)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    jobs = [{"name": "alice", "source": "face.png", "driving": "clip.mp4", "output": "out/alice.mp4",
             "options": OPTIONS},
            {"name": "alice-side", "source": "face.png", "driving": "clip.mp4", "output": "out/side.mp4",
             "options": {**OPTIONS, "layout": "side-by-side"}},
            {"name": "broken", "source": "face.png", "driving": "broken.mp4", "output": "out/broken.mp4",
             "options": OPTIONS}]
    manifest = tmp_path / "nightly.jsonl"
    manifest.write_text("".join(json.dumps(job) + "\n" for job in jobs))

    with prefect_server(tmp_path, {"FACEREENACT_ROOT": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}) as env:
        prefect("work-pool", "create", "gpu", "--type", "process", env=env)
        deployed = prefect("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all",
                           env=env)
        assert "nightly" in deployed.stdout and "invert-dataset" in deployed.stdout, deployed.stdout
        # The nightly deployment carries its cron schedule.
        shown = prefect("deployment", "inspect", "reenact-batch/nightly", "--output", "json", env=env)
        (schedule,) = json.loads(shown.stdout)["schedules"]
        assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
        params = {"manifest": str(manifest), "cache": str(cache), "weights": str(data.weights),
                  "device": "cpu"}
        submitted = prefect("deployment", "run", "reenact-batch/nightly", "--params", json.dumps(params),
                            env=env)
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", submitted.stdout)[1]
        worker = start([PREFECT, "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"],
                       env, tmp_path / "worker.log")
        try:
            state = wait_for_run(run_id, env)
        finally:
            stop(worker)
        log = (tmp_path / "worker.log").read_text()[-4000:]
        # One job failed: the run is FAILED with the batch's one-line error (what the UI shows).
        assert state.startswith("FAILED") and "1 of 3 jobs failed (broken" in state, f"{state}\n{log}"

    assert probe(tmp_path / "out" / "alice.mp4").frame_count == CLIP_FRAMES
    assert probe(tmp_path / "out" / "side.mp4").width == 3 * 32
    assert not (tmp_path / "out" / "broken.mp4").exists()
    (batch,) = [r for r in Workspace(cache).jobs().values() if r.get("kind") == "batch"]
    summary = batch["summary"]
    assert batch["state"] == "failed" and summary["done"] == ["alice", "alice-side"]
    assert "broken.mp4" in summary["failed"]["broken"] and "\n" not in summary["failed"]["broken"]
