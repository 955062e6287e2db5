"""The prepare flows: a video or a source image -> tracked landmarks -> smoothed, aligned face crops.

    video --probe--> frames --detect/track + landmarks--> "landmarks" table
          --fill gaps + smooth--> crop quads --align--> "crops" table          (zarr cache)

    image --load--> one frame --detect + landmarks--> the same tables (no tracking, no smoothing)

Resumption is the zarr status's job, not Prefect's: each task computes only the frames not done
yet, so a rerun after a crash picks up where it stopped and a rerun after success does nothing.
Tasks return small summaries (counts, table locations), never frames or arrays.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from flows.conventions import flow_run_name, one_line_failure
from models.detection import DEFAULT_DETECTOR
from storage.errors import FacereenactError, InputError
from storage.media import media_kind
from tasks.prepare import align_crops, open_media, track_landmarks

__all__ = ["prepare", "prepare_image", "prepare_video"]


@flow(name="prepare-video", flow_run_name=flow_run_name("prepare-video"))
@one_line_failure
def prepare_video(path: str, cache: str, resolution: int = 256, landmarks: str = "faceapi",
                  smoothing: dict[str, Any] | None = None, device: str = "auto", face_index: int = 0,
                  progress: bool = False, detector: str = DEFAULT_DETECTOR) -> dict[str, Any]:
    """Landmarks and aligned crops of every frame of a video; frames without a face are kept,
    flagged and interpolated. `smoothing` holds SmoothingConfig fields (default: One-Euro)."""
    medium = open_media(path, cache)
    if medium.kind != "video":
        raise InputError("is a still image, not a video (prepare it as a source image)", path=path)
    marks = track_landmarks(medium, cache, landmarks=landmarks, device=device, detector=detector,
                            face_index=face_index, progress=progress)
    crops = align_crops(medium, marks, cache, resolution=resolution, smoothing=smoothing, progress=progress)
    return {**asdict(medium), "landmarks": asdict(marks), "crops": asdict(crops)}


@flow(name="prepare-image", flow_run_name=flow_run_name("prepare-image"))
@one_line_failure
def prepare_image(path: str, cache: str, resolution: int = 256, landmarks: str = "faceapi",
                  device: str = "auto", face_index: int = 0, progress: bool = False,
                  detector: str = DEFAULT_DETECTOR) -> dict[str, Any]:
    """Landmarks and the aligned crop of a source image: the largest face, or the `face_index`-th
    by size. No face is a NoFaceError (a source must show one)."""
    medium = open_media(path, cache)
    if medium.kind != "image":
        raise InputError("is a video, not a still image", path=path)
    marks = track_landmarks(medium, cache, landmarks=landmarks, device=device, detector=detector,
                            face_index=face_index, progress=progress)
    crops = align_crops(medium, marks, cache, resolution=resolution, smoothing={"method": "none"},
                        progress=progress)
    return {**asdict(medium), "landmarks": asdict(marks), "crops": asdict(crops)}


@flow(name="prepare", flow_run_name=flow_run_name("prepare"))
@one_line_failure
def prepare(paths: list[str], cache: str, resolution: int = 256, landmarks: str = "faceapi",
            smoothing: dict[str, Any] | None = None, device: str = "auto", face_index: int = 0,
            progress: bool = False, detector: str = DEFAULT_DETECTOR) -> list[dict[str, Any]]:
    """Prepare each video or image in `paths`. One bad input does not stop the others; at the end,
    any failure is raised (the only one as it was, several as one JobFailedError listing them)."""
    done: list[dict[str, Any]] = []
    failed: list[tuple[str, FacereenactError]] = []
    for path in paths:
        options = {"resolution": resolution, "landmarks": landmarks, "device": device,
                   "face_index": face_index, "progress": progress, "detector": detector}
        try:
            if media_kind(path) == "image":
                done.append(prepare_image(path, cache, **options))
            else:
                done.append(prepare_video(path, cache, smoothing=smoothing, **options))
        except FacereenactError as err:
            failed.append((path, err))
    if failed:
        raise _combined(failed, len(paths))
    return done


def _combined(failed: list[tuple[str, FacereenactError]], total: int) -> FacereenactError:
    from storage.errors import JobFailedError

    if total == 1:
        return failed[0][1]
    listed = "; ".join(str(err) for _, err in failed)
    if len(failed) == 1:  # keep the error's own class (and exit code)
        return type(failed[0][1])(f"1 of {total} inputs failed (the others are prepared): {listed}")
    return JobFailedError(f"{len(failed)} of {total} inputs failed (the others are prepared): {listed}")
