"""The dataset inversion flow: every frame of a folder, glob or manifest of videos into W+, in zarr.

    for each video:  prepare_video (landmarks, crops at the generator's resolution; a no-op when done)
                     --open-latents--> its latent table, the fixed batches with frames left
                     --invert-batches (tag "gpu"; a few fixed batches per task), submitted to the
                       task runner--> latents, loss, status, each batch stored when it is done

    invert_dataset.with_options(task_runner=flows.runners.task_runner("dask:2"))(dataset, cache, weights, ...)

The next video is prepared while the batches of the ones before run on the task runner (threads
locally, a Dask cluster through prefect-dask). What is left is read from the zarr status, so rerunning
the same job resumes it: batches have fixed boundaries [k*B, (k+1)*B) and each frame's seed is a
function of (video content key, frame index, base seed), so a resumed job recomputes the batches
that were in flight exactly as the uninterrupted job would have (bitwise on a CPU). The job is
recorded in the workspace (`facereenact status` shows it). Frames that fail are marked failed with
their reason and the job goes on; at the end a JobFailedError (exit 6) lists them, its `summary`
attribute holding the same summary a successful run returns.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed

from flows.conventions import flow_run_name, one_line_failure
from flows.job_requests import InvertRequest
from flows.prepare import prepare_video
from flows.runners import gpu_annotation
from storage.cache import Workspace
from storage.errors import FacereenactError, InputError, JobFailedError
from storage.leases import JobLease
from storage.manifests import collect_videos
from storage.provenance import code_version, provenance_key
from tasks import resources
from tasks.invert import BatchesRun, LatentsPlan, invert_batches, open_latents, settings_of

__all__ = ["format_summary", "invert_dataset", "job_id"]

def job_id(videos: list[str], cache_settings: dict[str, Any]) -> str:
    """Stable id of a job: the same videos (resolved paths, in order) and result-changing settings
    give the same id, so a rerun updates the record of the job it resumes."""
    return f"invert-{provenance_key({'videos': videos, 'settings': cache_settings}, 12)}"


@flow(name="invert-dataset", flow_run_name=flow_run_name("invert"))
@one_line_failure
def invert_dataset(dataset: str, cache: str, weights: str, steps: int | None = InvertRequest.steps,
                   batch_size: int = InvertRequest.batch_size, batches_per_task: int = 4,
                   retry_failed: bool = False, perceptual: str = InvertRequest.perceptual,
                   loss_weights: dict[str, float] | None = None, seed: int = InvertRequest.seed,
                   max_loss: float | None = None, device: str = "auto",
                   landmarks: str = InvertRequest.landmarks, face_index: int = 0, gpu_resources: bool = False,
                   progress: bool = False, detector: str = InvertRequest.detector,
                   init: str = InvertRequest.init, encoder: str | None = InvertRequest.encoder
                   ) -> dict[str, Any]:
    """Invert every frame of the videos of `dataset` (folder, glob, CSV or JSONL manifest) into W+.

    `weights`: generator checkpoint or registered name (its resolution is the crops'); `steps`,
    `perceptual`, `loss_weights` ({"lambda_mse": ..., ...}) and `seed` (the base of every frame's
    seed) are InversionConfig settings; `max_loss` fails frames whose final total loss is above it
    (a quality gate, not part of the provenance: loosen it and `retry_failed` to redo those frames).
    `init` "encoder" with `encoder` (a checkpoint of facereenact train-encoder): each frame starts from
    the encoder's prediction and `steps` (default EncoderInversionConfig's) refine it
    (stages/encoder_init.py; the encoder's sha256 is in the cache key).
    What is asked is an InvertRequest (flows/job_requests.py), checked there; the job record stores it.
    Returns the job's summary; raises JobFailedError (with `.summary`) when frames or videos failed.
    """
    logger = get_run_logger()
    began = time.monotonic()
    request = InvertRequest(dataset, steps=steps, batch_size=batch_size, perceptual=perceptual,
                            loss_weights=loss_weights or {}, seed=seed, max_loss=max_loss,
                            landmarks=landmarks, face_index=face_index, detector=detector, init=init,
                            encoder=encoder)
    if batches_per_task < 1:
        raise InputError(f"batches per task must be >= 1, got {batches_per_task}")
    videos = [str(p) for p in collect_videos(dataset)]
    request.config()  # bad settings: fail before the weights load
    G = resources.generator(weights, device)  # missing or broken weights: fail before any work
    config = request.config(G)  # a bad or foreign encoder file: fail now too
    weights_path = str(G.source_path or weights)
    settings = settings_of(config)
    ws = Workspace(cache)
    this_job = job_id(videos, {"weights": G.weights_sha256(), "inversion": settings, "batch_size": batch_size,
                               "landmarks": landmarks, "face_index": face_index, "detector": detector})
    record = {"kind": "invert", "dataset": str(dataset), "code_version": code_version(),
              "args": {"weights": weights_path, "steps": request.steps, "batch_size": batch_size,
                       "perceptual": perceptual, "loss_weights": loss_weights or {}, "seed": seed,
                       "max_loss": max_loss, "retry_failed": retry_failed, "device": device,
                       "landmarks": landmarks, "face_index": face_index, "detector": detector,
                       "videos": len(videos), "encoder": request.encoder},
              "request": request.to_record()}
    tables: list[str] = []

    def note(state: str, **extra: Any) -> None:
        ws.record_job(this_job, {**record, "state": state, "tables": tables,
                                 "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})

    note("running")
    lease = JobLease(ws, this_job)  # renewed while the job runs: status tells a killed job (stale)
    lease.acquire(settle=0)
    logger.info(f"job {this_job}: {len(videos)} video(s), {request.steps} steps, batch {batch_size}, "
                f"generator {G.img_resolution} px")
    bar = _progress_bar(progress)
    plans: list[LatentsPlan] = []
    failed_videos: dict[str, str] = {}
    futures = []
    try:
        for path in videos:
            try:
                prepared = prepare_video(path, cache, resolution=G.img_resolution, landmarks=landmarks,
                                         device=device, face_index=face_index, detector=detector,
                                         progress=False)
            except FacereenactError as err:
                failed_videos[path] = str(err)
                logger.warning(f"skipping {path}: {err}")
                continue
            plan = open_latents(prepared, cache, weights_path, settings, batch_size, retry_failed, device)
            plans.append(plan)
            tables.append(plan.table)
            note("running")
            name = Path(prepared["path"]).name
            logger.info(f"{name}: {plan.frames} frames, {plan.done_before} done and "
                        f"{plan.failed_before} failed before this run, {plan.todo} to invert in "
                        f"{len(plan.batches)} batch(es)")
            groups = [plan.batches[i:i + batches_per_task]
                      for i in range(0, len(plan.batches), batches_per_task)]
            if bar is not None:
                bar.total = (bar.total or 0) + plan.todo
                bar.refresh()
            with gpu_annotation(gpu_resources):
                futures.extend(
                    invert_batches.submit(cache, plan.table, plan.crops_table, plan.media, name,
                                          weights_path, settings, group, retry_failed, max_loss, device)
                    for group in groups)
        tasks = []
        for future in as_completed(futures):
            result = future.result()
            tasks.append(result)
            if bar is not None:
                bar.update(result.written + len(result.failed))
    except BaseException:
        note("failed", error="the job stopped before its end (see the flow run's logs)")
        raise
    finally:
        lease.release()
        if bar is not None:
            bar.close()

    summary = _summary(this_job, ws, plans, tasks, failed_videos, retry_failed, time.monotonic() - began)
    logger.info(format_summary(summary))
    failed = summary["failed"] or summary["failed_videos"]
    note("failed" if failed else "finished", summary=summary)
    if failed:
        raise JobFailedError(_failure_line(summary), summary=summary)
    return summary


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=0, desc="inverting", unit="frame", file=sys.stderr, dynamic_ncols=True)


def _summary(job: str, ws: Workspace, plans: list[LatentsPlan], tasks: list[BatchesRun],
             failed_videos: dict[str, str], retry_failed: bool, seconds: float) -> dict[str, Any]:
    """Counts of the whole job, read back from the tables (the truth), plus what this run did."""
    from storage.latents import LatentCache

    failures: dict[str, dict[str, str]] = {}
    totals = {"frames": 0, "done": 0, "failed": 0, "pending": 0}
    for plan in plans:
        latents = LatentCache.at(ws, plan.table)
        counts = latents.counts()
        totals["frames"] += latents.num_frames
        for k in ("done", "failed", "pending"):
            totals[k] += counts[k]
        errors = latents.errors()
        if errors:
            failures[plan.path] = {str(i): reason for i, reason in sorted(errors.items())}
    written = sum(t.written for t in tasks)
    failed_now = sum(len(t.failed) for t in tasks)
    skipped = sum(p.done_before + (0 if retry_failed else p.failed_before) for p in plans)
    return {"job": job, "videos": len(plans) + len(failed_videos), **totals,
            "inverted": written, "failed_now": failed_now, "skipped": skipped,
            "computed": sum(t.computed for t in tasks),  # frames run, incl. done ones of split batches
            "batches": sum(t.batches for t in tasks),
            "workers": sorted({t.worker for t in tasks if t.computed}),  # host:pid that ran them
            "failed_frames": failures, "failed_videos": failed_videos, "seconds": round(seconds, 2),
            "tables": [p.table for p in plans]}


def _failure_line(summary: dict[str, Any]) -> str:
    parts = []
    if summary["failed"]:
        examples = []
        for path, frames in summary["failed_frames"].items():
            name = Path(path).name
            examples.append(f"{name} frame{'s' * (len(frames) > 1)} {', '.join(list(frames)[:5])}"
                            + (" ..." if len(frames) > 5 else ""))
        first_path, first = next(iter(summary["failed_frames"].items()))
        parts.append(f"{summary['failed']} of {summary['frames']} frames failed ({'; '.join(examples)}; "
                     f"e.g. {Path(first_path).name} frame {next(iter(first))}: "
                     f"{next(iter(first.values()))}); rerun with --retry-failed to redo them")
    if summary["failed_videos"]:
        parts.append(f"{len(summary['failed_videos'])} of {summary['videos']} videos could not be prepared ("
                     + "; ".join(summary["failed_videos"].values()) + ")")
    return "; ".join(parts)


def format_summary(summary: dict[str, Any]) -> str:
    """The end summary: frames done, failed, skipped, and the time, plus each failed frame."""
    lines = [f"inverted {summary['inverted']} frame{'s' * (summary['inverted'] != 1)} in this run, "
             f"{summary['failed_now']} failed, {summary['skipped']} skipped (done or failed before); "
             f"job {summary['job']}: {summary['videos']} video{'s' * (summary['videos'] != 1)}, "
             f"{summary['frames']} frames, {summary['done']} done, {summary['failed']} failed, "
             f"{summary['pending']} pending; {summary['seconds']:.1f} s"]
    if summary["computed"] > summary["inverted"] + summary["failed_now"]:
        extra = summary["computed"] - summary["inverted"] - summary["failed_now"]
        lines.append(f"  ({extra} done frame{'s' * (extra != 1)} of interrupted batches recomputed, "
                     "not stored)")
    for path, frames in summary["failed_frames"].items():
        for frame, reason in frames.items():
            lines.append(f"  failed: {path} frame {frame}: {reason}")
    for path, reason in summary["failed_videos"].items():
        lines.append(f"  failed: {reason}" if reason.startswith(path) else f"  failed: {path}: {reason}")
    return "\n".join(lines)
