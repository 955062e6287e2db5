"""What several subcommands share: where the cache is by default, and Prefect's console kept quiet."""

from __future__ import annotations

import argparse
import os

# The workspace a command uses without --cache: $FACEREENACT_CACHE, else a folder in the working
# directory (every command the same, so `invert`, `train-mapping`, `run` and `status` meet there).
DEFAULT_CACHE = os.environ.get("FACEREENACT_CACHE", ".facereenact-cache")


def add_cache_option(parser: argparse.ArgumentParser, what: str = "cache directory or URL",
                     positional: bool = False) -> None:
    """`--cache PATH` (or an optional positional CACHE) defaulting to DEFAULT_CACHE."""
    help_text = f"{what} (default: $FACEREENACT_CACHE or {DEFAULT_CACHE})"
    if positional:
        parser.add_argument("cache", nargs="?", default=DEFAULT_CACHE, help=help_text)
    else:
        parser.add_argument("--cache", default=DEFAULT_CACHE, help=help_text)


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
