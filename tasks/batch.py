"""The task of the reenactment batch: one job of a manifest, on whichever worker runs it.

`run_job` calls the reenact flow (a nested flow run inside the task) and returns a small outcome,
never raising for the job's own failure, so one bad job never stops a batch: the flow records it.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from storage.errors import FacereenactError, InputError
from tasks.gpu import gpu_task

__all__ = ["JobOutcome", "run_job"]


@dataclass(frozen=True)
class JobOutcome:
    """One job's end: the worker that ran it ("host:pid"), and its seconds and tables when it finished,
    or the one-line reason when it failed."""

    worker: str
    seconds: float | None = None
    tables: tuple[str, ...] = ()
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@gpu_task(name="run-job", cache_policy=NO_CACHE, task_run_name="job/{name}")
def run_job(name: str, source: str, driving: str, output: str, cache: str, weights: str, mode: str,
            options: dict[str, Any], device: str = "auto", landmarks: str = "faceapi",
            progress: bool = False) -> JobOutcome:
    """Reenact one job (`progress`: the reenact flow's per-frame bars on stderr). Returns its outcome:
    seconds and tables when it finished, the one-line reason when it failed (a bug's traceback goes
    to the log)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    t0 = time.monotonic()
    try:
        try:
            from flows.reenact import reenact
        except ImportError as err:  # pragma: no cover - the reenact flow ships beside the batch
            raise InputError(f"the reenact flow is not available in this installation ({err})") from None
        named = reenact.with_options(flow_run_name=lambda: f"reenact/{name}")  # the job's name in the UI
        result = named(source, driving, output, cache, weights, mode=mode, device=device, landmarks=landmarks,
                       progress=progress, **options)
    except FacereenactError as err:
        return JobOutcome(worker, error=str(err))
    except Exception as err:  # a bug in one job must not stop the batch: recorded, traceback logged
        reason = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        get_run_logger().error(f"{name}: {reason}\n{traceback.format_exc()}")
        return JobOutcome(worker, error=reason)
    tables = sorted(set((result.get("tables") or {}).values())) if isinstance(result, dict) else []
    return JobOutcome(worker, seconds=round(time.monotonic() - t0, 2), tables=tuple(tables))
