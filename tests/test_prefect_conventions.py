"""Prefect conventions (flows/conventions.py, tasks/conventions.py), read back from a real `prefect
server`: run names from the job, artifacts keyed per job so their history accumulates, log lines per
stage, a failed run's message the one-line error, and retries only for transient I/O (a user error
runs once)."""

from __future__ import annotations

import errno
import shutil

import pytest
import yaml

from storage.errors import CacheError, InputError, NoFaceError
from tasks.conventions import TRANSIENT_IO, artifact_key, is_transient
from tests import reenact_data
from tests.prefect_server import prefect_server
from tests.reenact_data import OPTIONS


def test_which_failures_are_transient():
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError("read timed out"))
    assert is_transient(OSError(errno.ECONNREFUSED, "refused"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient(OSError(errno.ENOSPC, "disk full"))
    for user_error in (InputError("bad"), NoFaceError("no face"), CacheError("damaged")):
        assert not is_transient(user_error)
    assert not is_transient(ValueError("a bug")) and not is_transient(KeyboardInterrupt())


def test_artifact_keys_are_per_file_and_valid():
    a, b = artifact_key("reenact-output", "/x/My Clip.mp4"), artifact_key("reenact-output", "/y/My Clip.mp4")
    assert a.startswith("reenact-output-my-clip-") and a != b
    assert a == artifact_key("reenact-output", "/x/My Clip.mp4")
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_prefect_retries_transient_failures_only(prefect_harness):
    from prefect import flow, task

    calls = {"transient": 0, "user": 0}

    @task(**{**TRANSIENT_IO, "retry_delay_seconds": 0})
    def flaky(kind: str) -> str:
        calls[kind] += 1
        if kind == "transient" and calls[kind] == 1:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        if kind == "user":
            raise InputError("not a video", path="x.mp4")
        return "ok"

    @flow
    def run(kind: str) -> str:
        return flaky(kind)

    assert run("transient") == "ok" and calls["transient"] == 2  # retried once, then fine
    with pytest.raises(InputError):
        run("user")
    assert calls["user"] == 1  # a user error is never retried


def test_run_names_artifacts_logs_and_failures_on_a_real_server(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.helpers import REPO_ROOT

    root = tmp_path / "jobs"
    root.mkdir()
    reenact_data.driving_clip(root / "drive.mp4", 3)
    reenact_data.driving_clip(root / "empty.mp4", 2, blank=(0, 1))  # no face in any frame
    shutil.copy(reenact_data.source(), root / "face.jpg")
    weights = reenact_data.tiny_weights(root)
    manifest = root / "nightly.yaml"
    manifest.write_text(yaml.safe_dump({"jobs": [
        {"name": "alpha", "source": "face.jpg", "driving": "drive.mp4", "output": "alpha.mp4",
         "options": {**OPTIONS, "detector": "haar"}},
        {"name": "beta", "source": "face.jpg", "driving": "empty.mp4", "output": "beta.mp4",
         "options": OPTIONS},
    ]}))
    key = artifact_key("reenact-output", root / "alpha.mp4")
    with prefect_server(tmp_path) as env, \
            temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        # `facereenact batch` in its own process, as a user (or the nightly worker) runs it: in this
        # process Prefect's event client, which reports task runs, may still point at another server
        # an earlier test used.
        for extra in ([], ["--rerun-finished"]):  # the second run redoes alpha: a second artifact
            proc = subprocess.run(
                [sys.executable, "-m", "flows.cli", "batch", str(manifest), "--cache", str(root / "cache"),
                 "--weights", str(weights), "--device", "cpu", "--quiet", *extra],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                env={**os.environ, **env, "PREFECT_LOGGING_LEVEL": "INFO"})
            assert proc.returncode == 6, proc.stderr[-3000:]  # beta failed, listed after the summary
        with get_client(sync_client=True) as client:
            flow_runs = client.read_flow_runs()
            task_runs = client.read_task_runs()
            logs = client.read_logs()
            history = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    runs = {r.name: r for r in flow_runs}
    tasks = {t.name for t in task_runs}
    beta = [r for r in flow_runs if r.name == "reenact/beta"]
    failed = [t for t in task_runs if t.name == "landmarks/empty.mp4"]
    # Run names say what each run is about.
    assert {"batch/nightly", "reenact/alpha", "reenact/beta", "prepare-video/drive.mp4",
            "prepare-image/face.jpg"} <= set(runs), sorted(runs)
    assert {"landmarks/drive.mp4", "crops/drive.mp4", "project/drive.mp4", "render/alpha.mp4",
            "report/alpha.mp4", "open-media/face.jpg"} <= tasks, sorted(tasks)
    # A failure's message is the CLI's one line; the user error in the task ran once (no retry).
    assert runs["batch/nightly"].state.message.startswith("facereenact: error: ")
    assert all(r.state.is_failed() and r.state.message.startswith("facereenact: error: ")
               and "no face found" in r.state.message and "\n" not in r.state.message for r in beta)
    assert failed and all(t.run_count == 1 and t.state.is_failed() for t in failed)
    # The job's artifacts form one history (a key of its own), one version per run.
    assert len(history) == 2 and all("alpha.mp4" in (a.data or "") for a in history)
    # Log lines per stage: counts, seconds, what was skipped.
    text = "\n".join(log.message for log in logs)
    assert "landmarks drive.mp4: 3 of 3 frame(s) tracked" in text and "detector haar" in text
    assert "crops drive.mp4: 3 of 3 frame(s) cropped" in text
    assert "projected 3 of 3 frame(s)" in text and "rendered 3 frame(s)" in text
    assert "landmarks drive.mp4: 0 of 3 frame(s) tracked" in text and "3 done before, skipped" in text
    assert "render skipped" in text
