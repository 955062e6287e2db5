"""Helpers for tests: run the CLI the way a user does, and check user errors."""

from __future__ import annotations

import os
import subprocess
import sys
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
