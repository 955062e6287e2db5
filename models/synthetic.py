"""Driving clips with known motion, made from one photo and its 68 landmarks.

Each frame is the photo seen through a known similarity transform (shift, rotation, scale about the
face) after an optional mouth opening, and comes with its true landmarks: the photo's points moved by
the same warp. Tests use these clips to check that tracking and smoothing follow motion they know;
the demo makes its sample driving clip the same way from the bundled photo (flows/samples/).

- Head motion: frame point = s R(angle) (p - c) + frame centre + (dx, dy), where c is the centre of
  the face's points, so at rest the face sits in the middle of the frame.
- Mouth: the lower lip, the lower inner lip and the chin are moved down the face's vertical axis by
  `mouth` pixels (mouth corners and jaw sides by less) and the photo is warped by the thin-plate
  spline that takes every one of the 68 points (and a fixed ring around the face) to its new place.
  The spline interpolates its control points, so the moved points are exactly where the photo's
  lip and chin content lands. The gap between the lips is stretched lip and teeth, not a dark mouth:
  a landmark net sees a taller mouth, not necessarily a wide-open one.
- Both warps are applied in one bicubic resampling (cv2.remap), borders mirrored.

Pure numpy / OpenCV; coordinates as everywhere in the project (x, y pixels, pixel centres at
integers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from models.face_shape import EYE_LEFT, EYE_RIGHT, check_points

__all__ = [
    "MOTIONS",
    "Pose",
    "ThinPlateSpline",
    "mouth_points",
    "motion",
    "render_clip",
    "render_frame",
    "write_clip",
]

MOTIONS = ("still", "shift", "rotate", "scale", "mouth", "all")

# How far each point moves when the mouth opens by 1 (fraction of the opening), by iBUG index: the
# lower lip all the way, the mouth corners half, the chin as far as the lip and the jaw sides less.
_MOUTH_WEIGHTS = {
    **{i: 1.0 for i in (55, 56, 57, 58, 59, 65, 66, 67)},  # lower lip, outer and inner
    **{i: 0.5 for i in (48, 54, 60, 64)},  # mouth corners
    **{7: 1.0, 8: 1.0, 9: 1.0, 6: 0.8, 10: 0.8, 5: 0.5, 11: 0.5, 4: 0.2, 12: 0.2},  # chin and jaw
}


@dataclass(frozen=True)
class Pose:
    """One frame's known motion.

    dx, dy: shift of the face in frame pixels
    angle:  rotation about the face centre, degrees, counter-clockwise as seen on screen
    scale:  zoom about the face centre
    mouth:  extra mouth opening in photo pixels (lower lip and chin moved down the face)
    """

    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0
    scale: float = 1.0
    mouth: float = 0.0


def motion(kind: str, num_frames: int, *, shift: float = 20.0, angle: float = 15.0, scale: float = 0.2,
           mouth: float = 12.0) -> list[Pose]:
    """A smooth motion of `kind` (see MOTIONS) over `num_frames` frames, one cycle long.

    shift: dx = shift sin(2 pi u), dy = shift/2 sin(pi u); rotate: angle sin(2 pi u); scale:
    1 + scale sin(2 pi u); mouth: opens to `mouth` pixels and closes again, (1 - cos(2 pi u)) / 2;
    all: all four at 60 % amplitude. u = t / (num_frames - 1) runs from 0 to 1.
    """
    if kind not in MOTIONS:
        raise ValueError(f"unknown motion {kind!r}; known: {', '.join(MOTIONS)}")
    if num_frames < 1:
        raise ValueError("num_frames must be >= 1")
    poses = []
    for t in range(num_frames):
        u = t / max(num_frames - 1, 1)
        wave, bump = math.sin(2 * math.pi * u), math.sin(math.pi * u)
        opening = (1 - math.cos(2 * math.pi * u)) / 2
        k = 0.6 if kind == "all" else 1.0
        poses.append(Pose(
            dx=k * shift * wave if kind in ("shift", "all") else 0.0,
            dy=k * shift / 2 * bump if kind in ("shift", "all") else 0.0,
            angle=k * angle * wave if kind in ("rotate", "all") else 0.0,
            scale=1.0 + k * scale * (-wave if kind == "all" else wave) if kind in ("scale", "all") else 1.0,
            mouth=k * mouth * opening if kind in ("mouth", "all") else 0.0,
        ))
    return poses


# --------------------------------------------------------------------------------------------------
# Mouth warp


class ThinPlateSpline:
    """The 2-D thin-plate spline through control points: f(src_i) = dst_i exactly, with the least
    bending everywhere else (kernel r^2 log r plus an affine part)."""

    def __init__(self, src: np.ndarray, dst: np.ndarray) -> None:
        src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
        dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
        if src.shape != dst.shape or src.shape[0] < 3:
            raise ValueError(f"need matching (N >= 3, 2) control points, got {src.shape} and {dst.shape}")
        n = src.shape[0]
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = self._kernel(src, src)
        system[:n, n] = 1.0
        system[:n, n + 1:] = src
        system[n, :n] = 1.0
        system[n + 1:, :n] = src.T
        rhs = np.zeros((n + 3, 2))
        rhs[:n] = dst
        self.src = src
        self.coef = np.linalg.lstsq(system, rhs, rcond=None)[0]  # lstsq: tolerates coincident points

    @staticmethod
    def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        d2 = np.maximum(d2, 1e-20)  # r = 0 (and rounding below it): r^2 log r -> 0
        return 0.5 * d2 * np.log(d2)  # r^2 log r

    def __call__(self, points: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
        """f at (..., 2) points."""
        points = np.asarray(points, dtype=np.float64)
        flat = points.reshape(-1, 2)
        out = np.empty_like(flat)
        n = self.src.shape[0]
        for lo in range(0, flat.shape[0], chunk):
            p = flat[lo:lo + chunk]
            out[lo:lo + chunk] = (self._kernel(p, self.src) @ self.coef[:n] + self.coef[n]
                                  + p @ self.coef[n + 1:])
        return out.reshape(points.shape)


def _face_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors along the eye line (image left to right) and down the face."""
    eye_line = points[EYE_RIGHT].mean(0) - points[EYE_LEFT].mean(0)
    across = eye_line / np.linalg.norm(eye_line)
    return across, np.array([-across[1], across[0]])  # a quarter turn: down the face (y down)


