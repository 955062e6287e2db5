"""Helpers for tests: run the CLI the way a user does, and check user errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *map(str, args)],
        cwd=cwd or REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"facereenact {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def assert_user_error(
    proc: subprocess.CompletedProcess[str], *fragments: str, code: int | None = None
) -> None:
    """A user error: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert proc.returncode != 0, f"expected failure, got 0:\n{proc.stdout}\n{proc.stderr}"
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    err_lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("facereenact: error:")]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(err_lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment.lower() in err_lines[0].lower(), (fragment, err_lines[0])


def kill_cli_when(args: list[str], env: dict[str, str], ready: Callable[[], bool], delay: float = 0.0,
                  log: Path | None = None, timeout: float = 180) -> None:
    """Run `python -m flows.cli ARGS`, and once `ready()` is true (or it ended, or `timeout` passed)
    plus `delay` seconds, SIGKILL it. It runs in its own session and the kill takes its whole process
    group, so no helper process (Prefect's temporary server) survives. Asserts it was killed, not
    finished; `log` keeps its output (its tail is in the assertion message)."""
    sink = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, args)], cwd=REPO_ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not ready() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
    finally:
        if log is not None:
            sink.close()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:] if log is not None else proc.returncode
