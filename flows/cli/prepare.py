"""`facereenact prepare VIDEO_OR_IMAGE... --cache PATH`: landmarks and aligned face crops into the cache.

Videos are tracked frame by frame (frames without a face are flagged and interpolated), smoothed
over time and cropped FFHQ-style; images are one-frame media (largest face, or --face-index).
Every file is checked before any work starts, so a typo or a corrupt file fails at once. Rerunning
the same command resumes an interrupted run and does nothing after a finished one.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli.common import add_cache_option, quiet_prefect
from flows.cli.faces import add_detector_option
from flows.cli.options import add_device_option, add_quiet_option, add_verbose_option

SMOOTHING_METHODS = {"one-euro": "one_euro", "savgol": "savgol", "none": "none"}


EXAMPLES = """examples:
  facereenact prepare clip.mp4 face.jpg --cache cache/
  facereenact prepare clips/*.mp4 --cache cache/ --landmarks fan --smoothing savgol --window 9"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="VIDEO_OR_IMAGE", help="videos and/or source images")
    add_cache_option(parser)
    parser.add_argument("--resolution", type=int, default=256, help="side of the aligned crops (default 256)")
    parser.add_argument("--landmarks", choices=["faceapi", "fan"], default="faceapi",
                        help="landmark backend (default faceapi: offline, weights shipped)")
    parser.add_argument("--face-index", type=int, default=0,
                        help="which face when there are several: 0 = largest (default), 1 = next, ...")
    add_detector_option(parser)
    add_device_option(parser)
    smooth = parser.add_argument_group("temporal smoothing (videos; docs/faces.md)")
    smooth.add_argument("--smoothing", choices=sorted(SMOOTHING_METHODS), default="one-euro",
                        help="filter over time (default one-euro, zero-phase)")
    smooth.add_argument("--min-cutoff", type=float, help="one-euro cutoff at rest, Hz (default 2)")
    smooth.add_argument("--beta", type=float, help="one-euro speed coefficient (default 10)")
    smooth.add_argument("--d-cutoff", type=float, help="one-euro speed cutoff, Hz (default 8)")
    smooth.add_argument("--causal", action="store_true", help="one-euro forward only (default: zero-phase)")
    smooth.add_argument("--window", type=int, help="savgol window, odd number of frames (default 7)")
    smooth.add_argument("--polyorder", type=int, help="savgol polynomial order (default 2)")
    add_quiet_option(parser)
    add_verbose_option(parser)


def smoothing_options(args: argparse.Namespace) -> dict:
    """SmoothingConfig fields from the command line (checked: a bad value is an InputError)."""
    from models.smoothing import SmoothingConfig
    from storage.errors import InputError

    options = {"method": SMOOTHING_METHODS[args.smoothing]}
    for name in ("min_cutoff", "beta", "d_cutoff", "window", "polyorder"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.causal:
        options["zero_phase"] = False
    try:
        SmoothingConfig(**options)
    except ValueError as err:
        raise InputError(f"bad smoothing options: {err}") from None
    return options


def run(args: argparse.Namespace) -> int:
    from storage.errors import InputError
    from storage.media import open_medium

    if args.resolution < 8 or args.resolution > 4096:
        raise InputError(f"--resolution must be between 8 and 4096, got {args.resolution}")
    if args.face_index < 0:
        raise InputError(f"--face-index must be 0 or more, got {args.face_index}")
    smoothing = smoothing_options(args)
    media, unusable = [], []
    for path in args.inputs:  # every file checked before any work starts, all problems told at once
        try:
            media.append(open_medium(path))
        except InputError as err:
            unusable.append(err)
    if len(unusable) == 1:
        raise unusable[0]
    if unusable:
        raise InputError(f"{len(unusable)} of {len(args.inputs)} inputs are unusable: "
                         + "; ".join(str(err) for err in unusable))
    for medium in media:
        for warning in medium.warnings:
            print(f"facereenact: warning: {medium.path}: {warning}", file=sys.stderr)

    quiet_prefect(args.verbose)
    from flows.cli.preflight import require_weights

    require_weights(landmarks=args.landmarks)  # before torch and Prefect load
    from flows.prepare import prepare
    from tasks import resources

    resources.landmark_backend(args.landmarks, args.device)  # missing weights / no GPU: fail now
    results = prepare([str(m.path) for m in media], args.cache, resolution=args.resolution,
                      landmarks=args.landmarks, smoothing=smoothing, device=args.device,
                      face_index=args.face_index, detector=args.detector, progress=not args.quiet)
    print(format_summary(results, args.cache))
    return 0


def format_summary(results: list[dict], cache: str) -> str:
    """One line: what was prepared and how much of it this run computed."""
    videos = [r for r in results if r["kind"] == "video"]
    images = [r for r in results if r["kind"] == "image"]
    parts = []
    if videos:
        parts.append(f"{len(videos)} video{'s' * (len(videos) != 1)} "
                     f"({sum(r['frames'] for r in videos)} frames)")
    if images:
        parts.append(f"{len(images)} image{'s' * (len(images) != 1)}")
    frames = sum(r["frames"] for r in results)
    computed = sum(r["landmarks"]["computed"] for r in results)
    cropped = sum(r["crops"]["computed"] for r in results)
    lost = sum(r["landmarks"]["lost"] for r in results)
    text = (f"prepared {' and '.join(parts)}: {computed} of {frames} frames tracked and {cropped} cropped "
            f"in this run")
    if lost:
        text += f", {lost} without a face (interpolated, flagged)"
    return f"{text}; cache {cache}"
