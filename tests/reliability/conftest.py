"""Fixtures of the reliability suite: the session's inputs and the CLI called in this process.

`cli(*argv)` runs `flows.cli.main(argv)` in this process with the file descriptors captured (capfd:
whatever any logger writes to fd 1/2 is seen, as a user's terminal would), and returns a
CompletedProcess, so `tests.helpers.assert_user_error` checks it like a subprocess's. It is the same
code path as `python -m flows.cli` (whose `__main__` only calls `main`) without 2-4 s of start-up;
cases where the process itself matters (exit status seen by the shell, code that must never run,
resource limits, two processes at once, Prefect's own console output) use `run_cli` subprocesses.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.reliability.inputs import Inputs, inputs


@pytest.fixture(scope="session")
def data(tmp_path_factory, prefect_harness) -> Inputs:
    return inputs(tmp_path_factory)


@pytest.fixture
def cli(capfd, monkeypatch):
    from flows import cli as cli_module

    # What the CLI sets for itself in a fresh process (Prefect's console lines off) is set for the
    # duration of the test only.
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

    def call(*argv) -> subprocess.CompletedProcess[str]:
        capfd.readouterr()
        code = cli_module.main([str(a) for a in argv])
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["facereenact", *map(str, argv)], code, out, err)

    return call
