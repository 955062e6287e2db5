"""`facereenact train-encoder --weights G --out encoder.pt`: train the inversion encoder of a generator.

The encoder (e4e-style, models/encoder.py) maps an aligned crop to W+ in one pass; `facereenact invert
--init encoder --encoder encoder.pt --steps K` refines its prediction with K steps instead of running
1000 from the mean w. It trains on the generator's own samples (no dataset needed) and, with --cache,
also on frames `facereenact invert` already inverted with the same generator. The checkpoint at --out
is written every --checkpoint-every steps (atomically, with OUT.loss.png beside it); rerunning the
same command continues it. A checkpoint of another generator or settings is refused, never overwritten.
"""

from __future__ import annotations

import argparse

from flows.cli.common import quiet_prefect, require_at_least
from flows.cli.options import add_device_option, add_quiet_option, add_verbose_option
from flows.job_requests import ENCODER_TRAINING, default_of

EXAMPLES = """examples:
  facereenact train-encoder --weights ffhq-256 --out encoder.pt --steps 5000
  facereenact train-encoder --weights ffhq-256 --cache cache/ --out encoder.pt   # + inverted frames
  facereenact invert clips/ --cache cache/ --weights ffhq-256 --init encoder --encoder encoder.pt"""

PERCEPTUAL = {"lpips": "lpips-vgg", "lpips-alex": "lpips-alex", "uncalibrated": "uncalibrated",
              "uncalibrated-alex": "uncalibrated-alex", "none": "none"}


def _default(name: str):  # noqa: ANN202
    """A training setting's default: stages/train_encoder.py DEFAULT_SETTINGS (read without torch)."""
    return default_of(ENCODER_TRAINING, name)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, metavar="NAME|PATH",
                        help="generator checkpoint or registered name the encoder inverts into")
    parser.add_argument("-o", "--out", "--output", required=True, metavar="PATH",
                        help="checkpoint to write (and to continue, when it holds this run's earlier steps)")
    parser.add_argument("--cache", metavar="PATH",
                        help="also train on the frames `facereenact invert` inverted into this cache with "
                             "the same generator (default: the generator's own samples only)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps in all (default 1000)")
    parser.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                        help="save the checkpoint and loss curve every N steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=_default("batch_size"), metavar="B",
                        help=f"samples per step (default {_default('batch_size')})")
    parser.add_argument("--learning-rate", type=float, default=_default("learning_rate"), metavar="LR",
                        help=f"Adam (default {_default('learning_rate')})")
    perceptual = next(name for name, value in PERCEPTUAL.items() if value == _default("perceptual"))
    parser.add_argument("--perceptual", choices=sorted(PERCEPTUAL), default=perceptual,
                        help="image loss: LPIPS VGG-16 (default), AlexNet, the uncalibrated opt-in (random "
                             "backbone; recorded), or none (pixel MSE only)")
    parser.add_argument("--seed", type=int, default=_default("seed"),
                        help=f"sampling seed (default {_default('seed')})")
    add_device_option(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_quiet_option(parser)
    add_verbose_option(parser)


def run(args: argparse.Namespace) -> int:
    require_at_least(args, steps=1, checkpoint_every=1, batch_size=1)
    settings = {"batch_size": args.batch_size, "learning_rate": args.learning_rate,
                "perceptual": PERCEPTUAL[args.perceptual], "seed": args.seed}
    if args.perceptual == "none":
        settings["lambda_lpips"] = 0.0
    from flows.cli.preflight import require_weights

    require_weights(args.weights, None if args.perceptual == "none" else PERCEPTUAL[args.perceptual])

    from stages.train_encoder import check_encoder_checkpoint, plan_encoder_training
    from tasks import resources

    G = resources.generator(args.weights, args.device)  # missing / unsafe weights, no GPU: fail now
    # Bad settings, an unusable cache, a foreign or broken checkpoint at --out: fail before Prefect.
    provenance, _, _ = plan_encoder_training(G, settings, args.cache)
    check_encoder_checkpoint(args.out, provenance, args.steps)

    quiet_prefect(args.verbose)
    from flows.train_encoder import format_summary, train_encoder

    summary = train_encoder(str(G.source_path or args.weights), args.out, steps=args.steps, cache=args.cache,
                            checkpoint_every=args.checkpoint_every, settings=settings, device=args.device,
                            progress=not args.quiet)
    if args.json:
        import json

        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0
