"""The reenact mode "directions" in the flow's mode table (flows/reenact.py REENACTORS): its settings
check, its model check and its task. The loop is stages/reenact_directions.py."""

from __future__ import annotations

import sys
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from stages.reenact_directions import (
    directions_provenance,
    directions_settings,
    directions_to_cache,
    load_directions,
)
from storage.cache import Workspace
from storage.latents import LatentCache
from storage.leases import table_lease
from storage.reenact import ReenactCache
from tasks import resources
from tasks.conventions import TRANSIENT_IO, run_name
from tasks.gpu import gpu_task

__all__ = ["check_directions_model", "direct_driving", "directions_settings", "run_directions"]


def check_directions_model(G, options: dict[str, Any], landmarks: str = "faceapi") -> None:
    """Before any work: the directions file exists, is readable and was made for G and `landmarks`."""
    backend = resources.landmark_backend(landmarks, str(G.w_avg.device))
    load_directions(directions_settings("identity", options).path, G, backend.provenance())


@gpu_task(name="direct", cache_policy=NO_CACHE, task_run_name=run_name("direct", "driving"), **TRANSIENT_IO)
def direct_driving(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any], variant: str,
                   settings: dict[str, Any], device: str = "auto", landmarks: str = "faceapi",
                   progress: bool = False) -> dict[str, Any]:
    """Directions-mode latents of every driving frame not done yet: w_i = w_src + A (p_i - p_0)."""
    ws = Workspace(cache)
    G = resources.generator(weights, device)
    options = directions_settings(variant, settings)
    backend = resources.landmark_backend(landmarks, device)
    A, pose, sha = load_directions(options.path, G, backend.provenance())
    w_src = LatentCache.at(ws, source["latents"]).read([0])[0]
    driving_crops = ws.open_table(driving["crops"])
    provenance = directions_provenance(G, A, pose, sha, backend.provenance(), driving_crops.key,
                                       source["key"], source["latents_key"])
    table = ReenactCache.require(ws, driving["key"], provenance, driving_crops.num_frames, G.num_ws, G.w_dim)
    claim = table_lease(ws.root, table.location).wait()  # another job on it: wait, then resume
    bar = None
    if progress and not table.is_finished():
        from tqdm import tqdm

        bar = tqdm(total=table.num_frames, initial=table.resume_frame(), desc="directions", unit="frame",
                   file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        done = directions_to_cache(A, pose, table, w_src, driving_crops.read("crop_landmarks"),
                                   driving_crops.read("interpolated"), options.batch,
                                   on_frames=bar.update if bar is not None else None)
    finally:
        claim.release()
        if bar is not None:
            bar.close()
    counts = table.counts()
    get_run_logger().info(f"directions: {done['computed']} of {table.num_frames} frame(s) in "
                          f"{done['seconds']:.2f} s (from frame {done['start']}); "
                          f"{counts.get('done', 0)} done, {counts.get('failed', 0)} failed in all")
    return {"table": table.location, "key": table.key, "frames": table.num_frames, **counts,
            "resumed_from": done["start"], "computed": done["computed"],
            "failed_now": {str(k): v for k, v in done["failed"].items()},
            "seconds": round(done["seconds"], 3)}


def run_directions(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any], variant: str,
                   options: dict[str, Any], device: str, landmarks: str, progress: bool) -> dict[str, Any]:
    """mode="directions" (Bounareli et al.): options `directions` (file), `directions_batch`."""
    return direct_driving(cache, weights, source, driving, variant, options, device=device,
                          landmarks=landmarks, progress=progress)
