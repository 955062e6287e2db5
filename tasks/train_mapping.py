"""Tasks of the mapping-network training: check the training data, train (resuming) and evaluate.

Each calls one function of stages/train_mapping.py (the plan, the checkpoint checks, the training
loop and the held-out evaluation; no Prefect there) and returns its small typed summary (numbers,
paths), never tensors. What is done lives in the checkpoint file at `out` (written atomically every
`checkpoint_every` steps), so the tasks opt out of Prefect's result caching (NO_CACHE): rerunning one
continues from the checkpoint on disk, and a finished run trains nothing more.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from stages import train_mapping as stage
from stages.train_mapping import DEFAULT_SETTINGS, DataSummary, TrainingRun
from tasks import resources
from tasks.conventions import TRANSIENT_IO, run_name
from tasks.gpu import GPU_TAG, gpu_task

__all__ = ["DEFAULT_SETTINGS", "GPU_TAG", "DataSummary", "TrainingRun", "inspect_data", "train_network"]


@task(name="inspect-training-data", cache_policy=NO_CACHE,
      task_run_name=run_name("inspect-training-data", "out"), **TRANSIENT_IO)
def inspect_data(cache: str, settings: dict[str, Any], out: str, steps: int) -> DataSummary:
    """What the run will train on (videos, frames, generator, split); fails in one line before any
    training when the cache or the checkpoint at `out` cannot be used. Latents are not read."""
    return stage.inspect(cache, settings, out, steps)


@gpu_task(name="train-mapping-network", cache_policy=NO_CACHE,
          task_run_name=run_name("train-mapping", "out"))
def train_network(cache: str, settings: dict[str, Any], out: str, steps: int, checkpoint_every: int,
                  weights: str | None = None, device: str = "auto") -> TrainingRun:
    """Train (or continue) the network at `out` to `steps` steps, then evaluate it on the held-out part."""
    return stage.train(cache, settings, out, steps, checkpoint_every, weights, device,
                       log=get_run_logger().info, load_generator=resources.generator)
