"""Shared test fixtures.

- `shared_dir`: ../shared beside the repository root (the fixtures of DESIGN.md); tests that need it
  skip with a clear reason when it is absent.
- `run_cli`: runs `python -m flows.cli ...` in a subprocess, the way a user runs `facereenact`.
- `cli`: the same command line through `flows.cli.main` in this process (no 2-4 s start-up); for
  checks where the process itself does not matter (errors before any work, quick commands).
- `prefect_harness`: one session-wide Prefect test server with PREFECT_HOME in a temp dir;
  `prefect_api_env`: the environment that points CLI subprocesses at it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import run_cli as _run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

# Isolate Prefect from the user's home before anything imports it, in this process and in children.
_PREFECT_HOME = tempfile.mkdtemp(prefix="facereenact-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Never reach the network for weights in tests; point weight lookups at an empty cache.
os.environ.setdefault("FACEREENACT_HOME", tempfile.mkdtemp(prefix="facereenact-home-"))
os.environ.setdefault("TORCH_HOME", tempfile.mkdtemp(prefix="facereenact-torch-"))


# One torch thread in the tests and in every process they start. The nets here are small; on a
# shared 2-core machine under load two threads made face-api's landmark net 60-100x slower (0.7-1.0 s
# instead of 0.01 s per frame) and tiny-generator inversion steps 5-10x slower: OpenMP threads waiting
# on each other while other processes hold the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_DIR} (expected ../shared beside the repo)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def stylegan_fixture_dir(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "stylegan2"
    if not path.is_dir():
        pytest.skip(f"StyleGAN2 fixtures not found at {path}")
    return path


@pytest.fixture(scope="session")
def faces_fixture_dir(shared_dir: Path) -> Path:
    path = shared_dir / "fixtures" / "faces"
    if not path.is_dir():
        pytest.skip(f"face fixtures not found at {path}")
    return path


@pytest.fixture
def run_cli():
    """`run_cli(*args, env=..., check=...)` -> CompletedProcess of `facereenact *args`."""
    return _run_cli


@pytest.fixture(autouse=True)
def _cli_environment():
    """What the CLI sets for its own process must not leak into later tests when a test calls it in
    this process: Prefect's console level (os.environ.setdefault; a resumed run's INFO lines, which a
    test reads, went missing so) and the CPU thread count (`--threads`: the variables, which later
    subprocesses inherit, and torch's own; another thread count changes float sums, and the bitwise
    resume tests compare a subprocess with an in-process reference)."""
    import torch

    keys = ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    before = {key: os.environ.get(key) for key in keys}
    threads = torch.get_num_threads()
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def cli(capfd, monkeypatch):
    """`cli(*argv, env=None)` -> CompletedProcess of `flows.cli.main(argv)` run in this process with
    file descriptors 1 and 2 captured (whatever any logger writes there is seen, as on a terminal),
    so `tests.helpers.assert_user_error` checks it like a subprocess's. `flows.cli.__main__` only
    calls `main`, so this is the entry point's code path; `env` is set for the call only."""
    import subprocess

    from flows import cli as cli_module

    # What the CLI sets for itself in a fresh process (Prefect's console lines off), for this test.
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

    def call(*argv, env: dict[str, str] | None = None,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        capfd.readouterr()
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, str(value))
            try:
                code = cli_module.main([str(a) for a in argv])
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capfd.readouterr()
        if check and code != 0:
            raise AssertionError(f"facereenact {' '.join(map(str, argv))} failed ({code}):\n{out}\n{err}")
        return subprocess.CompletedProcess(["facereenact", *map(str, argv)], code, out, err)

    return call


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    from flows.cli.prefect_startup import STARTUP_TIMEOUT_S

    # the CLI's margin for a cold, loaded machine (Prefect's own default here is 30 s)
    with prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_S):
        yield


@pytest.fixture(scope="session")
def prefect_api_env(prefect_harness) -> dict[str, str]:
    """Environment for CLI subprocesses that run flows: use the session's Prefect test server
    instead of each starting a temporary one (10-20 s apiece here)."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
