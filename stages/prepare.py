"""The prepare stage: a medium's landmarks tracked frame by frame and its aligned crops, each in a
table of the cache, resuming at the frames not done yet. No Prefect (tasks/prepare.py opens the
medium and the nets and calls one function here); models/face_track.py yields per-frame records,
this module writes them as they come.

Tables (under media/<sha256 of the file>/, see docs/prepare.md):
- "landmarks": points (68, 2) float32 frame pixels (NaN without a face), box (4,), flag (FaceFlag).
- "crops":     crop (R, R, 3) uint8, quad (4,), frame_from_crop (3, 3), landmarks (68, 2) smoothed
               frame pixels, crop_landmarks (68, 2) crop pixels, interpolated (0/1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.detection import FaceFlag, FaceTracker, TrackerState
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
from stages.progress import FrameBar
from storage.cache import Field, FrameTable, Workspace
from storage.errors import InputError, JobFailedError, NoFaceError
from storage.media import Medium, open_medium
from storage.provenance import base_provenance

__all__ = ["CROP_BORDER", "LANDMARK_FIELDS", "CropsTable", "LandmarksTable", "MediumInfo", "align_crops",
           "crop_fields", "crops_provenance", "landmarks_provenance", "open_media", "reopen",
           "track_landmarks"]

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


@dataclass(frozen=True)
class MediumInfo:
    """A checked medium as the stage's tasks pass it on: its path, content key, kind ("video" or
    "image"), frame count, fps (a fraction as text; None for an image), size and decode warnings."""

    path: str
    key: str
    kind: str
    frames: int
    fps: str | None
    width: int
    height: int
    warnings: list[str]

    @classmethod
    def of(cls, medium: Medium) -> MediumInfo:
        return cls(path=str(medium.path), key=medium.key, kind=medium.kind, frames=medium.frame_count,
                   fps=None if medium.fps is None else str(medium.fps), width=medium.width,
                   height=medium.height, warnings=list(medium.warnings))


@dataclass(frozen=True)
class LandmarksTable:
    """A medium's landmarks table after tracking: where, frames, frames tracked in this run, and how
    many frames had their face detected, tracked, or none."""

    table: str
    key: str
    frames: int
    computed: int
    detected: int
    tracked: int
    lost: int


@dataclass(frozen=True)
class CropsTable:
    """A medium's crops table after aligning: where, frames, frames cropped in this run, frames
    without a face (interpolated), crop resolution."""

    table: str
    key: str
    frames: int
    computed: int
    interpolated: int
    resolution: int


def open_media(ws: Workspace, path: str) -> tuple[Medium, MediumInfo]:
    """Check the file, key it by its content, record it in the cache."""
    medium = open_medium(path)
    ws.media(medium.key, medium.info())
    return medium, MediumInfo.of(medium)


def reopen(medium: MediumInfo) -> Medium:
    """The medium of an `open_media` summary, checked to be the same file content still."""
    opened = open_medium(medium.path)
    if opened.key != medium.key:
        raise InputError("the file changed while it was being prepared; run again", path=opened.path)
    return opened


def _fail_missing(table: FrameTable, missing: Iterable[int], what: str) -> None:
    """Frames a decode never delivered are failed, never done (docs/video.md, known limits)."""
    missing = np.asarray(list(missing), dtype=np.int64)
    if missing.size:
        table.fail(missing, f"frame never decoded (the file ends early) during {what}")


def track_landmarks(ws: Workspace, source: Medium, tracker: FaceTracker,
                    backend_provenance: Mapping[str, Any], face_index: int = 0,
                    progress: FrameBar | None = None) -> tuple[LandmarksTable, int]:
    """Detect, track and landmark every frame not done yet, resuming after the last done frame (the
    tracker's state rebuilt from the table). Returns (the table's summary, the frame it resumed at).
    A medium without a face anywhere is a NoFaceError (nothing left done); frames that could not be
    decoded a JobFailedError."""
    provenance = landmarks_provenance(tracker, backend_provenance, source.frame_count)
    table = ws.table(source.key, "landmarks", provenance, source.frame_count, LANDMARK_FIELDS)
    start, computed = table.first_not_done(), 0
    if start < table.num_frames:
        faces = enumerate(track_frames(source.frames(start), tracker, _resume_state(table, start)), start)
        records = ((i, face.fields()) for i, face in faces)
        if progress is not None:
            records = progress.wrap(records, table.num_frames - start)
        computed = table.write_stream(records)
        _fail_missing(table, range(start + computed, table.num_frames), "tracking")
    return _landmarks_summary(table, source, computed, face_index), start


def _resume_state(table: FrameTable, start: int) -> TrackerState:
    """The tracker's state after the done frames before `start`, read back from the table (only the
    frames from the last detection on matter)."""
    seed = history_start(table.read("flag", range(start)))
    return state_from_history(*(table.read(name, range(seed, start)) for name in ("points", "box", "flag")))


def _landmarks_summary(table: FrameTable, source: Medium, computed: int, face_index: int) -> LandmarksTable:
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
    return LandmarksTable(table=table.location, key=table.key, frames=table.num_frames, computed=computed,
                          detected=int(counts[FaceFlag.DETECTED]), tracked=int(counts[FaceFlag.TRACKED]),
                          lost=int(counts[FaceFlag.LOST]))


def align_crops(ws: Workspace, source: Medium, landmarks_table: str, resolution: int,
                config: SmoothingConfig, progress: FrameBar | None = None) -> tuple[CropsTable, int]:
    """Fill the frames without a face, smooth the whole track, and crop every frame not done yet.
    Returns (the crops table's summary, frames done before this run); frames that could
    not be decoded are a JobFailedError."""
    marks = ws.open_table(landmarks_table)
    plan = plan_crops(marks.read("points"), marks.read("flag"), config,
                      float(source.fps) if source.fps else 1.0, resolution)
    table = ws.table(source.key, "crops", crops_provenance(marks.key, config, resolution), source.frame_count,
                     crop_fields(resolution))
    todo, computed = table.todo_frames(retry_failed=True), 0
    if todo.size:
        wanted = set(todo.tolist())
        frames = enumerate(source.frames(int(todo[0]), int(todo[-1]) + 1), int(todo[0]))
        records = crop_frames(((i, f) for i, f in frames if i in wanted), plan, CROP_BORDER)
        if progress is not None:
            records = progress.wrap(records, todo.size)
        computed = table.write_stream(records)
        _fail_missing(table, table.todo_frames(), "cropping")
        if table.failed_frames().size:
            raise JobFailedError(f"{table.failed_frames().size} frame(s) could not be cropped "
                                 "(the file ends early)", path=source.path)
    return (CropsTable(table=table.location, key=table.key, frames=table.num_frames, computed=computed,
                       interpolated=int(plan.interpolated.sum()), resolution=int(resolution)),
            table.num_frames - todo.size)
