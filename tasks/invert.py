"""Tasks of the dataset inversion: open a video's latent table, invert fixed batches of its frames.

Both return small summaries (table locations, counts, failure reasons), never tensors. The zarr
status decides what is left, so the tasks opt out of Prefect's result caching (NO_CACHE).

`invert_batches` is tagged "gpu": a Prefect tag concurrency limit (`prefect concurrency-limit create
gpu 1`) bounds how many run at once across every flow run on the server. It loads the generator and
loss nets through tasks/resources.py (once per worker process) and checks that what it loaded gives
the provenance the table was made with, so a worker with another weights file can never write into
the table.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.inversion import (
    InversionConfig,
    inversion_losses,
    inversion_provenance,
    invert,
    reconstruction_loss,
)
from models.stylegan2 import Generator
from stages.encoder_init import config_class, encoder_start
from storage.cache import Workspace
from storage.errors import CacheError, FacereenactError
from storage.latents import LatentCache, fixed_batches, frame_seed, latents_provenance
from storage.leases import Lease
from storage.provenance import canonical_json
from tasks import resources
from tasks.conventions import TRANSIENT_IO, run_name
from tasks.gpu import GPU_TAG, gpu_task

__all__ = ["GPU_TAG", "batch_lease_name", "config_from_settings", "invert_batches", "open_latents",
           "settings_of"]

CLAIM_POLL = 0.5  # seconds between looks at batches other jobs hold


def config_from_settings(settings: Mapping[str, Any]) -> InversionConfig:
    """An InversionConfig from its fields as plain data (what crosses process boundaries)."""
    values = dict(settings)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(values["adam_betas"])
    return config_class(values)(**values)


def _provenance(G: Generator, config: InversionConfig, crops_key: str, device: torch.device) -> dict:
    return latents_provenance(inversion_provenance(G, config, inversion_losses(config, device)), crops_key)


@task(name="open-latents", cache_policy=NO_CACHE, task_run_name=run_name("open-latents", "prepared"),
      **TRANSIENT_IO)
def open_latents(prepared: dict[str, Any], cache: str, weights: str, settings: dict[str, Any],
                 batch_size: int, retry_failed: bool = False, device: str = "auto") -> dict[str, Any]:
    """The latent table of a prepared video under this inversion's provenance (created if new), and
    the fixed batches that still hold frames to invert."""
    G = resources.generator(weights, device)
    config = config_from_settings(settings)
    crops = prepared["crops"]
    ws = Workspace(cache)
    latents = LatentCache.require(ws, prepared["key"], _provenance(G, config, crops["key"], G.w_avg.device),
                                  crops["frames"], G.num_ws, G.w_dim)
    counts = latents.counts()
    todo = latents.todo_frames(retry_failed)
    return {"table": latents.location, "key": latents.key, "media": prepared["key"], "path": prepared["path"],
            "crops_table": crops["table"], "frames": latents.num_frames, "done_before": counts["done"],
            "failed_before": counts["failed"], "todo": int(todo.size),
            "batches": [list(b) for b in fixed_batches(latents.num_frames, batch_size, todo)]}


def _batches_run_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"invert-{p['name']}-frames-{p['batches'][0][0]}-{p['batches'][-1][1] - 1}"


@gpu_task(name="invert-batches", cache_policy=NO_CACHE, task_run_name=_batches_run_name,
          **TRANSIENT_IO)
def invert_batches(cache: str, table: str, crops_table: str, media_key: str, name: str, weights: str,
                   settings: dict[str, Any], batches: list[list[int]], retry_failed: bool = False,
                   max_loss: float | None = None, device: str = "auto") -> dict[str, Any]:
    """Invert some fixed batches [start, stop) of one video, one after the other, each stored as soon as
    it is done (a crash loses at most the batch in flight). One task for several batches: Prefect's
    bookkeeping per task run (0.1-0.2 s here) is paid once for them."""
    logger = get_run_logger()
    began = time.perf_counter()
    ws = Workspace(cache)
    latents = LatentCache.at(ws, table)
    summary: dict[str, Any] = {"table": table, "name": name, "batches": 0, "computed": 0, "written": 0,
                               "failed": {}, "seconds": 0.0,
                               "worker": f"{socket.gethostname()}:{os.getpid()}"}
    crops, config, G = None, config_from_settings(settings), None
    # Each batch is claimed with an expiring lease (storage/leases.py) before it is computed, so two
    # jobs on the same inputs split the batches; a batch another live job holds is deferred, and
    # taken over when its lease lapses (that job was killed) unless it is done by then.
    pending = [(int(start), int(stop)) for start, stop in batches]
    while pending:
        deferred = []
        for start, stop in pending:
            frames = np.arange(start, stop)
            todo = latents.todo_frames(retry_failed, frames)
            if todo.size == 0:  # done meanwhile (another run of the same job)
                continue
            claim = Lease(ws.root, batch_lease_name(table, start), job=name)
            if not claim.acquire():
                deferred.append((start, stop))
                continue
            try:
                todo = latents.todo_frames(retry_failed, frames)  # as of the claim
                if todo.size == 0:
                    continue
                logger.info(f"inverting frames {start}-{stop - 1} of {name} ({todo.size} to do)")
                if G is None:
                    G = resources.generator(weights, device)
                    crops = ws.open_table(crops_table)
                    _check_provenance(latents, _provenance(G, config, crops.key, G.w_avg.device))
                t0 = time.perf_counter()
                written, failed = _invert_batch(G, config, latents, crops, media_key, frames, todo, max_loss,
                                                logger)
            finally:
                claim.release()
            summary["batches"] += 1
            summary["computed"] += int(frames.size)
            summary["written"] += written
            summary["failed"].update(failed)
            logger.info(f"frames {start}-{stop - 1} of {name}: {written} done, {len(failed)} failed "
                        f"in {time.perf_counter() - t0:.1f} s")
        if deferred and deferred == pending:  # all held by other jobs: wait for them
            time.sleep(CLAIM_POLL)
        pending = deferred
    summary["seconds"] = time.perf_counter() - began
    return summary


def batch_lease_name(table: str, start: int) -> str:
    """The lease of the fixed batch starting at `start` of the latent table at `table`."""
    return f"frames-{table.replace('/', '~')}-{int(start)}"


def _invert_batch(G: Generator, config: InversionConfig, latents: LatentCache, crops, media_key: str,
                  frames: np.ndarray, todo: np.ndarray, max_loss: float | None, logger
                  ) -> tuple[int, dict[int, str]]:
    """Invert one fixed batch and store its frames that are to do; (frames stored, {frame: reason}).

    The whole batch is inverted even when some of its frames are done (a half-written batch after a
    crash), so every frame is computed in the batch it belongs to: the same bits as an uninterrupted
    run. A frame whose inversion fails (non-finite loss, an exception) or whose final reconstruction
    loss (models.inversion.reconstruction_loss: the weighted MSE, LPIPS and identity terms, not the
    regularisers) is above `max_loss` is marked failed with the reason; the others are stored (with
    their total loss).
    """
    start = int(frames[0])
    targets = torch.from_numpy(crops.read("crop", frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    points = torch.from_numpy(crops.read("crop_landmarks", frames))
    seeds = [frame_seed(media_key, int(i), config.seed) for i in frames]
    reasons, result_latents, result_losses, likeness = _invert_or_isolate(G, targets, points, seeds, config,
                                                                          logger)
    done: list[int] = []
    failed: dict[int, str] = {}
    for row in sorted(int(i) - start for i in todo):
        reason = reasons[row]
        if reason is None and max_loss is not None and not likeness[row] <= max_loss:
            reason = f"final reconstruction loss {likeness[row]:.6g} above --max-loss {max_loss:g}"
        if reason is None:
            done.append(row)
        else:
            latents.fail(start + row, reason)
            failed[start + row] = reason
    if done:
        latents.write([start + row for row in done], result_latents[done], result_losses[done],
                      [seeds[row] for row in done])
    return len(done), failed


def _invert_or_isolate(G: Generator, targets: torch.Tensor, points: torch.Tensor, seeds: list[int],
                       config: InversionConfig, logger
                       ) -> tuple[list[str | None], np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame failure reasons, latents, final total losses and final reconstruction losses of a
    batch. When the batched call raises (not a user error: those stop the job), each frame is run
    alone, so one frame that raises fails alone and the others finish."""
    try:
        return _run(G, targets, points, seeds, config)
    except FacereenactError:
        raise
    except Exception as err:
        if len(seeds) == 1:
            logger.warning(f"inversion raised {type(err).__name__}: {err}", exc_info=True)
            nan = np.full(1, np.nan, np.float32)
            return ([f"inversion raised {type(err).__name__}: {err}"],
                    np.full((1, G.num_ws, G.w_dim), np.nan, np.float32), nan, nan.copy())
        logger.warning(f"batched inversion raised {type(err).__name__}: {err}; running its frames one by one")
    parts = [_invert_or_isolate(G, targets[i:i + 1], points[i:i + 1], seeds[i:i + 1], config, logger)
             for i in range(len(seeds))]
    return ([p[0][0] for p in parts], np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]))


