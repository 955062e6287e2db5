"""Ctrl-C and SIGTERM: every command stops within seconds, says so in one line, and exits 130 / 143.

Why this is needed: a command's work runs in Prefect's task threads, in Dask worker processes and in
ffmpeg subprocesses. Python delivers a signal to the main thread only; there it becomes a
KeyboardInterrupt that Prefect's engine reports (the flow run is marked Crashed) and re-raises, but
the work in the other threads goes on, and the interpreter's exit waits for those threads (the thread
pool's exit joins them): the job ran on although interrupted. Unwinding through Prefect and Dask also
printed their warnings (cancelled tasks, a relaunched resource tracker's tracebacks) and could wait
on API retries. SIGTERM's default action killed the process at once, leaving ffmpeg, Dask workers and
Prefect's temporary server running.

What happens instead (`install`, called by `flows.cli.main` when it is the process's entry point):
the first SIGINT or SIGTERM calls `finish` from the signal handler, in the main thread. It prints one
line, removes the temporary files of outputs being written (storage.atomic.remove_partials: nothing
half-made, not even a dot-named partial, stays), kills every descendant process (ffmpeg, Dask's
workers, Prefect's temporary server; SIGKILL: they print nothing more) and ends the
process with `os._exit(128 + signal)`, which stops every worker thread where it is.

The cache stays consistent because of how it is written, exactly as after a SIGKILL (which the tests
resume bit for bit): a frame's status is written after its data, so only frames that are done are
marked done, and a rerun computes the rest. The one thing left behind is the flow run's state in
Prefect's database, which stays "Running" as after any killed process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import NoReturn

__all__ = ["MESSAGE", "STOP", "finish", "install", "received"]

MESSAGE = "interrupted; run the same command again to resume"
CHILD_WAIT_S = 3.0  # how long to keep killing child processes until none is left
SIGNALS = (signal.SIGINT, signal.SIGTERM)

STOP = threading.Event()  # set by the first signal; long loops may check it
_received: list[int] = []
_finishing = threading.Lock()
_psutil: list = []  # the psutil module, imported by install()


def received() -> int | None:
    """The first signal received (SIGINT / SIGTERM), or None."""
    return _received[0] if _received else None


def exit_code(signum: int | None = None) -> int:
    return 128 + int(signum or received() or signal.SIGINT)


def _handler(signum: int, frame: object) -> None:
    _received.append(signum)
    STOP.set()
    finish(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM as above, for the rest of the process (main thread only). SIGINT is
    handled even when the process started with it ignored (`command &` in a script): a user who
    sends it means it."""
    import psutil  # imported now: a signal handler must not import (the import lock may be held)

    _psutil.append(psutil)
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def _end_children() -> None:
    """SIGKILL every descendant process (killed, ffmpeg, Dask's workers and Prefect's server print
    nothing and make nothing more), again until none is left: until this process ends, its other
    threads still run and may start new ones (Dask's nanny restarts a killed worker)."""
    psutil = _psutil[0]
    deadline = time.monotonic() + CHILD_WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            children = [c for c in psutil.Process().children(recursive=True)
                        if c.status() != psutil.STATUS_ZOMBIE]
            if not children:
                return
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            psutil.wait_procs(children, timeout=0.2)


def finish(signum: int | None = None) -> NoReturn:
    """Print the one line, end the child processes and the process (exit 128 + signal). Only the first
    caller does it; any other waits for the process to end."""
    if not _finishing.acquire(blocking=False):
        threading.Event().wait()  # the first caller ends the process
    for blocked in SIGNALS:  # no handler runs again while we clean up
        with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
            signal.signal(blocked, signal.SIG_IGN)
    code = exit_code(signum)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(OSError):  # not print: the handler may have stopped a write to stderr
        os.write(2, f"facereenact: {MESSAGE}\n".encode())
    with contextlib.suppress(OSError):  # the one line is said: whatever the other threads and the
        null = os.open(os.devnull, os.O_WRONLY)  # children they start still print goes nowhere
        os.dup2(null, 1)
        os.dup2(null, 2)
    atomic = sys.modules.get("storage.atomic")  # imported by any command that writes an output
    if atomic is not None:
        with contextlib.suppress(Exception):
            atomic.remove_partials()
    with contextlib.suppress(Exception):
        _end_children()
    os._exit(code)
