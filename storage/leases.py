"""Expiring leases in the cache: which process works on a job or on a batch of frames right now.

    <workspace>/leases/<name>/        a zarr group; attrs["lease"] = {"owner", "job", "expires", ...}

A lease is one record written whole (a group's metadata object) through the cache's own store, so it
works the same on a local directory and on an object store: no file lock, no rename, no append.
Its holder renews it (a background thread rewrites `expires` every third of the lease time); a
process killed without a word stops renewing, so its leases lapse after at most LEASE_SECONDS and
others take its work over.

Claiming without an atomic compare-and-swap: read the record; when it is free (absent, released or
expired) write ours, wait a moment (CLAIM_SETTLE seconds) and read it back; it is ours if it still
names us. Two claimants racing closely can both win now and then: then both compute the same frames,
which is only wasted work, never a wrong result: every frame's result is a function of its inputs
and settings alone (per-frame seeds), each chunk is written whole, and the status after the data.
Leases avoid duplicated work; the cache's correctness never depends on them.

Clocks: `expires` is wall-clock time (time.time()); hosts sharing a cache need clocks in step to well
under LEASE_SECONDS (NTP). On the holder's own host a lease whose process is gone counts as lapsed at
once (hosts sharing a cache must have distinct host names, as machines and pods do).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from typing import Any

import zarr
import zarr.errors

__all__ = ["CLAIM_SETTLE", "LEASE_SECONDS", "JobLease", "Lease", "lease_seconds", "read_lease"]

LEASE_SECONDS = 60.0  # how long a lease lives without renewal (FACEREENACT_LEASE_SECONDS overrides)
CLAIM_SETTLE = 0.1    # seconds between writing a claim and reading it back


def lease_seconds() -> float:
    text = os.environ.get("FACEREENACT_LEASE_SECONDS")
    try:
        value = float(text) if text else LEASE_SECONDS
    except ValueError:
        value = LEASE_SECONDS
    return max(value, 1.0)


_PROCESS_OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _group(root: zarr.Group, name: str) -> zarr.Group:
    path = f"leases/{name}"
    try:
        return zarr.open_group(root.store, path=path, mode="r+")
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        pass
    try:
        return root.create_group(path)
    except (zarr.errors.ContainsGroupError, FileExistsError):
        return zarr.open_group(root.store, path=path, mode="r+")


def read_lease(root: zarr.Group, name: str) -> dict[str, Any] | None:
    """The lease record `name` as stored now (None when there is none)."""
    try:
        group = zarr.open_group(root.store, path=f"leases/{name}", mode="r")
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
        return None
    record = group.attrs.get("lease")
    return dict(record) if isinstance(record, dict) else None


def is_live(record: dict[str, Any] | None, now: float | None = None) -> bool:
    """A record that is held and not expired, by a process that still exists when it is on this host
    (a job killed here frees its leases at once; elsewhere they lapse at their expiry)."""
    if not record or record.get("released"):
        return False
    if float(record.get("expires", 0)) <= (time.time() if now is None else now):
        return False
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        return _pid_alive(record["pid"])
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class Lease:
    """One lease `name` in a workspace root. `acquire()` claims it (False when another live holder has
    it); while held a thread renews it; `release()` marks it free. A context manager acquires and
    releases (and raises nothing when it could not acquire: check `held`)."""

    def __init__(self, root: zarr.Group, name: str, job: str = "", seconds: float | None = None,
                 owner: str | None = None) -> None:
        self.root = root
        self.name = name
        self.job = job
        self.seconds = lease_seconds() if seconds is None else float(seconds)
        self.owner = owner or f"{_PROCESS_OWNER}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._group: zarr.Group | None = None

    def _write(self, released: bool = False) -> None:
        assert self._group is not None
        record = {"owner": self.owner, "job": self.job, "host": socket.gethostname(), "pid": os.getpid(),
                  "expires": time.time() + (0 if released else self.seconds), "released": released}
        self._group = self._group.update_attributes({"lease": record})

    def acquire(self, settle: float = CLAIM_SETTLE) -> bool:
        current = read_lease(self.root, self.name)
        if is_live(current) and current.get("owner") != self.owner:
            return False
        self._group = _group(self.root, self.name)
        self._write()
        if settle > 0:
            time.sleep(settle)
            back = read_lease(self.root, self.name)
            if not back or back.get("owner") != self.owner:
                return False  # another claimant wrote after us: theirs
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return True

    def wait(self, poll: float = 0.5) -> Lease:
        """Acquire, waiting while another live holder has it (until it releases it or its lease
        lapses); returns self, held."""
        while not self.acquire():
            time.sleep(poll)
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                current = read_lease(self.root, self.name)
                if current and current.get("owner") != self.owner and is_live(current):
                    self.held = False  # lost (we were too slow to renew): stop claiming it
                    return
                self._write()
            except Exception:  # a transient store error: try again at the next beat
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.held and self._group is not None:
            try:
                current = read_lease(self.root, self.name)
                if current is None or current.get("owner") == self.owner:
                    self._write(released=True)
            except Exception:  # releasing is a courtesy: the lease expires anyway
                pass
        self.held = False

    def __enter__(self) -> Lease:
        self.acquire(settle=0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class JobLease(Lease):
    """The liveness lease of a running job ("job-<id>"): `facereenact status` shows a job whose record
    says running but whose lease lapsed as "stale" (killed without a chance to record it)."""

    def __init__(self, workspace: Any, job: str, seconds: float | None = None) -> None:
        super().__init__(workspace.root, job_lease_name(job), job=job, seconds=seconds)


def job_lease_name(job: str) -> str:
    return f"job-{job}"


def table_lease(root: zarr.Group, location: str, job: str = "") -> Lease:
    """The lease of a whole table's sequential computation (a reenactment's projection, each frame
    starting from the one before, cannot be split between jobs): a second job on the same table waits
    for the first and then finds its frames done."""
    return Lease(root, f"table-{location.replace('/', '~')}", job=job)
