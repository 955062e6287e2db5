"""Prefect conventions of the flows: run names from the job, and a failure told in one line.

- Flow run names say what the run is about: `reenact/face--clip` (source and driving file stems),
  `reenact/<job name>` for a batch's job, `batch/<manifest stem>`, `prepare-video/clip.mp4`,
  `invert/<dataset>`, `train-mapping/<checkpoint>`; Prefect's default is a random `adjective-animal`.
- `one_line_failure`: a flow that fails with a user error (FacereenactError) ends in a Failed state
  whose message is the CLI's one line, `facereenact: error: <file>: <problem>`, instead of Prefect's
  "Flow run encountered an exception: InputError: ..."; the caller still gets the same exception
  object (with any `summary` it carries). Bugs keep Prefect's own handling (traceback in the log).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from storage.errors import FacereenactError

__all__ = ["flow_run_name", "one_line_failure"]

F = TypeVar("F", bound=Callable[..., Any])


def _stem(value: Any) -> str:
    text = str(value).rstrip("/")
    return Path(text).stem or text


def _name(value: Any) -> str:
    text = str(value).rstrip("/")
    return Path(text).name or text


def _parameters() -> dict[str, Any]:
    from prefect.runtime import flow_run

    return dict(flow_run.parameters)


def flow_run_name(kind: str) -> Callable[[], str]:
    """A `flow_run_name` callable for the flow `kind` (see the module's list)."""

    def name() -> str:
        p = _parameters()
        if kind == "reenact":
            return f"reenact/{_stem(p.get('source', '?'))}--{_stem(p.get('driving', '?'))}"
        if kind == "batch":
            return f"batch/{_stem(p.get('manifest', '?'))}"
        if kind == "prepare":
            paths = list(p.get("paths") or [])
            more = f"+{len(paths) - 1}" if len(paths) > 1 else ""
            return f"prepare/{_name(paths[0]) if paths else '?'}{more}"
        if kind == "invert":
            return f"invert/{_name(p.get('dataset', '?'))}"
        if kind == "train-mapping":
            return f"train-mapping/{_name(p.get('out', '?'))}"
        return f"{kind}/{_name(p.get('path', '?'))}"

    name.__name__ = f"{kind.replace('-', '_')}_flow_run_name"
    return name


def one_line_failure(fn: F) -> F:
    """Wrap a flow's function (under @flow) so a FacereenactError fails the run with the one-line
    message and is raised to the caller unchanged."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FacereenactError as err:
            from prefect.states import Failed

            return Failed(message=f"facereenact: error: {err}", data=err)

    return wrapper  # type: ignore[return-value]
