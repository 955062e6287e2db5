"""`facereenact demo [--out DIR]`: the whole pipeline on the bundled sample, end to end.

Makes a short driving clip of the bundled astronaut photo with known head motion and a mouth opening
(models/synthetic.py), then runs the reenact flow with the same photo as the source and writes
DIR/reenacted.mp4 (look | driving | result) and DIR/preview.png (first, middle and last frames).

With the registry's default FFHQ checkpoint in the weights cache (`facereenact weights fetch
ffhq-1024`) it uses it at the real defaults. Offline it uses a small random-weight generator built in
code (models/demo.py) with a short schedule, and says so: that output shows the pipeline, not the
quality of real weights. Without the LPIPS backbone weights LPIPS runs uncalibrated (a notice says so).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from flows.cli.common import quiet_prefect
from flows.cli.options import add_device_option, add_quiet_option
from flows.job_requests import DEFAULT_WEIGHTS, INVERSION, PROJECTION, default_of

REAL_WEIGHTS = DEFAULT_WEIGHTS
# The offline schedule: small enough for about 2 minutes on a 2-core CPU (docs/reenact.md).
TINY = {"resolution": 64, "frames": 24, "steps_first": 100, "steps_next": 16, "invert_steps": 100}
# The real schedule: the configs' defaults (ProjectionConfig, InversionConfig) on 50 frames.
REAL = {"frames": 50, "steps_first": default_of(PROJECTION, "steps_first"),
        "steps_next": default_of(PROJECTION, "steps_next"), "invert_steps": default_of(INVERSION, "steps")}


EXAMPLES = """examples:
  facereenact demo                       # offline: a small random generator, about 2 minutes on a CPU
  facereenact demo --out my-demo --device cuda
  facereenact weights fetch ffhq-1024 lpips-vgg16 && facereenact demo   # the real weights"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", "--output", default="demo-out", metavar="DIR",
                        help="output folder (default demo-out)")
    parser.add_argument("--weights", metavar="NAME|PATH",
                        help="generator checkpoint or registered name, StyleGAN2 or StyleGAN3 (default: "
                             f"{REAL_WEIGHTS} when fetched, else a small random generator)")
    add_device_option(parser)
    add_quiet_option(parser)
    # for the tests: the same code path, shorter
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)


def say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from flows.samples import sample_path
    from models.losses import PERCEPTUAL_CHOICES
    from storage.errors import CheckpointError, WeightsMissingError
    from storage.images import load_image
    from storage.weights import require

    began = time.monotonic()
    out = Path(args.out).expanduser().absolute()
    work = out / ".demo"
    photo_path = sample_path("astronaut.jpg")
    from flows.reenact import check_not_inputs

    # the demo folder's files must not be the bundled photo (a link to it, say): refused before any work
    check_not_inputs(photo_path, work / "driving.mp4", out / "reenacted.mp4", work / "generator",
                     out / "preview.png")
    work.mkdir(parents=True, exist_ok=True)

    try:
        if args.weights:  # the user's generator (one-line error if it is missing), at the real defaults
            from models.checkpoints import resolve_weights

            weights = str(resolve_weights(args.weights))
            plan, real = dict(REAL), True
            say(f"using the weights {weights} at the real defaults")
        else:
            weights = str(require(REAL_WEIGHTS))
            plan, real = dict(REAL), True
            say(f"using the official weights {weights} at the real defaults")
    except (WeightsMissingError, CheckpointError):
        if args.weights:
            raise
        from models.checkpoints import save_native
        from models.demo import random_generator

        plan, real = dict(TINY), False
        if args.resolution:
            plan["resolution"] = args.resolution
        weights = str(work / f"random-generator-{plan['resolution']}px.safetensors")
        if not Path(weights).is_file():
            save_native(random_generator(plan["resolution"]), weights)
        say(f"the official weights ({REAL_WEIGHTS}) are not in the weights cache: using a small random "
            f"generator ({plan['resolution']} px). The output shows the pipeline working, NOT the quality "
            f"of real weights (its images are not faces). For real results: facereenact weights fetch "
            f"{REAL_WEIGHTS}")
    if args.frames:
        plan["frames"] = args.frames
    if args.steps:
        plan.update(steps_first=args.steps, steps_next=max(1, args.steps // 4), invert_steps=args.steps)

    perceptual = "lpips-vgg"
    try:
        require(PERCEPTUAL_CHOICES[perceptual][1])
    except (WeightsMissingError, CheckpointError):
        # the random generator: AlexNet's random backbone builds and runs faster than VGG-16's
        perceptual = "uncalibrated" if real else "uncalibrated-alex"
        say(f"LPIPS backbone weights are not on disk: LPIPS runs uncalibrated ({perceptual}: random "
            f"backbone, recorded in the provenance); fetch them with: facereenact weights fetch "
            f"{PERCEPTUAL_CHOICES['lpips-vgg'][1]}")

    driving = work / f"driving-{plan['frames']}.mp4"
    if not driving.is_file():
        from models.demo import demo_driving_clip

        demo_driving_clip(driving, load_image(photo_path), frames=plan["frames"])
    say(f"driving clip {driving.name}: {plan['frames']} frames at 25 fps (head motion and a mouth opening); "
        f"source {photo_path.name}; steps: source inversion {plan['invert_steps']}, frame 0 "
        f"{plan['steps_first']}, later frames at most {plan['steps_next']}")

    quiet_prefect(bool(os.environ.get("FACEREENACT_DEMO_VERBOSE")))
    from flows.cli.run import format_summary
    from flows.reenact import reenact

    summary = reenact(str(photo_path), str(driving), str(out / "reenacted.mp4"), str(work / "cache"), weights,
                      layout="side-by-side", device=args.device, progress=not args.quiet,
                      steps_first=plan["steps_first"], steps_next=plan["steps_next"],
                      invert_steps=plan["invert_steps"], perceptual=perceptual,
                      preview=str(out / "preview.png"))
    print(format_summary(summary))
    print(f"demo: wrote {out / 'reenacted.mp4'} and {out / 'preview.png'} in "
          f"{time.monotonic() - began:.0f} s")
    return 0
