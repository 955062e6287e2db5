"""Tasks of the prepare stage: check a medium, track its landmarks, smooth and align its crops.

Each task opens its table in the zarr cache, works only on the frames not done yet, writes every
frame as it is finished, and returns a small summary (counts and table locations). The zarr status
is what makes a rerun resume, so the tasks opt out of Prefect's result caching (NO_CACHE): a task
run always asks the cache what is left, which is nothing on a second run.

Tables (under media/<sha256 of the file>/, see docs/prepare.md):
- "landmarks": points (68, 2) float32 frame pixels (NaN without a face), box (4,), flag (FaceFlag).
- "crops":     crop (R, R, 3) uint8, quad (4,), frame_from_crop (3, 3), landmarks (68, 2) smoothed
               frame pixels, crop_landmarks (68, 2) crop pixels, interpolated (0/1).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.detection import DEFAULT_DETECTOR, FaceFlag, FaceSelector, FaceTracker, TrackerState
from models.face_shape import NUM_POINTS
from models.face_track import (
    MIN_FACE_CONTRAST,
    crop_frames,
    history_start,
    plan_crops,
    state_from_history,
    track_frames,
)
from models.smoothing import SmoothingConfig
from storage.cache import Field, FrameTable, Workspace
from storage.errors import InputError, JobFailedError, NoFaceError
from storage.media import Medium, open_medium
from storage.provenance import base_provenance
from tasks import resources
from tasks.conventions import TRANSIENT_IO, run_name

__all__ = [
    "CROP_BORDER",
    "LANDMARK_FIELDS",
    "align_crops",
    "crop_fields",
    "crops_provenance",
    "landmarks_provenance",
    "open_media",
    "track_landmarks",
]

LANDMARK_FIELDS = {
    "points": Field((NUM_POINTS, 2), "float32", nan_ok=True),
    "box": Field((4,), "float32", nan_ok=True),
    "flag": Field((), "uint8"),
}
CROP_BORDER = "reflect"  # docs/faces.md: StyleGAN's FFHQ models never saw flat black corners


def crop_fields(resolution: int) -> dict[str, Field]:
    return {
        "crop": Field((resolution, resolution, 3), "uint8"),
        "quad": Field((4,), "float64"),
        "frame_from_crop": Field((3, 3), "float64"),
        "landmarks": Field((NUM_POINTS, 2), "float32"),
        "crop_landmarks": Field((NUM_POINTS, 2), "float32"),
        "interpolated": Field((), "uint8"),
    }


def landmarks_provenance(tracker: FaceTracker, backend_provenance: Mapping[str, Any], frames: int) -> dict:
    return {**base_provenance("landmarks"), "tracker": tracker.settings(),
            "min_face_contrast": MIN_FACE_CONTRAST,
            "landmarks": dict(backend_provenance), "frames": int(frames)}


def crops_provenance(landmarks_key: str, smoothing: SmoothingConfig, resolution: int) -> dict:
    return {**base_provenance("crops"), "landmarks_table": landmarks_key, "smoothing": smoothing.provenance(),
            "resolution": int(resolution),
            "alignment": {"recipe": "ffhq", "quad": "from raw landmarks, smoothed", "border": CROP_BORDER}}


def _reopen(medium: Mapping[str, Any]) -> Medium:
    """The medium of an `open_media` summary, checked to be the same file content still."""
    opened = open_medium(medium["path"])
    if opened.key != medium["key"]:
        raise InputError("the file changed while it was being prepared; run again", path=opened.path)
    return opened


def _progress(records: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return records
    from tqdm import tqdm

    return tqdm(records, total=total, desc=desc, unit="frame", file=sys.stderr, leave=False,
                dynamic_ncols=True)


def _fail_missing(table: FrameTable, missing: Iterable[int], what: str) -> None:
    """Frames a decode never delivered are failed, never done (docs/video.md, known limits)."""
    missing = np.asarray(list(missing), dtype=np.int64)
    if missing.size:
        table.fail(missing, f"frame never decoded (the file ends early) during {what}")


@task(name="open-media", cache_policy=NO_CACHE, task_run_name=run_name("open-media", "path"), **TRANSIENT_IO)
def open_media(path: str, cache: str) -> dict[str, Any]:
    """Check the file, key it by its content, record it in the cache. Returns its summary."""
    medium = open_medium(path)
    Workspace(cache).media(medium.key, medium.info())
    fps = f" at {medium.fps} fps" if medium.fps else ""
    get_run_logger().info(f"{medium.path.name}: {medium.kind}, {medium.frame_count} frame(s) of "
                          f"{medium.width}x{medium.height}{fps}; content key {medium.key[:12]}")
    return {"path": str(medium.path), "key": medium.key, "kind": medium.kind, "frames": medium.frame_count,
            "fps": None if medium.fps is None else str(medium.fps), "width": medium.width,
            "height": medium.height, "warnings": list(medium.warnings)}


@task(name="track-landmarks", cache_policy=NO_CACHE, task_run_name=run_name("landmarks", "medium"),
      **TRANSIENT_IO)
def track_landmarks(medium: dict[str, Any], cache: str, landmarks: str = "faceapi", device: str = "auto",
                    detector: str = DEFAULT_DETECTOR, face_index: int = 0,
                    progress: bool = False) -> dict[str, Any]:
    """Detect, track and landmark every frame not done yet, resuming after the last done frame."""
    began = time.monotonic()
    source = _reopen(medium)
    backend = resources.landmark_backend(landmarks, device)
    tracker = FaceTracker(resources.face_detector(detector), backend.predict_frame,
                          selector=FaceSelector(index=face_index))
    table = Workspace(cache).table(source.key, "landmarks",
                                   landmarks_provenance(tracker, backend.provenance(), source.frame_count),
                                   source.frame_count, LANDMARK_FIELDS)
    start, computed = table.first_not_done(), 0
    if start < table.num_frames:
        faces = enumerate(track_frames(source.frames(start), tracker, _resume_state(table, start)), start)
        records = ((i, face.fields()) for i, face in faces)
        computed = table.write_stream(_progress(records, table.num_frames - start,
                                                f"landmarks {source.path.name}", progress))
        _fail_missing(table, range(start + computed, table.num_frames), "tracking")
    summary = _landmarks_summary(table, source, computed, face_index)
    get_run_logger().info(
        f"landmarks {source.path.name}: {computed} of {table.num_frames} frame(s) tracked in "
        f"{time.monotonic() - began:.1f} s ({start} done before, skipped); detector {detector}, face index "
        f"{face_index}: {summary['detected']} detected, {summary['tracked']} tracked, {summary['lost']} "
        "without a face")
    return summary


def _resume_state(table: FrameTable, start: int) -> TrackerState:
    """The tracker's state after the done frames before `start`, read back from the table (only the
    frames from the last detection on matter)."""
    seed = history_start(table.read("flag", range(start)))
    return state_from_history(*(table.read(name, range(seed, start)) for name in ("points", "box", "flag")))


def _landmarks_summary(table: FrameTable, source: Medium, computed: int, face_index: int) -> dict[str, Any]:
    if table.failed_frames().size:
        errors = table.errors()
        raise JobFailedError(f"landmarks failed for {len(errors)} frame(s), e.g. frame {min(errors)}: "
                             f"{errors[min(errors)]}", path=source.path)
    flags = table.read("flag")
    if (flags == FaceFlag.LOST).all():
        table.reset(range(table.num_frames))  # a medium without a face is an input error: nothing done
        what = "in the image" if source.kind == "image" else f"in any of the {table.num_frames} frames"
        if face_index:
            what += f" at face index {face_index} (0 is the largest face, 1 the next, ...)"
        raise NoFaceError(f"no face found {what}; a face must be visible", path=source.path)
    counts = np.bincount(flags, minlength=len(FaceFlag))
    return {"table": table.location, "key": table.key, "frames": table.num_frames, "computed": computed,
            "detected": int(counts[FaceFlag.DETECTED]), "tracked": int(counts[FaceFlag.TRACKED]),
            "lost": int(counts[FaceFlag.LOST])}


@task(name="align-crops", cache_policy=NO_CACHE, task_run_name=run_name("crops", "medium"), **TRANSIENT_IO)
def align_crops(medium: dict[str, Any], landmarks: dict[str, Any], cache: str, resolution: int = 256,
                smoothing: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Fill the frames without a face, smooth the whole track, and crop every frame not done yet."""
    began = time.monotonic()
    source = _reopen(medium)
    config = SmoothingConfig(**(smoothing or {}))
    ws = Workspace(cache)
    marks = ws.open_table(landmarks["table"])
    plan = plan_crops(marks.read("points"), marks.read("flag"), config,
                      float(source.fps) if source.fps else 1.0, resolution)
    table = ws.table(source.key, "crops", crops_provenance(marks.key, config, resolution), source.frame_count,
                     crop_fields(resolution))
    todo, computed = table.todo_frames(retry_failed=True), 0
    if todo.size:
        wanted = set(todo.tolist())
        frames = enumerate(source.frames(int(todo[0]), int(todo[-1]) + 1), int(todo[0]))
        records = crop_frames(((i, f) for i, f in frames if i in wanted), plan, CROP_BORDER)
        computed = table.write_stream(_progress(records, todo.size, f"crops {source.path.name}", progress))
        _fail_missing(table, table.todo_frames(), "cropping")
        if table.failed_frames().size:
            raise JobFailedError(f"{table.failed_frames().size} frame(s) could not be cropped "
                                 "(the file ends early)", path=source.path)
    get_run_logger().info(
        f"crops {source.path.name}: {computed} of {table.num_frames} frame(s) cropped at {resolution} px in "
        f"{time.monotonic() - began:.1f} s ({table.num_frames - todo.size} done before, skipped); "
        f"{int(plan.interpolated.sum())} frame(s) without a face filled by interpolation")
    return {"table": table.location, "key": table.key, "frames": table.num_frames, "computed": computed,
            "interpolated": int(plan.interpolated.sum()), "resolution": int(resolution)}
