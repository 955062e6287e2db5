"""The nightly reenactment batch: every job of a batch manifest, each isolated.

    manifest (YAML / JSONL: source, driving, mode, options, output) --load_jobs--> jobs, every job's
        options checked against its mode and every output checked writable, before any job runs
    for each job:  run_job (tasks/batch.py): reenact(source, driving, output, cache, weights, mode, **options)
                   in this process one after the other (--runner threads, the default), or one task
                   per job on a Dask cluster's workers (--runner dask:N | tcp://..., --gpu-resources)
                   a job that fails is recorded with its one-line reason; the others go on
    summary: done / failed / skipped jobs; JobFailedError (exit 6) when any job failed

Every job is recorded in the cache (`facereenact status` shows it, `facereenact resume BATCH` runs the
batch again) and so is the batch. Rerunning the batch skips jobs whose output exists and whose record
says finished; the others resume from the cache (reenact computes only frames not done).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed

from flows.conventions import flow_run_name, one_line_failure
from flows.job_requests import DEFAULT_WEIGHTS, JOB_KEYWORDS, ReenactRequest, check_mode
from flows.runners import gpu_annotation, task_runner
from storage.cache import Workspace
from storage.errors import InputError, JobFailedError
from storage.leases import JobLease
from storage.manifests import BatchJob, load_batch
from storage.provenance import code_version, provenance_key
from tasks.batch import JobOutcome, run_job

__all__ = ["JOB_KEYWORDS", "PATH_OPTIONS", "batch_id", "format_batch_summary", "load_jobs", "reenact_batch"]

# A job's options are a ReenactRequest's keywords (flows/job_requests.py JOB_KEYWORDS: variant, layout, ...)
# and its mode's settings (projection: ProjectionConfig fields such as steps_first) or `invert_steps`.
# Options that name a file (mode "mapping": its trained network; "directions": its directions file;
# `invert_encoder`: the encoder the source inversion starts from):
# resolved against the manifest's folder like source and driving, never climbing out of it.
PATH_OPTIONS = ("mapping", "directions", "invert_encoder")
# Set by the batch (or by the job's own fields) for every job, never by a job's options.
BATCH_KEYWORDS = {"source": "the job's field", "driving": "the job's field", "output": "the job's field",
                  "mode": "the job's field", "cache": "the batch", "weights": "the batch",
                  "device": "the batch", "landmarks": "the batch", "progress": "the batch",
                  "preview": "the batch (OUTPUT.preview.png beside the output)"}


def batch_id(manifest: Path, jobs: list[BatchJob]) -> str:
    """Stable id of a batch: its manifest (resolved path) and the ids of its jobs."""
    key = provenance_key({"manifest": str(manifest.resolve()), "jobs": [j.job_id for j in jobs]}, 12)
    return f"batch-{key}"


def load_jobs(manifest: str | Path, output_dir: str | Path | None = None) -> list[BatchJob]:
    """The jobs of a batch manifest, all checked before any runs: the manifest (load_batch), each job's
    options (names and values, by its mode's own check), and that every output can be written. Any
    problem is a one-line InputError naming the manifest, the job and its line."""
    from storage.atomic import check_writable

    path = Path(manifest).expanduser()
    if output_dir is not None and not Path(output_dir).expanduser().is_dir():
        raise InputError("output directory not found (create it first)", path=output_dir)
    jobs = load_batch(path, output_dir)
    checked = []
    for job in jobs:
        options = _check_options(job, path.parent)
        try:
            check_writable(job.output)
        except InputError as err:
            raise InputError(f"{job.where}, output: {err}") from None
        checked.append(replace(job, options=options))
    _check_outputs_not_inputs(checked)
    return checked


def _check_outputs_not_inputs(jobs: list[BatchJob]) -> None:
    """The manifest as a whole: no job's output, preview or sidecar is an input of any job (a source,
    a driving video, a mapping network) or another job's output."""
    from flows.reenact import output_files
    from storage.overwrite import check_outputs_not_inputs

    outputs = [(f"{job.where}, {what}", path) for job in jobs for what, path in output_files(job.output)]
    inputs = [(f"{job.where}, {what}", path) for job in jobs
              for what, path in (("source", job.source), ("driving", job.driving),
                                 *((name, job.options[name]) for name in PATH_OPTIONS
                                   if name in job.options))]
    check_outputs_not_inputs(outputs, inputs)


