"""Wide frames with small faces at known places, for measuring face detectors' recall.

Each face is scikit-image's astronaut() portrait (the only real face that ships offline) cut around
its face, scaled so the face (dlib's 68 points, jaw to jaw) is `size` pixels wide, optionally
mirrored, rotated in the image plane, or narrowed horizontally (a crude stand-in for a head turned
away: the face's features crowd together as in a three-quarter view; real profiles are not
synthesised), and blended with a soft elliptical edge into a 1280 x 720 background (coffee() and
rocket() from scikit-image, tiled and blurred a little; no faces in them). The truth of each face is
the box of its moved 68 points, so a detection counts when its box overlaps that box.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import skimage.data

FIXTURE_POINTS = (Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "faces"
                  / "astronaut_dlib68.npy")
WIDTH, HEIGHT = 1280, 720


@dataclass(frozen=True)
class Face:
    """One pasted face: centre (x, y) in the frame, face width in pixels, and how it is altered."""

    x: float
    y: float
    size: float
    mirror: bool = False
    angle: float = 0.0  # in-plane rotation, degrees
    narrow: float = 1.0  # horizontal squeeze of the face (1: none)


@lru_cache(maxsize=1)
def _points() -> np.ndarray:
    return np.load(FIXTURE_POINTS).astype(np.float64)


@lru_cache(maxsize=1)
def background() -> np.ndarray:
    """A 1280 x 720 RGB background without faces."""
    coffee = cv2.resize(skimage.data.coffee(), (640, 360), interpolation=cv2.INTER_AREA)
    rocket = cv2.resize(skimage.data.rocket(), (640, 360), interpolation=cv2.INTER_AREA)
    top = np.concatenate([coffee, rocket], axis=1)
    bottom = np.concatenate([rocket[:, ::-1], coffee[::-1]], axis=1)
    frame = cv2.GaussianBlur(np.concatenate([top, bottom], axis=0), (3, 3), 0)
    frame.setflags(write=False)
    return frame


def _face_transform(face: Face) -> np.ndarray:
    """2x3 affine: astronaut photo pixels -> frame pixels for `face`."""
    p = _points()
    centre = (p.min(axis=0) + p.max(axis=0)) / 2
    scale = face.size / float(np.ptp(p[:, 0]))
    a = np.deg2rad(face.angle)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # counter-clockwise on screen
    squeeze = np.diag([face.narrow * (-1 if face.mirror else 1), 1.0])
    m = scale * rot @ squeeze
    t = np.array([face.x, face.y]) - m @ centre
    return np.hstack([m, t[:, None]])


def face_points(face: Face) -> np.ndarray:
    """The true (68, 2) points of a pasted face in the frame: dlib's points on the photo, moved."""
    m = _face_transform(face)
    return _points() @ m[:, :2].T + m[:, 2]


def face_box(face: Face) -> tuple[float, float, float, float]:
    """The true box (x0, y0, x1, y1) of a pasted face: the bounding box of its moved 68 points."""
    q = face_points(face)
    return float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max())


def render(faces: list[Face], seed: int = 0) -> np.ndarray:
    """The frame with `faces` pasted (later faces over earlier ones) and mild sensor noise."""
    frame = background().astype(np.float32)
    photo = skimage.data.astronaut().astype(np.float32)
    p = _points()
    centre = (p.min(axis=0) + p.max(axis=0)) / 2
    half = np.ptp(p, axis=0) * np.array([0.95, 1.05])  # the head and some hair/neck around the points
    mask = np.zeros(photo.shape[:2], np.float32)
    axes = (int(half[0]), int(half[1]))
    cv2.ellipse(mask, (int(centre[0]), int(centre[1] - 0.1 * half[1])), axes, 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 6)
    for face in faces:
        m = _face_transform(face)
        warped = cv2.warpAffine(photo, m, (WIDTH, HEIGHT), flags=cv2.INTER_AREA if face.size < 100 else
                                cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        alpha = cv2.warpAffine(mask, m, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)[..., None]
        frame = frame * (1 - alpha) + warped * alpha
    rng = np.random.default_rng(seed)
    frame += rng.normal(0, 2.0, frame.shape)
    return np.clip(frame, 0, 255).round().astype(np.uint8)


def small_face_scenes(count: int = 12, seed: int = 1) -> list[list[Face]]:
    """`count` frames with one face 40-60 px wide at a random place, a third of them altered."""
    rng = np.random.default_rng(seed)
    scenes = []
    for k in range(count):
        size = float(rng.uniform(40, 60))
        alter = k % 3
        x, y = float(rng.uniform(100, WIDTH - 100)), float(rng.uniform(100, HEIGHT - 100))
        angle = float(rng.uniform(-15, 15)) if alter == 1 else 0.0
        scenes.append([Face(x, y, size, mirror=bool(rng.integers(2)), angle=angle,
                            narrow=0.7 if alter == 2 else 1.0)])
    return scenes


def crowd_scenes(count: int = 4, per_frame: int = 5, seed: int = 2) -> list[list[Face]]:
    """`count` frames with `per_frame` faces each, 40-140 px wide, on a grid (no overlaps), some
    mirrored, rotated or narrowed."""
    rng = np.random.default_rng(seed)
    scenes = []
    cols, rows = 5, 3
    cell_w, cell_h = WIDTH / cols, HEIGHT / rows
    for _ in range(count):
        cells = rng.choice(cols * rows, per_frame, replace=False)
        faces = []
        for j, cell in enumerate(cells):
            cx, cy = (cell % cols + 0.5) * cell_w, (cell // cols + 0.5) * cell_h
            size = float(rng.uniform(40, 140))
            angle = float(rng.uniform(-20, 20)) if j % 3 == 1 else 0.0
            faces.append(Face(cx + float(rng.uniform(-20, 20)), cy + float(rng.uniform(-15, 15)), size,
                              mirror=bool(rng.integers(2)), angle=angle, narrow=0.7 if j % 3 == 2 else 1.0))
        scenes.append(faces)
    return scenes


def recall(detections: list[list], scenes: list[list[Face]], min_iou: float = 0.3) -> tuple[int, int, int]:
    """(faces found, faces in all, false detections) of a detector's answers `detections[k]` (boxes
    with x0, y0, x1, y1) on the frames `render(scenes[k], seed=k)`. A true face is found when some
    detection's box has IoU >= `min_iou` with its box; a detection that matches no face is false.
    Boxes are compared as squares about their centres (a detector's box and the points' box differ
    in shape, not in place or scale)."""
    found = total = false = 0
    for faces, dets in zip(scenes, detections, strict=True):
        boxes = [_square((b.x0, b.y0, b.x1, b.y1)) for b in dets]
        truths = [_square(face_box(f)) for f in faces]
        total += len(truths)
        found += sum(any(_iou(t, b) >= min_iou for b in boxes) for t in truths)
        false += sum(not any(_iou(t, b) >= min_iou for t in truths) for b in boxes)
    return found, total, false


def _square(box: tuple[float, ...]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, np.sqrt(max(x1 - x0, 0) * max(y1 - y0, 0)) / 2
    return cx - half, cy - half, cx + half, cy + half


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
