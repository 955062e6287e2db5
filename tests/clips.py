"""Short driving clips for the tests, made from scikit-image's astronaut() with known motion.

The base landmarks are face-api's answer on the still photo (Haar box), so the truth of each frame
is that answer moved by the known warp: what a tracker that follows the motion perfectly reports.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import skimage.data

from models.synthetic import motion, render_clip
from storage.video import VideoWriter

FPS = 25
SIZE = 256
BLANK_GREY = 118  # a frame with no face: flat grey


@lru_cache(maxsize=1)
def photo() -> np.ndarray:
    return skimage.data.astronaut()  # callers must not modify it (shared)


@lru_cache(maxsize=1)
def base_points() -> np.ndarray:
    """face-api's 68 points on the still photo, in the Haar detector's box."""
    from models.detection import make_detector
    from models.landmarks import load_landmark_backend

    (box,) = make_detector("haar").detect(photo())
    points = load_landmark_backend("faceapi").predict_frame(photo(), box)
    points.setflags(write=False)
    return points


def clip_frames(kind: str = "all", frames: int = 24, blank: tuple[int, ...] = (),
                size: int = SIZE) -> tuple[list[np.ndarray], np.ndarray]:
    """The frames of a clip and their true (T, 68, 2) landmarks (NaN on `blank` frames, which show
    no face)."""
    images, truths = [], []
    for t, (frame, truth) in enumerate(render_clip(photo(), base_points(), motion(kind, frames), size)):
        if t in blank:
            frame = np.full_like(frame, BLANK_GREY)
            truth = np.full_like(truth, np.nan)
        images.append(frame)
        truths.append(truth)
    return images, np.stack(truths)


def write_test_clip(path: Path, kind: str = "all", frames: int = 24, blank: tuple[int, ...] = (),
                    size: int = SIZE) -> np.ndarray:
    """Encode a clip (H.264, crf 18, 25 fps) to `path`; returns its true landmarks (NaN on blanks)."""
    images, truth = clip_frames(kind, frames, blank, size)
    with VideoWriter(path, FPS) as writer:
        for image in images:
            writer.write(image)
    return truth
