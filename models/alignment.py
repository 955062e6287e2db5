"""FFHQ-style face alignment: the crop quad from landmarks, the crop as an affine transform, and
paste-back of a generated crop into the original frame.

The recipe is the one the FFHQ dataset was made with (NVIDIA's ffhq-dataset / stylegan2 scripts),
rewritten here from its description:

    eye_left, eye_right = mean of points 36-41, mean of points 42-47      (image left / right)
    eye_avg = (eye_left + eye_right) / 2,  eye_to_eye = eye_right - eye_left
    mouth_avg = (point 48 + point 54) / 2, eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - rot90(eye_to_mouth)         the crop's horizontal axis, rot90(a, b) = (-b, a)
    x = x / |x| * max(2.0 * |eye_to_eye|, 1.8 * |eye_to_mouth|)
    y = rot90(x)                                 the crop's vertical axis (y down)
    c = eye_avg + 0.1 * eye_to_mouth             the crop's centre
    quad = (c - x - y, c - x + y, c + x + y, c + x - y)   top-left, bottom-left, bottom-right, top-right

The crop is that square quad resampled to R x R pixels, so crops at different R show the same region.

Conventions:
- Coordinates are (x, y) pixels, y down, pixel centres at integer coordinates (OpenCV's convention,
  and that of landmark arrays). The quad's corners are the crop's outer pixel *edges*: crop pixel
  (u, v) has its centre at frame point c + ((2u + 1) / R - 1) x + ((2v + 1) / R - 1) y.
- `AlignTransform.crop_from_frame` (3x3) maps frame points to crop points; `frame_from_crop` is its
  exact inverse. Both act on homogeneous column vectors (x, y, 1).
- The quad is stored as 4 parameters (cx, cy, xx, xy): centre and half-axis x. Temporal smoothing
  works on these (see models/smoothing.py), never on the matrices.

Everything here is numpy/OpenCV except `align_torch`, the differentiable crop (grid_sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from models.face_shape import (
    EYE_LEFT,
    EYE_RIGHT,
    MOUTH_LEFT_CORNER,
    MOUTH_RIGHT_CORNER,
    check_points,
)

__all__ = [
    "AlignTransform",
    "align",
    "align_torch",
    "crop_mask",
    "crop_to_frame",
    "face_region_mask",
    "ffhq_quad",
    "frame_from_crop_matrix",
    "landmarks_to_crop",
    "paste_back",
    "quad_corners",
]

# Border modes of `align`. "reflect" mirrors the frame about its edge pixels' outer edges
# (cv2.BORDER_REFLECT, "symmetric" in numpy terms; grid_sample's "reflection" does the same).
BORDERS = {"reflect": cv2.BORDER_REFLECT, "constant": cv2.BORDER_CONSTANT}


# --------------------------------------------------------------------------------------------------
# Quad and transform


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop quad of (..., 68, 2) landmarks as (..., 4) parameters (cx, cy, xx, xy): centre c
    and half-axis x (the crop's horizontal half-side as a vector in the frame)."""
    lm = check_points(landmarks)
    eye_left = lm[..., EYE_LEFT, :].mean(axis=-2)
    eye_right = lm[..., EYE_RIGHT, :].mean(axis=-2)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[..., MOUTH_LEFT_CORNER, :] + lm[..., MOUTH_RIGHT_CORNER, :]) / 2
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - _rot90(eye_to_mouth)
    half = np.maximum(2.0 * np.linalg.norm(eye_to_eye, axis=-1), 1.8 * np.linalg.norm(eye_to_mouth, axis=-1))
    x = x / np.linalg.norm(x, axis=-1, keepdims=True) * half[..., None]
    c = eye_avg + 0.1 * eye_to_mouth
    return np.concatenate([c, x], axis=-1)


def _rot90(v: np.ndarray) -> np.ndarray:
    """(a, b) -> (-b, a): a quarter turn from the x axis towards the y axis (clockwise on screen)."""
    return np.stack([-v[..., 1], v[..., 0]], axis=-1)


