"""What several subcommands share: where the cache is by default, and Prefect's console kept quiet."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Callable, Iterator

# The workspace a command uses without --cache: $FACEREENACT_CACHE, else a folder in the working
# directory (every command the same, so `invert`, `train-mapping`, `run` and `status` meet there).
DEFAULT_CACHE = os.environ.get("FACEREENACT_CACHE", ".facereenact-cache")


def add_cache_option(parser: argparse.ArgumentParser, what: str = "cache directory or URL",
                     positional: bool = False) -> None:
    """`--cache PATH` defaulting to DEFAULT_CACHE; `positional` also takes it as an optional first
    argument CACHE (the older form of `status`), which `cache_of(args)` reconciles."""
    help_text = f"{what} (default: $FACEREENACT_CACHE or {DEFAULT_CACHE})"
    if positional:
        parser.add_argument("cache_positional", nargs="?", metavar="CACHE", help="the same as --cache")
    parser.add_argument("--cache", default=DEFAULT_CACHE, help=help_text)


def cache_of(args: argparse.Namespace) -> str:
    """The cache of a command that takes it as `--cache` or positionally (not both, unless equal)."""
    positional = getattr(args, "cache_positional", None)
    if positional is None:
        return args.cache
    if args.cache not in (DEFAULT_CACHE, positional):
        from storage.errors import InputError

        raise InputError(f"two caches given: {positional} and --cache {args.cache}")
    return positional


@contextlib.contextmanager
def summary_on_failure(format_summary: Callable[[dict], str]) -> Iterator[None]:
    """A flow that ends in a JobFailedError carrying its `summary` (some frames or jobs failed): print
    the summary first (stdout), then let the error give its one line and exit code."""
    from storage.errors import JobFailedError

    try:
        yield
    except JobFailedError as err:
        if getattr(err, "summary", None) is not None:
            print(format_summary(err.summary), flush=True)
        raise


def add_landmarks_option(parser: argparse.ArgumentParser, what: str = "tracking and projection") -> None:
    from flows.job_requests import LANDMARKS

    parser.add_argument("--landmarks", choices=LANDMARKS, default="faceapi",
                        help=f"landmark backend of {what} (default faceapi)")


def add_weights_option(parser: argparse.ArgumentParser, extra: str = "") -> None:
    from flows.job_requests import DEFAULT_WEIGHTS

    parser.add_argument("--weights", default=DEFAULT_WEIGHTS, metavar="NAME|PATH",
                        help=f"generator checkpoint or registered name (default {DEFAULT_WEIGHTS}){extra}")


def quiet_prefect(verbose: bool) -> None:
    """Prefect's console lines (and its tracebacks of our one-line errors) off unless `verbose`.
    Call before anything imports Prefect: its logging is configured on import. Every command that runs
    a flow calls it, so it also refuses an unusable PREFECT_HOME here, before any work."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from flows.cli.prefect_startup import check_prefect_home

    check_prefect_home()


def require_at_least(args: argparse.Namespace, **lows: int) -> None:
    """An InputError naming the first option below its lowest allowed value (`steps=1, ...`)."""
    from storage.errors import InputError

    for name, low in lows.items():
        if getattr(args, name) < low:
            raise InputError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")


from storage.limits import MAX_STEPS  # noqa: E402 (storage.limits imports nothing heavy)

# Ranges every numeric option is held to by the parser (`check_numeric_options`), before any command
# runs: a value outside them is a typo or an attack, never a setting (10**22 steps would run for ever;
# 10**11 frames or a 10**12 batch would try to allocate them). The requests (flows/job_requests.py) check
# the narrower ranges of what a job asks for (steps >= 1, held-out in [0, 1), ...), whoever builds them;
# commands check the rest themselves (require_at_least, --resolution 8..4096). Ints are never negative.
MAX_INT = 2**31 - 1
INT_LIMITS: dict[str, int] = {
    "seed": 2**32 - 1,  # numpy's RandomState takes [0, 2**32)
    "steps": MAX_STEPS, "steps_first": MAX_STEPS, "steps_next": MAX_STEPS, "invert_steps": MAX_STEPS,
    "refine_steps": MAX_STEPS, "checkpoint_every": MAX_STEPS,
    "frames": 1_000_000,
    "batch": 65_536, "batch_size": 65_536, "batches_per_task": 65_536,
    "resolution": 4096,
}


def _finite_float(option: str):  # noqa: ANN202 (an argparse type)
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        return value
    parse.__name__ = option
    return parse


def _bounded_int(option: str, high: int):  # noqa: ANN202 (an argparse type)
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not 0 <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between 0 and {high}, got {text}")
        return value
    parse.__name__ = option
    return parse


def check_numeric_options(parser: argparse.ArgumentParser) -> None:
    """Hold every `type=float` option of `parser` to finite values (`--psi nan` is refused, not
    rendered black) and every `type=int` one to [0, INT_LIMITS or MAX_INT]; a refused value is the
    parser's one-line error (`facereenact: error: generate: argument --psi: must be a finite number,
    got 'nan'`, exit 2; flows.cli.options.Parser). Called once per subcommand, after its options are added."""
    for action in parser._actions:  # argparse has no public accessor for the added options
        if action.type is float:
            action.type = _finite_float(action.dest)
        elif action.type is int:
            action.type = _bounded_int(action.dest, INT_LIMITS.get(action.dest, MAX_INT))
