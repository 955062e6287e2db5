"""The landmark-backend interface, the backend registry, and the iBUG 68-point groups.

Every landmark net sits behind one small interface (as face-alignment does for its detectors):

    backend = load_landmark_backend("faceapi")           # or "fan"
    result = backend(images, boxes)                       # LandmarkResult
    result.points                                         # (N, 68, 2) pixel x, y in iBUG order

Conventions shared by all backends:
- images: float tensors (N, 3, H, W), RGB in [0, 1], any size.
- boxes: optional (N, 4) face boxes x0, y0, x1, y1 in pixels of the input images (a face detector's
  box). None means each image *is* the face crop (an aligned crop): the whole image, padded to a
  square, is what the net sees.
- points: pixel coordinates of the input images where (0, 0) is the centre of the top-left pixel
  (dlib's and OpenCV's convention), in iBUG order (`IBUG_GROUPS`).
- Cropping and resizing happen inside the backend with `crop_square` (grid_sample), so gradients
  reach the input images; `backend.differentiable` says whether `points` carry them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from storage.errors import InputError

NUM_LANDMARKS = 68

# iBUG 300-W 68-point scheme, 0-based, end exclusive. "left"/"right" are as seen in the image: the
# subject's right brow and eye (17-21, 36-41) are on the image's left.
IBUG_GROUPS: dict[str, range] = {
    "jaw": range(0, 17),
    "brow_left": range(17, 22),
    "brow_right": range(22, 27),
    "nose_bridge": range(27, 31),
    "nose_lower": range(31, 36),
    "eye_left": range(36, 42),
    "eye_right": range(42, 48),
    "lip_outer": range(48, 60),
    "lip_inner": range(60, 68),
}
assert sum(len(r) for r in IBUG_GROUPS.values()) == NUM_LANDMARKS

# The point each point becomes when the image is mirrored left-right (jaw and brows reverse, the
# nose bridge stays, eyes and lips swap sides keeping their contour order from the outer corner).
IBUG_MIRROR: tuple[int, ...] = (
    *range(16, -1, -1),                      # jaw
    *range(26, 21, -1), *range(21, 16, -1),  # brows
    27, 28, 29, 30,                          # nose bridge
    35, 34, 33, 32, 31,                      # lower nose
    45, 44, 43, 42, 47, 46,                  # left eye <- right eye
    39, 38, 37, 36, 41, 40,                  # right eye <- left eye
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lip
    64, 63, 62, 61, 60, 67, 66, 65,          # inner lip
)
assert sorted(IBUG_MIRROR) == list(range(NUM_LANDMARKS))


def landmark_group_ids() -> torch.Tensor:
    """(68,) long tensor: the index into `IBUG_GROUPS` (in its order) of each point's group."""
    ids = torch.empty(NUM_LANDMARKS, dtype=torch.long)
    for gid, idx in enumerate(IBUG_GROUPS.values()):
        ids[idx.start:idx.stop] = gid
    return ids


def group_weights(weights: dict[str, float]) -> torch.Tensor:
    """(68,) per-point weights from per-group weights (every group must be given)."""
    missing = set(IBUG_GROUPS) - set(weights)
    unknown = set(weights) - set(IBUG_GROUPS)
    if missing or unknown:
        raise ValueError(f"group weights: missing {sorted(missing)}, unknown {sorted(unknown)}")
    per_group = torch.tensor([float(weights[g]) for g in IBUG_GROUPS])
    return per_group[landmark_group_ids()]


@dataclass
class LandmarkResult:
    """What a backend returns for a batch.

    points:   (N, 68, 2) float, x, y in pixels of the input images (pixel centres at integers).
    heatmaps: (N, 68, h, w) the net's heatmaps where it has them (FAN: 64 x 64), else None.
    crops:    (N, 4) x0, y0, x1, y1 of the square region of each image the net saw.
    """

    points: torch.Tensor
    heatmaps: torch.Tensor | None = None
    crops: torch.Tensor | None = None


class LandmarkBackend(torch.nn.Module):
    """A 68-point landmark net behind the common interface (see the module docstring).

    Subclasses set `name` and `differentiable` (True when `points` carry gradients to the images) and
    implement `forward(images, boxes=None) -> LandmarkResult`. `provenance()` is what a cached
    landmark records.
    """

    name: str = "?"
    differentiable: bool = False

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> LandmarkResult:
        raise NotImplementedError

    def provenance(self) -> dict:
        raise NotImplementedError

    @staticmethod
    def check_inputs(images: torch.Tensor, boxes: torch.Tensor | None) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be float (N, 3, H, W) RGB in [0, 1], got "
                             f"{tuple(images.shape)} {images.dtype}")
        if boxes is not None and tuple(boxes.shape) != (images.shape[0], 4):
            raise ValueError(f"boxes must be (N, 4) x0, y0, x1, y1 with N={images.shape[0]}, "
                             f"got {tuple(boxes.shape)}")