def _check_options(job: BatchJob, base: Path) -> dict[str, Any]:
    """A job's options, checked as the ReenactRequest they make (flows/job_requests.py: keywords with the
    right types, the mode's settings by its own check, so an unknown option name fails the manifest
    before anything runs), path options resolved against the manifest's folder."""
    from storage.manifests import resolve_entry

    try:
        check_mode(job.mode)
    except InputError as err:
        raise InputError(f"{job.where}, mode: {err}") from None
    where = f"{job.where}, options"
    options = dict(job.options)
    for name in options:
        if name in BATCH_KEYWORDS:
            raise InputError(f"{where}: {name!r} is not a job option (it is set by {BATCH_KEYWORDS[name]})")
    request_of(job, options, where)  # types, names, ranges: before any path is looked at
    for name in PATH_OPTIONS:
        if name in options:
            options[name] = str(resolve_entry(options[name], base, f"{where}, {name}"))
    try:
        request_of(job, options, where).check_settings()
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    return options


def request_of(job: BatchJob, options: dict[str, Any] | None = None, where: str = "") -> ReenactRequest:
    """The ReenactRequest of a batch job (with `options` instead of its own); an InputError names the
    job (`where`)."""
    try:
        return ReenactRequest.from_options(str(job.source), str(job.driving), str(job.output), job.mode,
                                           job.options if options is None else options)
    except InputError as err:
        raise InputError(f"{where or job.where}: {err}") from None


