"""What several subcommands share: where the cache is by default, and Prefect's console kept quiet."""

from __future__ import annotations

import argparse
import os

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


def quiet_prefect(verbose: bool) -> None:
    """Prefect's console lines (and its tracebacks of our one-line errors) off unless `verbose`.
    Call before anything imports Prefect: its logging is configured on import."""
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def require_at_least(args: argparse.Namespace, **lows: int) -> None:
    """An InputError naming the first option below its lowest allowed value (`steps=1, ...`)."""
    from storage.errors import InputError

    for name, low in lows.items():
        if getattr(args, name) < low:
            raise InputError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
