"""Tasks of the reenact stage: project (or map) the driving frames into the cache, render the output,
report. Each opens the workspace and the nets (tasks/resources.py), calls one function of
stages/reenact.py (the loops: what is done is read from the zarr status, so the tasks opt out of
Prefect's result caching, NO_CACHE) and returns a small typed summary, never tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from stages import reenact as stage
from stages import reenact_directions
from stages.progress import FrameBar
from stages.reenact import ReenactTable
from storage.cache import STATUS_NAMES, Workspace
from tasks import resources
from tasks.conventions import TRANSIENT_IO, artifact_key, run_name
from tasks.gpu import gpu_task

__all__ = ["ReenactTable", "direct_driving", "map_driving", "project_driving", "render_output", "report_run"]


@gpu_task(name="project", cache_policy=NO_CACHE, task_run_name=run_name("project", "driving"), **TRANSIENT_IO)
def project_driving(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any],
                    variant: str, settings: dict[str, Any], device: str = "auto", landmarks: str = "faceapi",
                    progress: bool = False) -> ReenactTable:
    """Landmark projection of every driving frame not done yet (Uzolas 2021), each frame
    stored as soon as it is done; `source` names the source's crops and latents tables, `driving` the
    clip's crops table. Resumes at the first pending frame."""
    return _fill(stage.project_driving, "projected", cache, weights, source, driving, variant, settings,
                 device, landmarks, progress)


@gpu_task(name="map", cache_policy=NO_CACHE, task_run_name=run_name("map", "driving"), **TRANSIENT_IO)
def map_driving(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any], variant: str,
                settings: dict[str, Any], device: str = "auto", landmarks: str = "faceapi",
                progress: bool = False) -> ReenactTable:
    """Mapping-mode latents (Choe 2023) of every driving frame not done
    yet: w = w_src + Δw, one generator pass per frame in batches, then `refine_steps` projection steps
    per frame from there when asked. The same kind of table as `project_driving`'s, keyed by the
    checkpoint's sha256 too."""
    return _fill(stage.map_driving, "mapped", cache, weights, source, driving, variant, settings, device,
                 landmarks, progress)


@gpu_task(name="direct", cache_policy=NO_CACHE, task_run_name=run_name("direct", "driving"), **TRANSIENT_IO)
def direct_driving(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any], variant: str,
                   settings: dict[str, Any], device: str = "auto", landmarks: str = "faceapi",
                   progress: bool = False) -> ReenactTable:
    """Directions-mode latents (Bounareli et al. 2022) of every driving frame not done yet:
    w_i = w_src + A (p_i - p_0), latents only; the render makes the one generator pass per frame."""
    return _fill(reenact_directions.direct_driving, "directed", cache, weights, source, driving, variant,
                 settings, device, landmarks, progress)


def _fill(fill: Callable[..., ReenactTable], what: str, cache: str, weights: str, source: dict[str, Any],
          driving: dict[str, Any], variant: str, settings: dict[str, Any], device: str, landmarks: str,
          progress: bool) -> ReenactTable:
    """One mode's stage function with the workspace, the generator and the landmark net opened."""
    bars = {"projected": "projecting", "mapped": "mapping", "directed": "directions"}
    with FrameBar(bars[what], progress) as bar:
        done = fill(Workspace(cache), resources.generator(weights, device),
                    resources.landmark_backend(landmarks, device), source, driving, variant, settings, bar)
    get_run_logger().info(done.line(what))
    return done


@gpu_task(name="render", cache_policy=NO_CACHE, task_run_name=run_name("render", "output"), **TRANSIENT_IO)
def render_output(cache: str, weights: str, projected: ReenactTable, source: dict[str, Any],
                  driving: dict[str, Any], output: str, layout: str = "result", paste_back: bool = False,
                  subframes: bool = False, preview: str | None = None, device: str = "auto",
                  progress: bool = False, landmarks: str = "faceapi") -> dict[str, Any]:
    """Render the finished table into `output` (+ the preview PNG and the `output.json` sidecar with
    metrics and provenance); returns the sidecar's record. Skipped when the output and its sidecar say
    they were made from this table with these settings and the file is unchanged. For a mapping-mode
    table the render is the frames' one generator pass: it measures their landmarks and NMEs into the
    table on the way (stages.reenact.mapping_metrics)."""
    with FrameBar("rendering", progress) as bar:
        record = stage.render_output(Workspace(cache), lambda: resources.generator(weights, device),
                                     lambda: resources.landmark_backend(landmarks, device), projected.table,
                                     source, driving, output, layout, paste_back, subframes, preview, bar)
    if record["rendered"]:
        get_run_logger().info(f"rendered {record['frames']} frame(s) to {output} in "
                              f"{record['metrics']['render_seconds']:.1f} s ({len(record['held_frames'])} "
                              "failed frame(s) held)")
    else:
        get_run_logger().info(f"render skipped: {output} is already made from this table with these settings")
    return record


@task(name="report", cache_policy=NO_CACHE, task_run_name=run_name("report", "summary"), **TRANSIENT_IO)
def report_run(summary: dict[str, Any]) -> None:
    """Prefect artifacts of the run: per-frame landmark error and seconds, the output and preview."""
    per = summary["per_frame"]
    rows = [{"frame": i, "landmark_nme": per["nme"][i], "seconds": per["seconds"][i],
             "steps": per["steps"][i], "no_face": bool(per["interpolated"][i]),
             "status": STATUS_NAMES[per["status"][i]]}
            for i in range(len(per["nme"]))]
    create_table_artifact(rows, key=artifact_key("reenact-frames", summary["output"]),
                          description=f"Per-frame landmark NME and seconds of {summary['output']}")
    m = summary["metrics"]
    lines = [f"**output**: `{summary['output']}` ({summary['frames']} frames at {summary['fps']} fps)",
             f"**preview**: `{summary['preview']}`" if summary.get("preview") else "",
             f"**sidecar**: `{summary['sidecar']}`",
             f"mean landmark NME {m['landmark_nme']}, identity similarity {m['identity_similarity']}, "
             f"landmark jitter {m['landmark_jitter']}, {m['seconds_per_frame']} s per frame"]
    create_markdown_artifact("\n\n".join(line for line in lines if line),
                             key=artifact_key("reenact-output", summary["output"]),
                             description="Reenacted video, preview image and metrics")
