"""The Prefect server on PostgreSQL instead of SQLite: a throwaway PostgreSQL cluster (initdb +
postgres as an unprivileged user, on a free port, in a temp dir), `prefect server start` with
PREFECT_API_DATABASE_CONNECTION_URL pointing at it, a dataset inversion run through `facereenact
invert` against that server, then `facereenact status`; everything stopped by its pid.

Skipped, with the reason, when the PostgreSQL binaries are missing or cannot start here."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.cache import Workspace
from storage.latents import LatentCache
from tests.helpers import run_cli
from tests.prefect_server import free_port, prefect_server, start, stop
from tests.reliability.inputs import CLIP_FRAMES

BINARIES = ("initdb", "postgres")


def _as_user(command: str) -> list[str]:
    """`command` as an unprivileged user when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return ["/bin/sh", "-c", command]
    return ["su", "nobody", "-s", "/bin/sh", "-c", command]


def _find_binary(name: str) -> str | None:
    """On PATH, in /usr/local/bin, or where Debian's postgresql package puts its server binaries
    (/usr/lib/postgresql/<version>/bin, not on PATH); the newest version first."""
    candidates = [shutil.which(name), f"/usr/local/bin/{name}",
                  *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)]
    return next((c for c in candidates if c and Path(c).exists()), None)


@contextlib.contextmanager
def postgres_cluster(tmp: Path) -> Iterator[str]:
    """A running PostgreSQL server; yields its SQLAlchemy URL for Prefect."""
    found = {name: _find_binary(name) for name in BINARIES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.skip(f"PostgreSQL binaries not found: {', '.join(missing)} (install Debian's postgresql)")
    # Its own dir under /tmp: pytest's temp dirs sit in a root-only (0700) parent.
    root = Path(tempfile.mkdtemp(prefix="facereenact-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "nobody", "nogroup" if _group_exists("nogroup") else "nobody")
    data = root / "data"
    init = subprocess.run(_as_user(f"{found['initdb']} -D {data} -U postgres --auth=trust -E UTF8 "
                                   "--no-instructions"), capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb cannot run here: {(init.stderr or init.stdout).strip().splitlines()[-1:]}")
    port = free_port()
    log = tmp / "postgres.log"
    server = start(_as_user(f"exec {found['postgres']} -D {data} -p {port} -h 127.0.0.1 -k {root} "
                            "-c fsync=off -c max_connections=50"), dict(os.environ), log)
    try:
        deadline = time.monotonic() + 60
        while "ready to accept connections" not in log.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"postgres did not start here: {log.read_text()[-500:]}")
            time.sleep(0.2)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop(server)
        shutil.rmtree(root, ignore_errors=True)


async def _flow_runs(url: str) -> list[tuple[str, str]]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        records = await conn.fetch("SELECT flow.name, flow_run.state_type FROM flow_run "
                                   "JOIN flow ON flow.id = flow_run.flow_id")
    finally:
        await conn.close()
    return [(r[0], str(r[1])) for r in records]


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def test_prefect_server_on_postgres_runs_a_job(reliability_inputs, prefect_harness, tmp_path):
    data = reliability_inputs
    cache = data.copy_prepared(tmp_path / "cache")
    with postgres_cluster(tmp_path) as url, prefect_server(
            tmp_path, {"PREFECT_API_DATABASE_CONNECTION_URL": url, "OMP_NUM_THREADS": "1"}) as env:
        proc = run_cli("invert", data.clip, "--cache", cache, "--weights", data.weights, "--steps", "1",
                       "--batch-size", "2", "--perceptual", "uncalibrated-alex", "--device", "cpu", "--quiet",
                       env={k: env[k] for k in ("PREFECT_API_URL", "PREFECT_HOME")})
        assert proc.returncode == 0, proc.stderr[-3000:]
        # The runs are in PostgreSQL's tables: the server really used it (not a SQLite file).
        rows = asyncio.run(_flow_runs(url))
        assert ("invert-dataset", "COMPLETED") in rows, rows
        assert not list((tmp_path / "prefect-home").glob("*.db")), "a SQLite database was made"
    (latents,) = LatentCache.all(Workspace(cache))
    assert latents.is_complete() and latents.num_frames == CLIP_FRAMES
    status = run_cli("status", cache, check=True)
    assert "finished" in status.stdout