def _run(G: Generator, targets: torch.Tensor, points: torch.Tensor, seeds: list[int],
         config: InversionConfig) -> tuple[list[str | None], np.ndarray, np.ndarray, np.ndarray]:
    result = invert(G, targets, config, init=encoder_start(G, targets, config), landmarks=points, seeds=seeds,
                    losses=inversion_losses(config, G.w_avg.device))
    return (list(result.failed), result.latents.numpy(), result.losses["total"].numpy(),
            reconstruction_loss(result.losses, config).numpy())


def _check_provenance(latents: LatentCache, provenance: dict[str, Any]) -> None:
    """The generator, settings and loss nets this worker loaded must be those the table was made for."""
    if canonical_json(provenance) == canonical_json(latents.provenance):
        return
    stored = latents.provenance
    differs = sorted(k for k in set(provenance) | set(stored)
                     if canonical_json({"v": provenance.get(k)}) != canonical_json({"v": stored.get(k)}))
    raise CacheError(f"this worker's inversion ({', '.join(differs)}) differs from the one the table was "
                     "made for; check that every worker has the same weight files", path=latents.location)


def settings_of(config: InversionConfig) -> dict[str, Any]:
    """The config as plain data for a task's parameters (`config_from_settings` reverses it)."""
    return dataclasses.asdict(config)
