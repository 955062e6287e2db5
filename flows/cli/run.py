"""`facereenact run --source face.jpg --driving clip.mp4 -o out.mp4`: reenact a photo with a clip's motion.

The driving clip is tracked and aligned, the source photo aligned and inverted into W+, every driving
frame projected (landmark projection, after the blog posts "Facial landmark projection without
training" and "Face animations without training"; or `--mode mapping --mapping mapping.pt`: the
landmark-to-latent network of Choe's thesis "One-Shot Landmark-Based Face Reenactment", optionally
refined by `--refine-steps K` projection steps) and the result rendered to an mp4 at the clip's frame
rate with its audio, plus OUTPUT.preview.png and OUTPUT.json (metrics, timing, provenance).
Everything is cached: rerunning the same command does no work, and a killed run resumes at the frame
where it stopped.

Before torch or Prefect load, the inputs, the output and every weight file are checked
(flows/cli/preflight.py), and a rerun whose output's sidecar records this very request (the sha256
of the inputs and weight files, the settings and the code version) and whose output is unchanged
returns at once. Without the official weights, `--allow-random-weights` runs on the demo's small
random generator and uncalibrated LPIPS with the demo's short schedule (recorded in the sidecar).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli.common import add_cache_option, add_landmarks_option, add_weights_option, quiet_prefect
from flows.cli.encoder_options import add_encoder_options, encoder_of
from flows.cli.faces import add_detector_option, face_index
from flows.cli.options import add_device_option, add_quiet_option, add_verbose_option, perceptual_option
from flows.job_requests import (
    ENCODER_INVERSION,
    INVERSION,
    LANDMARK_FORMS,
    LANDMARK_INPUTS,
    LAYOUTS,
    MODES,
    PERCEPTUAL,
    PROJECTION,
    VARIANTS,
    ReenactRequest,
    default_of,
)

OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
RANDOM_FLAG = "--allow-random-weights"

EXAMPLES = """examples:
  facereenact run --source face.jpg --driving clip.mp4 -o out.mp4
  facereenact run --source face.jpg --driving clip.mp4 -o out.mp4 --layout side-by-side --paste-back
  facereenact run --source face.jpg --driving clip.mp4 -o out.mp4 --mode mapping --mapping mapping.pt
  facereenact run --source face.jpg --driving clip.mp4 -o out.mp4 --allow-random-weights   # offline

