"""The landmark-backend interface, the backend registry, and the iBUG 68-point groups.

Every landmark net sits behind one small interface (as face-alignment does for its detectors):

    backend = load_landmark_backend("faceapi")           # or "fan"
    result = backend(images, boxes)                       # LandmarkResult
    result.points                                         # (N, 68, 2) pixel x, y in iBUG order

Conventions shared by all backends:
- images: float tensors (N, 3, H, W), RGB in [0, 1], any size.
- boxes: optional (N, 4) face boxes x0, y0, x1, y1 in pixels of the input images, the project's box
  convention (models/detection.py: a detector's box or `box_from_landmarks`). None means each image
  *is* the face crop (an aligned crop): the whole image, padded to a square, is what the net sees.
- points, boxes, crops: pixel coordinates with pixel centres at integers (OpenCV's and dlib's
  convention, docs/faces.md), so a whole W x H image spans -0.5 .. W - 0.5. Points are in iBUG
  order (`IBUG_GROUPS`; the index ranges and the mirror table live in models/face_shape.py).
- Cropping and resizing happen inside the backend with `crop_square` (models.alignment.align_torch,
  grid_sample), so gradients reach the input images; `backend.differentiable` says whether `points`
  carry them too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.alignment import align_torch
from models.face_shape import (
    BROW_LEFT,
    BROW_RIGHT,
    EYE_LEFT,
    EYE_RIGHT,
    JAW,
    MOUTH_INNER,
    MOUTH_OUTER,
    NOSE_BRIDGE,
    NOSE_LOWER,
    NUM_POINTS,
)
from storage.errors import InputError

NUM_LANDMARKS = NUM_POINTS

# The groups of the 68-point scheme in the order the landmark loss weights them (the index ranges are
# face_shape.py's; "left"/"right" are image sides: the subject's right eye, 36-41, is eye_left).
IBUG_GROUPS: dict[str, slice] = {
    "jaw": JAW,
    "brow_left": BROW_LEFT,
    "brow_right": BROW_RIGHT,
    "nose_bridge": NOSE_BRIDGE,
    "nose_lower": NOSE_LOWER,
    "eye_left": EYE_LEFT,
    "eye_right": EYE_RIGHT,
    "mouth_outer": MOUTH_OUTER,
    "mouth_inner": MOUTH_INNER,
}


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

    @torch.no_grad()
    def predict_frame(self, frame: np.ndarray, box=None) -> np.ndarray:
        """(68, 2) float64 landmarks of one (H, W, 3) uint8 RGB frame in `box` (x0, y0, x1, y1, or a
        models.detection.FaceBox; None: the frame is the face crop). This is the `landmarks_fn` that
        models.detection.FaceTracker takes: `FaceTracker(detector, backend.predict_frame)`."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.dtype} {frame.shape}")
        param = next(self.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if not frame.flags.writeable:  # torch warns about read-only arrays (e.g. from PIL); we never write
            frame = frame.copy()
        image = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None].float() / 255
        boxes = None
        if box is not None:
            coords = box.as_array() if hasattr(box, "as_array") else np.asarray(box, dtype=np.float64)
            boxes = torch.as_tensor(coords[:4], dtype=torch.float32, device=device)[None]
        return self(image, boxes).points[0].double().cpu().numpy()

    def square_crops(
        self,
        images: torch.Tensor,               # (N, 3, H, W) RGB in [0, 1]
        boxes: torch.Tensor | None,         # (N, 4) x0, y0, x1, y1 face boxes; None: the whole images
        size: int,                          # side of the crops, the net's input size
        frame: Callable[[torch.Tensor], torch.Tensor] | None = None,  # box -> the square the net
                                            # sees; None: `square_boxes` (the box grown to a square)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs checked, then the square regions the net sees ((N, 4): each box framed by
        `frame`, or each whole image squared) and their (N, 3, size, size) crops (`crop_square`; a
        whole image already size x size is its own crop).
        Every backend's first step; `crop_to_image_points(points, regions, size)` is the way back."""
        self.check_inputs(images, boxes)
        if boxes is None:
            regions = square_boxes(whole_image_boxes(images))
            if tuple(images.shape[-2:]) == (size, size):  # the image is the crop (e.g. a 256 px render
                return regions, images                    # for FAN): resampling gives the same pixels
        else:
            regions = (frame or square_boxes)(boxes.to(images))
        return regions, crop_square(images, regions, size)

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
    """(N, 4) boxes covering each whole image: -0.5, -0.5, W - 0.5, H - 0.5."""
    n, _, h, w = images.shape
    return torch.tensor([-0.5, -0.5, w - 0.5, h - 0.5], device=images.device).expand(n, 4)


def crop_matrices(regions: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, 3) frame-from-crop matrices of `size` x `size` crops of (N, 4) regions (their outer
    edges in image pixel coordinates): crop pixel j's centre is at x0 + (j + 0.5) (x1 - x0) / size."""
    step = (regions[:, 2:] - regions[:, :2]) / size  # (N, 2)
    origin = regions[:, :2] + step / 2
    zero, one = torch.zeros_like(step[:, 0]), torch.ones_like(step[:, 0])
    rows = [torch.stack([step[:, 0], zero, origin[:, 0]], -1),
            torch.stack([zero, step[:, 1], origin[:, 1]], -1),
            torch.stack([zero, zero, one], -1)]
    return torch.stack(rows, dim=1)


def crop_square(images: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, size, size) crops of (N, 4) regions of `images`: bilinear, zeros outside the image
    (face-api pads with black), the images average-pooled first where a region is shrunk 2x or more
    (align_torch's anti-aliasing). Differentiable in the images (and the regions)."""
    return align_torch(images, crop_matrices(regions.to(images.dtype), size), size,
                       padding_mode="zeros", antialias=True)


def crop_to_image_points(points: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """Map (N, P, 2) points in pixel coordinates of the crops `crop_square` made of `regions` back to
    pixel coordinates of the images."""
    m = crop_matrices(regions.to(points.dtype), size)
    return points @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]


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
