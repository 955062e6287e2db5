"""Operations on GPU workers: the "gpu" tag decided in one place (tasks/gpu.py) and bounding nested
GPU tasks without a deadlock, the GPU each local worker process is pinned to (flows/runners.py),
expiring leases and a killed job shown as stale (storage/leases.py), damaged done frames found and
recomputed (FrameTable.damaged_frames)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from flows.runners import pinned_local_cluster, task_runner, visible_gpus, worker_devices
from storage.cache import DONE, PENDING, Field, Workspace
from storage.leases import JobLease, Lease, is_live, job_lease_name, read_lease
from tasks.gpu import GPU_TAG, GpuTask, gpu_task
from tests.helpers import REPO_ROOT


def test_every_gpu_task_and_only_those_is_a_gpu_task():
    from tasks import batch, invert, prepare, reenact, train_mapping

    gpu = {reenact.project_driving, reenact.map_driving, reenact.render_output, batch.run_job,
           invert.invert_batches, train_mapping.train_network}
    other = {reenact.report_run, invert.open_latents, prepare.open_media, prepare.align_crops,
             train_mapping.inspect_data}
    assert all(isinstance(t, GpuTask) and GPU_TAG in t.tags for t in gpu)
    assert not any(isinstance(t, GpuTask) or GPU_TAG in t.tags for t in other)
    # with_options keeps a GPU task a GPU task (what another helper's retries or names may use)
    renamed = reenact.render_output.with_options(name="render-again", tags={"extra"})
    assert isinstance(renamed, GpuTask) and renamed.tags == {"extra", GPU_TAG}


@gpu_task(name="inner-gpu")
def _inner() -> str:
    return "inner"


@gpu_task(name="outer-gpu")
def _outer() -> str:
    return _inner() + "+outer"


@gpu_task(name="outer-flow-gpu")
def _outer_with_flow() -> str:  # run-job's shape: a GPU task running a flow whose tasks use the GPU
    from prefect import flow

    @flow(name="nested-in-gpu-task")
    def nested() -> str:
        return _inner()

    return nested() + "+flow"


def test_nested_gpu_tasks_run_in_the_parents_slot_under_a_limit_of_one(prefect_harness):
    """With `prefect concurrency-limit create gpu 1`, a GPU task inside a GPU task (run-job running the
    reenact flow) must not wait for the slot its parent holds: it is not tagged again. A GPU task on
    its own is. Tags read back from the server."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow(name="gpu-nesting")
    def nesting() -> list[str]:
        return [_outer(), _inner(), _outer_with_flow()]

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=1)
        try:
            # a deadlock would hang here forever: run it in a thread with a deadline
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                state = pool.submit(nesting, return_state=True).result(timeout=120)
            assert state.result() == ["inner+outer", "inner", "inner+flow"]
            runs = client.read_task_runs()
        finally:
            client.delete_concurrency_limit_by_tag(GPU_TAG)
    tags = sorted((r.name.rsplit("-", 1)[0], tuple(r.tags)) for r in runs
                  if r.name.startswith(("inner-gpu", "outer-gpu", "outer-flow-gpu")))
    assert tags == [("inner-gpu", ()), ("inner-gpu", ()), ("inner-gpu", ("gpu",)),
                    ("outer-flow-gpu", ("gpu",)), ("outer-gpu", ("gpu",))]