Without the official weights: facereenact weights fetch ffhq-1024 lpips-vgg16 (about 0.9 GiB), or
--allow-random-weights to see the pipeline run on a small random generator (its images are not faces)."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, metavar="IMAGE", help="photo of the face to animate")
    parser.add_argument("--driving", required=True, metavar="VIDEO", help="video whose motion it performs")
    parser.add_argument("-o", "--output", "--out", dest="output", required=True, metavar="OUT.mp4",
                        help="output video")
    add_cache_option(parser)
    parser.add_argument("--mode", choices=MODES, default=ReenactRequest.mode,
                        help="how the latents are made: projection (default; optimised per frame to match "
                             "the driving landmarks), mapping (a trained landmark-to-latent network, one "
                             "generator pass per frame; Choe's thesis) or directions (Δw = A Δp, "
                             "Bounareli et al.; facereenact train-directions)")
    parser.add_argument("--mapping", metavar="PATH",
                        help="--mode mapping: the network's checkpoint (facereenact train-mapping --out)")
    parser.add_argument("--directions", metavar="PATH",
                        help="--mode directions: the file of facereenact train-directions (Δw = A Δp, "
                             "Bounareli et al.)")
    parser.add_argument("--refine-steps", type=int, metavar="K",
                        help="--mode mapping: K projection steps per frame starting at the network's "
                             "output (default 0: none)")
    parser.add_argument("--variant", choices=VARIANTS, default=ReenactRequest.variant,
                        help="identity: keep the source's look (default); free: landmarks only, the look "
                             "may drift (\"Face animations without training\")")
    add_weights_option(parser)
    parser.add_argument(RANDOM_FLAG, action="store_true",
                        help="when the official weights are not on disk, run on the demo's small random "
                             "generator and uncalibrated LPIPS with the demo's short schedule (shows the "
                             "pipeline, not real quality; recorded in OUT.json)")
    add_device_option(parser)
    parser.add_argument("--layout", choices=LAYOUTS, default=ReenactRequest.layout,
                        help="result (default) or side-by-side: look | driving | result")
    parser.add_argument("--paste-back", action="store_true",
                        help="paste the result into the original driving frames")
    parser.add_argument("--subframes", action="store_true",
                        help="twice the frame rate: latent midpoints between frames")
    # defaults shown from the config dataclasses (flows/job_requests.py); the flow applies them
    parser.add_argument("--steps-first", type=int, metavar="N",
                        help=f"Adam steps on frame 0 (default {default_of(PROJECTION, 'steps_first')})")
    parser.add_argument("--steps-next", type=int, metavar="N",
                        help="at most N steps on each later frame "
                             f"(default {default_of(PROJECTION, 'steps_next')})")
    parser.add_argument("--invert-steps", type=int, metavar="N",
                        help=f"steps of the source's W+ inversion (default {default_of(INVERSION, 'steps')}; "
                             f"{default_of(ENCODER_INVERSION, 'steps')} with --init encoder, the first "
                             f"{100 * default_of(ENCODER_INVERSION, 'pixel_warmup'):g} %% on the pixel terms "
                             "only)")
    add_encoder_options(parser)
    perceptual_option(parser, PROJECTION)
    add_landmarks_option(parser)
    parser.add_argument("--landmark-form", choices=LANDMARK_FORMS,
                        help="projection's landmark loss: coordinates (default; any backend) or heatmaps "
                             "(FAN's 64x64 heatmaps, as \"Face animations without training\"; needs "
                             "--landmarks fan)")
    parser.add_argument("--landmark-input", choices=LANDMARK_INPUTS,
                        help="how the generated image enters the landmark net: unit ((x + 1) / 2, default) "
                             "or minmax (stretched to [0, 1] per image, as the posts' code)")
    parser.add_argument("--fan-flip", action=argparse.BooleanOptionalAction,
                        help="--landmarks fan: also run FAN on the mirrored image in the projection and "
                             f"average (default {'on' if default_of(PROJECTION, 'fan_flip') else 'off'}; "
                             "about 1.5x a step's time)")
    add_detector_option(parser)
    parser.add_argument("--face-index", type=face_index, default=0, metavar="N",
                        help="which face of the driving clip when it shows several: 0 = largest "
                             "(default), 1 = next, ...")
    parser.add_argument("--source-face-index", type=face_index, default=0, metavar="N",
                        help="which face of the source photo: 0 = largest (default), 1 = next, ...")
    add_quiet_option(parser)
    add_verbose_option(parser)