def _check_quad(quad: np.ndarray) -> np.ndarray:
    quad = np.asarray(quad, dtype=np.float64)
    if quad.shape[-1:] != (4,):
        raise ValueError(f"expected (..., 4) quad parameters (cx, cy, xx, xy), got shape {quad.shape}")
    return quad


def quad_corners(quad: np.ndarray) -> np.ndarray:
    """(..., 4, 2) corners of (..., 4) quad parameters, in FFHQ's order: top-left, bottom-left,
    bottom-right, top-right of the crop (its outer pixel edges)."""
    quad = _check_quad(quad)
    c, x = quad[..., :2], quad[..., 2:]
    y = _rot90(x)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y], axis=-2)


def frame_from_crop_matrix(quad: np.ndarray, resolution: int) -> np.ndarray:
    """(..., 3, 3) matrices mapping crop pixel coordinates (u, v, 1) to frame coordinates."""
    quad = _check_quad(quad)
    c, x = quad[..., :2], quad[..., 2:]
    y = _rot90(x)
    a, b = 2 * x / resolution, 2 * y / resolution  # frame step per crop pixel along u and v
    t = c - x - y + (x + y) / resolution  # frame position of crop pixel centre (0, 0)
    m = np.zeros(quad.shape[:-1] + (3, 3))
    m[..., :2, 0], m[..., :2, 1], m[..., :2, 2], m[..., 2, 2] = a, b, t, 1.0
    return m


def crop_from_frame_matrix(quad: np.ndarray, resolution: int) -> np.ndarray:
    """(..., 3, 3) matrices mapping frame coordinates to crop pixel coordinates (the exact inverse of
    `frame_from_crop_matrix`: its 2x2 part is a scaled rotation, inverted in closed form)."""
    f = frame_from_crop_matrix(quad, resolution)
    a, b, t = f[..., :2, 0], f[..., :2, 1], f[..., :2, 2]
    norm2 = (a * a).sum(axis=-1, keepdims=True)  # |a| == |b|, a orthogonal to b
    ra, rb = a / norm2, b / norm2
    m = np.zeros_like(f)
    m[..., 0, :2], m[..., 1, :2] = ra, rb
    m[..., 0, 2] = -(ra * t).sum(axis=-1)
    m[..., 1, 2] = -(rb * t).sum(axis=-1)
    m[..., 2, 2] = 1.0
    return m


@dataclass(frozen=True)
class AlignTransform:
    """One frame's crop: the quad parameters (cx, cy, xx, xy) and the crop resolution R.

    `crop_from_frame` / `frame_from_crop` are the 3x3 matrices (crop <- frame and its inverse).
    """

    quad: np.ndarray
    resolution: int

    def __post_init__(self) -> None:
        quad = _check_quad(self.quad).reshape(4).copy()
        if not np.isfinite(quad).all() or np.hypot(quad[2], quad[3]) <= 0:
            raise ValueError(f"degenerate crop quad {quad}")
        if int(self.resolution) < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")
        quad.setflags(write=False)
        object.__setattr__(self, "quad", quad)
        object.__setattr__(self, "resolution", int(self.resolution))

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, resolution: int) -> AlignTransform:
        """The FFHQ crop of a face's (68, 2) landmarks at R x R."""
        return cls(ffhq_quad(check_points(landmarks).reshape(68, 2)), resolution)

    def at_resolution(self, resolution: int) -> AlignTransform:
        """The same crop region at another resolution."""
        return AlignTransform(self.quad, resolution)

    @property
    def center(self) -> np.ndarray:
        return self.quad[:2].copy()

    @property
    def half_axis(self) -> np.ndarray:
        return self.quad[2:].copy()

    @property
    def corners(self) -> np.ndarray:
        return quad_corners(self.quad)

    @property
    def frame_from_crop(self) -> np.ndarray:
        return frame_from_crop_matrix(self.quad, self.resolution)

    @property
    def crop_from_frame(self) -> np.ndarray:
        return crop_from_frame_matrix(self.quad, self.resolution)

    @property
    def scale(self) -> float:
        """Frame pixels per crop pixel (above 1: the crop shrinks the face)."""
        return 2.0 * float(np.hypot(self.quad[2], self.quad[3])) / self.resolution


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1] != 2:
        raise ValueError(f"expected (..., 2) points, got shape {points.shape}")
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def landmarks_to_crop(points: np.ndarray, transform: AlignTransform) -> np.ndarray:
    """Frame points (..., 2) -> crop pixel coordinates."""
    return _apply(transform.crop_from_frame, points)


