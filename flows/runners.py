"""Where a flow's tasks run: the `--runner` values of the CLI and the GPU resource of Dask workers.

Shared by the dataset inversion (flows/invert.py: batches of frames) and the reenactment batch
(flows/batch.py: whole jobs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from storage.errors import InputError

__all__ = ["GPU_RESOURCES", "gpu_annotation", "task_runner"]

GPU_RESOURCES = {"GPU": 1}  # dask worker resources one GPU task holds (`--gpu-resources`)


def task_runner(spec: str = "threads", gpu_resources: bool = False) -> TaskRunner:
    """The task runner of a `--runner` value.

    - "threads" / "threads:N": a ThreadPoolTaskRunner with N threads (default 1: one task at a time
      on the one GPU or on the CPU's threads; more overlap tasks on a GPU with memory to spare);
    - "dask" / "dask:N": a local Dask cluster of N single-threaded worker processes (default 1),
      each declaring the resource GPU=1 when `gpu_resources`;
    - "tcp://host:port" (or tls://): an existing Dask scheduler; its workers must see the cache and
      the weight files at the same paths, and declare `--resources GPU=1` when `gpu_resources`.
    """
    text = spec.strip()
    kind, _, count = text.partition(":")
    if kind in ("threads", "dask") and "//" not in count:
        try:
            n = int(count) if count else 1
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"--runner {spec!r}: the count after ':' must be a whole number >= 1")
        if kind == "threads":
            return ThreadPoolTaskRunner(max_workers=n)
        from prefect_dask import DaskTaskRunner

        # silence_logs: the workers' own warnings (cancelled tasks on Ctrl-C, which reaches the whole
        # process group) off; errors still show
        cluster = {"n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
                   "silence_logs": logging.ERROR}
        if gpu_resources:
            cluster["resources"] = dict(GPU_RESOURCES)
        return DaskTaskRunner(cluster_kwargs=cluster)
    if text.startswith(("tcp://", "tls://")) and len(text) > len("tcp://"):
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=text)
    raise InputError(f"--runner {spec!r}: use threads[:N], dask[:N] or a scheduler address tcp://HOST:PORT")


@contextlib.contextmanager
def gpu_annotation(enabled: bool) -> Iterator[None]:
    """Dask annotation of the tasks submitted inside: each holds one GPU of its worker."""
    if not enabled:
        yield
        return
    import dask

    with dask.annotate(resources=dict(GPU_RESOURCES)):
        yield