def mouth_points(points: np.ndarray, opening: float) -> np.ndarray:
    """The 68 points with the mouth opened by `opening` pixels: lower lip and chin moved down the
    face (perpendicular to the eye line), mouth corners and jaw sides partly."""
    p = check_points(points).reshape(68, 2).copy()
    _, down = _face_axes(p)
    for index, weight in _MOUTH_WEIGHTS.items():
        p[index] += weight * opening * down
    return p


def _anchor_ring(points: np.ndarray, count: int = 16, grow: float = 1.9) -> np.ndarray:
    """Fixed points on a circle around the face, so the mouth warp stays local."""
    centre = (points.min(0) + points.max(0)) / 2
    radius = grow * np.abs(points - centre).max()
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


# The spline is evaluated on every _TPS_STEP-th frame pixel and interpolated in between (its
# displacement is smooth: measured against evaluating every pixel, 0.001 px mean, 0.13 px max for a
# 12 px opening on astronaut()), 4x fewer evaluations.
_TPS_STEP = 2


def _smooth_map(spline: ThinPlateSpline, points: np.ndarray, step: int) -> np.ndarray:
    """spline(points) for an (h, w, 2) grid of points, evaluated every `step` pixels and bilinearly
    interpolated (exact on the coarse grid's nodes, which include the last row and column)."""
    h, w = points.shape[:2]
    rows = np.unique(np.r_[np.arange(0, h, step), h - 1])
    cols = np.unique(np.r_[np.arange(0, w, step), w - 1])
    coarse = points[np.ix_(rows, cols)]
    shift = (spline(coarse) - coarse).astype(np.float32)  # the warp's displacement, smooth
    # Continuous index of every pixel in the coarse grid, for remap's bilinear interpolation.
    map_x = np.interp(np.arange(w), cols, np.arange(cols.size)).astype(np.float32)
    map_y = np.interp(np.arange(h), rows, np.arange(rows.size)).astype(np.float32)
    mx, my = np.meshgrid(map_x, map_y)
    fine = cv2.remap(shift, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return points + fine


# --------------------------------------------------------------------------------------------------
# Frames


def _frame_from_photo(pose: Pose, centre: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """2x3 affine matrix: photo point -> frame point for `pose`."""
    w, h = size
    theta = math.radians(pose.angle)
    # Counter-clockwise on screen with y down is a negative angle in the usual maths frame.
    rot = pose.scale * np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    target = np.array([(w - 1) / 2 + pose.dx, (h - 1) / 2 + pose.dy])
    return np.hstack([rot, (target - rot @ centre)[:, None]])


def render_frame(
    photo: np.ndarray,
    points: np.ndarray,
    pose: Pose,
    size: int | tuple[int, int] = 256,
    centre: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One frame of `photo` (H, W, 3) uint8 under `pose`, and its true (68, 2) landmarks.

    points: the photo's 68 landmarks (they drive the mouth warp and give the truth).
    size:   frame side, or (width, height).
    centre: the photo point shown in the frame's middle at rest; default the centre of the points'
            bounding box.
    """
    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB photo, got {photo.dtype} {photo.shape}")
    p = check_points(points).reshape(68, 2)
    w, h = (size, size) if isinstance(size, int) else size
    c = np.asarray(centre, dtype=np.float64) if centre is not None else (p.min(0) + p.max(0)) / 2
    moved = mouth_points(p, pose.mouth) if pose.mouth else p
    forward = _frame_from_photo(pose, c, (w, h))
    inverse = cv2.invertAffineTransform(forward)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    grid = np.stack([xs, ys], axis=-1)
    source = grid @ inverse[:, :2].T + inverse[:, 2]  # frame pixel -> (mouth-opened) photo point
    if pose.mouth:
        ring = _anchor_ring(p)
        # Backward map: from where content lands (moved points) to where it comes from (points).
        spline = ThinPlateSpline(np.vstack([moved, ring]), np.vstack([p, ring]))
        source = _smooth_map(spline, source, _TPS_STEP)
    maps = source.astype(np.float32)
    frame = cv2.remap(photo, maps[..., 0], maps[..., 1], interpolation=cv2.INTER_CUBIC,
                      borderMode=cv2.BORDER_REFLECT)
    truth = moved @ forward[:, :2].T + forward[:, 2]
    return frame, truth


def render_clip(
    photo: np.ndarray,
    points: np.ndarray,
    poses: Sequence[Pose],
    size: int | tuple[int, int] = 256,
    centre: Sequence[float] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame, true landmarks) for each pose, one frame at a time (see render_frame)."""
    p = check_points(points).reshape(68, 2)
    c = np.asarray(centre, dtype=np.float64) if centre is not None else (p.min(0) + p.max(0)) / 2
    for pose in poses:
        yield render_frame(photo, p, pose, size, c)


def write_clip(
    path: str | Path,
    photo: np.ndarray,
    points: np.ndarray,
    poses: Sequence[Pose],
    fps: Fraction | int = 25,
    size: int | tuple[int, int] = 256,
    centre: Sequence[float] | None = None,
    crf: int = 18,
) -> np.ndarray:
    """Encode the clip of `poses` to `path` (H.264, storage.video.VideoWriter) and return the true
    landmarks of every frame, (T, 68, 2)."""
    from storage.video import VideoWriter

    truths = []
    with VideoWriter(path, fps, crf=crf) as writer:
        for frame, truth in render_clip(photo, points, poses, size, centre):
            writer.write(frame)
            truths.append(truth)
    return np.stack(truths)