def crop_to_frame(points: np.ndarray, transform: AlignTransform) -> np.ndarray:
    """Crop pixel coordinates (..., 2) -> frame points."""
    return _apply(transform.frame_from_crop, points)


# --------------------------------------------------------------------------------------------------
# Resampling


def _resample(
    src: np.ndarray,
    src_from_dst: np.ndarray,
    dst_size: tuple[int, int],
    *,
    interpolation: int,
    border: int,
) -> np.ndarray:
    """dst[v, u] = src(src_from_dst @ (u, v, 1)), dst of size (width, height).

    Antialiased: when one dst pixel spans f >= 2 src pixels, the part of src that is read is first
    box-filtered down by the integer factor floor(f) (cv2.INTER_AREA), and the rest of the scaling is
    left to `interpolation`. Only the src region under dst (plus what border reflection reads) is
    touched, so a small face in a 4K frame costs little.
    """
    H, W = src.shape[:2]
    dw, dh = dst_size
    m = np.asarray(src_from_dst, dtype=np.float64)
    scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))

    # The src box under the dst image, with room for the interpolation kernel; clamped to src, and
    # widened to cover the mirror image of whatever part falls outside (so that reflecting at the
    # region's edge is reflecting at src's edge).
    corners = _apply(m, np.array([[-0.5, -0.5], [dw - 0.5, -0.5], [-0.5, dh - 0.5], [dw - 0.5, dh - 0.5]]))
    pad = 3 * (1 + math.ceil(scale))  # >= 3 pixels of the shrunk region too, for the cubic kernel
    lo_q, hi_q = corners.min(axis=0) - pad, corners.max(axis=0) + pad
    bounds = []
    for lo_v, hi_v, n in ((lo_q[0], hi_q[0], W), (lo_q[1], hi_q[1], H)):
        lo_i, hi_i = math.floor(lo_v), math.ceil(hi_v) + 1
        if lo_i < 0:
            hi_i = max(hi_i, -lo_i + 1)
        if hi_i > n:
            lo_i = min(lo_i, 2 * n - hi_i - 1)
        bounds.append((min(max(lo_i, 0), n - 1), max(min(hi_i, n), 1)))
    (x0, x1), (y0, y1) = bounds
    if x1 <= x0 or y1 <= y0:  # dst lies entirely outside src: only border content
        x0, x1, y0, y1 = 0, W, 0, H
    region = src[y0:y1, x0:x1]
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    m = shift @ m

    factor = math.floor(scale) if scale >= 2.0 else 1
    if factor > 1:
        rh, rw = region.shape[:2]
        sw, sh = max(1, round(rw / factor)), max(1, round(rh / factor))
        region = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
        # A region coordinate p becomes (p + 0.5) * (new / old) - 0.5 in the shrunk image.
        fx, fy = sw / rw, sh / rh
        m = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5], [0.0, 0.0, 1.0]]) @ m

    return cv2.warpAffine(
        region,
        m[:2],
        (dw, dh),
        flags=interpolation | cv2.WARP_INVERSE_MAP,
        borderMode=border,
        borderValue=0,
    )


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected an (H, W, 3) image, got shape {image.shape}")
    if image.dtype not in (np.uint8, np.float32, np.float64):
        raise ValueError(f"{name}: expected uint8 or float pixels, got {image.dtype}")
    return image


