"""`facereenact run --source face.jpg --driving clip.mp4 -o out.mp4`: reenact a photo with a clip's motion.

The driving clip is tracked and aligned, the source photo aligned and inverted into W+, every driving
frame projected (seeds 000/001; or `--mode mapping --mapping mapping.pt`: the landmark-to-latent network
of seed 003, optionally refined by `--refine-steps K` projection steps) and the result rendered to an mp4
at the clip's frame rate with its audio, plus OUTPUT.preview.png and OUTPUT.json (metrics, timing,
provenance). Everything is cached: rerunning the same command does no work, and a killed run resumes
at the frame where it stopped.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli.common import add_cache_option, quiet_prefect
from flows.cli.faces import add_detector_option, face_index
from flows.cli.invert import PERCEPTUAL

DEFAULT_WEIGHTS = "ffhq-1024"
OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, metavar="IMAGE", help="photo of the face to animate")
    parser.add_argument("--driving", required=True, metavar="VIDEO", help="video whose motion it performs")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.mp4", help="output video")
    add_cache_option(parser)
    parser.add_argument("--mode", default="projection",
                        help="how the latents are made: projection (seeds 000/001; default) or mapping (seed "
                             "003: a trained landmark-to-latent network, one generator pass per frame)")
    parser.add_argument("--mapping", metavar="PATH",
                        help="--mode mapping: the network's checkpoint (facereenact train-mapping --out)")
    parser.add_argument("--refine-steps", type=int, metavar="K",
                        help="--mode mapping: K projection steps per frame starting at the network's "
                             "output (default 0: none)")
    parser.add_argument("--variant", choices=["identity", "free"], default="identity",
                        help="identity: keep the source's look (default); free: seed 000's identity-free "
                             "variant (landmarks only)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, metavar="NAME|PATH",
                        help=f"generator checkpoint or registered name (default {DEFAULT_WEIGHTS})")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--layout", choices=["result", "side-by-side"], default="result",
                        help="result (default) or side-by-side: look | driving | result")
    parser.add_argument("--paste-back", action="store_true",
                        help="paste the result into the original driving frames")
    parser.add_argument("--subframes", action="store_true",
                        help="twice the frame rate: latent midpoints between frames (seed 000)")
    parser.add_argument("--steps-first", type=int, metavar="N", help="Adam steps on frame 0 (default 300)")
    parser.add_argument("--steps-next", type=int, metavar="N",
                        help="at most N steps on each later frame (default 50)")
    parser.add_argument("--invert-steps", type=int, default=1000, metavar="N",
                        help="steps of the source's W+ inversion (default 1000)")
    parser.add_argument("--perceptual", choices=sorted(PERCEPTUAL), default="lpips",
                        help="LPIPS backbone: lpips (VGG-16, default), lpips-alex; 'uncalibrated' runs "
                             "without the backbone weights (random backbone; recorded in provenance)")
    parser.add_argument("--landmarks", choices=["faceapi", "fan"], default="faceapi",
                        help="landmark backend of tracking and projection (default faceapi)")
    add_detector_option(parser)
    parser.add_argument("--face-index", type=face_index, default=0, metavar="N",
                        help="which face of the driving clip when it shows several: 0 = largest "
                             "(default), 1 = next, ...")
    parser.add_argument("--source-face-index", type=face_index, default=0, metavar="N",
                        help="which face of the source photo: 0 = largest (default), 1 = next, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="show Prefect's log lines")


def run(args: argparse.Namespace) -> int:
    quiet_prefect(args.verbose)
    options: dict = {"perceptual": PERCEPTUAL[args.perceptual], "invert_steps": args.invert_steps}
    for name in ("steps_first", "steps_next"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.mapping is not None:
        options["mapping"] = args.mapping
    if args.refine_steps is not None:
        options["refine_steps"] = args.refine_steps
    check_inputs(args.source, args.driving, args.output, args.mode, args.variant, args.weights, args.device,
                 args.landmarks, options)
    from flows.reenact import reenact

    summary = reenact(args.source, args.driving, args.output, args.cache, args.weights, mode=args.mode,
                      variant=args.variant, layout=args.layout, paste_back=args.paste_back,
                      subframes=args.subframes, device=args.device, landmarks=args.landmarks,
                      progress=not args.quiet, detector=args.detector, face_index=args.face_index,
                      source_face_index=args.source_face_index, **options)
    print(format_summary(summary))
    return 0


def check_inputs(source: str, driving: str, output: str, mode: str, variant: str, weights: str, device: str,
                 landmarks: str, options: dict) -> None:
    """Every user error that can be found before any work: files, mode, settings, weights."""
    from pathlib import Path

    from models.losses import PERCEPTUAL_CHOICES
    from storage.errors import InputError, WeightsMissingError
    from storage.media import open_medium
    from storage.weights import require

    if options["invert_steps"] < 0:
        raise InputError(f"--invert-steps must be >= 0, got {options['invert_steps']}")
    if Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"unsupported output extension (use {', '.join(OUTPUT_SUFFIXES)})", path=output)
    from storage.atomic import check_writable

    check_writable(output)  # a read-only or impossible output folder: fail now, not after the work
    from flows.reenact import REENACTORS

    if mode not in REENACTORS:
        raise InputError(f"unknown --mode {mode!r} (known: {', '.join(REENACTORS)})")
    if mode != "mapping" and ("mapping" in options or "refine_steps" in options):
        raise InputError("--mapping and --refine-steps are settings of --mode mapping")
    if open_medium(source).kind != "image":
        raise InputError("the source must be a still image (a photo of the face)", path=source)
    medium = open_medium(driving)
    if medium.kind != "video":
        raise InputError("the driving input must be a video", path=driving)
    for warning in medium.warnings:
        print(f"facereenact: warning: {medium.path}: {warning}", file=sys.stderr)
    REENACTORS[mode].check(variant, {k: v for k, v in options.items() if k != "invert_steps"})
    from tasks import resources

    G = resources.generator(weights, device)  # missing / unsafe weights, no GPU: fail now
    if REENACTORS[mode].check_model is not None:  # a mapping network made for another generator: now
        REENACTORS[mode].check_model(G, {k: v for k, v in options.items() if k != "invert_steps"})
    _, backbone, calibrated = PERCEPTUAL_CHOICES[options["perceptual"]]
    if calibrated:
        try:
            require(backbone)
        except WeightsMissingError as err:
            raise WeightsMissingError(f"{err}; or pass --perceptual uncalibrated (LPIPS with a random "
                                      "backbone)") from None
    resources.landmark_backend(landmarks, device)


def format_summary(summary: dict) -> str:
    """One line: frames, time, output, mean landmark NME, identity similarity."""
    m = summary["metrics"]

    def number(value, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    text = (f"reenacted {summary['frames']} frames ({summary['fps']} fps) in {summary['seconds']:.1f} s -> "
            f"{summary['output']}; mean landmark NME {number(m['landmark_nme'])}, identity similarity "
            f"{number(m['identity_similarity'])}, {number(m['seconds_per_frame'], 2)} s per frame")
    if not summary["computed"]["rendered"]:
        text += " (already made from the cache: nothing to do)"
    if summary["held_frames"]:
        text += f"; {len(summary['held_frames'])} failed frame(s) hold the previous frame"
    if summary["interpolated_frames"]:
        text += f"; {summary['interpolated_frames']} frame(s) without a face in the driving clip"
    return text
