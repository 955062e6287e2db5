"""`facereenact resume JOB [--cache PATH]`: run a recorded job again, recomputing only what is missing
or failed.

The job record in the cache (`facereenact status` lists them) holds what the job asked for; resume
runs the same flow with the same settings, so the same tables are filled: frames done stay done (not
one chunk rewritten), pending frames are computed, and failed frames are retried. A job id prefix
is enough when it is unique.
"""

from __future__ import annotations

import argparse

from flows.cli.common import add_cache_option, quiet_prefect
from flows.cli.options import add_verbose_option

EXAMPLES = """examples:
  facereenact status --cache cache/                  # the jobs and their ids
  facereenact resume 3f2a --cache cache/             # a unique prefix of the id is enough
  facereenact resume 3f2a --cache cache/ --keep-failed --runner dask:2"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB",
                        help="job id (or a unique prefix), as `facereenact status` lists it")
    add_cache_option(parser)
    parser.add_argument("--runner", default="threads", metavar="threads[:N]|dask[:N]|tcp://HOST:PORT",
                        help="where the work runs (as for `facereenact invert`)")
    parser.add_argument("--keep-failed", action="store_true",
                        help="do not retry failed frames; compute only the missing ones")
    add_verbose_option(parser)


def find_job(ws, wanted: str) -> tuple[str, dict]:
    """The record of job `wanted` (an id or a unique prefix of one)."""
    from storage.errors import InputError

    jobs = ws.jobs()
    if wanted in jobs:
        return wanted, jobs[wanted]
    matches = [job for job in jobs if job.startswith(wanted)]
    if len(matches) == 1:
        return matches[0], jobs[matches[0]]
    if not matches:
        known = ", ".join(sorted(jobs)[:5]) or "none"
        raise InputError(f"no job {wanted!r} in this cache (jobs: {known})", path=ws.url)
    raise InputError(f"job prefix {wanted!r} matches {len(matches)} jobs ({', '.join(matches[:5])}); "
                     "give more of the id", path=ws.url)


def run(args: argparse.Namespace) -> int:

    from storage.cache import Workspace
    from storage.errors import CacheError, InputError
    from storage.remote import cache_exists

    if not cache_exists(args.cache):
        raise CacheError("no cache here (run a job with --cache first)", path=args.cache)
    ws = Workspace(args.cache)
    job, record = find_job(ws, args.job)
    quiet_prefect(args.verbose)
    kind = record.get("kind")
    if kind == "invert":
        return _resume_invert(args, job, record)
    if kind == "batch":
        return _resume_batch(args, job, record)
    if kind == "reenact" and record.get("batch"):  # one job of a batch: its batch, which skips the others
        batch = record["batch"]
        if batch not in ws.jobs():
            raise CacheError(f"job {job} belongs to batch {batch}, which this cache has no record of; "
                             "rerun the batch's command", path=args.cache)
        print(f"job {job} is one job of {batch}: resuming the batch (its finished jobs are skipped)")
        return _resume_batch(args, batch, ws.jobs()[batch])
    if kind == "reenact":  # a `facereenact run`: the same command again
        return _resume_run(args, job, record)
    raise InputError(f"job {job} is of kind {kind!r}, which resume does not know; rerun its command",
                     path=args.cache)


def _resume_invert(args: argparse.Namespace, job: str, record: dict) -> int:
    from flows.invert import format_summary, invert_dataset
    from flows.runners import task_runner
    from storage.errors import CacheError, JobFailedError

    a = dict(record.get("args") or {})
    try:
        options = {"steps": a["steps"], "batch_size": a["batch_size"], "perceptual": a["perceptual"],
                   "loss_weights": a.get("loss_weights") or {}, "seed": a["seed"],
                   "max_loss": a.get("max_loss"),
                   "device": a.get("device", "auto"), "landmarks": a.get("landmarks", "faceapi"),
                   "face_index": a.get("face_index", 0), "encoder": a.get("encoder"),
                   "detector": a.get("detector", "haar")}  # jobs recorded before --detector used haar
        dataset, weights = record["dataset"], a["weights"]
    except KeyError as err:
        raise CacheError(f"job record {job} lacks {err}; rerun its command instead",
                         path=args.cache) from None
    flow = invert_dataset.with_options(task_runner=task_runner(args.runner))
    try:
        summary = flow(dataset, args.cache, weights, retry_failed=not args.keep_failed, **options)
    except JobFailedError as err:
        if getattr(err, "summary", None) is not None:
            print(format_summary(err.summary), flush=True)
        raise
    print(format_summary(summary))
    if summary["job"] != job:  # inputs changed since (a video edited): the new job is a new record
        print(f"note: the inputs changed since job {job}; this run is job {summary['job']}")
    return 0


def _resume_batch(args: argparse.Namespace, job: str, record: dict) -> int:
    from flows.batch import format_batch_summary, reenact_batch
    from storage.errors import CacheError, JobFailedError

    try:
        manifest = record["manifest"]
    except KeyError:
        raise CacheError(f"job record {job} lacks its manifest; rerun its command instead",
                         path=args.cache) from None
    try:
        summary = reenact_batch(manifest, args.cache, **dict(record.get("args") or {}))
    except JobFailedError as err:
        if getattr(err, "summary", None) is not None:
            print(format_batch_summary(err.summary), flush=True)
        raise
    print(format_batch_summary(summary))
    return 0


def _resume_run(args: argparse.Namespace, job: str, record: dict) -> int:
    from flows.cli.run import format_summary
    from flows.reenact_job import run_recorded
    from storage.errors import CacheError

    a = dict(record.get("args") or {})
    try:
        source, driving, output, mode = record["source"], record["driving"], record["output"], record["mode"]
        weights = a["weights"]
    except KeyError as err:
        raise CacheError(f"job record {job} lacks {err}; rerun its command instead",
                         path=args.cache) from None
    summary = run_recorded(source, driving, output, args.cache, weights, mode=mode,
                           device=a.get("device", "auto"), landmarks=a.get("landmarks", "faceapi"),
                           **dict(record.get("options") or {}))
    print(format_summary(summary))
    return 0