def align(frame: np.ndarray, transform: AlignTransform, *, border: str = "reflect") -> np.ndarray:
    """The (R, R, 3) FFHQ crop of an (H, W, 3) frame (uint8 or float, returned in the same dtype).

    Bicubic, antialiased when the crop shrinks the face (see `_resample`).

    `border="reflect"` (default) fills the parts of the quad outside the frame with the frame
    mirrored at its edge, as FFHQ does (FFHQ also blurs that padding; we do not, to keep the crop a
    pure function of the pixels). StyleGAN's FFHQ models never saw constant-coloured corners, so
    mirrored content inverts better than black. `border="constant"` fills with 0, which shows the
    frame's edge plainly; paste-back is the same with either, since it only writes inside the frame.
    """
    frame = _check_image(frame, "frame")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {sorted(BORDERS)}, got {border!r}")
    R = transform.resolution
    return _resample(
        frame, transform.frame_from_crop, (R, R), interpolation=cv2.INTER_CUBIC, border=BORDERS[border]
    )


# --------------------------------------------------------------------------------------------------
# Masks and paste-back


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def crop_mask(resolution: int, feather: float = 0.1) -> np.ndarray:
    """(R, R) float32 mask of the whole crop: 1 inside, falling smoothly to 0 at the crop's edge over
    `feather * R` pixels (0: a hard edge)."""
    R = int(resolution)
    d = np.minimum(np.arange(R) + 0.5, R - np.arange(R) - 0.5)  # distance of pixel centres to the edge
    ramp = np.ones(R) if feather <= 0 else _smoothstep(d / (feather * R))
    return np.outer(ramp, ramp).astype(np.float32)


def face_region_mask(
    crop_points: np.ndarray, resolution: int, feather: float = 0.05, forehead: float = 0.6
) -> np.ndarray:
    """(R, R) float32 mask of the face inside a crop: the convex hull of the 68 points (in crop
    pixels) extended upward over the forehead, with edges feathered over `feather * R` pixels.

    `forehead`: how far the brows are lifted, as a fraction of the brow-to-chin height. The mask's
    soft edge lies outside the hull by half the feather width and inside by the other half.
    """
    p = check_points(crop_points).reshape(68, 2)
    R = int(resolution)
    brows = p[17:27]
    lift = forehead * (p[8, 1] - brows[:, 1].mean())
    hull_points = np.concatenate([p, brows - np.array([0.0, lift])])
    hull = cv2.convexHull(np.round(hull_points * 16).astype(np.int32))  # 4 fractional bits
    canvas = np.zeros((R, R), np.uint8)  # antialiased filling needs 8-bit
    cv2.fillConvexPoly(canvas, hull, 255, lineType=cv2.LINE_AA, shift=4)
    mask = canvas.astype(np.float32) / 255.0
    if feather > 0:
        sigma = feather * R / 4  # ~95 % of the ramp within feather * R
        mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)
    return np.clip(mask, 0.0, 1.0)


