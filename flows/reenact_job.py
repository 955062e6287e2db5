"""`facereenact run` as a recorded job: the reenact flow with a job record in the cache, like each job
of a batch, so `facereenact status` lists it and `facereenact resume JOB` runs it again.

    record (kind "reenact": the request (flows/job_requests.py ReenactRequest, paths resolved), and as
            before it the source, driving, output, mode and options; args; state running + lease)
    reenact(...)  (flows/reenact.py)
    record (state finished with its tables and seconds, or failed / interrupted with the reason)

The job id is a function of the inputs (resolved paths), the output and every result-changing
option, so running the same command again updates the record of the job it resumes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flows.job_requests import ReenactRequest
from storage.cache import Workspace
from storage.errors import CacheError, InputError
from storage.provenance import code_version, provenance_key

__all__ = ["request_of_record", "run_job_id", "run_recorded"]

# keyword arguments of `reenact` that belong to the job's record "args" (the rest are its "options")
ARGS = ("weights", "device", "landmarks")


def run_job_id(source: str, driving: str, output: str, mode: str, options: dict[str, Any]) -> str:
    paths = [str(Path(p).expanduser().resolve()) for p in (source, driving, output)]
    return f"reenact-{provenance_key({'paths': paths, 'mode': mode, 'options': options}, 12)}"


def request_of_record(job: str, record: Mapping[str, Any], path: str | None = None) -> ReenactRequest:
    """The request of a reenact job's record: its "request", or for records written before they held
    one, its source, driving, output, mode and options. A record lacking them, or holding a request
    this version refuses, is a CacheError naming the job (rerun its command)."""
    where = f"job record {job}"
    try:
        if "request" in record:
            return ReenactRequest.from_record(record["request"], where)
        try:
            return ReenactRequest.from_options(record["source"], record["driving"], record["output"],
                                               record["mode"], dict(record.get("options") or {}))
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
    except KeyError as err:
        raise CacheError(f"{where} lacks {err}; rerun its command instead", path=path) from None
    except InputError as err:
        raise CacheError(f"{err}; rerun its command instead", path=path) from None


def run_recorded(request: ReenactRequest, cache: str, weights: str, device: str = "auto",
                 landmarks: str = "faceapi", progress: bool = False) -> dict[str, Any]:
    """Run the reenact flow for one request and keep its record in the cache (see the module's doc).
    Returns reenact's summary with "job" added."""
    from flows.reenact import reenact
    from storage.leases import JobLease

    ws = Workspace(cache)
    options = request.options()
    job = run_job_id(request.source, request.driving, request.output, request.mode, options)
    resolved = dataclasses.replace(request, **{name: str(Path(getattr(request, name)).expanduser().resolve())
                                               for name in ("source", "driving", "output")})
    record = {"kind": "reenact", "source": resolved.source, "driving": resolved.driving,
              "output": resolved.output, "mode": request.mode, "options": options,
              "request": resolved.to_record(),
              "args": {"weights": weights, "device": device, "landmarks": landmarks},
              "code_version": code_version()}
    began = time.monotonic()
    ws.record_job(job, {**record, "state": "running", "error": "",
                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with JobLease(ws, job):
        try:
            summary = reenact(request.source, request.driving, request.output, cache, weights,
                              mode=request.mode, device=device, landmarks=landmarks, progress=progress,
                              **options)
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt | SystemExit)
            reason = "interrupted (run the same command or resume the job to go on)" if interrupted \
                else " ".join(str(err).split())[:500] or type(err).__name__
            ws.record_job(job, {"state": "interrupted" if interrupted else "failed", "error": reason,
                                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            raise
    ws.record_job(job, {"state": "finished", "error": "", "seconds": round(time.monotonic() - began, 2),
                        "tables": sorted(set(summary["tables"].values())),
                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return {**summary, "job": job}
