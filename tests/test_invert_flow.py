"""The dataset inversion flow on a Prefect test server: tables and provenance, latents equal to the
model called directly, the job record, the "gpu" tag, a second run that does nothing, frames failed by
the --max-loss quality gate and retried, and a two-worker Dask cluster with GPU resources."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import torch

from flows.invert import invert_dataset
from flows.runners import task_runner
from models.inversion import InversionConfig, invert
from storage.cache import Workspace
from storage.errors import InputError, JobFailedError
from storage.latents import SEED_RULE, LatentCache, fixed_batches, frame_seed
from storage.manifests import collect_videos
from tests import invert_data
from tests.invert_data import BATCH, FRAMES, SETTINGS, STEPS, latents_by_video
from tests.support.cache_files import chunk_mtimes

pytestmark = pytest.mark.usefixtures("prefect_harness")

TOTAL = sum(n for _, n in FRAMES.values())


@pytest.fixture(scope="module")
def data(invert_dataset) -> invert_data.Dataset:
    return invert_dataset


def latent_chunks(cache) -> dict[str, int]:
    return {k: v for k, v in chunk_mtimes(cache).items() if "/latents-" in k}


def test_job_end_to_end(data, tmp_path):
    from flows.cli.status import collect_status
    from models import load_generator

    summary, ws = data.summary, Workspace(data.reference)
    assert summary["frames"] == summary["done"] == summary["inverted"] == TOTAL
    assert summary["failed"] == summary["skipped"] == summary["pending"] == 0
    assert summary["batches"] == sum(-(-n // BATCH) for _, n in FRAMES.values())  # 2 + 2 + 2
    caches = list(LatentCache.all(ws))
    assert len(caches) == 3 and sorted(summary["tables"]) == sorted(c.location for c in caches)
    G = load_generator(data.weights)
    for cache in caches:
        media_key = cache.location.split("/")[1]
        (crops,) = ws.tables(media_key, "crops")
        # Provenance: the inversion's (settings, generator, loss nets, uncalibrated LPIPS), the crops
        # it inverted, the seed rule; the code version beside it.
        p = cache.provenance
        assert p["crops_table"] == crops.key and p["frame_seeds"] == SEED_RULE
        assert p["settings"]["steps"] == STEPS and p["settings"]["perceptual"] == "uncalibrated-alex"
        assert p["calibrated"] is False and p["losses"]["perceptual"]["calibrated"] is False
        assert p["generator"] == G.fingerprint() and cache.code_version
        # The latents are those of the model called directly on the same crops, batches and seeds.
        seeds = [frame_seed(media_key, i, 303) for i in range(cache.num_frames)]
        assert cache.read_seeds().tolist() == seeds
        config = InversionConfig(steps=STEPS, perceptual="uncalibrated-alex")
        for start, stop in fixed_batches(cache.num_frames, BATCH, range(cache.num_frames)):
            targets = torch.from_numpy(crops.read("crop", range(start, stop))).permute(0, 3, 1, 2) / 127.5 - 1
            points = torch.from_numpy(crops.read("crop_landmarks", range(start, stop)))
            direct = invert(G, targets.float(), config, landmarks=points, seeds=seeds[start:stop])
            np.testing.assert_array_equal(cache.read(range(start, stop)), direct.latents.numpy())
            np.testing.assert_array_equal(cache.read_losses(range(start, stop)),
                                          direct.losses["total"].numpy())
    # The job is recorded in the workspace; `facereenact status` shows it.
    (job,) = ws.jobs().values()
    assert job["kind"] == "invert" and job["state"] == "finished" and sorted(job["tables"]) == sorted(
        summary["tables"])
    (row,) = collect_status(ws)["jobs"]
    assert row["job"] == summary["job"] and (row["frames"], row["done"], row["failed"]) == (TOTAL, TOTAL, 0)


def test_second_run_does_nothing_and_tasks_carry_the_gpu_tag(data, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    cache = data.fresh_cache(tmp_path / "cache", reference=True)
    before = latent_chunks(cache)
    manifest = tmp_path / "videos.jsonl"  # the same videos through a manifest: the same tables
    manifest.write_text("".join(f'{{"path": "{data.videos / name}"}}\n' for name in FRAMES))
    state = invert_dataset(str(manifest), str(cache), str(data.weights), return_state=True, **SETTINGS)
    summary = state.result()
    assert summary["inverted"] == summary["computed"] == 0 and summary["skipped"] == TOTAL
    assert sorted(summary["tables"]) == sorted(data.summary["tables"])
    assert latent_chunks(cache) == before  # not one chunk rewritten
    assert summary["job"] == data.summary["job"]  # same videos and settings: the same job

    # Every invert-batches task run of the job that did the work is tagged "gpu" (so a tag concurrency
    # limit bounds them); the other tasks are not.
    per_task = SETTINGS.get("batches_per_task", 4)  # the flow's default: four fixed batches per task
    expected = []
    for name, (_, n) in FRAMES.items():
        batches = list(fixed_batches(n, BATCH, range(n)))
        for i in range(0, len(batches), per_task):
            group = batches[i:i + per_task]
            expected.append(f"invert-{name}-frames-{group[0][0]}-{group[-1][1] - 1}")
    expected.sort()
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 20
        while True:  # task-run records reach the server asynchronously
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[data.flow_run_id])))
            batches = [r for r in runs if r.name.startswith("invert-") and "-frames-" in r.name]
            if len(batches) == len(expected) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert sorted(r.name for r in batches) == expected
    assert all(r.tags == ["gpu"] for r in batches)
    assert all("gpu" not in r.tags for r in runs if r not in batches)


def test_quality_gate_fails_frames_and_retry_redoes_only_those(data, tmp_path):
    """Frames fail legitimately through the --max-loss quality gate: a frame whose final reconstruction
    loss (MSE + LPIPS + identity terms, not the regularisers) is above it is marked failed with the loss
    in its reason (no mocking of the inversion)."""
    video, total = data.videos / "a.mp4", FRAMES["a.mp4"][1]
    losses = data.reference_reconstruction("a.mp4")
    totals = data.reference_losses()["a.mp4"]
    # The stored total is mostly the noise regulariser: a gate above every reconstruction loss and
    # below every total fails nothing (a gate on the total failed them all).
    assert (losses < totals).all()
    loose = float(losses.max() * 1.001)
    if loose < totals.min():
        cache = data.fresh_cache(tmp_path / "loose")
        summary = invert_dataset(str(video), str(cache), str(data.weights), max_loss=loose, **SETTINGS)
        assert summary["failed"] == 0 and summary["done"] == total
    threshold = float(np.median(losses))
    expected = np.flatnonzero(losses > threshold).tolist()
    n_failed = len(expected)
    assert 0 < n_failed < total

    cache = data.fresh_cache(tmp_path / "cache")
    with pytest.raises(JobFailedError, match=f"{n_failed} of {total} frames failed") as raised:
        invert_dataset(str(video), str(cache), str(data.weights), max_loss=threshold, **SETTINGS)
    summary = raised.value.summary
    assert summary["failed"] == summary["failed_now"] == n_failed and summary["done"] == total - n_failed
    (frames,) = summary["failed_frames"].values()
    assert [int(f) for f in frames] == expected
    for frame, reason in frames.items():
        assert reason == f"final reconstruction loss {losses[int(frame)]:.6g} above --max-loss {threshold:g}"
    ws = Workspace(cache)
    assert {j["state"] for j in ws.jobs().values()} == {"failed"}

    # Without --retry-failed the failed frames stay failed: nothing is computed, the job still fails.
    with pytest.raises(JobFailedError) as again:
        invert_dataset(str(video), str(cache), str(data.weights), max_loss=threshold, **SETTINGS)
    assert again.value.summary["computed"] == 0 and again.value.summary["skipped"] == total

    # --retry-failed with a looser gate: only the failed frames are stored again.
    done_chunks = {k: v for k, v in latent_chunks(cache).items()}
    summary = invert_dataset(str(video), str(cache), str(data.weights), retry_failed=True, **SETTINGS)
    assert summary["inverted"] == n_failed and summary["failed"] == 0 and summary["done"] == total
    assert summary["skipped"] == total - n_failed
    rewritten = sorted(int(k.split("/latents/c/")[1].split("/")[0]) for k, v in latent_chunks(cache).items()
                       if "/latents/c/" in k and done_chunks.get(k) != v)
    assert rewritten == expected
    # ... and every frame ends as the uninterrupted, ungated run made it (bitwise: same batches).
    np.testing.assert_array_equal(latents_by_video(cache)["a.mp4"], data.reference_latents()["a.mp4"])
    assert {j["state"] for j in ws.jobs().values()} == {"finished"}


def test_two_worker_dask_cluster_with_gpu_resources(data, tmp_path):
    """A local Dask cluster of two worker processes, one declaring the resource GPU=1: with
    gpu_resources every batch runs on that one (the annotation reaches the scheduler), and the
    latents are those of the threads run, bit for bit."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    workers = {"gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
               "cpu": {"cls": Nanny, "options": {"nthreads": 1}}}
    cache = data.fresh_cache(tmp_path / "cache")
    with SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, workers=workers,
                     silence_logs=40) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)  # worker address -> pid
        gpu_worker = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"])
        flow = invert_dataset.with_options(task_runner=task_runner(cluster.scheduler_address))
        summary = flow(str(data.videos / "c.mp4"), str(cache), str(data.weights), gpu_resources=True,
                       **SETTINGS)
    assert summary["inverted"] == FRAMES["c.mp4"][1] and summary["failed"] == 0 and summary["batches"] == 2
    assert summary["workers"] == [f"{socket.gethostname()}:{pids[gpu_worker]}"]
    np.testing.assert_array_equal(latents_by_video(cache)["c.mp4"], data.reference_latents()["c.mp4"])


