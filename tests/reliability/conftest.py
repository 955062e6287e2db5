"""Fixtures of the reliability suite: the session's inputs.

The cases run the CLI in this process through the `cli` fixture of tests/conftest.py
(flows.cli.main with the file descriptors captured: the entry point's code path without 2-4 s of
start-up); cases where the process itself matters (exit status seen by the shell, code that must
never run, resource limits, two processes at once, Prefect's own console output) use `run_cli`
subprocesses.
"""

from __future__ import annotations

import pytest

from tests.reliability.inputs import Inputs


@pytest.fixture(scope="session")
def data(reliability_inputs, prefect_harness) -> Inputs:
    return reliability_inputs
