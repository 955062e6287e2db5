"""The invert stage: a video's latent table under one inversion's provenance, and its fixed batches
inverted one after the other, each stored as soon as it is done. No Prefect (tasks/invert.py opens
the workspace and the generator and calls one function here); models/inversion.py computes.

    plan = plan_latents(ws, G, prepared, config, batch_size)       # table (created if new), batches to do
    run = invert_batches(ws, plan.table, plan.crops_table, plan.media, name, load_G, config, plan.batches)

Batches have fixed boundaries [k*B, (k+1)*B) and each frame's seed is a function of (video content
key, frame index, base seed), so a batch interrupted half-way is recomputed whole with the same bits.
Each batch is claimed with an expiring lease (storage/leases.py) before it is computed, so two jobs
on the same inputs split the batches.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.inversion import (
    InversionConfig,
    inversion_losses,
    inversion_provenance,
    invert,
    reconstruction_loss,
)
from models.stylegan2 import Generator
from stages.encoder_init import config_class, encoder_start
from storage.cache import DONE, FAILED, PENDING, Workspace
from storage.errors import CacheError, FacereenactError
from storage.latents import LatentCache, fixed_batches, frame_seed, latents_provenance
from storage.leases import Lease
from storage.provenance import canonical_json

__all__ = ["BatchesRun", "LatentsPlan", "batch_lease_name", "check_provenance", "config_from_settings",
           "invert_batch", "invert_batches", "plan_latents", "settings_of"]

CLAIM_POLL = 0.5  # seconds between looks at batches other jobs hold


def config_from_settings(settings: Mapping[str, Any]) -> InversionConfig:
    """An InversionConfig from its fields as plain data (what crosses process boundaries)."""
    values = dict(settings)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(values["adam_betas"])
    return config_class(values)(**values)


def settings_of(config: InversionConfig) -> dict[str, Any]:
    """The config as plain data for a task's parameters (`config_from_settings` reverses it)."""
    return dataclasses.asdict(config)


def provenance(G: Generator, config: InversionConfig, crops_key: str) -> dict:
    """What a latent table made with G and `config` from the crops table `crops_key` records."""
    return latents_provenance(inversion_provenance(G, config, inversion_losses(config, G.w_avg.device)),
                              crops_key)


@dataclass(frozen=True)
class LatentsPlan:
    """A video's latent table and what is left in it: the fixed batches [start, stop) with frames to
    invert, the counts before this run."""

    table: str
    key: str
    media: str
    path: str
    crops_table: str
    frames: int
    done_before: int
    failed_before: int
    todo: int
    batches: list[list[int]]


def plan_latents(ws: Workspace, G: Generator, prepared: Mapping[str, Any], config: InversionConfig,
                 batch_size: int, retry_failed: bool = False) -> LatentsPlan:
    """The latent table of a prepared video under this inversion's provenance (created if new), and
    the fixed batches that still hold frames to invert."""
    crops = prepared["crops"]
    latents = LatentCache.require(ws, prepared["key"], provenance(G, config, crops["key"]), crops["frames"],
                                  G.num_ws, G.w_dim)
    status = latents.table.status()  # read once
    todo = np.flatnonzero((status == PENDING) | ((status == FAILED) & retry_failed))
    return LatentsPlan(table=latents.location, key=latents.key, media=prepared["key"], path=prepared["path"],
                       crops_table=crops["table"], frames=latents.num_frames,
                       done_before=int((status == DONE).sum()), failed_before=int((status == FAILED).sum()),
                       todo=int(todo.size),
                       batches=[list(b) for b in fixed_batches(latents.num_frames, batch_size, todo)])


@dataclass(frozen=True)
class BatchesRun:
    """What one `invert_batches` call did: batches and frames computed (done ones of interrupted
    batches included), frames stored, frames failed ({frame: reason}), its time and where it ran."""

    table: str
    name: str
    batches: int
    computed: int
    written: int
    failed: dict[int, str]
    seconds: float
    worker: str


def batch_lease_name(table: str, start: int) -> str:
    """The lease of the fixed batch starting at `start` of the latent table at `table`."""
    return f"frames-{table.replace('/', '~')}-{int(start)}"


