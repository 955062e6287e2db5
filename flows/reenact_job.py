"""`facereenact run` as a recorded job: the reenact flow with a job record in the cache, like each job
of a batch, so `facereenact status` lists it and `facereenact resume JOB` runs it again.

    record (kind "reenact": source, driving, output, mode, options, args; state running + lease)
    reenact(...)  (flows/reenact.py)
    record (state finished with its tables and seconds, or failed / interrupted with the reason)

The job id is a function of the inputs (resolved paths), the output and every result-changing
option, so running the same command again updates the record of the job it resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from storage.cache import Workspace
from storage.provenance import code_version, provenance_key

__all__ = ["run_job_id", "run_recorded"]

# keyword arguments of `reenact` that belong to the job's record "args" (the rest are its "options")
ARGS = ("weights", "device", "landmarks")


def run_job_id(source: str, driving: str, output: str, mode: str, options: dict[str, Any]) -> str:
    paths = [str(Path(p).expanduser().resolve()) for p in (source, driving, output)]
    return f"reenact-{provenance_key({'paths': paths, 'mode': mode, 'options': options}, 12)}"


def run_recorded(source: str, driving: str, output: str, cache: str, weights: str, mode: str = "projection",
                 device: str = "auto", landmarks: str = "faceapi", progress: bool = False,
                 **options: Any) -> dict[str, Any]:
    """Run the reenact flow for one job and keep its record in the cache (see the module's doc).
    `options` are reenact's other keyword arguments (variant, layout, paste_back, subframes and the
    mode's settings). Returns reenact's summary with "job" added."""
    from flows.reenact import reenact
    from storage.leases import JobLease

    ws = Workspace(cache)
    job = run_job_id(source, driving, output, mode, options)
    record = {"kind": "reenact", "source": str(Path(source).expanduser().resolve()),
              "driving": str(Path(driving).expanduser().resolve()),
              "output": str(Path(output).expanduser().resolve()), "mode": mode, "options": dict(options),
              "args": {"weights": weights, "device": device, "landmarks": landmarks},
              "code_version": code_version()}
    began = time.monotonic()
    ws.record_job(job, {**record, "state": "running", "error": "",
                        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    with JobLease(ws, job):
        try:
            summary = reenact(source, driving, output, cache, weights, mode=mode, device=device,
                              landmarks=landmarks, progress=progress, **options)
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
