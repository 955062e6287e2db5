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

from flows.cli.common import add_cache_option, quiet_prefect, require_at_least
from flows.cli.options import add_device_option, add_verbose_option

EXAMPLES = """examples:
  facereenact invert clips/ --cache cache/           # first: the latents it trains on
  facereenact train-mapping --cache cache/ --out mapping.pt
  facereenact train-mapping --cache cache/ --out mapping.pt --steps 5000 --representation raster
  facereenact run --source face.jpg --driving clip.mp4 -o out.mp4 --mode mapping --mapping mapping.pt"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_cache_option(parser, "cache the inversion filled")
    parser.add_argument("-o", "--out", "--output", required=True, metavar="PATH",
                        help="checkpoint to write (and to continue, when it holds this run's earlier steps)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps in all (default 1000)")
    parser.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                        help="save the checkpoint and loss curve every N steps (default 100)")
    parser.add_argument("--representation", choices=["coords", "raster"], default="coords",
                        help="landmark input: coordinates (default) or rasterised landmark drawings "
                             "(as in Choe's thesis)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="pairs per step (default 32)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, metavar="LR", help="Adam (default 1e-3)")
    parser.add_argument("--image-loss", type=float, default=0.0, metavar="W",
                        help="weight of a pixel MSE through the generator (default 0: latent MSE only; "
                             "needs --weights)")
    parser.add_argument("--weights", metavar="NAME|PATH",
                        help="the generator the latents were inverted with (for --image-loss)")
    parser.add_argument("--held-out", type=float, default=0.1, metavar="FRACTION",
                        help="fraction held out to report the Δw error on (default 0.1; 0: none)")
    parser.add_argument("--split", choices=["auto", "video", "frame"], default="auto",
                        help="hold out whole videos, or the last frames of each video (default auto: by "
                             "video with 2+ videos)")
    parser.add_argument("--inversion", metavar="KEY",
                        help="train on the latents of these inversion settings (when the cache has several)")
    parser.add_argument("--seed", type=int, default=0, help="pair sampling seed (default 0)")
    add_device_option(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_verbose_option(parser)


def run(args: argparse.Namespace) -> int:
    from storage.errors import InputError

    require_at_least(args, steps=1, checkpoint_every=1, batch_size=1)
    if not args.image_loss >= 0:
        raise InputError(f"--image-loss must be a number >= 0, got {args.image_loss}")
    if not 0 <= args.held_out < 1:
        raise InputError(f"--held-out must be in [0, 1), got {args.held_out}")
    if args.image_loss > 0 and not args.weights:
        raise InputError("--image-loss needs --weights (the generator the latents were inverted with)")
    settings = {"representation": args.representation, "batch_size": args.batch_size,
                "image_loss": args.image_loss, "learning_rate": args.learning_rate, "seed": args.seed,
                "held_out": args.held_out, "split": args.split, "inversion": args.inversion}

    quiet_prefect(args.verbose)
    from models.device import resolve_device
    from stages.train_mapping import check_checkpoint, plan_training

    resolve_device(args.device)  # no GPU for --device cuda: fail now
    # Empty cache, no usable frames, several generators, a foreign checkpoint at --out: fail before
    # starting Prefect (latents are not read here).
    check_checkpoint(args.out, plan_training(args.cache, settings, in_memory_bytes=0), args.steps)

    from flows.train_mapping import format_summary, train_mapping

    summary = train_mapping(args.cache, args.out, steps=args.steps, checkpoint_every=args.checkpoint_every,
                            settings=settings, weights=args.weights, device=args.device)
    if args.json:
        import json

        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0
