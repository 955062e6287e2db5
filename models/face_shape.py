"""The 68-point face shape (iBUG order): point groups, left-right mirror, a mean shape, and a
Procrustes fit against it.

Coordinates are (x, y) in pixels, y down, with pixel centres at integer coordinates (OpenCV's
convention). "Left" and "right" below are image sides (the subject's right eye is on the image left),
the way the FFHQ recipe names them.
"""

from __future__ import annotations

import numpy as np

NUM_POINTS = 68

# iBUG 68-point groups, as index ranges.
JAW = slice(0, 17)
BROW_LEFT = slice(17, 22)
BROW_RIGHT = slice(22, 27)
NOSE_BRIDGE = slice(27, 31)
NOSE_LOWER = slice(31, 36)
EYE_LEFT = slice(36, 42)
EYE_RIGHT = slice(42, 48)
MOUTH_OUTER = slice(48, 60)
MOUTH_INNER = slice(60, 68)
MOUTH_LEFT_CORNER = 48
MOUTH_RIGHT_CORNER = 54

# MIRROR_68[i] is the point that i becomes when the face is flipped left-right.
MIRROR_68 = np.array(
    [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # jaw
    + [26, 25, 24, 23, 22, 21, 20, 19, 18, 17]  # brows
    + [27, 28, 29, 30, 35, 34, 33, 32, 31]  # nose
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lip
    + [64, 63, 62, 61, 60, 67, 66, 65],  # inner lip
    dtype=np.int64,
)

# A frontal, left-right symmetric mean shape: centred, RMS distance from the centre 1, y down.
# Derived here from dlib's 68 points on scikit-image's astronaut() (shared/fixtures/faces), rotated
# upright and symmetrised with MIRROR_68. One face, so it is a plausibility template, not a
# population mean: use it to tell a face-shaped answer from scrambled or collapsed points.
# Stored as its image-left half and midline, by runs of consecutive iBUG points (first index, points);
# the image-right half is their mirror image (MIRROR_68, x -> -x), so the shape is symmetric by
# construction.
_LEFT_HALF_68 = (
    (0, ((-1.3310, -0.6150), (-1.2882, -0.2715), (-1.2454, +0.0434), (-1.1882, +0.3876),
         (-1.0740, +0.7033), (-0.8876, +0.9754), (-0.6163, +1.2046), (-0.3292, +1.4061),
         (+0.0000, +1.4497))),                                                  # jaw, to the chin
    (17, ((-1.1319, -0.8863), (-0.9741, -1.0727), (-0.7456, -1.1013), (-0.5156, -1.0727),
          (-0.2864, -1.0013))),                                                 # left brow
    (27, ((+0.0000, -0.7300), (+0.0000, -0.4714), (+0.0000, -0.2430), (+0.0000, -0.0145),
          (-0.2864, +0.1155), (-0.1428, +0.1584), (+0.0000, +0.1869))),         # nose, to the tip
    (36, ((-0.8598, -0.6999), (-0.7155, -0.8141), (-0.5156, -0.8141), (-0.3585, -0.6420),
          (-0.5449, -0.6285), (-0.7305, -0.6277))),                             # left eye
    (48, ((-0.6441, +0.3591), (-0.4149, +0.3448), (-0.1721, +0.3440), (+0.0000, +0.3868))),  # upper lip
    (57, ((+0.0000, +0.8183), (-0.1856, +0.7890), (-0.4291, +0.6597),           # lower lip
          (-0.5577, +0.4019), (-0.1713, +0.4440), (+0.0000, +0.4741))),         # inner lip, upper
    (66, ((+0.0000, +0.6740), (-0.1713, +0.6454))),                             # inner lip, lower
)


def _mirrored_shape(half: tuple[tuple[int, tuple[tuple[float, float], ...]], ...]) -> np.ndarray:
    """(68, 2): the given points, and every other point as the mirror image of its MIRROR_68 partner."""
    shape = np.full((NUM_POINTS, 2), np.nan)
    for first, points in half:
        shape[first:first + len(points)] = points
    missing = np.isnan(shape[:, 0])
    shape[missing] = shape[MIRROR_68[missing]] * [-1.0, 1.0]
    if np.isnan(shape).any():
        raise AssertionError("face_shape: a point and its mirror partner are both missing")
    return shape


MEAN_SHAPE_68 = _mirrored_shape(_LEFT_HALF_68)
MEAN_SHAPE_68.setflags(write=False)


def check_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    """`points` as a float64 (..., 68, 2) array; raises ValueError on another shape."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 2 or points.shape[-2:] != (NUM_POINTS, 2):
        raise ValueError(f"{name}: expected (..., 68, 2) landmarks, got shape {points.shape}")
    return points


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap of (..., 68, 2) landmarks in their units: the mean distance of the three
    facing inner-lip pairs (61-67, 62-66, 63-65). About 0 for a closed mouth."""
    p = check_points(points)
    upper, lower = p[..., [61, 62, 63], :], p[..., [67, 66, 65], :]
    return np.linalg.norm(lower - upper, axis=-1).mean(axis=-1)


def procrustes_residual(points: np.ndarray, template: np.ndarray = MEAN_SHAPE_68) -> float:
    """Full Procrustes distance between `points` (68, 2) and `template`, in [0, 1].

    Both shapes are centred and scaled to unit norm, then the best rotation is applied; the result is
    the sine of the angle between the two shapes (0: identical up to a similarity transform, 1:
    nothing in common). A real face against MEAN_SHAPE_68 scores about 0.05-0.2 depending on pose and
    expression; random points score near 1. Non-finite or degenerate input gives 1.0.
    """
    a = check_points(points)
    b = check_points(template, "template")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return 1.0
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-9 or nb < 1e-9:
        return 1.0
    a, b = a / na, b / nb
    # Best rotation (no reflection) of a onto b: the trace of the rotated cross-covariance.
    u, s, vt = np.linalg.svd(a.T @ b)
    if np.linalg.det(u @ vt) < 0:
        s[-1] = -s[-1]
    cos = float(np.clip(s.sum(), 0.0, 1.0))
    return float(np.sqrt(max(0.0, 1.0 - cos * cos)))
