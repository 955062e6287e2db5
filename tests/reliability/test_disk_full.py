"""A full disk during a cache write, simulated for real: the CLI runs in a subprocess whose file-size
limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the kernel refuse any write past 32 kB with EFBIG, as a
full disk refuses one with ENOSPC. Subprocess: the limit must bind the process, not pytest."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

from storage.cache import Workspace
from tests.helpers import REPO_ROOT, assert_user_error

LIMIT = 32_000  # bytes: a landmarks chunk fits, a 256 px crop chunk does not


def _limited() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_full_disk_during_a_cache_write(data, tmp_path, prefect_api_env):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env}
    command = [sys.executable, "-m", "flows.cli", "prepare", str(data.clip), "--cache", str(cache),
               "--resolution", "256", "--device", "cpu", "--quiet"]
    proc = subprocess.run(command,
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited)
    assert_user_error(proc, str(cache), "no space left", code=5)
    # The crops that could not be written are not done; nothing half-written passes for a result.
    ws = Workspace(cache)
    crops = list(ws.tables(stage="crops"))
    assert crops and all(t.counts()["done"] == 0 for t in crops)
    # ... and the cache is not damaged: the same command with room to write finishes the job.
    proc = subprocess.run(command,
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(t.is_complete() for t in Workspace(cache).tables())
