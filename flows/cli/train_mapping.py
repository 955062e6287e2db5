"""`facereenact train-mapping --cache PATH --out mapping.pt`: train the landmark-to-latent network.

Training pairs are (source, driving) frames of the same video from the latents `facereenact invert`
cached: frames whose latent and crop are done and whose landmarks were detected. The checkpoint at
--out is written every --checkpoint-every steps (atomically, with the loss curve beside it as
OUT.loss.png); rerunning the same command after a crash or a kill continues from it and ends where
an uninterrupted run does. A checkpoint made with other settings or data is refused, never
overwritten. The summary reports the held-out Δw error beside the zero-Δw baseline's.
"""

from __future__ import annotations

import argparse

from flows.cli.common import add_cache_option, quiet_prefect
from flows.cli.options import add_device_option, add_verbose_option
from flows.job_requests import REPRESENTATIONS, SPLITS
from flows.job_requests import TrainMappingRequest as Request

EXAMPLES = """examples:
  facereenact invert clips/ --cache cache/           # first: the latents it trains on
  facereenact train-mapping --cache cache/ --out mapping.pt
  facereenact train-mapping --cache cache/ --out mapping.pt --steps 5000 --representation raster
  facereenact run --source face.jpg --driving clip.mp4 -o out.mp4 --mode mapping --mapping mapping.pt"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_cache_option(parser, "cache the inversion filled")
    parser.add_argument("-o", "--out", "--output", required=True, metavar="PATH",
                        help="checkpoint to write (and to continue, when it holds this run's earlier steps)")
    # every default is the request's (flows/job_requests.py TrainMappingRequest)
    parser.add_argument("--steps", type=int, default=Request.steps,
                        help=f"training steps in all (default {Request.steps})")
    parser.add_argument("--checkpoint-every", type=int, default=Request.checkpoint_every, metavar="N",
                        help="save the checkpoint and loss curve every N steps "
                             f"(default {Request.checkpoint_every})")
    parser.add_argument("--representation", choices=REPRESENTATIONS, default=Request.representation,
                        help=f"landmark input: coordinates or rasterised landmark drawings (as in Choe's "
                             f"thesis) (default {Request.representation})")
    parser.add_argument("--batch-size", type=int, default=Request.batch_size, metavar="B",
                        help=f"pairs per step (default {Request.batch_size})")
    parser.add_argument("--learning-rate", type=float, default=Request.learning_rate, metavar="LR",
                        help=f"Adam (default {Request.learning_rate:g})")
    parser.add_argument("--image-loss", type=float, default=Request.image_loss, metavar="W",
                        help=f"weight of a pixel MSE through the generator (default {Request.image_loss:g}: "
                             "latent MSE only; needs --weights)")
    parser.add_argument("--weights", metavar="NAME|PATH",
                        help="the generator the latents were inverted with (for --image-loss)")
    parser.add_argument("--held-out", type=float, default=Request.held_out, metavar="FRACTION",
                        help="fraction held out to report the Δw error on "
                             f"(default {Request.held_out:g}; 0: none)")
    parser.add_argument("--split", choices=SPLITS, default=Request.split,
                        help="hold out whole videos, or the last frames of each video "
                             f"(default {Request.split}: by video with 2+ videos)")
    parser.add_argument("--inversion", metavar="KEY",
                        help="train on the latents of these inversion settings (when the cache has several)")
    parser.add_argument("--seed", type=int, default=Request.seed,
                        help=f"pair sampling seed (default {Request.seed})")
    add_device_option(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_verbose_option(parser)


def request_of(args: argparse.Namespace) -> Request:
    """The training's request (checked: a bad value is a one-line InputError)."""
    return Request(args.out, steps=args.steps, checkpoint_every=args.checkpoint_every,
                   representation=args.representation, batch_size=args.batch_size,
                   image_loss=args.image_loss, learning_rate=args.learning_rate, seed=args.seed,
                   held_out=args.held_out, split=args.split, inversion=args.inversion, weights=args.weights)


def run(args: argparse.Namespace) -> int:
    request = request_of(args)
    settings = request.settings()

    quiet_prefect(args.verbose)
    from models.device import resolve_device
    from stages.train_mapping import check_checkpoint, plan_training

    resolve_device(args.device)  # no GPU for --device cuda: fail now
    # Empty cache, no usable frames, several generators, a foreign checkpoint at --out: fail before
    # starting Prefect (latents are not read here).
    check_checkpoint(args.out, plan_training(args.cache, settings, in_memory_bytes=0), args.steps)

    from flows.train_mapping import format_summary, train_mapping

    summary = train_mapping(args.cache, request.out, steps=request.steps,
                            checkpoint_every=request.checkpoint_every, settings=settings,
                            weights=request.weights, device=args.device)
    if args.json:
        import json

        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0
