"""The cache on a real S3 API server (moto's server mode on 127.0.0.1, started and stopped by PID by the
session fixture; tests/s3_server.py): a whole `invert`, a `run`, a SIGKILL mid-invert then rerun,
two Dask workers filling one s3 cache, `status` from s3, and the bad endpoint / credentials / bucket
cases. Buckets are versioned, so the number of times each object was written is counted by the store
itself: "every frame written exactly once" and "nothing done rewritten" are read from there."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

from tests import invert_data, reenact_data
from tests.helpers import REPO_ROOT, assert_user_error, kill_cli_when
from tests.invert_data import CLI_SETTINGS, FRAMES, SETTINGS
from tests.s3_server import S3Server, free_port, reset_s3_clients

TOTAL = sum(n for _, n in FRAMES.values())
LATENT_CHUNK = re.compile(r"/media/([0-9a-f]+)/latents-[0-9a-f]+/(\w+)/c/(\d+)")


@pytest.fixture(scope="session")
def s3_server():
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as err:
        pytest.skip(f"moto[server] / s3fs not installed ({err}); `make setup` installs them")
    server = S3Server()
    try:
        server.start()
    except RuntimeError as err:
        pytest.skip(f"the local S3 server cannot start: {err}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    """The server with this process's environment pointing at it, and a fresh versioned bucket."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    reset_s3_clients()
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    s3_server.create_bucket(bucket, versioned=True)
    s3_server.bucket = bucket
    yield s3_server
    reset_s3_clients()


@pytest.fixture(scope="module")
def data(invert_dataset) -> invert_data.Dataset:
    return invert_dataset


def latent_writes(server: S3Server, bucket: str, prefix: str) -> dict[tuple[str, str, int], int]:
    """{(media key, array, frame): times written} of every chunk of the latent tables."""
    out = {}
    for key, count in server.versions(bucket, prefix).items():
        m = LATENT_CHUNK.search(key)
        if m:
            out[(m[1], m[2], int(m[3]))] = count
    return out


def names_by_key(url: str) -> dict[str, str]:
    from storage.cache import Workspace

    ws = Workspace(url)
    return {key: Path(ws.media(key).attrs["source"]).name for key in ws.media_keys()}