@flow(name="reenact-batch", flow_run_name=flow_run_name("batch"))
@one_line_failure
def reenact_batch(manifest: str, cache: str, weights: str = DEFAULT_WEIGHTS, output_dir: str | None = None,
                  device: str = "auto", landmarks: str = "faceapi", rerun_finished: bool = False,
                  runner: str = "threads", gpu_resources: bool = False,
                  progress: bool = False) -> dict[str, Any]:
    """Run every job of a batch manifest (storage.manifests.load_batch): source image x driving video
    -> output mp4 by `mode` with its `options`. Outputs are relative to `output_dir` (default: the
    manifest's folder). A failing job does not stop the others. `runner` "threads" (default) runs the
    jobs one after the other in this process; any other `--runner` value (flows/runners.task_runner:
    "dask:N", "tcp://HOST:PORT", "threads:N") runs each job as one `run_job` task there, holding a
    worker's GPU resource when `gpu_resources`; the records and the summary are the same. `progress`:
    a line per job as it starts and ends ("[2/5] clip2: done in 31.0 s") and per-frame bars on stderr.
    Returns the summary; raises JobFailedError (with `.summary`) when any job failed."""
    logger = get_run_logger()
    began = time.monotonic()
    path = Path(manifest).expanduser()
    jobs = load_jobs(path, output_dir)  # every problem of the manifest found before anything runs
    ws = Workspace(cache)
    this_batch = batch_id(path, jobs)
    args = {"weights": weights, "output_dir": output_dir, "device": device, "landmarks": landmarks}
    states: dict[str, dict[str, Any]] = {}

    def note(state: str, **extra: Any) -> None:
        ws.record_job(this_batch, {"kind": "batch", "manifest": str(path.resolve()), "args": args,
                                   "code_version": code_version(), "state": state, "jobs": states,
                                   "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})

    known = ws.jobs()
    for job in jobs:
        states[job.name] = {"job": job.job_id, "state": "pending", "output": str(job.output)}
    note("running")
    lease = JobLease(ws, this_batch)  # renewed while the batch runs: status tells a killed one (stale)
    lease.acquire(settle=0)
    logger.info(f"batch {this_batch}: {len(jobs)} job(s) from {path}")
    ended = [0]

    def say(job: BatchJob, text: str, end: bool = True) -> None:
        if end:
            ended[0] += 1
        if progress:
            number = ended[0] if end else ended[0] + 1
            print(f"batch [{number}/{len(jobs)}] {job.name}: {text}", file=sys.stderr, flush=True)

    def finish(job: BatchJob, record: dict[str, Any], outcome: JobOutcome) -> None:
        worker = outcome.worker
        say(job, f"failed: {outcome.error}" if outcome.failed else
            f"done in {outcome.seconds:.1f} s -> {job.output}")
        if outcome.failed:
            ws.record_job(job.job_id, {**record, "state": "failed", "error": outcome.error,
                                       "worker": worker})
            states[job.name].update(state="failed", error=outcome.error, worker=worker)
            logger.warning(f"{job.name}: failed on {worker}: {outcome.error}")
        else:
            ws.record_job(job.job_id, {**record, "state": "finished", "seconds": outcome.seconds,
                                       "tables": list(outcome.tables), "worker": worker})
            states[job.name].update(state="finished", seconds=outcome.seconds, worker=worker)
            logger.info(f"{job.name}: done in {outcome.seconds:.1f} s on {worker} -> {job.output}")
        note("running")

    sequential = runner.strip() == "threads"
    to_run = []
    for job in jobs:
        record = {"kind": "reenact", "batch": this_batch, "name": job.name, "source": str(job.source),
                  "driving": str(job.driving), "output": str(job.output), "mode": job.mode,
                  "options": dict(job.options), "request": request_of(job).to_record(), "args": args}
        previous = known.get(job.job_id, {})
        if not rerun_finished and previous.get("state") == "finished" and job.output.is_file():
            states[job.name].update(state="skipped")
            say(job, f"finished before, skipped ({job.output})")
            logger.info(f"{job.name}: finished before ({job.output}), skipped")
            continue
        ws.record_job(job.job_id, {**record, "state": "running", "error": ""})
        params = {"name": job.name, "source": str(job.source), "driving": str(job.driving),
                  "output": str(job.output), "cache": cache, "weights": weights, "mode": job.mode,
                  "options": dict(job.options), "device": device, "landmarks": landmarks,
                  "progress": progress and sequential}
        if sequential:  # in this process, one job after the other: the reenact flow nested in the batch
            say(job, f"running ({job.source.name} x {job.driving.name})", end=False)
            finish(job, record, run_job.fn(**params))
        else:
            to_run.append((job, record, params))
    if to_run:  # one task per job on the runner's workers, each holding a GPU when gpu_resources
        with task_runner(runner, gpu_resources) as pool:
            with gpu_annotation(gpu_resources):
                futures = {pool.submit(run_job, params): (job, record) for job, record, params in to_run}
            for future in as_completed(list(futures)):
                job, record = futures[future]
                try:
                    outcome = future.result()
                except Exception as err:  # the task itself crashed (a lost worker after its retries)
                    reason = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
                    outcome = JobOutcome("", error=reason)
                finish(job, record, outcome)

    summary = {"batch": this_batch, "manifest": str(path), "jobs": len(jobs),
               "done": [n for n, s in states.items() if s["state"] == "finished"],
               "skipped": [n for n, s in states.items() if s["state"] == "skipped"],
               "failed": {n: s["error"] for n, s in states.items() if s["state"] == "failed"},
               "outputs": {n: s["output"] for n, s in states.items()
                           if s["state"] in ("finished", "skipped")},
               "workers": {n: s["worker"] for n, s in states.items() if s.get("worker")},
               "seconds": round(time.monotonic() - began, 2)}
    note("failed" if summary["failed"] else "finished", summary=summary)
    lease.release()
    logger.info(format_batch_summary(summary))
    if summary["failed"]:
        names = ", ".join(summary["failed"])
        err = JobFailedError(f"{len(summary['failed'])} of {len(jobs)} jobs failed ({names}; e.g. "
                             f"{next(iter(summary['failed'].values()))}); the others finished; rerun the "
                             f"batch or `facereenact resume {this_batch}` to retry them", path=path,
                             summary=summary)
        raise err
    return summary


def format_batch_summary(summary: dict[str, Any]) -> str:
    lines = [f"batch {summary['batch']}: {summary['jobs']} job{'s' * (summary['jobs'] != 1)}, "
             f"{len(summary['done'])} done, {len(summary['failed'])} failed, {len(summary['skipped'])} "
             f"skipped (finished before); {summary['seconds']:.1f} s"]
    for name in summary["done"]:
        lines.append(f"  done:    {name} -> {summary['outputs'][name]}")
    for name in summary["skipped"]:
        lines.append(f"  skipped: {name} -> {summary['outputs'][name]}")
    for name, reason in summary["failed"].items():
        lines.append(f"  failed:  {name}: {reason}")
    return "\n".join(lines)
