"""The evaluate stage: any reenactment result video against its source face and driving clip
(`facereenact evaluate`), the two videos decoded streaming and matched by index, each frame's
landmarks tracked and measured (models/evaluation.py has the metrics).

    report = evaluate_result("out.mp4", source="face.jpg", driving="clip.mp4", crop_result="auto")
    report["landmark_nme"], report["identity_similarity"], report["landmark_jitter"]

- **Frames.** Both videos are decoded streaming (storage.video.read_frames), matched by index. A
  result with sub-frames (2x fps: `subframes` in the sidecar, or a result rate twice the driving's)
  is read at every other frame (frames 0, 2, 4, ...: the key frames). A side-by-side result (look |
  driving | result, panels scaled to one height) is cut to its rightmost square panel: from the
  sidecar's layout, or with `crop_result="auto"` and no sidecar when the frame is at least twice as
  wide as high; "none" uses whole frames, "right" always cuts.
- **Landmarks, NME, identity, jitter**: models/evaluation.py (per frame and over the clip).
- **Seconds per frame** from the sidecar `RESULT.json` (`facereenact run` writes it), else None.

No Prefect; errors the user can fix are one-line FacereenactErrors naming the file.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluation import (
    CROP_CHOICES,
    crop_panel,
    every,
    finite_mean,
    identity_similarities,
    landmark_metrics,
    result_tracker,
    run_jitter,
    source_landmarks,
)
from storage.errors import InputError, NoFaceError
from storage.images import load_image
from storage.video import probe, read_frames

__all__ = ["CROP_CHOICES", "evaluate_result", "read_result_sidecar", "sidecar_path"]


def sidecar_path(result: str | Path) -> Path:
    """`out.mp4` -> `out.mp4.json`, the sidecar `facereenact run` writes beside its output."""
    result = Path(result)
    return result.with_name(result.name + ".json")


def read_result_sidecar(result: str | Path) -> dict[str, Any] | None:
    """The sidecar's fields this module uses (None when there is none; a broken one is an error):
    layout, fps, frames, seconds_per_frame, subframes, looked up at the top level, then under
    "settings" / "metrics" (where `facereenact run` may nest them)."""
    path = sidecar_path(result)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"unreadable JSON sidecar ({err})", path=path) from None
    if not isinstance(record, dict):
        raise InputError("JSON sidecar is not an object", path=path)

    def find(name: str) -> Any:
        for where in (record, record.get("settings"), record.get("metrics")):
            if isinstance(where, dict) and where.get(name) is not None:
                return where[name]
        return None

    return {name: find(name) for name in ("layout", "fps", "frames", "seconds_per_frame", "subframes")}


@torch.no_grad()
def evaluate_result(result: str | Path, source: str | Path, driving: str | Path, *,
                    crop_result: str = "auto", device: str = "cpu", batch: int = 16) -> dict[str, Any]:
    """Metrics of a result video (see the module docstring) as a JSON-safe dict."""
    from models.losses import IdentityLoss

    if crop_result not in CROP_CHOICES:
        raise InputError(f"--crop-result must be one of {', '.join(CROP_CHOICES)}, got {crop_result!r}")
    result_info, driving_info = probe(result), probe(driving)
    source_image = np.array(load_image(source))  # writable: torch.from_numpy downstream
    sidecar = read_result_sidecar(result)
    notes = []

    if crop_result == "auto":
        layout = (sidecar or {}).get("layout")
        if layout is not None:
            crop_result = "right" if layout == "side-by-side" else "none"
        elif result_info.width >= 2 * result_info.height:
            crop_result = "right"
            notes.append("no sidecar: took the rightmost square panel (the frame is 2+ times as wide "
                         "as high; pass --crop-result none to use whole frames)")
        else:
            crop_result = "none"
    subframes = (sidecar or {}).get("subframes")
    if subframes is None:
        subframes = result_info.fps == 2 * driving_info.fps and result_info.fps != driving_info.fps
        if subframes:
            notes.append("no sidecar: the result runs at twice the driving's fps, read as sub-frames")
    step = 2 if subframes else 1

    # the loop: both videos decoded side by side, each frame's landmarks tracked, the identity
    # measured per chunk of `batch` result frames
    backend, make_tracker = result_tracker(device)
    src_points = source_landmarks(source_image, backend, source)
    identity = IdentityLoss().to(device)
    ref = None
    result_tracker_, driving_tracker = make_tracker(), make_tracker()
    res_points, drv_points, similarity = [], [], []
    chunk_frames, chunk_points = [], []
    size = None

    def flush() -> None:
        nonlocal ref
        if not chunk_frames:
            return
        values, ref = identity_similarities(chunk_frames, chunk_points, source_image, src_points, identity,
                                            batch, ref)
        similarity.extend(values.tolist())
        chunk_frames.clear()
        chunk_points.clear()

    with read_frames(result) as result_frames, read_frames(driving) as driving_frames:
        for res_frame, drv_frame in zip(every(result_frames, step), driving_frames, strict=False):
            res_frame = np.ascontiguousarray(crop_panel(res_frame, crop_result))
            size = res_frame.shape[:2]
            found = result_tracker_.update(res_frame).landmarks
            res_points.append(np.full((68, 2), np.nan) if found is None else np.asarray(found, np.float64))
            drv = driving_tracker.update(drv_frame).landmarks
            drv_points.append(np.full((68, 2), np.nan) if drv is None else np.asarray(drv, np.float64))
            chunk_frames.append(res_frame)
            chunk_points.append(None if found is None else res_points[-1])
            if len(chunk_frames) == batch:
                flush()
        flush()

    if not res_points:
        raise InputError("no frames to compare (the result or the driving clip is empty)", path=result)
    res, drv = np.stack(res_points), np.stack(drv_points)
    res_face, drv_face = np.isfinite(res).all(axis=(1, 2)), np.isfinite(drv).all(axis=(1, 2))
    if not res_face.any():
        raise NoFaceError(f"no face found in any of the {len(res)} compared frames of the result",
                          path=result)
    target, nme, same_space = landmark_metrics(res, drv, size, (driving_info.height, driving_info.width))
    both = res_face & drv_face
    seconds = (sidecar or {}).get("seconds_per_frame")
    fps = (sidecar or {}).get("fps")
    return {
        "result": str(result), "source": str(source), "driving": str(driving),
        "frames_compared": int(len(res)), "result_frames": result_info.frame_count,
        "driving_frames": driving_info.frame_count, "subframes": bool(subframes), "crop_result": crop_result,
        "coordinates": "frame" if same_space else f"driving FFHQ crop at {size[0]} px",
        "no_face_result": int((~res_face).sum()), "no_face_driving": int((~drv_face).sum()),
        "landmark_nme": finite_mean(nme), "landmark_nme_frames": int(both.sum()),
        "identity_similarity": finite_mean(np.asarray(similarity)),
        "landmark_jitter": run_jitter(res), "driving_landmark_jitter": run_jitter(target),
        "seconds_per_frame": None if seconds is None else float(seconds),
        "sidecar": str(sidecar_path(result)) if sidecar is not None else None,
        "fps": str(fps) if fps is not None else str(Fraction(result_info.fps)),
        "notes": notes,
    }
