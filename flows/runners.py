"""Where a flow's tasks run: the `--runner` values of the CLI, the GPU resource of Dask workers, and
which GPU each local worker process uses.

Shared by the dataset inversion (flows/invert.py: batches of frames) and the reenactment batch
(flows/batch.py: whole jobs).

Device pinning: each worker process this module starts uses its own GPU, `worker_devices(N)[i]` for
worker i: the visible GPUs (CUDA_VISIBLE_DEVICES of the CLI's process, else every GPU torch counts)
dealt round robin. Local Dask workers ("dask:N") see that GPU only (their CUDA_VISIBLE_DEVICES, so
`--device cuda` or auto is it); process-pool workers ("processes:N", whose tasks Prefect runs with the
parent's environment) are pinned to it by index (models.device.pin_device: "cuda" / "auto" mean
cuda:i there). Without a GPU nothing is pinned.
Workers of an existing cluster (tcp://...) are pinned by whoever starts them (SLURM's --gres,
Kubernetes' nvidia.com/gpu request, or CUDA_VISIBLE_DEVICES on `dask worker`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from storage.errors import InputError

__all__ = ["GPU_RESOURCES", "gpu_annotation", "pinned_local_cluster", "task_runner", "visible_gpus",
           "worker_devices"]

GPU_RESOURCES = {"GPU": 1}  # dask worker resources one GPU task holds (`--gpu-resources`)


def task_runner(spec: str = "threads", gpu_resources: bool = False) -> TaskRunner:
    """The task runner of a `--runner` value.

    - "threads" / "threads:N": a ThreadPoolTaskRunner with N threads (default 1: one task at a time
      on the one GPU or on the CPU's threads; more overlap tasks on a GPU with memory to spare);
    - "dask" / "dask:N": a local Dask cluster of N single-threaded worker processes (default 1),
      each declaring the resource GPU=1 when `gpu_resources`, each pinned to its GPU (worker_devices);
    - "processes" / "processes:N": Prefect's ProcessPoolTaskRunner with N worker processes, each
      pinned to its GPU by index (models.device.pin_device);
    - "tcp://host:port" (or tls://): an existing Dask scheduler; its workers must see the cache and
      the weight files at the same paths, and declare `--resources GPU=1` when `gpu_resources`.
    """
    text = spec.strip()
    kind, _, count = text.partition(":")
    if kind in ("threads", "dask", "processes") and "//" not in count:
        try:
            n = int(count) if count else 1
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"--runner {spec!r}: the count after ':' must be a whole number >= 1")
        if kind == "threads":
            return ThreadPoolTaskRunner(max_workers=n)
        if kind == "processes":
            return _process_pool(n, worker_devices(n))
        from prefect_dask import DaskTaskRunner

        # silence_logs: the workers' own warnings (cancelled tasks on Ctrl-C, which reaches the whole
        # process group) off; errors still show
        cluster: dict[str, Any] = {"n_workers": n, "threads_per_worker": 1, "processes": True,
                                   "dashboard_address": None, "worker_devices": worker_devices(n),
                                   "silence_logs": logging.ERROR}
        if gpu_resources:
            cluster["resources"] = dict(GPU_RESOURCES)
        return DaskTaskRunner(cluster_class=pinned_local_cluster, cluster_kwargs=cluster)
    if text.startswith(("tcp://", "tls://")) and len(text) > len("tcp://"):
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=text)
    raise InputError(f"--runner {spec!r}: use threads[:N], dask[:N], processes[:N] or a scheduler address "
                     "tcp://HOST:PORT")


@contextlib.contextmanager
def gpu_annotation(enabled: bool) -> Iterator[None]:
    """Dask annotation of the tasks submitted inside: each holds one GPU of its worker."""
    if not enabled:
        yield
        return
    import dask

    with dask.annotate(resources=dict(GPU_RESOURCES)):
        yield


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries: that variable's list when it is
    set (empty or -1: none), else 0..count-1 of the GPUs torch finds (none without CUDA)."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is not None:
        entries = [e.strip() for e in text.split(",") if e.strip()]
        # CUDA stops at the first invalid entry; -1 is the usual way to hide every GPU
        return entries[:entries.index("-1")] if "-1" in entries else entries
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no usable CUDA: no GPU to pin
        count = 0
    return [str(i) for i in range(count)]


def worker_devices(n_workers: int, gpus: Sequence[str] | None = None) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each of `n_workers` worker processes: the visible GPUs (`gpus`, default
    visible_gpus()) dealt round robin, so N workers on N GPUs use one each and more workers than GPUs
    share them evenly; None for every worker when there is no GPU (nothing pinned)."""
    devices = list(visible_gpus() if gpus is None else gpus)
    if not devices:
        return [None] * n_workers
    return [devices[i % len(devices)] for i in range(n_workers)]


def _pin_environment(options: dict[str, Any], device: str | None) -> dict[str, Any]:
    if device is None:
        return options
    return {**options, "env": {**(options.get("env") or {}), "CUDA_VISIBLE_DEVICES": device}}


def pinned_local_cluster(*args: Any, worker_devices: Sequence[str | None] = (), **kwargs: Any) -> Any:
    """A distributed.LocalCluster whose worker i sees only GPU `worker_devices[i]` (its Nanny starts
    the worker process with that CUDA_VISIBLE_DEVICES; None: not pinned). The cluster class of
    `task_runner("dask:N")`."""
    return _pinned_cluster_class()(*args, worker_devices=worker_devices, **kwargs)


@functools.cache
def _pinned_cluster_class() -> type:
    from distributed import LocalCluster  # imported only when a dask runner starts

    class PinnedLocalCluster(LocalCluster):
        def __init__(self, *args: Any, worker_devices: Sequence[str | None] = (), **kwargs: Any) -> None:
            self.worker_devices = list(worker_devices)
            super().__init__(*args, **kwargs)

        async def _start(self) -> None:  # the worker specs are pinned before any worker starts
            for i, name in enumerate(sorted(self.worker_spec, key=lambda n: (str(type(n)), str(n).zfill(9)))):
                device = self.worker_devices[i] if i < len(self.worker_devices) else None
                spec = dict(self.worker_spec[name])
                spec["options"] = _pin_environment(dict(spec["options"]), device)
                self.worker_spec[name] = spec
            await super()._start()

    return PinnedLocalCluster


def _pin_process(slots: str, devices: Sequence[str | None]) -> None:
    """Initializer of each process-pool worker: take the next free slot (a file created exclusively
    in the pool's own temporary folder: worker processes share no memory with the parent) and pin
    this process to that slot's GPU as an explicit index (models.device.pin_device: "cuda" and
    "auto" mean cuda:N here). Not CUDA_VISIBLE_DEVICES: Prefect's process pool runs each task with
    the parent's environment."""
    from models.device import pin_device

    index = 0
    while True:
        try:
            os.close(os.open(os.path.join(slots, str(index)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            index += 1
    pin_device(index % len(devices) if devices and devices[0] is not None else None)


def _process_pool(n: int, devices: list[str | None]) -> TaskRunner:
    import tempfile

    from prefect.task_runners import ProcessPoolTaskRunner

    slots = tempfile.mkdtemp(prefix="facereenact-workers-")
    runner = ProcessPoolTaskRunner(max_workers=n, initializer=_pin_process, initargs=(slots, devices))
    weakref.finalize(runner, shutil.rmtree, slots, True)  # the slot files go with the runner (or at exit)
    return runner
