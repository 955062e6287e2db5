"""Prefect conventions of the tasks: run names from what they work on, retries for transient I/O only,
artifact keys per job.

- Task run names: `landmarks/clip.mp4`, `render/out.mp4`, `job/<batch job name>`, ... instead of
  Prefect's `track-landmarks-3f2`: in the UI a run says which file it was about.
- Retries (`TRANSIENT_IO`, spread into the @task decorators): a task whose failure is an object-store
  or network hiccup (connection reset or refused, timeout, an S3/HTTP client error) is run again after
  2 s, then 10 s. Tasks resume from the zarr status, so a retry redoes only the frames not stored.
  User errors (every FacereenactError: bad input, no face, missing weights, a damaged cache, disk
  full) and bugs are never retried: they fail at once with their one-line message.
- Artifact keys: `<kind>-<file stem>-<8 hex of its absolute path>`, so the artifacts of one job (one
  output file) form one history in the UI, and two jobs never overwrite each other's.
"""

from __future__ import annotations

import errno
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.errors import FacereenactError

__all__ = ["TRANSIENT_IO", "artifact_key", "is_transient", "retry_transient", "run_name", "table_artifact"]

RETRY_DELAYS = [2, 10]  # seconds before the first and the second retry
# errnos of a connection or a remote store that may work a moment later
_TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT,
                               errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
                               errno.ENETRESET, errno.EAGAIN, errno.EBUSY})
# client libraries of object stores and HTTP, whose own exception classes are not OSErrors
_NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "httpx", "httpcore",
                    "s3fs", "gcsfs", "adlfs", "google.api_core", "azure.core")


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away when the same work is tried again a little later."""
    if isinstance(exc, FacereenactError) or not isinstance(exc, Exception):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    module = type(exc).__module__ or ""
    return any(module == m or module.startswith(m + ".") for m in _NETWORK_MODULES)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry only when the task raised a transient error."""
    exc = getattr(state, "data", None)
    return isinstance(exc, BaseException) and is_transient(exc)


TRANSIENT_IO: dict[str, Any] = {"retries": len(RETRY_DELAYS), "retry_delay_seconds": RETRY_DELAYS,
                                "retry_condition_fn": retry_transient}


def _file_name(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("output") or value.get("path") or value.get("name") or "?"
    elif not isinstance(value, str | Path):  # a typed summary (stages.*): its output, path or name
        value = (getattr(value, "output", None) or getattr(value, "path", None)
                 or getattr(value, "name", None) or "?")
    return Path(str(value)).name or str(value)


def run_name(kind: str, parameter: str) -> Callable[[], str]:
    """A `task_run_name` callable: `<kind>/<file name of the task's parameter>` (a path, or a summary
    dict or typed summary with "output", "path" or "name")."""

    def name() -> str:
        from prefect.runtime import task_run

        return f"{kind}/{_file_name(task_run.parameters.get(parameter, '?'))}"

    name.__name__ = f"{kind.replace('-', '_')}_run_name"
    return name


def artifact_key(kind: str, path: str | Path) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for `kind` of the job making `path`."""
    resolved = str(Path(path).expanduser().resolve())
    stem = re.sub(r"[^a-z0-9]+", "-", Path(resolved).stem.lower()).strip("-")[:40] or "file"
    return f"{kind}-{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def table_artifact(kind: str, path: str | Path, title: str, rows: list[tuple[str, Any]], description: str,
                   footer: str = "") -> None:
    """A Prefect markdown artifact of one job's numbers: `# title`, a quantity | value table of `rows`,
    then `footer`; keyed by `artifact_key(kind, path)`."""
    from prefect.artifacts import create_markdown_artifact

    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    create_markdown_artifact(key=artifact_key(kind, path),
                             markdown=f"# {title}\n\n| quantity | value |\n|---|---|\n{table}\n{footer}",
                             description=description)
