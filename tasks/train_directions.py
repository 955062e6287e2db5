"""Task of the latent-directions training: the whole run (stages/train_directions.py) in one GPU task.

It returns a small summary (numbers, paths), never tensors. What is done lives in the directions
file at `out` (written atomically every `checkpoint_every` steps), so the task opts out of Prefect's
result caching (NO_CACHE): rerunning it continues from the file, and a finished run trains no more.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from storage.errors import InputError
from tasks import resources
from tasks.conventions import TRANSIENT_IO, run_name
from tasks.gpu import gpu_task

__all__ = ["directions_config", "train_directions_task"]


def directions_config(settings: dict[str, Any] | None):
    """stages.train_directions.DirectionsConfig from plain settings (InputError naming a bad one)."""
    from stages.train_directions import DirectionsConfig

    try:
        return DirectionsConfig(**(settings or {}))
    except TypeError as err:
        raise InputError(f"unknown directions setting ({err})") from None
    except ValueError as err:
        raise InputError(str(err)) from None


@gpu_task(name="train-directions", cache_policy=NO_CACHE, task_run_name=run_name("train-directions", "out"),
          **TRANSIENT_IO)
def train_directions_task(weights: str, out: str, settings: dict[str, Any], steps: int, checkpoint_every: int,
                          cache: str | None = None, device: str = "auto", landmarks: str = "faceapi",
                          progress: bool = False) -> dict[str, Any]:
    """Fit p (new file) or read it (existing file), then train A until `steps` steps."""
    from stages.train_directions import train_to

    logger = get_run_logger()
    config = directions_config(settings)
    G = resources.generator(weights, device)
    backend = resources.landmark_backend(landmarks, device)
    bars: dict[str, Any] = {}

    def bar(name: str, total: int, unit: str):
        if not progress:
            return None
        if name not in bars:
            from tqdm import tqdm

            bars[name] = tqdm(total=total, desc=name, unit=unit, file=sys.stderr, leave=False,
                              dynamic_ncols=True)
        return bars[name]

    def on_fit(n: int) -> None:
        b = bar("fitting p", config.fit_samples, "image")
        if b is not None:
            b.update(n)

    def on_step(record: dict[str, float]) -> None:
        b = bar("training A", steps, "step")
        if b is not None:
            if b.n == 0:
                b.update(int(record["step"]) - 1)
            b.update(1)
            b.set_postfix(loss=f"{record['loss']:.4f}", reenactment=f"{record['reenactment']:.4f}")

    try:
        return train_to(out, G, backend, config, steps, checkpoint_every, cache=cache, log=logger.info,
                        on_step=on_step, on_fit=on_fit)
    finally:
        for b in bars.values():
            b.close()
