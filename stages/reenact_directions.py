"""Reenact mode "directions" (Bounareli et al., section 3.2), Prefect-free: w_i = w_src + A (p_i - p_0).

    settings = directions_settings("identity", {"directions": "directions.pt"})   # InputError if bad
    A, pose, sha = load_directions(settings.path, G, backend.provenance())      # CheckpointError if
                                                                                # made for another G
                                                                                # or landmark backend
    directions_to_cache(A, pose, table, w_src, driving_points, interpolated)

p_i is measured on driving frame i's crop landmarks, p_0 on the first driving frame with landmarks:
relative motion, as the paper does for cross-person reenactment, applied to the source's inversion
w_src. Frames are independent (no chain): a batch of pending frames is one pass of p and A, stored as
soon as done; the render makes the one generator pass per output frame. A frame without driving
landmarks fails alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.directions import DirectionMatrix, PoseVector, check_directions_for, read_directions_checkpoint
from stages.progress import FrameBar
from stages.reenact import FramesRun, ReenactTable, driving_points_of, fill_latents, interpolated_flags
from storage.cache import Workspace
from storage.errors import InputError
from storage.latents import LatentCache
from storage.leases import table_lease
from storage.reenact import ReenactCache

__all__ = ["DIRECTIONS_BATCH", "DirectionsSettings", "direct_driving", "directions_provenance",
           "directions_settings", "directions_to_cache", "load_directions"]

DIRECTIONS_BATCH = 32  # frames per pass of p and A (latents only: cheap)
# Options the flow hands every mode that this one does not use: the source inversion's LPIPS, and the
# projection schedule the random-weights preset fills in.
_IGNORED = ("perceptual", "steps_first", "steps_next")


@dataclass(frozen=True)
class DirectionsSettings:
    path: str
    batch: int = DIRECTIONS_BATCH


def directions_settings(variant: str, options: dict[str, Any]) -> DirectionsSettings:
    """Check mode="directions"'s options (InputError naming the problem): `directions` (the file from
    `facereenact train-directions`, required) and `directions_batch` (>= 1); variant "identity" only
    (the motion is relative to the driving clip's first frame, on the source's own latent)."""
    options = {k: v for k, v in options.items() if k not in _IGNORED}
    path = options.pop("directions", None)
    if not path or not isinstance(path, (str, Path)):
        raise InputError("mode 'directions' needs a directions file (--directions PATH, option 'directions'; "
                         "made by facereenact train-directions)")
    batch = options.pop("directions_batch", DIRECTIONS_BATCH)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise InputError(f"directions_batch must be an integer >= 1, got {batch!r}")
    if variant != "identity":
        raise InputError(f"mode 'directions' moves the source by the driving clip's relative motion: variant "
                         f"{variant!r} is not available (use identity)")
    if options:
        raise InputError(f"unknown option(s) for mode 'directions': {', '.join(sorted(options))}")
    return DirectionsSettings(str(path), int(batch))


def load_directions(path: str | Path, G, landmarks: dict[str, Any], device: str | torch.device | None = None
                    ) -> tuple[DirectionMatrix, PoseVector, str]:
    """(A, p, file sha256) of a directions file, refused (one-line CheckpointError) when it is missing,
    unreadable, or made for another generator or landmark backend (`landmarks`: the backend's
    provenance)."""
    from storage.provenance import sha256_file

    path = Path(path).expanduser()
    ckpt, A, pose = read_directions_checkpoint(path)
    check_directions_for(ckpt, G.fingerprint(), landmarks, path, str(G.source_path or "the generator"))
    device = device or G.w_avg.device
    return A.to(device).eval().requires_grad_(False), pose.to(device).eval(), sha256_file(path)


def directions_provenance(G, A: DirectionMatrix, pose: PoseVector, sha256: str, landmarks: dict[str, Any],
                          driving_crops_key: str, source_key: str, source_latents_key: str | None
                          ) -> dict[str, Any]:
    """What directions-mode latents depend on: the file (sha256, A's shape, p's definition), the
    generator, the landmark net, the driving crops and the source."""
    from storage.provenance import base_provenance

    return {**base_provenance("reenact"), "mode": "directions",
            "directions": {"sha256": sha256, "model": A.config, "pose_vector": pose.definition()},
            "generator": G.fingerprint(), "landmarks": landmarks, "relative_landmarks": True,
            "calibrated": True, "driving_crops": driving_crops_key, "source": source_key,
            "source_latents": source_latents_key}


@torch.no_grad()
def directions_to_cache(A: DirectionMatrix, pose: PoseVector, table: ReenactCache, w_src: np.ndarray,
                        driving_points: np.ndarray, interpolated: np.ndarray | None = None,
                        batch_size: int = DIRECTIONS_BATCH, progress: FrameBar | None = None) -> FramesRun:
    """Latents of every pending frame of `table`, stored per batch as soon as done (the table's
    status read once)."""
    began = time.perf_counter()
    T = table.num_frames
    points = driving_points_of(driving_points, T)
    w = torch.as_tensor(np.asarray(w_src, np.float32)).reshape(1, A.num_ws, A.w_dim)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("directions mode needs the source's latent (its inversion)")
    flags = interpolated_flags(interpolated, T)
    finite = np.isfinite(points).all(axis=(1, 2))
    reference = points[np.flatnonzero(finite)[0]] if finite.any() else None
    device = A.weight.device
    w = w.to(device)
    p_ref = None if reference is None else pose(torch.from_numpy(reference[None]).to(device))

    def latents_of(frames: np.ndarray) -> np.ndarray:
        dp = pose(torch.from_numpy(points[frames]).to(device)) - p_ref
        return (w + A(dp)).cpu().numpy()

    status = table.table.status()  # read once: what is done
    return fill_latents(table, status, finite, flags, reference, batch_size, latents_of, progress, began)


def direct_driving(ws: Workspace, G, backend, source: dict[str, Any], driving: dict[str, Any], variant: str,
                   settings: dict[str, Any], progress: FrameBar | None = None) -> ReenactTable:
    """mode "directions": the directions file checked against G and the landmark backend, the table
    keyed by its sha256 too, every pending frame moved by A (p_i - p_0)."""
    options = directions_settings(variant, dict(settings))
    A, pose, sha = load_directions(options.path, G, backend.provenance())
    w_src = LatentCache.at(ws, source["latents"]).read([0])[0]
    driving_crops = ws.open_table(driving["crops"])
    provenance = directions_provenance(G, A, pose, sha, backend.provenance(), driving_crops.key,
                                       source["key"], source["latents_key"])
    table = ReenactCache.require(ws, driving["key"], provenance, driving_crops.num_frames, G.num_ws, G.w_dim)
    claim = table_lease(ws.root, table.location).wait()  # another job on it: wait, then resume
    try:
        run = directions_to_cache(A, pose, table, w_src, driving_crops.read("crop_landmarks"),
                                  driving_crops.read("interpolated"), options.batch, progress=progress)
    finally:
        claim.release()
    return ReenactTable.of(table, run)
