"""A real Prefect server (and workers) in subprocesses for end-to-end tests: `prefect server start`
on a free port with PREFECT_HOME in a temp dir, each process in its own process group, stopped by
its pid (the whole group) when the test ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO_ROOT

PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of `proc`, SIGKILL after 15 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen:
    sink = open(log, "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def prefect_server(tmp: Path, extra_env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Start `prefect server start`; yields the environment that points clients at it."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PYTHONPATH": str(REPO_ROOT),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "INFO",
           **(extra_env or {})}
    env.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
    log = tmp / "server.log"
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log)
    try:
        wait_healthy(env["PREFECT_API_URL"], server, log)
        yield env
    finally:
        stop(server)


def prefect(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([PREFECT, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


WAIT_FOR_RUN = """
import sys, time, asyncio
from prefect.client.orchestration import get_client
async def main(run_id, timeout):
    async with get_client() as client:
        deadline = time.monotonic() + timeout
        while True:
            run = await client.read_flow_run(run_id)
            if run.state.is_final() or time.monotonic() > deadline:
                print(run.state.type.value, run.state.message or "")
                return
            await asyncio.sleep(0.5)
asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def wait_for_run(run_id: str, env: dict[str, str], timeout: float = 240) -> str:
    """The final state of a flow run (type and message), read from the server."""
    proc = subprocess.run([sys.executable, "-c", WAIT_FOR_RUN, run_id, str(timeout)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout + 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()