def test_worker_devices_deal_the_visible_gpus(monkeypatch):
    assert worker_devices(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert worker_devices(2, ["3", "5", "6"]) == ["3", "5"]
    assert worker_devices(3, []) == [None, None, None]  # no GPU: nothing pinned
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 7")
    assert visible_gpus() == ["2", "7"] and worker_devices(3) == ["2", "7", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def _device_of_this_process() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_each_local_dask_worker_sees_its_own_gpu(monkeypatch):
    """`--runner dask:2` on a machine showing GPUs 3 and 5: worker 0 sees only 3, worker 1 only 5
    (what torch's cuda:0 is in each). Real worker processes; no GPU needed to see the pinning."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    runner = task_runner("dask:2", gpu_resources=True)
    kwargs = runner.cluster_kwargs
    assert kwargs["worker_devices"] == ["3", "5"] and kwargs["resources"] == {"GPU": 1}
    from distributed import Client

    kwargs = {k: v for k, v in kwargs.items() if k != "worker_devices"}
    with pinned_local_cluster(worker_devices=["3", "5"], **kwargs) as cluster, Client(cluster) as client:
        seen = client.run(_device_of_this_process)
        names = {info["name"]: address for address, info in client.scheduler_info()["workers"].items()}
    assert {name: seen[address] for name, address in names.items()} == {0: "3", 1: "5"}


def test_each_process_pool_worker_uses_its_own_gpu(prefect_harness, monkeypatch):
    """`--runner processes:2` on a machine showing two GPUs: the tasks of a flow run in two worker
    processes, each pinned by the pool's initializer to its own GPU index ("cuda" and "auto" mean
    cuda:0 in one, cuda:1 in the other). Real worker processes; no GPU needed to see the pinning."""
    from prefect import flow

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")

    @flow(name="which-devices")
    def which() -> list[tuple[int, int | None]]:
        return [future.result() for future in [_device_task.submit(i) for i in range(6)]]

    seen = set(which.with_options(task_runner=task_runner("processes:2"))())
    by_pid: dict[int, set] = {}
    for pid, index in seen:
        by_pid.setdefault(pid, set()).add(index)
    assert all(len(indices) == 1 for indices in by_pid.values())  # one device per worker process
    assert set().union(*by_pid.values()) <= {0, 1} and os.getpid() not in by_pid
    if len(by_pid) == 2:  # both workers took tasks (the usual case): one each
        assert set().union(*by_pid.values()) == {0, 1}


@gpu_task(name="which-device")
def _device_task(i: int) -> tuple[int, int | None]:
    from models.device import pinned_device

    time.sleep(0.5)
    return os.getpid(), pinned_device()


def test_lease_is_exclusive_and_expires(tmp_path):
    ws = Workspace(tmp_path / "c")
    first = Lease(ws.root, "frames-x-0", seconds=1.0)
    assert first.acquire()
    second = Lease(ws.root, "frames-x-0", seconds=1.0)
    assert not second.acquire()
    time.sleep(1.5)  # renewed by its thread: still held
    assert not second.acquire() and is_live(read_lease(ws.root, "frames-x-0"))
    first.release()
    assert second.acquire()  # released: free at once
    second._stop.set()  # its holder stops renewing (as when killed)
    second._thread.join()
    assert not Lease(ws.root, "frames-x-0", seconds=1.0).acquire()
    time.sleep(1.1)
    third = Lease(ws.root, "frames-x-0", seconds=1.0)
    assert third.acquire()  # lapsed: taken over
    third.release()


HOLD_JOB = """
import sys, time
from storage.cache import Workspace
from storage.leases import JobLease
ws = Workspace(sys.argv[1])
ws.record_job("invert-killed", {"kind": "invert", "state": "running", "tables": []})
JobLease(ws, "invert-killed").acquire(settle=0)
print("holding", flush=True)
time.sleep(600)
"""


def test_status_shows_a_job_killed_without_a_word_as_stale(tmp_path, cli):
    cache = tmp_path / "c"
    Workspace(cache)
    env = {**os.environ, "FACEREENACT_LEASE_SECONDS": "1.5", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_JOB, str(cache)], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout.readline().strip() == "holding"
        time.sleep(2.0)  # longer than the lease: alive, it renews it
        (row,) = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
        assert row["state"] == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # on this host the holder's pid is gone: stale at once, before its lease would lapse
    (row,) = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
    assert row["state"] == "stale"
    assert not is_live(read_lease(Workspace(cache).root, job_lease_name("invert-killed")))
    with JobLease(Workspace(cache), "invert-killed") as lease:  # a rerun of the job takes it over
        assert lease.held


def test_damaged_done_frames_are_reported_and_recomputed(tmp_path, cli):
    """A done frame whose chunk is missing, garbled or NaN: `status` reports it, and the next run that
    opens the table (any stage: Workspace.table) finds it pending, so it is computed again."""
    fields = {"latents": Field((18, 8)), "loss": Field(()), "raw": Field((2,), nan_ok=True),
              "count": Field((), dtype="int32")}
    ws = Workspace(tmp_path / "c")
    ws.media("k", {"source": "clip.mp4"})
    t = ws.table("k", "latents", {"s": 1}, 12, fields)
    rng = np.random.default_rng(0)
    t.write(range(10), latents=rng.random((10, 18, 8)), loss=rng.random(10),
            raw=np.full((10, 2), np.nan), count=np.zeros(10))
    root = tmp_path / "c" / t.location
    (root / "latents" / "c" / "2" / "0" / "0").unlink()                     # missing
    (root / "latents" / "c" / "4" / "0" / "0").write_bytes(b"\x00garbled")  # unreadable
    t.group["loss"][7] = np.float32(np.inf)                                   # not finite
    assert t.damaged_frames().tolist() == [2, 4, 7]

    (table,) = json.loads(cli("status", tmp_path / "c", "--json", check=True).stdout)["tables"]
    assert table["damaged"] == [2, 4, 7] and table["done"] == 10
    text = cli("status", tmp_path / "c", check=True).stdout
    assert "3 done frame(s) damaged (2, 4, 7): the next run recomputes them" in text

    again = ws.table("k", "latents", {"s": 1}, 12, fields)  # what a rerun or resume does first
    assert np.flatnonzero(again.status() == PENDING).tolist() == [2, 4, 7, 10, 11]
    assert (again.status()[[0, 1, 3, 5, 6, 8, 9]] == DONE).all() and again.damaged_frames().size == 0


def test_status_repair_still_marks_damaged_frames_failed(tmp_path, cli):
    ws = Workspace(tmp_path / "c")
    t = ws.table("k", "latents", {"s": 1}, 3, {"latents": Field((2,))})
    t.write(range(3), latents=np.ones((3, 2)))
    (tmp_path / "c" / t.location / "latents" / "c" / "1" / "0").unlink()
    cli("status", tmp_path / "c", "--repair", check=True)
    assert t.failed_frames().tolist() == [1] and "missing, unreadable" in t.errors()[1]


@pytest.mark.parametrize("spec", ["processes:0", "processes:x"])
def test_bad_process_runner(spec):
    from storage.errors import InputError

    with pytest.raises(InputError, match="whole number"):
        task_runner(spec)


def test_a_second_job_on_a_sequential_table_waits_for_the_first(tmp_path):
    """The projection of a table cannot be split (each frame starts from the one before): a second
    job waits on the table's lease until the first releases it (or its lease lapses), then resumes."""
    import threading

    from storage.leases import table_lease

    ws = Workspace(tmp_path / "c")
    first = table_lease(ws.root, "media/k/reenact-abc").wait()
    got: list[float] = []

    def second() -> None:
        lease = table_lease(ws.root, "media/k/reenact-abc").wait(poll=0.05)
        got.append(time.monotonic())
        lease.release()

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.8)
    assert not got  # still waiting while the first holds it
    released = time.monotonic()
    first.release()
    waiter.join(timeout=30)
    assert got and got[0] >= released
