"""The deployments of deployments/prefect.yaml end to end: `prefect server start` (SQLite), a process
work pool "gpu", `prefect deploy`, a run of a deployment picked up by `prefect worker start`, its
outputs checked in the cache; server and worker stopped by their process ids."""

from __future__ import annotations

import json
import re

import pytest

from storage.cache import Workspace
from storage.latents import LatentCache
from tests.prefect_server import PREFECT, prefect, prefect_server, start, stop, wait_for_run
from tests.reliability.inputs import CLIP_FRAMES, inputs


@pytest.fixture(scope="module")
def data(tmp_path_factory, prefect_harness):
    return inputs(tmp_path_factory)


def test_deployment_runs_on_a_process_worker(data, tmp_path):
    from tests.helpers import REPO_ROOT

    cache = data.copy_prepared(tmp_path / "cache")
    with prefect_server(tmp_path, {"FACEREENACT_ROOT": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}) as env:
        prefect("work-pool", "create", "gpu", "--type", "process", env=env)
        deployed = prefect("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all",
                           env=env)
        assert "nightly" in deployed.stdout and "invert-dataset" in deployed.stdout, deployed.stdout
        # The nightly deployment carries its cron schedule.
        shown = prefect("deployment", "inspect", "reenact-batch/nightly", "--output", "json", env=env)
        (schedule,) = json.loads(shown.stdout)["schedules"]
        assert schedule["schedule"]["cron"] == "0 2 * * *"
        params = {"dataset": str(data.clip), "cache": str(cache), "weights": str(data.weights), "steps": 1,
                  "batch_size": 2, "perceptual": "uncalibrated-alex", "device": "cpu"}
        submitted = prefect("deployment", "run", "invert-dataset/invert-dataset", "--params",
                            json.dumps(params), env=env)
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", submitted.stdout)[1]
        worker = start([PREFECT, "worker", "start", "--pool", "gpu", "--type", "process", "--limit", "1"],
                       env, tmp_path / "worker.log")
        try:
            state = wait_for_run(run_id, env)
        finally:
            stop(worker)
        assert state.startswith("COMPLETED"), f"{state}\n{(tmp_path / 'worker.log').read_text()[-4000:]}"
    (latents,) = LatentCache.all(Workspace(cache))
    assert latents.is_complete() and latents.num_frames == CLIP_FRAMES
    (job,) = Workspace(cache).jobs().values()
    assert job["state"] == "finished"