# ---------------------------------------------------------------------------------------------------
# Differentiable cropping shared by the backends.


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Grow (N, 4) boxes to squares about their centres (the side is the longer side): what face-api
    does by padding a crop to a square, centred."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1, keepdim=True) / 2
    return torch.cat([centre - half, centre + half], dim=1)


def whole_image_boxes(images: torch.Tensor) -> torch.Tensor:
    """(N, 4) boxes covering each whole image (edges at 0 and W, H)."""
    n, _, h, w = images.shape
    return torch.tensor([0.0, 0.0, float(w), float(h)], device=images.device).expand(n, 4)


def crop_square(images: torch.Tensor, regions: torch.Tensor, size: int, max_supersample: int = 8
                ) -> torch.Tensor:
    """Resample square `regions` (N, 4: x0, y0, x1, y1 of pixel *edges*, so a whole W x H image is
    0, 0, W, H) of `images` to (N, C, size, size), bilinearly, zeros outside the image.

    Differentiable with respect to the images (and the regions). When a region is more than `size`
    pixels wide it is sampled on a k-times finer grid and box-averaged (k = the downscale factor,
    at most `max_supersample`), so that large faces are not aliased.
    """
    n, _, h, w = images.shape
    regions = regions.to(images.dtype)
    scale = float(((regions[:, 2] - regions[:, 0]).detach().abs().max() / size).clamp(min=1.0))
    k = min(max_supersample, math.ceil(scale - 1e-6))
    fine = size * k
    t = (torch.arange(fine, device=images.device, dtype=images.dtype) + 0.5) / fine  # (fine,)
    xs = regions[:, 0:1] + t[None] * (regions[:, 2:3] - regions[:, 0:1])  # (N, fine) edge coords
    ys = regions[:, 1:2] + t[None] * (regions[:, 3:4] - regions[:, 1:2])
    # grid_sample with align_corners=False: normalised -1 and 1 are the outer pixel edges.
    gx = (2 * xs / w - 1)[:, None, :].expand(n, fine, fine)
    gy = (2 * ys / h - 1)[:, :, None].expand(n, fine, fine)
    grid = torch.stack([gx, gy], dim=-1)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if k > 1:
        out = F.avg_pool2d(out, k)
    return out


def crop_to_image_points(points: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """Map (N, P, 2) points in pixel coordinates of a `size` x `size` crop made by `crop_square` from
    `regions` (crop pixel j's centre at j) back to pixel coordinates of the image."""
    x0y0 = regions[:, None, :2].to(points)
    step = ((regions[:, 2:] - regions[:, :2]) / size)[:, None, :].to(points)
    return x0y0 + (points + 0.5) * step - 0.5


# ---------------------------------------------------------------------------------------------------
# Registry.

_BACKENDS: dict[str, Callable[..., LandmarkBackend]] = {}


def register_landmark_backend(name: str, factory: Callable[..., LandmarkBackend]) -> None:
    """Make a backend available to `load_landmark_backend(name)`; factory(weights=...) -> backend."""
    _BACKENDS[name] = factory


def _builtin_backends() -> None:
    if "faceapi" not in _BACKENDS:
        from models.landmarks.faceapi import FaceApiLandmarks

        register_landmark_backend("faceapi", FaceApiLandmarks.from_weights)
    if "fan" not in _BACKENDS:
        from models.landmarks.fan import FanLandmarks

        register_landmark_backend("fan", FanLandmarks.from_weights)


def available_landmark_backends() -> list[str]:
    _builtin_backends()
    return sorted(_BACKENDS)


def load_landmark_backend(name: str = "faceapi", device: str | torch.device = "cpu",
                          weights: str | Path | None = None, **options) -> LandmarkBackend:
    """The named landmark backend with its weights, in eval mode, on `device`.

    name:    "faceapi" (offline default: vendored weights) or "fan" (Bulat's FAN; weights from the
             torch hub cache or `weights`).
    weights: a weight file to use instead of the backend's default.
    options: backend-specific settings (e.g. FAN's `coordinates`).
    """
    _builtin_backends()
    if name not in _BACKENDS:
        raise InputError(f"unknown landmark backend {name!r} (known: {', '.join(sorted(_BACKENDS))})")
    backend = _BACKENDS[name](weights=weights, **options)
    return backend.to(device).eval()
