"""Prefect's temporary server on a cold or busy machine: a startup timeout that fits, and one-line errors.

Without PREFECT_API_URL every command that runs a flow starts Prefect's temporary ("ephemeral") API
server, a uvicorn subprocess that imports Prefect's server and, with a new PREFECT_HOME, creates and
migrates its SQLite database before it answers. Prefect 3.8.8 waits
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = 20 s for it (counted in 0.1 s sleeps), then raises
a RuntimeError whose traceback was the first thing a new user saw. Measured on the 2-core development
machine (README, "Prefect's temporary server"), a fresh PREFECT_HOME with busy processes on both cores
took longer than that; `STARTUP_TIMEOUT_S` is the default this project gives the same setting.

- `set_default_timeout()`: the setting's default for this process and its children, unless the user
  set it (in the environment or in the active Prefect profile): a value of one's own always wins.
- `check_prefect_home()`: an unwritable PREFECT_HOME is named as such before any work (today the
  server fails to open its database, exits, is restarted on another port, and the only message
  after the timeout was "Timed out").
- `explain(err)`: the error a command gets when the server still does not start, as one line naming
  what failed and the fix (`prefect server start` + PREFECT_API_URL), exit code 7.

No Prefect import at module level: `facereenact --help` stays fast.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from storage.errors import FacereenactError

__all__ = ["SETTING", "STARTUP_TIMEOUT_S", "PrefectStartupError", "check_prefect_home", "explain",
           "set_default_timeout"]

SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# Seconds the temporary server may take to start (Prefect's default: 20). Measured on the shared 2-core
# machine (other jobs already at load ~12), fresh PREFECT_HOME: 51 s; with 2 more busy processes
# 134 s; with 4, the server came up after ~240 s but too busy to answer (README). 300 s covers the
# first two with room to spare; beyond that the error names the fix (a running server).
STARTUP_TIMEOUT_S = 300
SERVER_MODULE = "prefect/server/api/server.py"  # where Prefect's SubprocessASGIServer.start lives
FIX = ("start a server once with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api "
       "(its address)")


class PrefectStartupError(FacereenactError):
    """Prefect's API is not reachable: its temporary server did not start, or cannot keep its database."""

    exit_code = 7


def _profile() -> dict[str, Any]:
    """The active Prefect profile's settings (PREFECT_PROFILES_PATH or PREFECT_HOME/profiles.toml), or
    {} when there is none or it cannot be read (Prefect reports that itself)."""
    import tomllib

    path = os.environ.get("PREFECT_PROFILES_PATH") or str(_prefect_home() / "profiles.toml")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError):
        return {}
    name = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(name, {})
    return profile if isinstance(profile, dict) else {}


def _prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def set_default_timeout() -> None:
    """Give Prefect's startup-timeout setting this project's default unless the user set it."""
    if SETTING in os.environ or SETTING in _profile():
        return
    os.environ[SETTING] = str(STARTUP_TIMEOUT_S)


def _api_url() -> str | None:
    """PREFECT_API_URL as Prefect sees it: its settings once imported (a test harness sets it there),
    else the environment or the active profile."""
    settings = sys.modules.get("prefect.settings")
    if settings is not None:
        return settings.PREFECT_API_URL.value() or None
    return os.environ.get("PREFECT_API_URL") or _profile().get("PREFECT_API_URL") or None


def check_prefect_home() -> None:
    """Before any work: when a temporary server will be started (no PREFECT_API_URL), PREFECT_HOME must
    be a writable folder (or one that can be made). PrefectStartupError naming it otherwise."""
    if _api_url():
        return
    home = _prefect_home()
    folder = home
    while not folder.exists() and folder != folder.parent:  # where the missing folders would be made
        folder = folder.parent
    if not folder.is_dir():
        problem = f"{folder} is a file, not a folder"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        except OSError as err:
            problem = f"{folder} is not writable ({err.strerror})"
        else:
            os.close(fd)
            os.unlink(probe)
            return
    raise PrefectStartupError(f"PREFECT_HOME {home} cannot be used: {problem}; Prefect's temporary server "
                              f"keeps its database there. Set PREFECT_HOME to a writable folder, or {FIX}")


def _from_server_start(err: BaseException) -> bool:
    """Raised inside Prefect's SubprocessASGIServer.start (the temporary server's start)."""
    tb = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "start" and Path(code.co_filename).as_posix().endswith(SERVER_MODULE):
            return True
        tb = tb.tb_next
    return False


def explain(err: BaseException) -> PrefectStartupError | None:
    """The one-line error of Prefect's temporary server failing to start (`err` as Prefect raised it:
    a RuntimeError after the timeout, or httpx's timeout when the server is up but too busy to answer
    its health check within httpx's 5 s), or None when `err` is something else."""
    text = " ".join(str(err).split())
    timed_out = isinstance(err, RuntimeError) and "ephemeral Prefect API server" in text
    if not timed_out and not (isinstance(err, Exception) and _from_server_start(err)):
        return None
    settings = sys.modules.get("prefect.settings")
    timeout = settings.PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() if settings else "?"
    if timed_out:
        what = f"did not start within {timeout} s"
        if "exited with code" in text:
            code = text.split("exited with code", 1)[1].split(".")[0].strip()
            what += f" (it exited with code {code})"
    else:
        what = f"started but did not answer its health check ({type(err).__name__}: {text or 'no reply'})"
    return PrefectStartupError(f"Prefect's temporary API server {what}; {FIX}, or allow it more time "
                               f"with {SETTING}=SECONDS")
