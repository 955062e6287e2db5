"""The per-frame work of the prepare stage, as plain functions over iterables of frames.

    frames --track_frames--> FrameFace per frame (points, box, flag)      -> the "landmarks" table
    all FrameFaces --plan_crops--> CropPlan (gaps filled, smoothed, FFHQ quads)
    frames + CropPlan --crop_frames--> aligned crop + transforms per frame  -> the "crops" table

Nothing here touches the cache or Prefect: callers (tasks/prepare.py) decode, pick the frames still
to do and write what these yield. Tracking is sequential, so it can resume mid-video from the stored
results of the frames before (`state_from_history`); and it always continues from the *stored*
(float32) values, so a run that stopped and resumed gives the same numbers as one that did not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from models.alignment import (
    AlignTransform,
    align,
    crop_from_frame_matrix,
    ffhq_quad,
    frame_from_crop_matrix,
)
from models.detection import FaceBox, FaceFlag, FaceTracker, TrackerState, TrackResult, box_from_landmarks
from models.face_shape import NUM_POINTS
from models.smoothing import SmoothingConfig, smooth_landmarks, smooth_quads

__all__ = [
    "CropPlan",
    "FrameFace",
    "crop_frames",
    "face_visible",
    "history_start",
    "plan_crops",
    "state_from_history",
    "track_frames",
]


# --------------------------------------------------------------------------------------------------
# Landmarks: detect + track


@dataclass(frozen=True)
class FrameFace:
    """One frame's face as the landmarks table stores it.

    points: (68, 2) float32 frame pixels, NaN when the frame is LOST
    box:    (4,) float32 x0, y0, x1, y1 the landmark net was run in, NaN when there was none
    flag:   FaceFlag (DETECTED, TRACKED or LOST)
    """

    points: np.ndarray
    box: np.ndarray
    flag: FaceFlag

    @classmethod
    def from_result(cls, result: TrackResult) -> FrameFace:
        points = np.full((NUM_POINTS, 2), np.nan, np.float32)
        if result.landmarks is not None:
            points[:] = result.landmarks
        box = np.full(4, np.nan, np.float32)
        if result.box is not None:
            box[:] = result.box.as_array()
        return cls(points, box, FaceFlag(result.flag))

    def fields(self) -> dict[str, np.ndarray]:
        """The landmarks table's values for this frame."""
        return {"points": self.points, "box": self.box, "flag": np.uint8(self.flag)}

    def as_result(self) -> TrackResult:
        """The TrackResult these stored values stand for (float64, None where NaN)."""
        landmarks = None if self.flag == FaceFlag.LOST else self.points.astype(np.float64)
        box = FaceBox.from_array(self.box) if np.isfinite(self.box).all() else None
        return TrackResult(landmarks, box, self.flag)


def history_start(flags: np.ndarray) -> int:
    """How far back the stored results of frames 0..k-1 matter for resuming at frame k: the last
    DETECTED frame resets the whole state, so the frames from it on are enough (k when none was
    detected: the state is then a fresh one). Lets a resumed run read a few frames, not all."""
    detected = np.flatnonzero(np.asarray(flags) == FaceFlag.DETECTED)
    return int(detected[-1]) if detected.size else len(flags)


def state_from_history(points: np.ndarray, boxes: np.ndarray, flags: np.ndarray) -> TrackerState:
    """The tracker's state after the frames whose stored results are given ((k, 68, 2), (k, 4),
    (k,)): what a resumed run starts the next frame from. Give it every frame before the resume
    point, or those from `history_start(flags)` on: the state is the same."""
    state = TrackerState()
    for p, b, f in zip(points, boxes, flags, strict=True):
        state = state.advance(FrameFace(np.asarray(p), np.asarray(b), FaceFlag(int(f))).as_result())
    return state


def track_frames(
    frames: Iterable[np.ndarray], tracker: FaceTracker, state: TrackerState | None = None
) -> Iterator[FrameFace]:
    """Track a face through `frames`, starting from `state` (a fresh start when None).

    Yields one FrameFace per frame; frames without a plausible face come out LOST, never skipped, and
    so do frames where the landmarks land on nothing (`face_visible`: a black or faded-out frame,
    which the landmark net, run where the face was, would otherwise answer with a face).
    After each frame the tracker continues from the float32 values yielded (what the cache keeps),
    so resuming from `state_from_history` of stored frames reproduces an uninterrupted run exactly.
    """
    state = state if state is not None else TrackerState()
    for frame in frames:
        tracker.restore(state)
        result = tracker.update(frame)
        if result.landmarks is not None and not face_visible(frame, result.landmarks):
            result = TrackResult(None, result.box, FaceFlag.LOST)  # nothing there to be a face
        face = FrameFace.from_result(result)
        state = state.advance(face.as_result())
        yield face


