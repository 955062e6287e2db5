"""The metrics of a reenactment result video against its source face and driving clip, per frame
and over the clip (`facereenact evaluate`; stages/evaluate.py decodes the videos and runs these).

- **Landmarks** by the face-api backend, tracked (FaceTracker with the Haar detector, as the prepare
  stage). Frames where no face is found are counted and left out of every metric.
- **NME** (models.metrics.landmark_nme: mean point error / the driving's outer-eye distance). When
  the result frame has the driving frame's size (pasted back, or the driving clip itself) both are
  compared as they are; otherwise the result is an aligned crop, and the driving landmarks are
  mapped into their own FFHQ crop at the result's size (the prepare stage's alignment, per frame,
  unsmoothed) before comparing.
- **Identity**: cosine of face-api recognition descriptors of each result frame and the source photo
  (models.metrics.identity_descriptors; chips cut from each face's landmarks).
- **Jitter**: models.metrics.landmark_jitter of the result's landmarks (pixels of the result frame),
  beside the driving's in the same coordinates, over runs of 3+ consecutive frames with a face.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from storage.errors import NoFaceError

__all__ = ["CROP_CHOICES", "crop_panel", "every", "finite_mean", "identity_similarities", "landmark_metrics",
           "result_tracker", "run_jitter", "source_landmarks"]

CROP_CHOICES = ("auto", "none", "right")


def result_tracker(device: str):
    """The face-api backend and a factory of FaceTrackers with the Haar detector (the prepare
    stage's tracking), one per video compared."""
    from models.detection import FaceTracker, make_detector
    from models.landmarks import load_landmark_backend

    backend = load_landmark_backend("faceapi", device=device).requires_grad_(False)
    return backend, lambda: FaceTracker(make_detector("haar"), backend.predict_frame)


def source_landmarks(image: np.ndarray, backend, path: str | Path) -> np.ndarray:
    """The source photo's 68 landmarks (its largest face; NoFaceError naming `path` without one)."""
    from models.detection import FaceSelector, make_detector

    box = FaceSelector().pick(make_detector("haar").detect(image))
    if box is None:
        raise NoFaceError("no face found in the source image", path=path)
    return np.asarray(backend.predict_frame(image, box), dtype=np.float64)


def crop_panel(frame: np.ndarray, mode: str) -> np.ndarray:
    """The rightmost square panel of a side-by-side frame ("right"), or the frame ("none")."""
    if mode == "right":
        h = frame.shape[0]
        return frame[:, frame.shape[1] - h:]
    return frame


def every(frames: Iterator[np.ndarray], step: int) -> Iterator[np.ndarray]:
    """Frames 0, step, 2 * step, ... (the key frames of a result with sub-frames)."""
    for i, frame in enumerate(frames):
        if i % step == 0:
            yield frame


def run_jitter(points: np.ndarray) -> float | None:
    """landmark_jitter over runs of >= 3 consecutive frames with a face, weighted by their triples."""
    from models.metrics import landmark_jitter

    ok = np.isfinite(points).all(axis=(1, 2))
    total, count, start = 0.0, 0, None
    for t in range(len(ok) + 1):
        if t < len(ok) and ok[t]:
            start = t if start is None else start
            continue
        if start is not None and t - start >= 3:
            total += landmark_jitter(points[start:t]) * (t - start - 2)
            count += t - start - 2
        start = None
    return total / count if count else None


def finite_mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


@torch.no_grad()
def identity_similarities(frames: np.ndarray, points: list[np.ndarray | None], source_image: np.ndarray,
                          src_points: np.ndarray, identity, batch: int, reference: torch.Tensor | None = None
                          ) -> tuple[np.ndarray, torch.Tensor | None]:
    """Cosine of the recognition descriptors of result frames (those with landmarks; NaN for the
    others) and the source photo's. Returns (values, the source's descriptor, computed once)."""
    from models.metrics import identity_descriptors

    ok = [i for i, p in enumerate(points) if p is not None]
    values = np.full(len(frames), np.nan)
    if ok:
        descriptors, src_descriptor = identity_descriptors(np.stack([frames[i] for i in ok]), source_image,
                                                           np.stack([points[i] for i in ok]), src_points,
                                                           identity, batch)
        reference = src_descriptor if reference is None else reference
        values[ok] = torch.nn.functional.cosine_similarity(descriptors, reference, dim=-1).numpy()
    return values, reference


def landmark_metrics(res: np.ndarray, drv: np.ndarray, size: tuple[int, int], driving_size: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray, bool]:
    """The driving landmarks in the result's coordinates and the NME of the frames with a face in
    both: when the result has the driving frame's (height, width) both are compared as they are;
    otherwise the result is an aligned crop, and the driving landmarks are mapped into their own FFHQ
    crop at its size. Returns (target landmarks, NME per compared frame, same_space)."""
    from models.alignment import crop_from_frame_matrix, ffhq_quad
    from models.metrics import landmark_nme

    res_face, drv_face = np.isfinite(res).all(axis=(1, 2)), np.isfinite(drv).all(axis=(1, 2))
    same_space = tuple(size) == tuple(driving_size)
    if same_space:
        target = drv
    else:
        target = np.full_like(drv, np.nan)
        if drv_face.any():
            m = crop_from_frame_matrix(ffhq_quad(drv[drv_face]), int(size[0]))
            target[drv_face] = np.einsum("nij,nkj->nki", m[:, :2, :2], drv[drv_face]) + m[:, None, :2, 2]
    both = res_face & drv_face
    nme = landmark_nme(res[both], target[both]).numpy() if both.any() else np.zeros(0)
    return target, nme, same_space
