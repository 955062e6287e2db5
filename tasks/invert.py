"""Tasks of the dataset inversion: open a video's latent table, invert fixed batches of its frames.

Each opens the workspace (and the generator through tasks/resources.py, once per worker process),
calls one function of stages/invert.py and returns its small typed summary (table locations, counts,
failure reasons), never tensors. The zarr status decides what is left, so the tasks opt out of
Prefect's result caching (NO_CACHE).

`invert_batches` is tagged "gpu": a Prefect tag concurrency limit (`prefect concurrency-limit create
gpu 1`) bounds how many run at once across every flow run on the server. The stage checks that the
generator and loss nets it loaded give the provenance the table was made with, so a worker with
another weights file can never write into the table.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from stages import invert as stage
from stages.invert import BatchesRun, LatentsPlan, batch_lease_name, config_from_settings, settings_of
from storage.cache import Workspace
from tasks import resources
from tasks.conventions import TRANSIENT_IO, run_name
from tasks.gpu import GPU_TAG, gpu_task

__all__ = ["GPU_TAG", "BatchesRun", "LatentsPlan", "batch_lease_name", "config_from_settings",
           "invert_batches", "open_latents", "settings_of"]


@task(name="open-latents", cache_policy=NO_CACHE, task_run_name=run_name("open-latents", "prepared"),
      **TRANSIENT_IO)
def open_latents(prepared: dict[str, Any], cache: str, weights: str, settings: dict[str, Any],
                 batch_size: int, retry_failed: bool = False, device: str = "auto") -> LatentsPlan:
    """The latent table of a prepared video under this inversion's provenance (created if new), and
    the fixed batches that still hold frames to invert."""
    return stage.plan_latents(Workspace(cache), resources.generator(weights, device), prepared,
                              config_from_settings(settings), batch_size, retry_failed)


def _batches_run_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"invert-{p['name']}-frames-{p['batches'][0][0]}-{p['batches'][-1][1] - 1}"


@gpu_task(name="invert-batches", cache_policy=NO_CACHE, task_run_name=_batches_run_name,
          **TRANSIENT_IO)
def invert_batches(cache: str, table: str, crops_table: str, media_key: str, name: str, weights: str,
                   settings: dict[str, Any], batches: list[list[int]], retry_failed: bool = False,
                   max_loss: float | None = None, device: str = "auto") -> BatchesRun:
    """Invert some fixed batches [start, stop) of one video, one after the other, each stored as soon as
    it is done (a crash loses at most the batch in flight). One task for several batches: Prefect's
    bookkeeping per task run (0.1-0.2 s here) is paid once for them."""
    return stage.invert_batches(Workspace(cache), table, crops_table, media_key, name,
                                lambda: resources.generator(weights, device), config_from_settings(settings),
                                batches, retry_failed, max_loss, get_run_logger())