# A face is not there when the region its landmarks cover is near-flat: the luminance's standard
# deviation over it below this many grey levels (of 255). Tracking runs the landmark net where the
# face was, and the net answers with a face-shaped set of points on anything, a black frame included
# (measured: a fade to 3% brightness, std 2.0, and a frame of constant 3 were both TRACKED). A real
# face, even in dim light, has eyes, brows and a mouth against skin: 10 and more (the test clips'
# faces 68-75; at 15% brightness about 10).
MIN_FACE_CONTRAST = 6.0


def face_visible(frame: np.ndarray, points: np.ndarray, min_contrast: float = MIN_FACE_CONTRAST) -> bool:
    """Whether the frame region under these landmarks has the contrast of a face (see
    MIN_FACE_CONTRAST): False for a black, faded-out or uniform frame, and for points off the frame."""
    box = box_from_landmarks(points, 0.0)
    h, w = frame.shape[:2]
    x0, y0 = max(0, int(np.floor(box.x0))), max(0, int(np.floor(box.y0)))
    x1, y1 = min(w, int(np.ceil(box.x1))), min(h, int(np.ceil(box.y1)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return False
    luma = frame[y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(luma.std()) >= min_contrast


# --------------------------------------------------------------------------------------------------
# Crops: fill gaps, smooth, align


@dataclass(frozen=True)
class CropPlan:
    """Every frame's crop, decided from the whole clip's landmarks before any frame is cropped.

    quads:        (T, 4) smoothed FFHQ quad parameters (cx, cy, xx, xy) in frame pixels
    landmarks:    (T, 68, 2) smoothed landmarks in frame pixels (gaps filled)
    interpolated: (T,) bool, frames whose face was missing and filled from their neighbours
    resolution:   crop side R in pixels
    """

    quads: np.ndarray
    landmarks: np.ndarray
    interpolated: np.ndarray
    resolution: int

    @property
    def num_frames(self) -> int:
        return int(self.quads.shape[0])

    def transform(self, frame: int) -> AlignTransform:
        return AlignTransform(self.quads[frame], self.resolution)

    def fields(self, frame: int) -> dict[str, np.ndarray]:
        """The per-frame values of the crops table for `frame`, except the crop itself."""
        quad = self.quads[frame]
        to_crop = crop_from_frame_matrix(quad, self.resolution)
        points = self.landmarks[frame]
        return {
            "quad": quad,
            "frame_from_crop": frame_from_crop_matrix(quad, self.resolution),
            "landmarks": points,
            "crop_landmarks": points @ to_crop[:2, :2].T + to_crop[:2, 2],
            "interpolated": np.uint8(self.interpolated[frame]),
        }


def plan_crops(
    points: np.ndarray,
    flags: np.ndarray,
    config: SmoothingConfig,
    fps: float,
    resolution: int,
) -> CropPlan:
    """Fill the frames without a face, smooth over time, and place every frame's FFHQ crop.

    points (T, 68, 2) raw landmarks (NaN where LOST), flags (T,) FaceFlag. The landmarks and the
    crop quads (computed from the raw landmarks) are smoothed separately, as docs/faces.md
    describes: the quad is smoothed through its own parameters, never through matrices. Raises
    NoFaceError when no frame has a face.
    """
    points = np.asarray(points, dtype=np.float64)
    flags = np.asarray(flags)
    landmarks, filled = smooth_landmarks(points, config, fps, flags=flags)
    quads, filled_q = smooth_quads(ffhq_quad(points), config, fps, flags=flags)
    if not np.array_equal(filled, filled_q):
        raise AssertionError("landmarks and quads disagree on which frames are missing")
    return CropPlan(quads, landmarks, filled, int(resolution))


def crop_frames(
    frames: Iterable[tuple[int, np.ndarray]], plan: CropPlan, border: str = "reflect"
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Align each (index, frame) to its planned crop: yields (index, fields of the crops table)."""
    for index, frame in frames:
        crop = align(frame, plan.transform(index), border=border)
        yield index, {"crop": crop, **plan.fields(index)}
