"""The deployments of deployments/prefect.yaml end to end: `prefect server start` (SQLite), a process
work pool "gpu", `prefect deploy --all`, the nightly batch's cron read back, a run of the nightly
deployment (a small manifest on a tiny generator) picked up by `prefect worker start`: the mp4s of the
good jobs exist, the bad job is listed with its reason, the run ends FAILED with the batch's one-line
error. As documented and nothing more: the worker starts in another directory, with no
FACEREENACT_ROOT and no PYTHONPATH, under the tag concurrency limit `gpu` 1; every GPU task run of the
nightly, read back from the server, carries the "gpu" tag and no other task run does. Server and
worker are stopped by their process groups."""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import shutil
import time

import pytest

from storage.cache import Workspace
from storage.video import probe
from tests.prefect_server import PREFECT, prefect, prefect_server, start, stop
from tests.reenact_data import OPTIONS
from tests.reliability.inputs import CLIP_FRAMES


@contextlib.contextmanager
def server_client(env: dict[str, str]):
    """A synchronous Prefect client of the test's server (not the session's test harness)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        yield client


def final_state(client, run_id: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while True:
        state = client.read_flow_run(run_id).state
        if state.is_final() or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def scheduled_starts(client, deployment_id, timeout: float = 30) -> list:
    """Start times of the deployment's SCHEDULED runs (the server's scheduler makes them shortly
    after the deployment is created)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    while True:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        starts = sorted(r.expected_start_time for r in runs if r.state and r.state.type.value == "SCHEDULED")
        if starts or time.monotonic() > deadline:
            return starts
        time.sleep(0.5)


@pytest.fixture(scope="module")
def data(reliability_inputs, prefect_harness):
    return reliability_inputs


def test_nightly_batch_runs_on_a_process_worker(data, tmp_path):
    cache = data.copy_prepared(tmp_path / "cache")  # the driving clip prepared at 32 px already
    for name in ("clip.mp4", "face.png"):
        shutil.copy(data.root / name, tmp_path / name)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    jobs = [{"name": "alice", "source": "face.png", "driving": "clip.mp4", "output": "out/alice.mp4",
             "options": {**OPTIONS, "layout": "side-by-side"}},
            {"name": "broken", "source": "face.png", "driving": "broken.mp4", "output": "out/broken.mp4",
             "options": OPTIONS}]
    manifest = tmp_path / "nightly.jsonl"
    manifest.write_text("".join(json.dumps(job) + "\n" for job in jobs))

    with prefect_server(tmp_path, {"OMP_NUM_THREADS": "1"}) as env:
        prefect("work-pool", "create", "gpu", "--type", "process", env=env)
        prefect("concurrency-limit", "create", "gpu", "1", env=env)
        # The worker starts (a few seconds) while the deployments are made; it waits for runs. It is
        # started as the README says, from elsewhere: nothing in its environment names the checkout.
        worker_env = {k: v for k, v in env.items() if k not in ("FACEREENACT_ROOT", "PYTHONPATH")}
        elsewhere = tmp_path / "worker-home"
        elsewhere.mkdir()
        worker = start([PREFECT, "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"],
                       worker_env, tmp_path / "worker.log", cwd=elsewhere)
        try:
            deployed = prefect("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all",
                               env=env)
            assert "nightly" in deployed.stdout and "invert-dataset" in deployed.stdout, deployed.stdout
            with server_client(env) as client:  # what `prefect deployment inspect` reads, in this process
                nightly = client.read_deployment_by_name("reenact-batch/nightly")
                (schedule,) = nightly.schedules
                assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "UTC")
            params = {"manifest": str(manifest), "cache": str(cache), "weights": str(data.weights),
                      "device": "cpu"}
            submitted = prefect("deployment", "run", "reenact-batch/nightly", "--params", json.dumps(params),
                                env=env)
            run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", submitted.stdout)[1]
            with server_client(env) as client:
                state = final_state(client, run_id)
                # The server's scheduler made the nightly's next runs: 02:00 UTC, one a day.
                scheduled = scheduled_starts(client, nightly.id)
                task_runs = client.read_task_runs()  # of the nightly run and its nested flow runs
        finally:
            stop(worker)
        log = (tmp_path / "worker.log").read_text()[-4000:]
        # One job failed: the run is FAILED with the batch's one-line error (what the UI shows).
        assert state.type.value == "FAILED", f"{state}\n{log}"
        assert "1 of 2 jobs failed (broken" in state.message, f"{state}\n{log}"
    # Every task that uses the GPU is tagged "gpu" (one place decides it: tasks/gpu.py); no other is.
    gpu_names = ("project", "render", "invert-")
    tags = {r.name: r.tags for r in task_runs}
    assert any(n.startswith("project") for n in tags) and any(n.startswith("render") for n in tags), tags
    for name, run_tags in tags.items():
        assert ("gpu" in run_tags) == name.startswith(gpu_names), (name, run_tags)

    assert len(scheduled) >= 2 and {(t.hour, t.minute, t.utcoffset()) for t in scheduled} == {
        (2, 0, datetime.timedelta(0))}, scheduled
    assert {(b - a).total_seconds() for a, b in zip(scheduled, scheduled[1:], strict=False)} == {86400.0}

    info = probe(tmp_path / "out" / "alice.mp4")  # side by side at the tiny generator's 32 px
    assert info.frame_count == CLIP_FRAMES and (info.width, info.height) == (3 * 32, 32)
    assert not (tmp_path / "out" / "broken.mp4").exists()
    (batch,) = [r for r in Workspace(cache).jobs().values() if r.get("kind") == "batch"]
    summary = batch["summary"]
    assert batch["state"] == "failed" and summary["done"] == ["alice"]
    assert "broken.mp4" in summary["failed"]["broken"] and "\n" not in summary["failed"]["broken"]