def paste_back(
    frame: np.ndarray,
    crop: np.ndarray,
    transform: AlignTransform,
    *,
    feather: float = 0.1,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Put a (generated) R x R crop back into its frame; returns a new frame, same dtype.

    The crop is warped into the frame with `transform` and blended through a soft mask given in crop
    space: by default `crop_mask(R, feather)`, the whole crop with feathered edges; or pass `mask`
    (R, R) in [0, 1], e.g. `face_region_mask(points_in_crop, R)` to replace only the face. The whole
    crop is the default because a reenacted face moves its jaw, mouth and head outline, and a mask from
    any one set of landmarks would cut through the new outline; StyleGAN regenerates hair and
    background consistently with the face. Frame pixels where the mask is 0 are returned unchanged,
    bit for bit.
    """
    frame = _check_image(frame, "frame")
    crop = _check_image(crop, "crop")
    R = transform.resolution
    if crop.shape[:2] != (R, R):
        raise ValueError(f"crop is {crop.shape[:2]}, transform is for {R}x{R}")
    if mask is None:
        mask = crop_mask(R, feather)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != (R, R):
        raise ValueError(f"mask must be ({R}, {R}), got {mask.shape}")

    # Work only on the frame's box under the crop quad.
    H, W = frame.shape[:2]
    corners = transform.corners
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    roi_from_frame = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])  # roi point -> frame
    crop_from_roi = transform.crop_from_frame @ roi_from_frame
    size = (x1 - x0, y1 - y0)
    warped = _resample(
        crop.astype(np.float32),
        crop_from_roi,
        size,
        interpolation=cv2.INTER_CUBIC,
        border=cv2.BORDER_REPLICATE,
    )
    alpha = _resample(mask, crop_from_roi, size, interpolation=cv2.INTER_LINEAR, border=cv2.BORDER_CONSTANT)
    alpha = np.clip(alpha, 0.0, 1.0)[..., None]

    roi = out[y0:y1, x0:x1]
    blend = roi.astype(np.float32) * (1.0 - alpha) + warped * alpha
    if frame.dtype == np.uint8:
        blend = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    else:
        blend = blend.astype(frame.dtype)
    inside = alpha[..., 0] > 0
    roi[inside] = blend[inside]
    return out


# --------------------------------------------------------------------------------------------------
# Differentiable crop


def align_torch(
    images,
    frame_from_crop,
    resolution: int,
    *,
    padding_mode: str = "reflection",
    antialias: bool = True,
):
    """Differentiable FFHQ crop: (N, C, H, W) float images -> (N, C, R, R), bilinear grid_sample.

    `frame_from_crop`: (N, 3, 3) or (3, 3) matrices (numpy or torch), e.g. from
    `frame_from_crop_matrix(quads, R)` or `AlignTransform.frame_from_crop`; the result matches
    `align` up to the interpolation kernel (bilinear here, bicubic there). With `antialias`, images
    are first average-pooled by the integer factor floor(smallest scale in the batch) when that is 2
    or more, as `align` does per frame. Gradients flow to `images` (and to the matrices if they are
    tensors that require grad).
    """
    import torch
    import torch.nn.functional as F

    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    N, _, H, W = images.shape
    R = int(resolution)
    m = torch.as_tensor(frame_from_crop, dtype=images.dtype, device=images.device)
    if m.ndim == 2:
        m = m.expand(N, 3, 3)
    if m.shape != (N, 3, 3):
        raise ValueError(f"expected ({N}, 3, 3) matrices, got {tuple(m.shape)}")

    if antialias:
        scale = torch.sqrt(torch.abs(torch.linalg.det(m[:, :2, :2]))).min().item()
        factor = math.floor(scale) if scale >= 2.0 else 1
        if factor > 1 and min(H, W) >= factor:
            images = F.avg_pool2d(images, factor, stride=factor)
            # frame pixel p -> pooled pixel (p + 0.5) / factor - 0.5
            pool = images.new_tensor(
                [
                    [1 / factor, 0.0, 0.5 / factor - 0.5],
                    [0.0, 1 / factor, 0.5 / factor - 0.5],
                    [0.0, 0.0, 1.0],
                ]
            )
            m = pool @ m
            H, W = images.shape[-2:]

    # grid_sample's normalised coordinates (align_corners=False): n = (2 p + 1) / size - 1.
    to_norm = images.new_tensor(
        [[2.0 / W, 0.0, 1.0 / W - 1.0], [0.0, 2.0 / H, 1.0 / H - 1.0], [0.0, 0.0, 1.0]]
    )
    from_norm_crop = images.new_tensor(
        [[R / 2, 0.0, R / 2 - 0.5], [0.0, R / 2, R / 2 - 0.5], [0.0, 0.0, 1.0]]
    )
    theta = (to_norm @ m @ from_norm_crop)[:, :2]
    grid = F.affine_grid(theta, [N, images.shape[1], R, R], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