def test_invert_and_status_on_s3(data, s3, prefect_api_env, run_cli, cli, tmp_path):
    """A whole `invert` (prepare included) of one clip into an empty s3 prefix: the latents are the
    local reference run's, bit for bit; every frame's chunks were written exactly once; `status`
    reads the job back from s3, `resume` of the finished job computes nothing, and `train-mapping`
    trains on the s3 latents."""
    url = f"s3://{s3.bucket}/ws"
    env = {**prefect_api_env, **s3.env()}
    proc = run_cli("invert", data.videos / "c.mp4", "--cache", url, "--weights", data.weights, *CLI_SETTINGS,
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Unclosed" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    latents = invert_data.latents_by_video(url)
    np.testing.assert_array_equal(latents["c.mp4"], data.reference_latents()["c.mp4"])
    writes = latent_writes(s3, s3.bucket, "ws/")
    frames = FRAMES["c.mp4"][1]
    for array in ("latents", "loss", "seed", "status"):
        assert sorted(i for (_, a, i), n in writes.items() if a == array and n == 1) == list(range(frames))
    assert set(writes.values()) == {1}
    assert not any(k.endswith((".lock", ".partial")) or "/." in k for k in s3.keys(s3.bucket))

    status = cli("status", url, "--json")
    assert status.returncode == 0, status.stderr
    import json

    report = json.loads(status.stdout)
    assert report["cache"] == url
    (job,) = report["jobs"]
    assert job["state"] == "finished"
    latent_rows = [t for t in report["tables"] if t["stage"] == "latents"]
    assert [(t["done"], t["failed"], t["pending"]) for t in latent_rows] == [(frames, 0, 0)]

    resumed = cli("resume", job["job"], "--cache", url)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert latent_writes(s3, s3.bucket, "ws/") == writes  # nothing written again

    # train-mapping reads those latents from s3; its checkpoint is a local file.
    out = tmp_path / "mapping.pt"
    trained = cli("train-mapping", "--cache", url, "--out", out, "--steps", "2", "--checkpoint-every", "2",
                  "--batch-size", "4", "--device", "cpu", "--json")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert out.is_file() and json.loads(trained.stdout)
    assert not any("mapping" in k for k in s3.keys(s3.bucket))


def test_killed_invert_on_s3_resumes_bitwise(data, s3, prefect_api_env, cli, tmp_path):
    """SIGKILL at a random point of a 3-clip `invert` on s3, then the same command: the latents are the
    uninterrupted run's bit for bit, no chunk of a frame done at the kill is written again, and only
    frames in flight at the kill (not done then) are written by both runs."""
    prefix = "killed"
    s3.upload_dir(data.prepared, s3.bucket, prefix)  # prepared crops: the job's time is inversion
    url = f"s3://{s3.bucket}/{prefix}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env, **s3.env()}
    args = ["invert", str(data.videos), "--cache", url, "--weights", str(data.weights), *CLI_SETTINGS]
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    kill_after, delay = rng.randint(1, TOTAL - 2 * invert_data.BATCH), rng.uniform(0.0, 0.8)

    def done_now() -> int:
        keys = s3.keys(s3.bucket, f"{prefix}/media/")
        return sum(1 for k in keys if "/latents-" in k and "/status/c/" in k)

    kill_cli_when(args, env, lambda: done_now() >= kill_after, delay, log=tmp_path / "run1.log")
    at_kill = latent_writes(s3, s3.bucket, f"{prefix}/")
    done_at_kill = {(m, i) for (m, a, i) in at_kill if a == "status"}
    assert 0 < len(done_at_kill) < TOTAL, f"kill (seed {seed}) came too late: {len(done_at_kill)} done"

    # The same command again, in this process (the killed run was a process; one start-up fewer).
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = latent_writes(s3, s3.bucket, f"{prefix}/")
    # Every chunk of a frame done at the kill: written once, by the first run.
    assert {k: n for k, n in after.items() if k[::2] in done_at_kill} == {
        k: n for k, n in at_kill.items() if k[::2] in done_at_kill}
    assert all(n == 1 for k, n in after.items() if k[::2] in done_at_kill)
    # Written by both runs: only chunks of frames that were in flight (started, not done) at the kill.
    twice = {k[::2] for k, n in after.items() if n > 1}
    assert not twice & done_at_kill
    assert {k[::2] for k in at_kill} - done_at_kill >= twice
    final = invert_data.latents_by_video(url)
    reference = data.reference_latents()
    for name in FRAMES:
        np.testing.assert_array_equal(final[name], reference[name], err_msg=f"{name} (kill seed {seed})")
    print(f"\nkill seed {seed}: {len(done_at_kill)} of {TOTAL} frames done at the kill; "
          f"{len(twice)} frame(s) had chunks written by both runs")


def test_two_dask_workers_fill_one_s3_cache_exactly_once(data, s3, monkeypatch):
    """Two worker processes of a local Dask cluster invert batches of two clips into the same s3
    cache: both work, every frame's chunks are written exactly once, latents bitwise the reference."""
    from distributed import Client, LocalCluster

    from flows.invert import invert_dataset
    from flows.runners import task_runner

    prefix = "dask"
    s3.upload_dir(data.prepared, s3.bucket, prefix)
    url = f"s3://{s3.bucket}/{prefix}"
    clips = data.root / "two-clips"
    clips.mkdir(exist_ok=True)
    for name in ("a.mp4", "b.mp4"):
        if not (clips / name).exists():
            (clips / name).symlink_to(data.videos / name)
    # The workers are processes started here: they inherit this environment (the endpoint, keys).
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster):
        flow = invert_dataset.with_options(task_runner=task_runner(cluster.scheduler_address))
        summary = flow(str(clips), url, str(data.weights), batches_per_task=1, **SETTINGS)
    frames = FRAMES["a.mp4"][1] + FRAMES["b.mp4"][1]
    assert summary["inverted"] == frames and summary["failed"] == 0
    assert len(summary["workers"]) == 2, summary["workers"]
    writes = latent_writes(s3, s3.bucket, f"{prefix}/")
    names = names_by_key(url)
    for name in ("a.mp4", "b.mp4"):
        n = FRAMES[name][1]
        for array in ("latents", "loss", "seed", "status"):
            assert sorted(i for (m, a, i), c in writes.items()
                          if names[m] == name and a == array and c == 1) == list(range(n)), (name, array)
    assert set(writes.values()) == {1}
    final = invert_data.latents_by_video(url)
    for name in ("a.mp4", "b.mp4"):
        np.testing.assert_array_equal(final[name], data.reference_latents()[name], err_msg=name)


