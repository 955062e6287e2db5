"""`facereenact batch MANIFEST --cache PATH`: every reenactment job of a batch manifest, each isolated.

MANIFEST is YAML (a list of jobs, or {jobs: [...]}) or JSONL (one job per line), each job with
source, driving, output (an .mp4 relative to --output-dir, default the manifest's folder), mode
(projection | mapping) and options. A failing job does not stop the others; the summary lists
every job, and any failure makes the exit code 6 (after the summary). The same flow runs nightly as
a Prefect deployment (deployments/README.md).
"""

from __future__ import annotations

import argparse

from flows.cli.common import (
    add_cache_option,
    add_landmarks_option,
    add_weights_option,
    quiet_prefect,
    summary_on_failure,
)
from flows.cli.options import add_device_option, add_quiet_option, add_verbose_option

EXAMPLES = """examples:
  facereenact batch jobs.yaml --cache cache/
  facereenact batch jobs.jsonl --cache cache/ --output-dir results/ --runner dask:2
  facereenact status --cache cache/                 # what finished, what failed

jobs.yaml:
  - {source: face.jpg, driving: clip1.mp4, output: clip1.mp4}
  - {source: face.jpg, driving: clip2.mp4, output: clip2.mp4, mode: projection}"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST", help="batch manifest (.yaml / .jsonl)")
    add_cache_option(parser)
    add_weights_option(parser)
    parser.add_argument("--output-dir", metavar="DIR",
                        help="root of the jobs' outputs (default: the manifest's folder)")
    add_device_option(parser)
    add_landmarks_option(parser)
    parser.add_argument("--rerun-finished", action="store_true", help="also rerun jobs that finished before")
    parser.add_argument("--runner", default="threads", metavar="threads|dask[:N]|tcp://HOST:PORT",
                        help="threads (default): the jobs one after the other in this process; dask:N: "
                             "each job a task on a local Dask cluster of N workers; tcp://HOST:PORT: on "
                             "an existing Dask scheduler's workers (they must see the cache and weights)")
    parser.add_argument("--gpu-resources", action="store_true",
                        help="each job holds the resource GPU=1 of its Dask worker (one job per GPU)")
    add_quiet_option(parser)
    add_verbose_option(parser)


def run(args: argparse.Namespace) -> int:
    quiet_prefect(args.verbose)
    from flows.cli.preflight import existing_file, require_weights

    existing_file(args.manifest, "batch manifest")  # before torch and Prefect load
    require_weights(args.weights, landmarks=args.landmarks)
    from flows.batch import format_batch_summary, load_jobs, reenact_batch
    from flows.runners import task_runner
    from tasks import resources

    load_jobs(args.manifest, args.output_dir)  # a bad manifest, option or output: fail now, before any work
    resources.generator(args.weights, args.device)  # missing or unsafe weights: fail now
    task_runner(args.runner, args.gpu_resources)  # a bad --runner: fail now (starts nothing)

    with summary_on_failure(format_batch_summary):
        summary = reenact_batch(args.manifest, args.cache, weights=args.weights, output_dir=args.output_dir,
                                device=args.device, landmarks=args.landmarks,
                                rerun_finished=args.rerun_finished, runner=args.runner,
                                gpu_resources=args.gpu_resources, progress=not args.quiet)
    print(format_batch_summary(summary))
    return 0
