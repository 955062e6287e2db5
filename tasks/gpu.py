"""Which tasks hold a GPU: the one place that tags them "gpu".

Every task that runs a network on the device is made with `gpu_task(...)` instead of `task(...)`
(project, map, render, run-job, invert-batches, train-mapping-network). Its runs carry the tag
GPU_TAG, so one Prefect tag concurrency limit bounds all GPU work of a server:

    prefect concurrency-limit create gpu 1

A GPU task run inside another GPU task run (the batch's `run-job` running the reenact flow, whose
project and render tasks are GPU tasks too) already runs in the slot its parent holds: it is not
tagged again, else with a limit of 1 the child would wait forever for the slot its parent holds.
The tag is decided when the task run is created (Prefect reads `Task.tags` then), from the task run
it is created in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task

__all__ = ["GPU_TAG", "GpuTask", "gpu_task", "holds_gpu"]

GPU_TAG = "gpu"


def holds_gpu() -> bool:
    """True inside a task run that holds the GPU slot (its run carries the tag)."""
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    return context is not None and GPU_TAG in (context.task_run.tags or ())


class GpuTask(Task):
    """A Prefect task whose runs carry GPU_TAG, unless created inside a run that holds it already."""

    @property
    def tags(self) -> set[str]:  # type: ignore[override]
        return set(self._own_tags) if holds_gpu() else {*self._own_tags, GPU_TAG}

    @tags.setter
    def tags(self, value: Any) -> None:  # Task.__init__ assigns the decorator's tags
        self._own_tags = set(value or ()) - {GPU_TAG}

    def with_options(self, **options: Any) -> GpuTask:
        plain = super().with_options(**options)  # a plain Task: rebuild it as a GPU task
        rebuilt = GpuTask.__new__(GpuTask)
        rebuilt.__dict__.update(plain.__dict__)
        rebuilt.tags = plain.__dict__.get("tags", ())
        return rebuilt


def gpu_task(**options: Any) -> Callable[[Callable[..., Any]], GpuTask]:
    """`@gpu_task(name=..., ...)`: `@task(...)` for a task that uses the GPU (same options)."""
    def decorate(fn: Callable[..., Any]) -> GpuTask:
        return GpuTask(fn=fn, **options)

    return decorate
