"""`facereenact status [--cache CACHE]`: progress of every job and table, read from the cache alone.

No Prefect server is needed: the zarr status arrays are the record of what is done. Done frames whose
data is damaged (a chunk missing, unreadable or not finite: FrameTable.damaged_frames) are reported
under their table; the next run of the job (or `facereenact resume`) recomputes them by itself.
`--repair` marks them failed instead, so they stay out until a run with `--retry-failed`. A job whose
record says running but whose lease lapsed (storage/leases.py: killed without a chance to record it)
shows as "stale".
"""

from __future__ import annotations

import argparse
import json

from flows.cli.common import add_cache_option, cache_of

EXAMPLES = """examples:
  facereenact status --cache cache/                  # every job and table
  facereenact status --cache cache/ --job 3f2a --failed
  facereenact status cache/ --json                   # the cache as a first argument works too"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_cache_option(parser, positional=True)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--failed", action="store_true", help="list every failed frame with its reason")
    parser.add_argument("--job", metavar="JOB",
                        help="only this job (id or unique prefix): its videos with their done / failed / "
                             "pending frames, and the jobs of a batch")
    parser.add_argument("--repair", action="store_true",
                        help="mark damaged done frames (missing, unreadable or NaN/inf data) as failed "
                             "(then rerun with --retry-failed); without it a rerun recomputes them")


def run(args: argparse.Namespace) -> int:
    from storage.errors import CacheError
    from storage.remote import cache_exists

    args.cache = cache_of(args)
    if not cache_exists(args.cache):
        raise CacheError("no cache here (run a job with --cache first)", path=args.cache)
    from storage.cache import Workspace

    ws = Workspace(args.cache)
    report = collect_status(ws, repair=args.repair)
    if args.job:
        from flows.cli.resume import find_job

        job, record = find_job(ws, args.job)
        report = job_status(report, job, record)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_status(report, show_failed=args.failed))
    return 0


def collect_status(ws, repair: bool = False) -> dict:
    """Jobs and tables of a workspace with their frame counts (and failures)."""
    from storage.leases import is_live, job_lease_name, read_lease

    tables = []
    for table in ws.tables():
        damaged = table.damaged_frames()
        if repair and damaged.size:
            table.fail(damaged, "damaged data (missing, unreadable or NaN/inf) found by status --repair")
            damaged = damaged[:0]
        media_attrs = dict(ws.media(table.location.split("/")[1]).attrs)
        tables.append({
            "location": table.location,
            "media": media_attrs.get("source", table.location.split("/")[1]),
            "stage": table.stage,
            "frames": table.num_frames,
            **table.counts(),
            "errors": {str(k): v for k, v in table.errors().items()},
            "damaged": [int(i) for i in damaged],
            "created": table.attrs.get("created"),
        })
    by_location = {t["location"]: t for t in tables}
    jobs = []
    for job_id, info in ws.jobs().items():
        own = [by_location[loc] for loc in info.get("tables", []) if loc in by_location]
        totals = {k: sum(t[k] for t in own) for k in ("frames", "done", "failed", "pending")}
        state = info.get("state", "?")
        if state == "running":  # a job killed without a word stops renewing its lease
            lease = read_lease(ws.root, job_lease_name(job_id))
            if lease is not None and not is_live(lease):
                state = "stale"
        jobs.append({"job": job_id, "kind": info.get("kind", "?"), "state": state,
                     "updated": info.get("updated"), **totals})
        if info.get("error"):
            jobs[-1]["error"] = info["error"]
    return {"cache": ws.url, "jobs": jobs, "tables": tables}


def job_status(report: dict, job: str, record: dict) -> dict:
    """The report narrowed to one job: its row, its tables (per video), and for a batch its jobs."""
    own = set(record.get("tables", []))
    members = {info.get("job") for info in (record.get("jobs") or {}).values()}
    return {"cache": report["cache"], "job": job, "record": record,
            "jobs": [j for j in report["jobs"] if j["job"] == job or j["job"] in members],
            "tables": [t for t in report["tables"] if t["location"] in own]}


def format_status(report: dict, show_failed: bool = False) -> str:
    lines = [f"cache {report['cache']}"]
    if report["jobs"]:
        lines.append("")
        lines.append(f"{'job':40s} {'kind':10s} {'state':10s} {'frames':>7s} {'done':>6s} {'failed':>6s} "
                     f"{'pending':>7s}")
        for j in report["jobs"]:
            lines.append(f"{j['job'][:40]:40s} {j['kind'][:10]:10s} {j['state'][:10]:10s} {j['frames']:7d} "
                         f"{j['done']:6d} {j['failed']:6d} {j['pending']:7d}")
            if show_failed and j.get("error"):
                lines.append(f"    {j['error']}")
    lines.append("")
    if not report["tables"]:
        lines.append("no cached results yet")
    else:
        lines.append(f"{'media':40s} {'stage':10s} {'frames':>7s} {'done':>6s} {'failed':>6s} "
                     f"{'pending':>7s}")
        for t in report["tables"]:
            media = str(t["media"])
            media = media if len(media) <= 40 else "..." + media[-37:]
            lines.append(f"{media:40s} {t['stage'][:10]:10s} {t['frames']:7d} {t['done']:6d} "
                         f"{t['failed']:6d} {t['pending']:7d}")
            if t.get("damaged"):
                frames = ", ".join(str(i) for i in t["damaged"][:8])
                frames += " ..." if len(t["damaged"]) > 8 else ""
                lines.append(f"    {len(t['damaged'])} done frame(s) damaged ({frames}): the next run "
                             "recomputes them")
            if show_failed:
                for frame, reason in t["errors"].items():
                    lines.append(f"    frame {frame}: {reason}")
    return "\n".join(lines)
