"""`facereenact invert DATASET --cache PATH`: every frame of a dataset of videos into W+ latents.

DATASET is a folder (searched recursively), a glob ('clips/*.mp4'), a CSV or JSONL manifest with a
`path` column / key, or one video. Each video is prepared (landmarks, crops at the generator's
resolution) and each frame not done yet is inverted, in fixed batches, on the chosen task runner.
Rerunning the same command resumes an interrupted job; `--retry-failed` also redoes failed frames.
The summary is printed at the end; failed frames make the exit code 6 (after the summary).
"""

from __future__ import annotations

import argparse
import sys

from flows.cli.common import (
    add_cache_option,
    add_landmarks_option,
    add_weights_option,
    quiet_prefect,
    require_at_least,
    summary_on_failure,
)
from flows.cli.encoder_options import add_encoder_options
from flows.cli.faces import add_detector_option
from flows.cli.options import add_device_option, add_quiet_option, add_verbose_option, perceptual_option
from flows.job_requests import (
    ENCODER_INVERSION,
    INVERSION,
    LOSS_WEIGHTS,
    PERCEPTUAL,
    InvertRequest,
    default_of,
)

EXAMPLES = """examples:
  facereenact invert clips/ --cache cache/                 # every video under clips/
  facereenact invert 'clips/*.mp4' --cache cache/ --steps 300 --runner dask:2
  facereenact invert manifest.csv --cache cache/ --retry-failed --max-loss 0.8
  facereenact invert clips/ --cache cache/ --init encoder --encoder encoder.pt --steps 50"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET",
                        help="folder of videos, glob pattern, CSV/JSONL manifest (column 'path'), or a video")
    add_cache_option(parser)
    add_weights_option(parser, "; its resolution is the crops' resolution")
    parser.add_argument("--steps", type=int, metavar="K",
                        help=f"optimisation steps per frame (default {default_of(INVERSION, 'steps')}; with "
                             "--init encoder: refinement steps after the prediction, default "
                             f"{default_of(ENCODER_INVERSION, 'steps')}, the first "
                             f"{100 * default_of(ENCODER_INVERSION, 'pixel_warmup'):g} %% of them on the "
                             "pixel terms only, 0 = the prediction as it is)")
    add_encoder_options(parser)
    parser.add_argument("--batch-size", type=int, default=InvertRequest.batch_size, metavar="B",
                        help=f"frames per batch, fixed by frame index: [k*B, (k+1)*B) (default "
                             f"{InvertRequest.batch_size})")
    parser.add_argument("--batches-per-task", type=int, default=4, metavar="K",
                        help="fixed batches per Prefect task (default 4): fewer task runs cost less "
                             "bookkeeping, more spread a short job over more workers")
    parser.add_argument("--retry-failed", action="store_true", help="also redo frames that failed before")
    parser.add_argument("--max-loss", type=float, metavar="X",
                        help="quality gate: fail frames whose final reconstruction loss is above X: the "
                             "weighted MSE + LPIPS + identity terms, not the noise-map and delta "
                             "regularisers (default: none)")
    parser.add_argument("--runner", default="threads", metavar="threads[:N]|dask[:N]|tcp://HOST:PORT",
                        help="where batches run: N threads here (default 1), a local Dask cluster of N "
                             "worker processes, or an existing Dask scheduler")
    parser.add_argument("--gpu-resources", action="store_true",
                        help="each batch holds Dask resource GPU=1 (local dask workers declare GPU=1; "
                             "remote workers must be started with --resources GPU=1)")
    add_device_option(parser)
    perceptual_option(parser, INVERSION)
    parser.add_argument("--resolution", type=int,
                        help="expected crop resolution; must be the generator's (default: the generator's)")
    parser.add_argument("--seed", type=int, default=InvertRequest.seed,
                        help="base seed; each frame's seed derives from (video, frame, base seed)")
    defaults = ", ".join(str(default_of(INVERSION, name)) for name in LOSS_WEIGHTS)
    weights = parser.add_argument_group(
        f"loss weights (default: {defaults} for MSE, LPIPS, identity and latent distance, "
        "as in Choe's thesis \"One-Shot Landmark-Based Face Reenactment\")")
    for name in LOSS_WEIGHTS:
        weights.add_argument(f"--{name.replace('_', '-')}", type=float, metavar="W")
    add_landmarks_option(parser, "the prepare stage")
    parser.add_argument("--face-index", type=int, default=0, help="which face: 0 = largest (default)")
    add_detector_option(parser)
    add_quiet_option(parser)
    add_verbose_option(parser)


def request_of(args: argparse.Namespace) -> InvertRequest:
    """The inversion's request (checked: a bad value is a one-line InputError)."""
    loss_weights = {n: getattr(args, n) for n in LOSS_WEIGHTS if getattr(args, n) is not None}
    return InvertRequest(args.dataset, steps=args.steps, batch_size=args.batch_size,
                         perceptual=PERCEPTUAL[args.perceptual], loss_weights=loss_weights, seed=args.seed,
                         max_loss=args.max_loss, landmarks=args.landmarks, face_index=args.face_index,
                         detector=args.detector, init=args.init, encoder=args.encoder)


def run(args: argparse.Namespace) -> int:
    from storage.errors import WeightsMissingError

    request = request_of(args)
    require_at_least(args, batches_per_task=1)
    from flows.cli.preflight import require_weights
    from storage.manifests import collect_videos

    collect_videos(args.dataset)  # no videos, a bad manifest: fail now, before torch loads
    require_weights(args.weights, request.perceptual, args.landmarks)  # all missing, one line

    from models.inversion import inversion_losses
    from storage.errors import InputError
    from tasks import resources

    config = request.config()
    G = resources.generator(args.weights, args.device)  # missing / unsafe weights, no GPU: fail now
    if args.resolution is not None and args.resolution != G.img_resolution:
        raise InputError(f"--resolution {args.resolution} does not match the generator's "
                         f"{G.img_resolution} px (the generator's resolution is the crops')",
                         path=args.weights)
    config = request.config(G)  # a bad or foreign encoder: one line, before Prefect
    try:
        inversion_losses(config, G.w_avg.device)
    except WeightsMissingError as err:
        raise WeightsMissingError(str(err).replace("choose perceptual 'uncalibrated'",
                                                   "pass --perceptual uncalibrated")) from None
    resources.landmark_backend(args.landmarks, args.device)

    quiet_prefect(args.verbose)
    from flows.invert import format_summary, invert_dataset
    from flows.runners import task_runner

    flow = invert_dataset.with_options(task_runner=task_runner(args.runner, args.gpu_resources))
    with summary_on_failure(format_summary):
        summary = flow(request.dataset, args.cache, args.weights, batches_per_task=args.batches_per_task,
                       retry_failed=args.retry_failed, device=args.device, gpu_resources=args.gpu_resources,
                       progress=not args.quiet, **request.flow_options())
    print(format_summary(summary))
    if not args.quiet:
        print(f"cache {args.cache}; see `facereenact status {args.cache}`", file=sys.stderr)
    return 0
