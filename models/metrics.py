"""Reenactment metrics: functions over arrays/tensors, for `facereenact evaluate`, the flows and the
benchmarks.

    landmark_nme(points, targets)                   # (T,) mean point error / inter-ocular distance
    identity_similarity_to_source(frames, source)   # (T,) cosine of face-api recognition descriptors
    identity_distance_to_source(frames, source)     # (T,) their Euclidean distance (dlib: < 0.6 same)
    landmark_jitter(points)                         # mean |second difference| of landmarks, pixels
    seconds_per_frame(seconds, num_frames)

Landmarks are (T, 68, 2) x, y pixels in iBUG order (any one crop size); frames are (T, H, W, 3) uint8
RGB or float tensors (T, 3, H, W) in [-1, 1] (the generator's range). docs/projection.md defines each.
"""

from __future__ import annotations

import numpy as np
import torch

# Outer eye corners (iBUG 36 and 45): the "inter-ocular" normalisation of the 300-W benchmark.
OUTER_EYE_CORNERS = (36, 45)


def _points(points, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points)
    t = t.detach().to(torch.float64)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or tuple(t.shape[1:]) != (68, 2):
        raise ValueError(f"{name}: expected (T, 68, 2) landmarks, got {tuple(t.shape)}")
    return t


def inter_ocular_distance(points) -> torch.Tensor:
    """(T,) distance between the outer eye corners, points 36 and 45 (300-W's normalisation)."""
    p = _points(points, "points")
    return torch.linalg.vector_norm(p[:, OUTER_EYE_CORNERS[0]] - p[:, OUTER_EYE_CORNERS[1]], dim=-1)


def landmark_nme(points, targets) -> torch.Tensor:
    """Normalised mean error per frame, (T,): the mean over the 68 points of the Euclidean distance
    between `points` and `targets`, divided by the target's inter-ocular distance (outer eye corners,
    36-45). A frame with a non-finite point or a zero inter-ocular distance gives NaN."""
    p, q = _points(points, "points"), _points(targets, "targets")
    if p.shape != q.shape:
        raise ValueError(f"landmark_nme: {tuple(p.shape)} points against {tuple(q.shape)} targets")
    iod = inter_ocular_distance(q)
    err = torch.linalg.vector_norm(p - q, dim=-1).mean(dim=1)
    return torch.where(iod > 0, err / iod.clamp(min=1e-12), torch.full_like(err, float("nan")))


def landmark_jitter(points, normalize: bool = False) -> float:
    """Temporal jitter of a landmark track: the mean over frames t = 1 .. T-2 and the 68 points of
    |p_{t+1} - 2 p_t + p_{t-1}| (Euclidean length of the second difference), in pixels; with
    `normalize`, each frame's value divided by its inter-ocular distance. Motion at constant velocity
    scores 0; a point alternating between x - a and x + a scores 4a. Needs T >= 3."""
    p = _points(points, "points")
    if p.shape[0] < 3:
        raise ValueError(f"landmark_jitter needs at least 3 frames, got {p.shape[0]}")
    second = torch.linalg.vector_norm(p[2:] - 2 * p[1:-1] + p[:-2], dim=-1).mean(dim=1)  # (T-2,)
    if normalize:
        second = second / inter_ocular_distance(p)[1:-1]
    return float(second.mean())


def latent_jitter(latents) -> float:
    """The same second difference on latents (T, ...): mean over frames of the Euclidean norm of
    w_{t+1} - 2 w_t + w_{t-1} (over all W+ coordinates)."""
    w = torch.as_tensor(np.asarray(latents) if not isinstance(latents, torch.Tensor) else latents)
    w = w.detach().to(torch.float64).flatten(1)
    if w.shape[0] < 3:
        raise ValueError(f"latent_jitter needs at least 3 frames, got {w.shape[0]}")
    return float(torch.linalg.vector_norm(w[2:] - 2 * w[1:-1] + w[:-2], dim=1).mean())


def _images(frames, name: str) -> torch.Tensor:
    """(T, H, W, 3) uint8 or (T, 3, H, W) float in [-1, 1] -> float (T, 3, H, W) in [-1, 1]."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise ValueError(f"{name}: numpy frames must be uint8 (T, H, W, 3), got {frames.dtype}")
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    t = torch.as_tensor(frames)
    if t.dtype == torch.uint8:
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[-1] != 3:
            raise ValueError(f"{name}: uint8 frames must be (T, H, W, 3), got {tuple(t.shape)}")
        return t.permute(0, 3, 1, 2).float() / 127.5 - 1
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != 3 or not t.is_floating_point():
        raise ValueError(f"{name}: float frames must be (T, 3, H, W) in [-1, 1], got {tuple(t.shape)}")
    return t.detach().float()


@torch.no_grad()
def identity_descriptors(frames, source, frame_points=None, source_points=None, identity=None,
                         batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Face-api recognition descriptors (models.identity, a port of dlib's ResNet) of the frames
    (T, 128) and of the source (1, 128). Faces are cut into dlib chips from their landmarks
    (`frame_points` (T, 68, 2), `source_points` (68, 2), pixels of the images); without them the
    images are taken as FFHQ-aligned crops and `losses.ffhq_mean_landmarks` stands in (as the identity
    loss does). `identity`: a models.losses.IdentityLoss to reuse."""
    from models.losses import IdentityLoss

    identity = identity if identity is not None else IdentityLoss()
    device = next(identity.parameters()).device
    images = _images(frames, "frames")
    src = _images(source, "source")
    if src.shape[0] != 1:
        raise ValueError(f"source: one image, got {src.shape[0]}")
    sp = None if source_points is None else _points(source_points, "source_points").float().to(device)
    ref = identity.embed(src.to(device), sp)
    out = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch].to(device)
        fp = (None if frame_points is None else
              _points(frame_points, "frame_points")[start:start + batch].float().to(device))
        out.append(identity.embed(chunk, fp).cpu())
    return torch.cat(out), ref.cpu()


def identity_similarity_to_source(frames, source, frame_points=None, source_points=None,
                                  identity=None, batch: int = 16) -> torch.Tensor:
    """(T,) cosine similarity of each frame's identity descriptor to the source's (see
    `identity_descriptors`). 1 = the same descriptor. The descriptors are not normalised and unrelated
    images still score high (noise against the astronaut's face: 0.88), so compare values, and see
    `identity_distance_to_source` for dlib's own measure."""
    descriptors, ref = identity_descriptors(frames, source, frame_points, source_points, identity, batch)
    return torch.nn.functional.cosine_similarity(descriptors, ref, dim=-1)


def identity_distance_to_source(frames, source, frame_points=None, source_points=None,
                                identity=None, batch: int = 16) -> torch.Tensor:
    """(T,) Euclidean distance of each frame's identity descriptor to the source's: dlib's measure,
    which calls two faces the same person below 0.6."""
    descriptors, ref = identity_descriptors(frames, source, frame_points, source_points, identity, batch)
    return torch.linalg.vector_norm(descriptors - ref, dim=-1)


def seconds_per_frame(seconds: float, num_frames: int) -> float:
    """Wall time per output frame (sub-frames, which cost a render each but no optimisation, are not
    counted as frames)."""
    if num_frames < 1:
        raise ValueError(f"seconds_per_frame: num_frames must be >= 1, got {num_frames}")
    return float(seconds) / num_frames