def run_options(args: argparse.Namespace) -> dict:
    """The reenact flow's options from the command line (only those given: the flow has the defaults)."""
    options: dict = {"perceptual": PERCEPTUAL[args.perceptual]}
    for name in ("steps_first", "steps_next", "invert_steps"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.mapping is not None:
        options["mapping"] = args.mapping
    if args.refine_steps is not None:
        options["refine_steps"] = args.refine_steps
    if args.directions is not None:
        options["directions"] = args.directions
    for name in ("landmark_form", "landmark_input", "fan_flip"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    encoder = encoder_of(args)  # --init encoder and --encoder go together
    if encoder is not None:
        options["invert_encoder"] = encoder
    return options


def request_of(args: argparse.Namespace, options: dict) -> ReenactRequest:
    """The run's request (checked: a bad combination is a one-line InputError, before any file is read)."""
    return ReenactRequest(args.source, args.driving, args.output, mode=args.mode, variant=args.variant,
                          layout=args.layout, paste_back=args.paste_back, subframes=args.subframes,
                          **faces_of(args), settings=options)


def run(args: argparse.Namespace) -> int:
    quiet_prefect(args.verbose)
    options = run_options(args)
    plan = preflight(args, options)  # files, output, every weight: before torch and Prefect load
    finished = finished_run(args, options, plan)
    if finished is not None:  # this very request was made before and its output is unchanged
        print(format_summary(finished))
        return 0
    weights = plan["generator"] or random_generator_file(plan)
    request = request_of(args, options)  # the options as preflight settled them (random weights)
    check_inputs(request, weights, args.device, args.landmarks)
    from flows.reenact_job import run_recorded

    # recorded in the cache as a job (status lists it, `facereenact resume JOB` runs it again)
    summary = run_recorded(request, args.cache, weights, device=args.device, landmarks=args.landmarks,
                           progress=not args.quiet)
    record_request(args, options, plan)
    summary["random_weights"] = plan["random_weights"]
    print(format_summary(summary))
    print(f"job {summary['job']}")
    return 0


def preflight(args: argparse.Namespace, options: dict) -> dict:
    """Torch-free checks of everything a run needs, user errors first, then every missing weight in one
    message. With --allow-random-weights a missing official generator or LPIPS backbone switches to
    the demo's random generator, uncalibrated LPIPS and short schedule (`options` updated, a notice
    printed). Returns the plan: files, and what was switched."""
    from flows.cli.preflight import Missing, backbone_file, existing_file, generator_file, writable_output
    from storage.errors import InputError
    from storage.media import open_medium

    request_of(args, options).check_landmarks(args.landmarks)  # mode, settings, ranges: before the files
    source = existing_file(args.source, "source image")
    driving = existing_file(args.driving, "driving video")
    writable_output(args.output, OUTPUT_SUFFIXES)
    mapping = None
    if "mapping" in options:
        mapping = Path(options["mapping"]).expanduser()
        if not mapping.is_file():  # a checkpoint problem, as models.reenact.load_mapping says it (exit 3)
            from storage.errors import CheckpointError

            raise CheckpointError("mapping-network checkpoint not found", path=mapping)
    if "directions" in options:
        mapping = Path(options["directions"]).expanduser()  # the mode's model file, as --mapping's
        if not mapping.is_file():
            from storage.errors import CheckpointError

            raise CheckpointError("directions file not found", path=mapping)
    media = {"source": open_medium(source), "driving": open_medium(driving)}
    if media["source"].kind != "image":
        raise InputError("the source must be a still image (a photo of the face)", path=args.source)
    if media["driving"].kind != "video":
        raise InputError("the driving input must be a video", path=args.driving)

    from flows.cli.preflight import landmark_files

    missing = Missing()
    generator = generator_file(args.weights, missing)
    backbone = backbone_file(options["perceptual"], missing)
    landmark_files(args.landmarks, missing)
    random = generator is None and args.allow_random_weights
    if missing.names and not args.allow_random_weights:
        raise missing.error(f"; or run offline on a small random generator with {RANDOM_FLAG}")
    if args.allow_random_weights and missing.names:
        blocking = [n for n in missing.names if n == "fan-2d"]
        if blocking:
            raise missing.error(f" ({RANDOM_FLAG} replaces the generator and LPIPS weights only)")
    backbone_missing = backbone is None and options["perceptual"] in PERCEPTUAL_CALIBRATED
    if random or (args.allow_random_weights and backbone_missing):
        # the random generator: AlexNet's random backbone builds and runs faster (as the demo)
        alex = random or options["perceptual"] == "lpips-alex"
        options["perceptual"] = "uncalibrated-alex" if alex else "uncalibrated"
        backbone = None
    if random:
        from flows.cli.demo import TINY

        for name in ("steps_first", "steps_next", "invert_steps"):
            if getattr(args, name) is None:
                options[name] = TINY[name]
        print(f"facereenact: warning: the official weights ({', '.join(missing.names)}) are not on disk: "
              f"running on the demo's small random generator ({TINY['resolution']} px) and "
              f"{options['perceptual']} LPIPS, {RANDOM_FLAG}. The output shows the pipeline, NOT real "
              f"quality (its images are not faces); recorded in {Path(args.output).name}.json. For real "
              f"results: facereenact weights fetch {' '.join(missing.names)}", file=sys.stderr)
    elif options["perceptual"] != PERCEPTUAL[args.perceptual]:
        print(f"facereenact: warning: LPIPS backbone weights not on disk: LPIPS runs {options['perceptual']} "
              f"({RANDOM_FLAG}; recorded in the provenance)", file=sys.stderr)
    return {"generator": None if generator is None else str(generator),
            "backbone": None if backbone is None else str(backbone),
            "mapping": None if mapping is None else str(mapping), "random_weights": random,
            "missing": list(missing.names), "media": {k: m.key for k, m in media.items()}}


PERCEPTUAL_CALIBRATED = ("lpips-vgg", "lpips-alex")


def random_generator_file(plan: dict) -> str:
    """The demo's small random generator, written once into the weights folder; its path is the
    generator the run uses (its sha256 lands in every provenance record, like any checkpoint's)."""
    from flows.cli.demo import TINY
    from storage.weights import weights_dir

    path = weights_dir() / f"random-generator-{TINY['resolution']}px.safetensors"
    if not path.is_file():
        from models.checkpoints import save_native
        from models.demo import random_generator

        path.parent.mkdir(parents=True, exist_ok=True)
        save_native(random_generator(TINY["resolution"]), path)
    plan["generator"] = str(path)
    return str(path)


def request_key(args: argparse.Namespace, options: dict, plan: dict) -> str | None:
    """What makes this run's output: the sha256 of every input and weight file, the settings and the
    code version (no network is built). None when the generator file does not exist yet."""
    from flows.cli.demo import TINY
    from storage.provenance import code_version, provenance_key, sha256_file
    from storage.weights import weights_dir

    generator = plan["generator"]
    if generator is None:
        candidate = weights_dir() / f"random-generator-{TINY['resolution']}px.safetensors"
        if not candidate.is_file():
            return None
        generator = str(candidate)
    files = {"generator": generator, "backbone": plan["backbone"], "mapping": plan["mapping"]}
    request = {
        **plan["media"], **{k: None if v is None else sha256_file(v) for k, v in files.items()},
        "settings": {"mode": args.mode, "variant": args.variant, "layout": args.layout,
                     "paste_back": args.paste_back, "subframes": args.subframes, "landmarks": args.landmarks,
                     **faces_of(args),
                     "options": {k: v for k, v in options.items() if k not in ("mapping", "directions")},
                     "random_weights": plan["random_weights"]},
        "code": code_version(),
    }
    return provenance_key(request, length=32)


def faces_of(args: argparse.Namespace) -> dict:
    """Which detector finds the faces and which face of each input is taken."""
    return {"detector": args.detector, "face_index": args.face_index,
            "source_face_index": args.source_face_index}


def finished_run(args: argparse.Namespace, options: dict, plan: dict) -> dict | None:
    """The summary of an earlier run of this very request whose output is unchanged, else None."""
    import json

    sidecar = Path(args.output).expanduser().with_name(Path(args.output).name + ".json")
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    key = request_key(args, options, plan)
    request = record.get("request") if isinstance(record, dict) else None
    if key is None or not isinstance(request, dict) or request.get("key") != key:
        return None
    if record.get("failed_frames"):  # failed frames: run the flow again (it may retry them)
        return None
    from storage.provenance import sha256_file

    try:
        if sha256_file(args.output) != record.get("output_sha256"):
            return None
        if record.get("preview") and not Path(record["preview"]).is_file():
            return None
    except OSError:
        return None
    return {"output": record["output"], "frames": record["frames"], "fps": record["fps"],
            "seconds": 0.0, "metrics": record["metrics"], "computed": {"rendered": False},
            "held_frames": record.get("held_frames", []),
            "interpolated_frames": int(sum(record.get("per_frame", {}).get("interpolated", []))),
            "random_weights": request.get("random_weights", False)}


def record_request(args: argparse.Namespace, options: dict, plan: dict) -> None:
    """Add this request (its key, the weights used, whether they were random) to the output's sidecar."""
    from storage.reenact import read_sidecar, write_sidecar

    record = read_sidecar(args.output)
    if record is None:
        return
    record["request"] = {"key": request_key(args, options, plan), "generator": plan["generator"],
                         "random_weights": plan["random_weights"], "perceptual": options["perceptual"],
                         "missing_official_weights": plan["missing"]}
    write_sidecar(args.output, record)


def check_inputs(request: ReenactRequest, weights: str, device: str, landmarks: str) -> None:
    """Every user error that can be found before any work: files, settings, weights."""
    from models.losses import PERCEPTUAL_CHOICES
    from storage.errors import InputError, WeightsMissingError
    from storage.media import open_medium
    from storage.weights import require

    if Path(request.output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"unsupported output extension (use {', '.join(OUTPUT_SUFFIXES)})",
                         path=request.output)
    from storage.atomic import check_writable

    check_writable(request.output)  # a read-only or impossible output folder: fail now, not after the work
    from flows.reenact import check_not_inputs

    check_not_inputs(request.source, request.driving, request.output, weights,
                     mapping=request.settings.get("mapping"))
    if open_medium(request.source).kind != "image":
        raise InputError("the source must be a still image (a photo of the face)", path=request.source)
    medium = open_medium(request.driving)
    if medium.kind != "video":
        raise InputError("the driving input must be a video", path=request.driving)
    for warning in medium.warnings:
        print(f"facereenact: warning: {medium.path}: {warning}", file=sys.stderr)
    request.check_settings()
    from tasks import resources

    G = resources.generator(weights, device)  # missing / unsafe weights, no GPU: fail now
    request.check_models(G, landmarks)  # a mapping network or encoder made for another generator: now
    _, backbone, calibrated = PERCEPTUAL_CHOICES[request.perceptual]
    if calibrated:
        try:
            require(backbone)
        except WeightsMissingError as err:
            raise WeightsMissingError(f"{err}; or pass --perceptual uncalibrated (LPIPS with a random "
                                      "backbone)") from None
    resources.landmark_backend(landmarks, device)


def identity_text(metrics: dict) -> str:
    """The identity similarity, or "no face" when no output frame had a detectable face (a similarity
    computed on noise is high too, so it is not shown then); frames without a face are counted."""
    no_face = metrics.get("no_face_frames") or 0
    value = metrics.get("identity_similarity")
    if value is None:
        return "no face in the output" if no_face else "n/a"
    return f"{value:.3f}" + (f" (over the frames with a face; {no_face} without)" if no_face else "")


def format_summary(summary: dict) -> str:
    """One line: frames, time, output, mean landmark NME, identity similarity."""
    m = summary["metrics"]

    def number(value, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    text = (f"reenacted {summary['frames']} frames ({summary['fps']} fps) in {summary['seconds']:.1f} s -> "
            f"{summary['output']}; mean landmark NME {number(m['landmark_nme'])}, identity similarity "
            f"{identity_text(m)}, {number(m['seconds_per_frame'], 2)} s per frame")
    if not summary["computed"]["rendered"]:
        text += " (already made from the cache: nothing to do)"
    if summary.get("random_weights"):
        text += "; made with a small RANDOM generator (not real quality)"
    if summary["held_frames"]:
        text += f"; {len(summary['held_frames'])} failed frame(s) hold the previous frame"
    if summary["interpolated_frames"]:
        text += f"; {summary['interpolated_frames']} frame(s) without a face in the driving clip"
    return text