def invert_batches(ws: Workspace, table: str, crops_table: str, media_key: str, name: str,
                   generator: Callable[[], Generator], config: InversionConfig, batches: list[list[int]],
                   retry_failed: bool = False, max_loss: float | None = None,
                   log: logging.Logger | logging.LoggerAdapter | None = None) -> BatchesRun:
    """Invert some fixed batches [start, stop) of one video, one after the other, each stored as soon as
    it is done (a crash loses at most the batch in flight). `generator()` loads G when a batch is due;
    what it loads must give the provenance the table was made with (`check_provenance`). A batch
    another live job holds is deferred, and taken over when its lease lapses (that job was killed)
    unless it is done by then."""
    log = log or logging.getLogger(__name__)
    began = time.perf_counter()
    latents = LatentCache.at(ws, table)
    crops, G = None, None
    count, computed, written, failed = 0, 0, 0, {}
    pending = [(int(start), int(stop)) for start, stop in batches]
    while pending:
        deferred = []
        for start, stop in pending:
            frames = np.arange(start, stop)
            if latents.todo_frames(retry_failed, frames).size == 0:  # done meanwhile (another run)
                continue
            claim = Lease(ws.root, batch_lease_name(table, start), job=name)
            if not claim.acquire():
                deferred.append((start, stop))
                continue
            try:
                todo = latents.todo_frames(retry_failed, frames)  # as of the claim
                if todo.size == 0:
                    continue
                log.info(f"inverting frames {start}-{stop - 1} of {name} ({todo.size} to do)")
                if G is None:
                    G = generator()
                    crops = ws.open_table(crops_table)
                    check_provenance(latents, provenance(G, config, crops.key))
                t0 = time.perf_counter()
                stored, batch_failed = invert_batch(G, config, latents, crops, media_key, frames, todo,
                                                    max_loss, log)
            finally:
                claim.release()
            count += 1
            computed += int(frames.size)
            written += stored
            failed.update(batch_failed)
            log.info(f"frames {start}-{stop - 1} of {name}: {stored} done, {len(batch_failed)} failed "
                     f"in {time.perf_counter() - t0:.1f} s")
        if deferred and deferred == pending:  # all held by other jobs: wait for them
            time.sleep(CLAIM_POLL)
        pending = deferred
    return BatchesRun(table=table, name=name, batches=count, computed=computed, written=written,
                      failed=failed, seconds=time.perf_counter() - began,
                      worker=f"{socket.gethostname()}:{os.getpid()}")


def invert_batch(G: Generator, config: InversionConfig, latents: LatentCache, crops, media_key: str,
                 frames: np.ndarray, todo: np.ndarray, max_loss: float | None, log
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
                                                                          log)
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
                       config: InversionConfig, log
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
            log.warning(f"inversion raised {type(err).__name__}: {err}", exc_info=True)
            nan = np.full(1, np.nan, np.float32)
            return ([f"inversion raised {type(err).__name__}: {err}"],
                    np.full((1, G.num_ws, G.w_dim), np.nan, np.float32), nan, nan.copy())
        log.warning(f"batched inversion raised {type(err).__name__}: {err}; running its frames one by one")
    parts = [_invert_or_isolate(G, targets[i:i + 1], points[i:i + 1], seeds[i:i + 1], config, log)
             for i in range(len(seeds))]
    return ([p[0][0] for p in parts], np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]))


def _run(G: Generator, targets: torch.Tensor, points: torch.Tensor, seeds: list[int],
         config: InversionConfig) -> tuple[list[str | None], np.ndarray, np.ndarray, np.ndarray]:
    result = invert(G, targets, config, init=encoder_start(G, targets, config), landmarks=points, seeds=seeds,
                    losses=inversion_losses(config, G.w_avg.device))
    return (list(result.failed), result.latents.numpy(), result.losses["total"].numpy(),
            reconstruction_loss(result.losses, config).numpy())


def check_provenance(latents: LatentCache, provenance: dict[str, Any]) -> None:
    """The generator, settings and loss nets this worker loaded must be those the table was made for."""
    if canonical_json(provenance) == canonical_json(latents.provenance):
        return
    stored = latents.provenance
    differs = sorted(k for k in set(provenance) | set(stored)
                     if canonical_json({"v": provenance.get(k)}) != canonical_json({"v": stored.get(k)}))
    raise CacheError(f"this worker's inversion ({', '.join(differs)}) differs from the one the table was "
                     "made for; check that every worker has the same weight files", path=latents.location)