def test_task_runner_specs():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(task_runner("threads"), ThreadPoolTaskRunner)
    assert task_runner("threads:3")._max_workers == 3
    local = task_runner("dask:2", gpu_resources=True)
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["resources"] == {"GPU": 1}
    assert "resources" not in task_runner("dask").cluster_kwargs
    assert task_runner("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    for bad in ("dask:0", "threads:x", "gpus", "tcp://"):
        with pytest.raises(InputError, match="--runner"):
            task_runner(bad)


def test_dataset_specs_and_settings_errors(data, tmp_path):
    with pytest.raises(InputError, match="no videos found"):
        invert_dataset(str(tmp_path), str(tmp_path / "cache"), str(data.weights), **SETTINGS)
    with pytest.raises(InputError, match="bad inversion settings"):
        invert_dataset(str(data.videos), str(tmp_path / "cache"), str(data.weights),
                       loss_weights={"lambda_mse": -1.0}, **SETTINGS)
    assert collect_videos(str(data.videos / "*.mp4")) == collect_videos(str(data.videos))


def test_dask_worker_killed_mid_run_every_frame_done_exactly_once(data, tmp_path):
    """Two GPU workers; one is killed (SIGKILL) as soon as the first frame is stored. Dask reschedules
    its batch on a worker that lives: the job completes, every frame is done, the latents are those of
    the threads run, and no frame stored before the kill was written again (its chunks untouched)."""
    import signal
    import threading

    from distributed import Client, Nanny, Scheduler, SpecCluster

    workers = {name: {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}}
               for name in ("a", "b")}
    cache = data.fresh_cache(tmp_path / "cache")
    status_dir = cache / "media"
    killed: dict = {}
    with SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, workers=workers,
                     silence_logs=50) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)

        def kill_first_writer() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done = list(status_dir.glob("*/latents-*/status/c/*"))
                if done:
                    # The chunks of the frames marked done. Snapshot first, then read which are done:
                    # a frame whose data is written but not yet its status may legitimately be
                    # written again (it was not stored), so it is not compared.
                    chunks = latent_chunks(cache)
                    stored = {p.name for p in status_dir.glob("*/latents-*/status/c/*")}
                    killed["chunks"] = {k: v for k, v in chunks.items()
                                        if k.split("/c/")[1].split("/")[0] in stored}
                    victim = sorted(pids.values())[0]
                    os.kill(victim, signal.SIGKILL)
                    killed["pid"] = victim
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_first_writer, daemon=True)
        watcher.start()
        flow = invert_dataset.with_options(task_runner=task_runner(cluster.scheduler_address))
        summary = flow(str(data.videos / "a.mp4"), str(cache), str(data.weights), gpu_resources=True,
                       batches_per_task=1, **SETTINGS)
        watcher.join(timeout=5)
    assert "pid" in killed, "the job ended before any worker was killed"
    assert summary["done"] == summary["frames"] == FRAMES["a.mp4"][1] and summary["failed"] == 0
    np.testing.assert_array_equal(latents_by_video(cache)["a.mp4"], data.reference_latents()["a.mp4"])
    after = latent_chunks(cache)
    rewritten = [k for k, v in killed["chunks"].items() if after.get(k) != v]
    assert rewritten == [], f"frames stored before the kill were written again: {rewritten}"