def test_run_on_s3(s3, prefect_harness, cli, tmp_path):
    """`facereenact run` with its cache on s3: the video and its sidecar are written locally, the
    latents go to s3, and the same command again renders from the s3 cache without projecting (no
    chunk written again). In this process (what matters here is the store, not the process)."""
    weights = reenact_data.tiny_weights(tmp_path)
    clip = reenact_data.driving_clip(tmp_path / "drive.mp4", frames=4)
    url = f"s3://{s3.bucket}/run"
    out = tmp_path / "out.mp4"
    args = ["run", "--source", reenact_data.source(), "--driving", clip, "--weights", weights, "-o", out,
            "--cache", url, *reenact_data.CLI_OPTIONS]
    first = cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert out.is_file() and out.with_name(out.name + ".json").is_file()  # outputs stay local
    keys = s3.keys(s3.bucket, "run/")
    assert sum(1 for k in keys if "/reenact-" in k and "/status/c/" in k) == 4
    chunks = {k: v for k, v in s3.versions(s3.bucket, "run/").items() if "/c/" in k}
    assert chunks and set(chunks.values()) == {1}
    out.unlink()
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.is_file()
    assert {k: v for k, v in s3.versions(s3.bucket, "run/").items() if "/c/" in k} == chunks


def test_bad_endpoint_credentials_and_bucket(s3, cli, run_cli, tmp_path, prefect_api_env):
    """One line naming the URL and the problem, exit 5, no traceback, nothing written; in seconds."""
    import time

    url = f"s3://{s3.bucket}/x"
    # A missing bucket.
    proc = cli("status", "s3://no-such-bucket/x")
    assert_user_error(proc, "s3://no-such-bucket/x", "bucket does not exist", code=5)
    # Nothing listening at the endpoint (a closed port): answers in seconds, not minutes.
    began = time.monotonic()
    reset_s3_clients()
    proc = cli("status", url, env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    assert_user_error(proc, url, "cannot reach the object store endpoint", code=5)
    assert time.monotonic() - began < 30
    # Credentials the server refuses (a second server that checks them: no key is known to it).
    with S3Server(auth=True) as strict:
        reset_s3_clients()
        proc = cli("status", url, env={"AWS_ENDPOINT_URL": strict.endpoint})
        assert_user_error(proc, url, "access denied", "AWS_ACCESS_KEY_ID", code=5)
    reset_s3_clients()
    # Commands that write fail the same way before any work (train-mapping reads an existing cache).
    weights = reenact_data.tiny_weights(tmp_path)
    clip = reenact_data.driving_clip(tmp_path / "clip.mp4", frames=2)
    # (a process of its own, as a user runs it: in this one Prefect's logging is set up already)
    proc = run_cli("invert", clip, "--cache", "s3://no-such-bucket/x", "--weights", weights, *CLI_SETTINGS,
                   env={**prefect_api_env, **s3.env()})
    assert_user_error(proc, "s3://no-such-bucket/x", "bucket does not exist", code=5)
    proc = cli("train-mapping", "--cache", "s3://no-such-bucket/x", "--out", tmp_path / "m.pt")
    assert_user_error(proc, "s3://no-such-bucket/x", "bucket does not exist", code=5)
    proc = cli("train-mapping", "--cache", url, "--out", tmp_path / "m.pt")
    assert_user_error(proc, url, "no cache at this URL", code=5)
    # A prefix with other files is never adopted as a cache; status of an empty prefix makes nothing.
    s3.client().put_object(Bucket=s3.bucket, Key="other/data.csv", Body=b"a,b\n")
    assert_user_error(cli("status", f"s3://{s3.bucket}/other"), "holds other files", code=5)
    assert_user_error(cli("status", url), "no cache here", code=5)
    assert s3.keys(s3.bucket) == ["other/data.csv"]


def test_store_gone_mid_run_is_one_line(monkeypatch):
    """The object store stops answering after the cache was opened (a worker losing its endpoint):
    the write is a one-line CacheError naming the frames and the endpoint, not a traceback."""
    from storage.cache import Workspace
    from storage.errors import CacheError
    from storage.latents import LatentCache

    with S3Server() as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        reset_s3_clients()
        server.create_bucket("gone")
        url = "s3://gone/ws"
        try:
            cache = LatentCache.require(Workspace(url), "k" * 64, {"t": 1}, 4, 2, 3)
            server.stop()
            with pytest.raises(CacheError, match=r"cannot write frames 1, 2 to the object store") as err:
                cache.write([1, 2], np.ones((2, 2, 3)), [0.1, 0.2], [1, 2])
            assert "\n" not in str(err.value) and "cannot reach the object store endpoint" in str(err.value)
        finally:
            reset_s3_clients()
