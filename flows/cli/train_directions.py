"""`facereenact train-directions --weights G --out directions.pt`: learn the latent directions A.

Bounareli et al.'s reenactment by latent directions: Δw = A Δp on the first W+ rows, with p = [yaw,
pitch, roll, expression coefficients] measured from 68 landmarks. p's statistics are fitted on
--fit-samples images of the generator (and the inverted latents of --cache, which are mixed into
training as in the paper's section 3.2). The file at --out is written every --checkpoint-every steps
(atomically, with the loss curve beside it as OUT.loss.png); rerunning the same command continues
from it. A file made for another generator, landmark backend or settings is refused, never
overwritten.
"""

from __future__ import annotations

import argparse

from flows.cli.common import require_at_least
from flows.cli.options import add_device_option, add_quiet_option, add_verbose_option

EXAMPLES = """examples:
  facereenact train-directions --weights ffhq-1024 --out dirs.pt
  facereenact train-directions --weights ffhq-1024 --cache cache/ --out dirs.pt --steps 5000
  facereenact run --source face.jpg --driving clip.mp4 -o out.mp4 --mode directions --directions dirs.pt"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, metavar="NAME|PATH", help="the generator")
    parser.add_argument("--cache", metavar="PATH",
                        help="an `invert` cache: its latents of this generator are mixed into training")
    parser.add_argument("-o", "--out", "--output", required=True, metavar="PATH",
                        help="directions file to write (and to continue, when it holds this run's earlier "
                             "steps)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps in all (default 1000)")
    parser.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                        help="save the file and loss curve every N steps (default 100)")
    # Unset options keep stages.train_directions.DirectionsConfig's defaults (named in the help).
    for flag, kind, metavar, text in [
            ("--batch-size", int, "B", "samples per step (default 8)"),
            ("--learning-rate", float, "LR", "Adam (default 1e-3)"),
            ("--layers", int, "K", "first W+ rows A moves (default 8, as the paper)"),
            ("--expression-dims", int, "M", "expression coefficients in p (default 8)"),
            ("--fit-samples", int, "N", "generated images p's statistics are fitted on (default 10000, "
                                        "as the paper)"),
            ("--identity-weight", float, "W", "λ_id (default 1)"),
            ("--perceptual-weight", float, "W", "λ_per (default 1)"),
            ("--seed", int, "S", "sampling seed (default 0)")]:
        parser.add_argument(flag, type=kind, metavar=metavar, help=text)
    parser.add_argument("--perceptual",
                        choices=["lpips-vgg", "lpips-alex", "uncalibrated", "uncalibrated-alex"],
                        help="LPIPS variant (default lpips-vgg; needs `facereenact weights fetch "
                             "lpips-vgg16`)")
    parser.add_argument("--landmarks", default="faceapi",
                        help="landmark backend p is measured with (default faceapi)")
    add_device_option(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_quiet_option(parser)
    add_verbose_option(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from storage.errors import InputError

    require_at_least(args, steps=1, checkpoint_every=1)
    names = {"batch_size": "batch_size", "learning_rate": "learning_rate", "layers": "layers",
             "expression_dims": "expression_dims", "fit_samples": "fit_samples",
             "identity_weight": "lambda_id", "perceptual_weight": "lambda_per", "perceptual": "perceptual",
             "seed": "seed"}
    settings = {field: getattr(args, option) for option, field in names.items()
                if getattr(args, option) is not None}
    from tasks.train_directions import directions_config

    config = directions_config(settings)  # bad settings: fail before Prefect starts
    out = Path(args.out).expanduser()
    if not out.parent.is_dir():
        raise InputError(f"{out}: its folder does not exist")
    weights = Path(args.weights).expanduser()
    if weights.exists() and out.exists() and out.resolve() == weights.resolve():
        raise InputError(f"{out}: --out is the generator's weights file; choose another path")
    from flows.cli.preflight import Missing, backbone_file, generator_file, landmark_files

    missing = Missing()  # every weight the run needs, before Prefect starts (torch-free checks)
    generator_file(args.weights, missing)
    if config.lambda_per > 0:
        backbone_file(config.perceptual, missing)
    landmark_files(args.landmarks, missing)
    if missing.names:
        raise missing.error("; or --perceptual uncalibrated (LPIPS with a random backbone)"
                            if any(n.startswith("lpips") for n in missing.names) else "")
    if args.cache and "://" not in args.cache and not Path(args.cache).expanduser().is_dir():
        raise InputError("cache not found (run facereenact invert first, or leave out --cache)",
                         path=args.cache)

    from flows.cli.common import quiet_prefect

    quiet_prefect(args.verbose)
    from models.device import resolve_device

    resolve_device(args.device)  # no GPU for --device cuda: fail now
    from flows.train_directions import format_summary, train_directions

    summary = train_directions(args.weights, str(out), steps=args.steps,
                               checkpoint_every=args.checkpoint_every, settings=settings, cache=args.cache,
                               device=args.device, landmarks=args.landmarks, progress=not args.quiet)
    if args.json:
        import json

        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0