def test_damaged_done_frames_are_recomputed_by_a_rerun(data, tmp_path):
    """Done frames whose latents chunk is missing, garbled or NaN (damage after the fact): `status`
    reports them and a plain rerun (no --repair, no --retry-failed) recomputes exactly those, to the
    bits of the uninterrupted job."""
    from flows.cli.status import collect_status

    cache = data.fresh_cache(tmp_path / "cache", reference=True)
    ws = Workspace(cache)
    (a,) = [c for c in LatentCache.all(ws) if invert_data._source(ws, c) == "a.mp4"]
    chunks = cache / a.location / "latents" / "c"
    (chunks / "1" / "0" / "0").unlink()
    (chunks / "5" / "0" / "0").write_bytes(b"\x00not a chunk")
    a.table.group["latents"][6] = np.full(a.table.fields["latents"].shape, np.nan, np.float32)
    (row,) = [t for t in collect_status(ws)["tables"] if t["location"] == a.location]
    assert row["damaged"] == [1, 5, 6] and row["done"] == FRAMES["a.mp4"][1]

    before = latent_chunks(cache)
    summary = invert_dataset(str(data.videos), str(cache), str(data.weights), **SETTINGS)
    assert summary["inverted"] == 3 and summary["done"] == TOTAL and summary["failed"] == 0
    rewritten = sorted(k for k, v in latent_chunks(cache).items()
                       if before.get(k) != v and "/latents/c/" in k)
    assert [int(k.split("/latents/c/")[1].split("/")[0]) for k in rewritten] == [1, 5, 6]
    for name, latents in data.reference_latents().items():
        np.testing.assert_array_equal(latents_by_video(cache)[name], latents)
    assert all(not t["damaged"] for t in collect_status(ws)["tables"])
