"""Options every command shares, defined once: `--threads`, `--device`, `--quiet`, `--verbose`, and the
help formatting (defaults shown, examples kept as written). Nothing here imports torch or Prefect.

CPU threads. torch (and the BLAS/OpenMP libraries under numpy and OpenCV) start one thread per core
by default; on a CPU shared with other jobs those threads wait on each other. `run` of an 8-frame job
on the 2-core development machine shared with other jobs took 160-185 s at torch's default threads
and 32 s at one thread (issue 13); tests/benchmarks/bench_threads.py measures s/frame at 1, 2 and the
default on any machine (numbers in docs/reenact.md). So every command runs with `default_threads()`
unless the user says otherwise: `--threads N`, or OMP_NUM_THREADS / MKL_NUM_THREADS set in the
environment (then torch's own reading of them is kept).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

# Environment variables that set the thread count of torch's CPU kernels; when one is set, it wins.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cpus: int | None = None) -> int:
    """A quarter of the usable CPUs, at least 1 and at most 8: one thread on the 2-core development
    machine (measured fastest there, by far when shared; bench_threads.py), and on a big machine room
    for the other jobs and for Prefect, Dask and ffmpeg beside torch."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(8, cpus // 4))


def thread_count(requested: int | None) -> tuple[int | None, str]:
    """(threads to set, where the number comes from). None: the environment's variables decide."""
    if requested is not None:
        return requested, "--threads"
    for name in THREAD_VARIABLES:
        if os.environ.get(name, "").strip():
            return None, name
    return default_threads(), "default"


def apply_threads(requested: int | None) -> int | None:
    """Set the CPU thread count before torch loads (the variables are read when the OpenMP runtime
    starts, and they also reach threads Prefect starts), and in torch itself when it is already
    loaded (tests, a long-lived process). Returns the count set, or None when the environment's is kept."""
    threads, _ = thread_count(requested)
    if threads is None:
        return None
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def int_at_least(least: int, name: str = "") -> Callable[[str], int]:
    """argparse type: a whole number >= `least` (named `name` in argparse's errors)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    parse.__name__ = name or f"int_at_least_{least}"
    return parse


positive_int = int_at_least(1, "positive_int")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help=f"CPU threads of torch (default: $OMP_NUM_THREADS when set, else "
                             f"{default_threads()} on this machine: a quarter of its {usable_cpus()} CPUs, "
                             "at least 1)")


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, metavar="DEVICE",
                        help=f"{DEVICE_CHOICES} (default {default})")


def perceptual_option(parser: argparse.ArgumentParser, config: tuple[str, str]) -> None:
    """`--perceptual` (the LPIPS backbone), its default the one of `config` (flows/job_requests.py INVERSION
    or PROJECTION); the flows get the config's value (PERCEPTUAL maps the names)."""
    from flows.job_requests import PERCEPTUAL, default_of

    default = next(name for name, value in PERCEPTUAL.items() if value == default_of(config, "perceptual"))
    parser.add_argument("--perceptual", choices=sorted(PERCEPTUAL), default=default,
                        help=f"LPIPS backbone: lpips (VGG-16), lpips-alex; 'uncalibrated' runs without the "
                             f"backbone weights (random backbone; recorded in provenance) "
                             f"(default {default})")


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show Prefect's log lines")


class Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error, `facereenact: error: COMMAND: ... (see ... --help)`,
    exit 2: the message folded to one line, the usage left to --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        self.exit(2, f"facereenact: error: {where}{' '.join(message.split())} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option with a default that its help does not
    already state gets "(default: X)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.default not in (None, False, argparse.SUPPRESS)
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text
