"""The `facereenact` command line.

Each subcommand lives in its own module under flows/cli/ with two functions:
`configure(parser)` adds its arguments, `run(args) -> int` does the work, and an `EXAMPLES` string
(the end of its `--help`). Modules import torch, Prefect and the like inside `run`, so `--help` and
errors in the arguments or input files come back in well under two seconds
(tests/benchmarks/bench_startup.py). Every command takes `--threads` (flows/cli/options.py), applied
before torch loads.

User errors (`storage.errors.FacereenactError`, and Prefect's temporary server failing to start:
flows/cli/prefect_startup.py) print one line and exit with their code; set FACEREENACT_DEBUG=1 to see
their traceback as well. Ctrl-C and SIGTERM print one line and exit 130 / 143 (flows/cli/interrupts.py).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# name -> (module under flows.cli, one-line help). Add a subcommand by adding a row and a module.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("generate", "render images from a generator (z seeds or a W+ file)"),
    "weights": ("weights", "list, fetch, verify and convert model weights"),
    "prepare": ("prepare", "track landmarks and align face crops of videos and source images into the cache"),
    "invert": ("invert", "invert every frame of a folder, glob or manifest of videos into W+ latents"),
    "run": ("run", "reenact a source photo with the motion of a driving video into an mp4"),
    "demo": ("demo", "run the whole pipeline on the bundled sample photo (writes DIR/reenacted.mp4)"),
    "train-mapping": ("train_mapping", "train the landmark-to-latent mapping network on inverted latents"),
    "train-directions": ("train_directions", "learn latent directions (Δw = A Δp) for a generator"),
    "train-encoder": ("train_encoder", "train the inversion encoder of a generator (invert --init encoder)"),
    "evaluate": ("evaluate", "landmark NME, identity similarity, jitter and speed of a result video"),
    "status": ("status", "show done / failed / pending frames of every job, from the cache alone"),
    "resume": ("resume", "run a recorded job again: only its missing and failed frames are computed"),
    "batch": ("batch", "run a batch manifest of reenactment jobs, each isolated; failed jobs listed"),
}


EXAMPLES = """examples:
  facereenact demo                                   # the whole pipeline on the bundled photo, offline
  facereenact run --source face.jpg --driving clip.mp4 -o out.mp4
  facereenact weights fetch ffhq-1024 lpips-vgg16    # the official weights (about 0.9 GiB)
  facereenact COMMAND --help                         # each command's options and examples"""


def version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("facereenact")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    from flows.cli.common import check_numeric_options
    from flows.cli.options import HelpFormatter, Parser, add_threads_option

    parser = Parser(
        prog="facereenact",
        description="One-shot face reenactment with a pretrained StyleGAN2.",
        epilog=EXAMPLES, formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(f"flows.cli.{module_name}")
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter,
                           epilog=getattr(module, "EXAMPLES", None))
        module.configure(p)
        add_threads_option(p)
        check_numeric_options(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. When this is the process's entry point (`argv` None), SIGINT and
    SIGTERM end the process within seconds with one line and exit 130 / 143 (flows/cli/interrupts.py)."""
    from flows.cli import interrupts, prefect_startup
    from flows.cli.options import apply_threads
    from storage.errors import FacereenactError
    from storage.files import user_error_from_os_error

    entry = argv is None
    if entry:
        interrupts.install()
    prefect_startup.set_default_timeout()
    try:
        args = build_parser().parse_args(argv)
        apply_threads(args.threads)  # before anything loads torch
        code = int(args._run(args) or 0)
    except BaseException as err:
        if entry and interrupts.STOP.is_set():  # whatever the interrupt became on its way up
            interrupts.finish()
        user_error = err if isinstance(err, FacereenactError) else prefect_startup.explain(err)
        if user_error is None and isinstance(err, OSError):  # a full disk or an unwritable folder
            user_error = user_error_from_os_error(err)
        if user_error is not None:
            if os.environ.get("FACEREENACT_DEBUG"):
                raise
            print(f"facereenact: error: {user_error}", file=sys.stderr)
            return user_error.exit_code
        if isinstance(err, KeyboardInterrupt):  # in-process callers (tests) keep their own handlers
            print(f"facereenact: {interrupts.MESSAGE}", file=sys.stderr)
            return 130
        raise
    if entry and interrupts.STOP.is_set():  # an interrupt the command swallowed: it did not finish
        interrupts.finish()
    return code


if __name__ == "__main__":  # python -m flows.cli
    sys.exit(main())
