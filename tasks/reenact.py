"""Tasks of the reenact stage: project the driving frames into the cache, render the output, report.

Each returns a small summary (table locations, counts, metric means), never tensors. The zarr status
decides what is left (NO_CACHE): a rerun projects only pending frames, and re-renders only when the
output or its sidecar is missing or was made from something else. Heavy work lives in
models/reenact.py; the tables in storage/reenact.py.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from models.reenact import (
    SourceFace,
    load_mapping,
    make_projector,
    map_to_cache,
    mapping_metrics,
    mapping_provenance,
    mapping_settings,
    project_to_cache,
    projection_config,
    projection_provenance,
    refine_config,
    render_video,
)
from storage.cache import Workspace
from storage.latents import LatentCache
from storage.leases import table_lease
from storage.provenance import code_version, provenance_key, sha256_file
from storage.reenact import ReenactCache, read_sidecar, sidecar_path, write_sidecar
from tasks import resources
from tasks.conventions import TRANSIENT_IO, artifact_key, run_name
from tasks.gpu import gpu_task

__all__ = ["map_driving", "project_driving", "render_output", "report_run"]


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, leave=False, dynamic_ncols=True)


@gpu_task(name="project", cache_policy=NO_CACHE, task_run_name=run_name("project", "driving"), **TRANSIENT_IO)
def project_driving(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any],
                    variant: str, settings: dict[str, Any], device: str = "auto", landmarks: str = "faceapi",
                    progress: bool = False) -> dict[str, Any]:
    """Landmark projection of every driving frame not done yet (seeds 000/001), each frame stored as
    soon as it is done; `source` names the source's crops and latents tables, `driving` the clip's
    crops table. Resumes at the first pending frame."""
    ws = Workspace(cache)
    G = resources.generator(weights, device)
    crops = ws.open_table(source["crops"])
    face = SourceFace(crops.read("crop", [0])[0], crops.read("crop_landmarks", [0])[0],
                      LatentCache.at(ws, source["latents"]).read([0])[0])
    projector = make_projector(G, projection_config(variant, **settings), face,
                               landmarks=resources.landmark_backend(landmarks, device))
    driving_crops = ws.open_table(driving["crops"])
    table = ReenactCache.require(
        ws, driving["key"], projection_provenance(projector, driving_crops.key, source["key"],
                                                  source["latents_key"]),
        driving_crops.num_frames, G.num_ws, G.w_dim)
    claim = table_lease(ws.root, table.location).wait()  # another job projecting it: wait, then resume
    start = table.resume_frame()
    bar = _bar(table.num_frames, "projecting", progress and start < table.num_frames)
    if bar is not None:
        bar.update(start)
    try:
        done = project_to_cache(projector, table, driving_crops.read("crop_landmarks"),
                                driving_crops.read("interpolated"),
                                bar.update if bar is not None else None)
    finally:
        claim.release()
        if bar is not None:
            bar.close()
    return _table_summary(table, done)


@gpu_task(name="map", cache_policy=NO_CACHE, task_run_name=run_name("map", "driving"), **TRANSIENT_IO)
def map_driving(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any], variant: str,
                settings: dict[str, Any], device: str = "auto", landmarks: str = "faceapi",
                progress: bool = False) -> dict[str, Any]:
    """Mapping-mode latents (seed 003) of every driving frame not done yet: w = w_src + Δw, one
    generator pass per frame in batches, then `refine_steps` projection steps per frame from there when
    asked. The same kind of table as `project_driving`'s, keyed by the checkpoint's sha256 too."""
    ws = Workspace(cache)
    G = resources.generator(weights, device)
    options = mapping_settings(variant, settings)
    net, checkpoint_sha = load_mapping(options.checkpoint, G)
    backend = resources.landmark_backend(landmarks, device)
    crops = ws.open_table(source["crops"])
    face = SourceFace(crops.read("crop", [0])[0], crops.read("crop_landmarks", [0])[0],
                      LatentCache.at(ws, source["latents"]).read([0])[0])
    projector = None
    if options.refine_steps > 0:
        projector = make_projector(G, refine_config(variant, options.refine_steps, options.projection), face,
                                   landmarks=backend)
    relative = variant == "identity"
    driving_crops = ws.open_table(driving["crops"])
    provenance = mapping_provenance(G, net, checkpoint_sha, backend, relative, options.refine_steps,
                                    projector, driving_crops.key, source["key"], source["latents_key"])
    table = ReenactCache.require(ws, driving["key"], provenance, driving_crops.num_frames, G.num_ws, G.w_dim)
    claim = table_lease(ws.root, table.location).wait()  # another job mapping it: wait, then resume
    start = table.resume_frame()
    bar = _bar(table.num_frames, "mapping", progress and start < table.num_frames)
    if bar is not None:
        bar.update(start)
    try:
        done = map_to_cache(G, net, table, face, driving_crops.read("crop_landmarks"),
                            driving_crops.read("interpolated"), landmarks=backend, relative=relative,
                            batch_size=options.batch, projector=projector,
                            on_frames=bar.update if bar is not None else None)
    finally:
        claim.release()
        if bar is not None:
            bar.close()
    return _table_summary(table, done, "mapped")


def _table_summary(table: ReenactCache, done: dict[str, Any], what: str = "projected") -> dict[str, Any]:
    counts = table.counts()
    failed_now = f"; {len(done['failed'])} failed in this run" if done["failed"] else ""
    get_run_logger().info(
        f"{what} {done['computed']} of {table.num_frames} frame(s) in {done['seconds']:.1f} s (from frame "
        f"{done['start']}; the frames before were done, skipped); {counts.get('done', 0)} done, "
        f"{counts.get('failed', 0)} failed in all{failed_now}")
    return {"table": table.location, "key": table.key, "frames": table.num_frames, **table.counts(),
            "resumed_from": done["start"], "computed": done["computed"],
            "failed_now": {str(k): v for k, v in done["failed"].items()},
            "seconds": round(done["seconds"], 3)}


@gpu_task(name="render", cache_policy=NO_CACHE, task_run_name=run_name("render", "output"), **TRANSIENT_IO)
def render_output(cache: str, weights: str, projected: dict[str, Any], source: dict[str, Any],
                  driving: dict[str, Any], output: str, layout: str = "result", paste_back: bool = False,
                  subframes: bool = False, preview: str | None = None, device: str = "auto",
                  progress: bool = False, landmarks: str = "faceapi") -> dict[str, Any]:
    """Render the finished table into `output` (+ the preview PNG and the `output.json` sidecar with
    metrics and provenance). Skipped when the output and its sidecar say they were made from this
    table with these settings and the file is unchanged. For a mapping-mode table the render is the
    frames' one generator pass: it measures their landmarks and NMEs into the table on the way
    (models.reenact.mapping_metrics)."""
    ws = Workspace(cache)
    table = ReenactCache.at(ws, projected["table"])
    settings = {"table": table.key, "layout": layout, "paste_back": paste_back, "subframes": subframes,
                "preview": preview}
    render_key = provenance_key(settings)
    made = read_sidecar(output)
    if made is not None and made.get("render_key") == render_key and _unchanged(output, made):
        get_run_logger().info(f"render skipped: {output} is already made from this table with these settings")
        return {**made, "rendered": False}
    G = resources.generator(weights, device)
    crops = ws.open_table(source["crops"])
    bar = _bar(table.num_frames * (2 if subframes else 1), "rendering", progress)
    try:
        driving_crops = ws.open_table(driving["crops"])
        metrics = None
        if table.table.provenance.get("mode") == "mapping":
            metrics = mapping_metrics(table, resources.landmark_backend(landmarks, device),
                                      crops.read("crop_landmarks", [0])[0],
                                      driving_crops.read("crop_landmarks"))
        video = render_video(G, table, crops.read("crop", [0])[0], driving["path"],
                             driving_crops, Fraction(driving["fps"]), output, layout=layout,
                             paste=paste_back, subframes=subframes, preview=preview,
                             on_frames=bar.update if bar is not None else None, on_images=metrics)
    finally:
        if bar is not None:
            bar.close()
    record = _record(table, video, settings, output, preview)
    record["render_key"] = render_key
    write_sidecar(output, record)
    get_run_logger().info(f"rendered {video['frames']} frame(s) to {output} in {video['seconds']:.1f} s "
                          f"({len(video['held'])} failed frame(s) held)")
    return {**record, "rendered": True}


def _unchanged(output: str, made: dict[str, Any]) -> bool:
    try:
        return sha256_file(output) == made.get("output_sha256")
    except OSError:
        return False


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 6) if values.size else None


def _record(table: ReenactCache, video: dict[str, Any], settings: dict[str, Any], output: str,
            preview: str | None) -> dict[str, Any]:
    """The sidecar: the output, its metrics (means and per frame), timing and provenance."""
    frames = table.per_frame()
    projection_seconds = float(np.nansum(frames["seconds"]))
    T = table.num_frames
    return {
        "output": str(output), "output_sha256": sha256_file(output), "preview": preview,
        "sidecar": str(sidecar_path(output)), "frames": video["frames"], "key_frames": T, "fps": video["fps"],
        "size": video["size"], "settings": settings, "table": table.location,
        "metrics": {"landmark_nme": _mean(frames["nme"]), "landmark_nme_target": _mean(frames["nme_target"]),
                    "identity_similarity": video["identity_similarity"],
                    "no_face_frames": video["no_face_frames"],
                    "landmark_jitter": video["landmark_jitter"],
                    "seconds_per_frame": round((projection_seconds + video["seconds"]) / T, 4),
                    "projection_seconds_per_frame": round(projection_seconds / T, 4),
                    "render_seconds": round(video["seconds"], 3)},
        "per_frame": {"nme": [None if not np.isfinite(v) else round(float(v), 6) for v in frames["nme"]],
                      "seconds": [round(float(v), 4) for v in frames["seconds"]],
                      "steps": frames["steps"].tolist(), "interpolated": frames["interpolated"].tolist(),
                      "status": frames["status"].tolist()},
        "held_frames": video["held"], "failed_frames": {str(k): v for k, v in table.errors().items()},
        "provenance": {"reenact_table": table.key, **table.table.provenance},
        "code_version": code_version(),
    }


@task(name="report", cache_policy=NO_CACHE, task_run_name=run_name("report", "summary"), **TRANSIENT_IO)
def report_run(summary: dict[str, Any]) -> None:
    """Prefect artifacts of the run: per-frame landmark error and seconds, the output and preview."""
    per = summary["per_frame"]
    status = ("pending", "done", "failed")
    rows = [{"frame": i, "landmark_nme": per["nme"][i], "seconds": per["seconds"][i],
             "steps": per["steps"][i], "no_face": bool(per["interpolated"][i]),
             "status": status[per["status"][i]]}
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
