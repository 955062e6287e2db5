"""Task of the inversion-encoder training: a thin wrapper of stages/train_encoder.py.

What is done lives in the checkpoint at `out` (written atomically every `checkpoint_every` steps), so
the task opts out of Prefect's result caching (NO_CACHE): rerunning it continues from the file, and a
finished run trains nothing more. Returns the summary (numbers and paths), never tensors.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from stages.train_encoder import train_encoder_to
from tasks import resources
from tasks.conventions import run_name
from tasks.gpu import GPU_TAG, gpu_task

__all__ = ["GPU_TAG", "train_encoder_network"]


@gpu_task(name="train-inversion-encoder", cache_policy=NO_CACHE,
          task_run_name=run_name("train-encoder", "out"))
def train_encoder_network(weights: str, out: str, steps: int, settings: dict[str, Any],
                          cache: str | None = None, checkpoint_every: int = 100, device: str = "auto",
                          progress: bool = False) -> dict[str, Any]:
    """Train (or continue) the encoder at `out` for the generator `weights` to `steps` steps."""
    logger = get_run_logger()
    G = resources.generator(weights, device)
    return train_encoder_to(G, out, steps, settings, cache=cache, checkpoint_every=checkpoint_every,
                            device=device, progress=progress, log=logger.info)
