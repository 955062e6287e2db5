"""Prefect's temporary server on the first run: a startup timeout that fits a cold, loaded machine (the
user's own value wins), and when the server still cannot start, one line naming what failed and the
fix, exit 7, no traceback, no server process left; an unusable PREFECT_HOME named as such.

The failing cases run `python -m flows.cli` without PREFECT_API_URL (the way a new user runs it), side
by side in one module fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows.cli import prefect_startup
from flows.cli.prefect_startup import SETTING, STARTUP_TIMEOUT_S
from flows.samples import sample_path
from tests.helpers import REPO_ROOT, assert_user_error

PREPARE = ["--resolution", "32", "--device", "cpu", "--quiet"]


def test_the_default_timeout_fits_a_cold_loaded_machine_and_the_users_value_wins(tmp_path, monkeypatch):
    assert STARTUP_TIMEOUT_S > 20  # Prefect's own default failed a fresh clone's first run
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    monkeypatch.delenv(SETTING, raising=False)
    prefect_startup.set_default_timeout()
    assert os.environ[SETTING] == str(STARTUP_TIMEOUT_S)
    monkeypatch.setenv(SETTING, "45")  # the environment
    prefect_startup.set_default_timeout()
    assert os.environ[SETTING] == "45"
    monkeypatch.delenv(SETTING)  # the active profile (`prefect config set ...` writes there)
    (tmp_path / "profiles.toml").write_text(f'active = "mine"\n[profiles.mine]\n{SETTING} = "50"\n')
    prefect_startup.set_default_timeout()
    assert SETTING not in os.environ


@pytest.fixture(scope="module")
def failed(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Each case's (temp dir, CompletedProcess): `prepare` of the photo without PREFECT_API_URL."""
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", SETTING)}
    base["PYTHONPATH"] = str(REPO_ROOT)
    cases = {}
    t = tmp_path_factory.mktemp("tiny-timeout")
    cases["tiny_timeout"] = (t, {"PREFECT_HOME": str(t / "home"), SETTING: "0"})  # impossible: 0 s
    t = tmp_path_factory.mktemp("home-under-a-file")
    (t / "file").write_text("not a folder")
    cases["home_under_a_file"] = (t, {"PREFECT_HOME": str(t / "file" / "home")})
    running = {}
    for name, (t, env) in cases.items():
        argv = [sys.executable, "-m", "flows.cli", "prepare", str(sample_path("astronaut.jpg")), "--cache",
                str(t / "cache"), *PREPARE]
        running[name] = (t, subprocess.Popen(argv, cwd=REPO_ROOT, env={**base, **env}, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = {}
    for name, (t, proc) in running.items():
        try:
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        out[name] = (t, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def _servers_of(home: Path) -> list[psutil.Process]:
    """Prefect server processes still running with this PREFECT_HOME."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "prefect.server.api.server" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("PREFECT_HOME") == str(home):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_a_server_that_does_not_start_in_time_is_one_line_naming_the_fix(failed):
    t, proc = failed["tiny_timeout"]
    assert_user_error(proc, "Prefect's temporary API server did not start within 0 s", "prefect server start",
                      "PREFECT_API_URL", SETTING, code=7)
    assert not _servers_of(t / "home")  # the server it started is gone
    assert not (t / "cache").exists() or not any((t / "cache").rglob("status/c/*"))  # nothing done


def test_an_unusable_prefect_home_is_named_not_a_timeout(failed):
    t, proc = failed["home_under_a_file"]
    assert_user_error(proc, f"PREFECT_HOME {t / 'file' / 'home'}", "is a file, not a folder",
                      "prefect server start", code=7)
    assert "Timed out" not in proc.stderr and "did not start" not in proc.stderr
    assert not (t / "cache").exists()  # refused before any work
