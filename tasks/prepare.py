"""Tasks of the prepare stage: check a medium, track its landmarks, smooth and align its crops.

Each task opens the medium and the nets, calls one function of stages/prepare.py (which works only
on the frames not done yet and writes every frame as it is finished) and returns a small summary
(counts and table locations). The zarr status is what makes a rerun resume, so the tasks opt out of
Prefect's result caching (NO_CACHE): a task run always asks the cache what is left, which is nothing
on a second run. The tables are described in stages/prepare.py and docs/prepare.md.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.detection import DEFAULT_DETECTOR, FaceSelector, FaceTracker
from models.smoothing import SmoothingConfig
from stages import prepare as stage
from stages.prepare import (
    CROP_BORDER,
    LANDMARK_FIELDS,
    CropsTable,
    LandmarksTable,
    MediumInfo,
    crop_fields,
    crops_provenance,
    landmarks_provenance,
)
from stages.progress import FrameBar
from storage.cache import Workspace
from tasks import resources
from tasks.conventions import TRANSIENT_IO, run_name

__all__ = [
    "CROP_BORDER",
    "LANDMARK_FIELDS",
    "CropsTable",
    "LandmarksTable",
    "MediumInfo",
    "align_crops",
    "crop_fields",
    "crops_provenance",
    "landmarks_provenance",
    "open_media",
    "track_landmarks",
]


@task(name="open-media", cache_policy=NO_CACHE, task_run_name=run_name("open-media", "path"), **TRANSIENT_IO)
def open_media(path: str, cache: str) -> MediumInfo:
    """Check the file, key it by its content, record it in the cache. Returns its summary."""
    medium, info = stage.open_media(Workspace(cache), path)
    fps = f" at {medium.fps} fps" if medium.fps else ""
    get_run_logger().info(f"{medium.path.name}: {medium.kind}, {medium.frame_count} frame(s) of "
                          f"{medium.width}x{medium.height}{fps}; content key {medium.key[:12]}")
    return info


@task(name="track-landmarks", cache_policy=NO_CACHE, task_run_name=run_name("landmarks", "medium"),
      **TRANSIENT_IO)
def track_landmarks(medium: MediumInfo, cache: str, landmarks: str = "faceapi", device: str = "auto",
                    detector: str = DEFAULT_DETECTOR, face_index: int = 0,
                    progress: bool = False) -> LandmarksTable:
    """Detect, track and landmark every frame not done yet, resuming after the last done frame."""
    began = time.monotonic()
    source = stage.reopen(medium)
    backend = resources.landmark_backend(landmarks, device)
    tracker = FaceTracker(resources.face_detector(detector), backend.predict_frame,
                          selector=FaceSelector(index=face_index))
    with FrameBar(f"landmarks {source.path.name}", progress) as bar:
        done, start = stage.track_landmarks(Workspace(cache), source, tracker, backend.provenance(),
                                            face_index, bar)
    get_run_logger().info(
        f"landmarks {source.path.name}: {done.computed} of {done.frames} frame(s) tracked in "
        f"{time.monotonic() - began:.1f} s ({start} done before, skipped); detector {detector}, face index "
        f"{face_index}: {done.detected} detected, {done.tracked} tracked, {done.lost} without a face")
    return done


@task(name="align-crops", cache_policy=NO_CACHE, task_run_name=run_name("crops", "medium"), **TRANSIENT_IO)
def align_crops(medium: MediumInfo, landmarks: LandmarksTable, cache: str, resolution: int = 256,
                smoothing: dict[str, Any] | None = None, progress: bool = False) -> CropsTable:
    """Fill the frames without a face, smooth the whole track, and crop every frame not done yet."""
    began = time.monotonic()
    source = stage.reopen(medium)
    with FrameBar(f"crops {source.path.name}", progress) as bar:
        config = SmoothingConfig(**(smoothing or {}))
        done, before = stage.align_crops(Workspace(cache), source, landmarks.table, resolution, config, bar)
    get_run_logger().info(
        f"crops {source.path.name}: {done.computed} of {done.frames} frame(s) cropped at {resolution} px in "
        f"{time.monotonic() - began:.1f} s ({before} done before, skipped); "
        f"{done.interpolated} frame(s) without a face filled by interpolation")
    return done
