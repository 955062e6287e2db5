"""Reenactment by latent directions (Bounareli et al., "Finding directions in GAN's latent space for
neural face reenactment", sections 3.1-3.2): Δw = A Δp, one matrix per generator.

    pose = PoseVector.fit(points, expression_dims=8)       # points: (M, 68, 2) of G's own samples
    p = pose(points)                                       # (N, 3 + m_e), each element in about [-a, a]
    A = DirectionMatrix(pose.dims, num_ws=G.num_ws, w_dim=G.w_dim, layers=8)
    w_r = w_s + A(p_t - p_s)                               # (N, num_ws, w_dim): the first 8 rows move
    target = pose.target_shape(points_s, p_t)              # source identity, target pose/expression
    loss = reenactment_loss(points_r, target, scale)       # shape + eye + mouth inner distances

The facial pose vector p = [yaw, pitch, roll, e_1 .. e_m] comes from 68 iBUG landmarks (the paper
takes it from DECA's 3D face model, which cannot be had offline here):

- Head pose: a weak-perspective (scaled orthographic) rigid fit of `MEAN_FACE_3D`, a 68-point 3D face,
  to the points. The affine 2 x 3 projection is the least-squares solution (a fixed 68 x 3 matrix
  times the centred points); its two rows are made orthonormal ((M M^T)^-1/2 M), the third row of R is
  their cross product and the Euler angles are read from R = Rz(roll) Ry(yaw) Rx(pitch). Closed form,
  differentiable. Axes: x right, y down (image), z into the image (right-handed); positive yaw moves
  the nose tip to the image left, positive pitch moves it down, positive roll turns the face
  clockwise on screen. Angles in radians.
- `MEAN_FACE_3D`: x, y are models.face_shape.MEAN_SHAPE_68 (dlib's points on one photo, symmetrised;
  RMS radius 1); z is our own anthropometric estimate per point (eye corners at 0, nose tip 0.45 in
  front, jaw contour up to 0.8 behind at the ears; same units), not a measured population mean.
- Expression: each point is lifted to 3D with the fitted model's depth, rotated back to frontal and
  unscaled (`normalise`); the frontal x, y minus the model's are the expression features (136 numbers)
  and e are their coefficients on a PCA basis of `expression_dims` components fitted on landmarks of
  the generator's own samples (and inverted frames when a cache is given). Unlike a 3DMM's expression
  basis this one also holds identity shape variation (no identity/expression split is possible from
  2-D points of different people); docs/directions.md discusses it.
- Scaling: each element is mapped from its fitted range (the `percentile` .. 100 - `percentile`
  quantiles of the fitting samples) to [-a, a], as the paper does (it fits 10,000 generated images).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.face_shape import MEAN_SHAPE_68
from models.training_files import check_envelope

__all__ = [
    "ANGLE_NAMES",
    "EYE_PAIRS",
    "FIT_WEIGHTS",
    "MEAN_FACE_3D",
    "MOUTH_PAIRS",
    "DirectionMatrix",
    "PoseVector",
    "euler_from_rotation",
    "check_directions_for",
    "fit_rigid",
    "inner_distances",
    "read_directions_checkpoint",
    "reenactment_loss",
    "rotation_from_euler",
]

ANGLE_NAMES = ("yaw", "pitch", "roll")
NUM_POINTS = 68

# Depth (z, into the image) of each iBUG point, in MEAN_SHAPE_68's units (RMS radius 1, face about
# 2.7 wide): our estimate from facial anthropometry (eye corners at 0, the nose tip 0.45 in front,
# lips about 0.2 in front, the jaw contour curving back to 0.8 at the ears). Data, hand-set.
_DEPTH = np.array(
    [0.80, 0.70, 0.60, 0.50, 0.40, 0.30, 0.18, 0.06, 0.00,  # jaw, right to chin
     0.06, 0.18, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80]  # jaw, chin to left
    + [0.20, 0.05, -0.05, -0.08, -0.08, -0.08, -0.08, -0.05, 0.05, 0.20]  # brows
    + [-0.05, -0.15, -0.28, -0.45]  # nose bridge
    + [-0.12, -0.20, -0.27, -0.20, -0.12]  # nose lower
    + [0.15, 0.00, 0.00, 0.05, 0.02, 0.02, 0.05, 0.00, 0.00, 0.15, 0.02, 0.02]  # eyes
    + [0.00, -0.12, -0.18, -0.20, -0.18, -0.12, 0.00, -0.10, -0.15, -0.17, -0.15, -0.10]  # outer lip
    + [0.00, -0.12, -0.14, -0.12, 0.00, -0.10, -0.12, -0.10],  # inner lip
    dtype=np.float64,
)
MEAN_FACE_3D = np.concatenate([MEAN_SHAPE_68, _DEPTH[:, None]], axis=1)
MEAN_FACE_3D.setflags(write=False)

# Inner-distance pairs of the eye and mouth losses (paper eq. 5): upper and lower eyelid points of each
# eye; upper and lower lip points of the inner and the outer mouth outline.
EYE_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))
MOUTH_PAIRS = ((61, 67), (62, 66), (63, 65), (50, 58), (51, 57), (52, 56))


def _check_points(points: torch.Tensor, name: str = "points") -> torch.Tensor:
    if not isinstance(points, torch.Tensor):
        points = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    if points.ndim != 3 or tuple(points.shape[1:]) != (NUM_POINTS, 2):
        raise ValueError(f"{name}: expected (N, 68, 2) landmarks, got shape {tuple(points.shape)}")
    return points if points.is_floating_point() else points.float()


# ---------------------------------------------------------------------------------------------------
# Rotations


def rotation_from_euler(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) yaw, pitch, roll (radians) -> (N, 3, 3) R = Rz(roll) Ry(yaw) Rx(pitch)."""
    yaw, pitch, roll = angles.unbind(-1)
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def euler_from_rotation(R: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations -> (N, 3) yaw, pitch, roll (radians), the inverse of `rotation_from_euler`
    for |yaw| < 90 degrees. atan2 throughout (no asin), so gradients stay finite."""
    yaw = torch.atan2(-R[:, 2, 0], torch.sqrt(R[:, 2, 1].square() + R[:, 2, 2].square() + 1e-12))
    pitch = torch.atan2(R[:, 2, 1], R[:, 2, 2])
    roll = torch.atan2(R[:, 1, 0], R[:, 0, 0])
    return torch.stack([yaw, pitch, roll], -1)


# Weights of the points in the rigid fit: the jaw and the mouth move with expression (an open mouth
# moves the lower lip and the chin down, which an unweighted fit partly reads as pitch), so they count
# a quarter of the brows, eyes and nose.
FIT_WEIGHTS = np.array([0.25] * 17 + [1.0] * 31 + [0.25] * 20)


def _model_solver(model: torch.Tensor) -> torch.Tensor:
    """(68, 3) K with M = P_c^T K the weighted least-squares 2 x 3 projection of the model onto the
    points, both centred on their FIT_WEIGHTS-weighted means: K = W X_c (X_c^T W X_c)^-1, W the weights
    normalised to sum 1."""
    w = torch.as_tensor(FIT_WEIGHTS / FIT_WEIGHTS.sum(), dtype=model.dtype)
    xc = model - (w[:, None] * model).sum(dim=0, keepdim=True)
    wx = w[:, None] * xc
    return wx @ torch.linalg.inv(xc.T @ wx)


def fit_rigid(points: torch.Tensor, model: torch.Tensor, solver: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weak-perspective fit of a (68, 3) model to (N, 68, 2) points: (R (N, 3, 3), scale (N,),
    translation (N, 2)), points ~ scale * (R model)[:, :2] + translation. Differentiable."""
    points = _check_points(points)
    model = model.to(points)
    solver = _model_solver(model) if solver is None else solver.to(points)
    w = torch.as_tensor(FIT_WEIGHTS / FIT_WEIGHTS.sum(), dtype=points.dtype, device=points.device)
    centre = (w[:, None] * points).sum(dim=1, keepdim=True)
    m = (points - centre).transpose(1, 2) @ solver                     # (N, 2, 3)
    # the nearest pair of orthonormal rows: Q = (M M^T)^(-1/2) M (symmetric orthonormalisation, so a
    # rotation of the points in the image plane rotates Q the same way and changes roll only; Gram-
    # Schmidt would favour the first row). 2 x 2 square root in closed form: sqrt(S) = (S + sqrt(det S)
    # I) / sqrt(tr S + 2 sqrt(det S)).
    gram = m @ m.transpose(1, 2)                                       # (N, 2, 2), S = M M^T
    root_det = torch.sqrt(torch.linalg.det(gram).clamp_min(1e-12))
    eye = torch.eye(2, dtype=m.dtype, device=m.device)
    root = (gram + root_det[:, None, None] * eye) / torch.sqrt(
        gram.diagonal(dim1=1, dim2=2).sum(-1) + 2 * root_det).clamp_min(1e-9)[:, None, None]
    q = torch.linalg.inv(root) @ m
    r1, r2 = q[:, 0], q[:, 1]
    r3 = torch.linalg.cross(r1, r2, dim=-1)
    R = torch.stack([r1, r2, r3], dim=1)
    scale = root.diagonal(dim1=1, dim2=2).sum(-1) / 2                  # mean singular value of M
    model_centre = (w[:, None] * model).sum(dim=0)
    translation = centre.squeeze(1) - scale[:, None] * (model_centre @ R.transpose(1, 2))[:, :2]
    return R, scale, translation


# ---------------------------------------------------------------------------------------------------
# The facial pose vector


class PoseVector(nn.Module):
    """68 landmarks (N, 68, 2) -> p (N, 3 + expression_dims) = [yaw, pitch, roll, e_1 ..], each element
    rescaled from its fitted range to [-a, a]. Build with `fit`; a checkpoint stores `state()` and
    rebuilds with `from_state`. `definition()` is what provenance records."""

    def __init__(self, expression_mean: torch.Tensor, expression_basis: torch.Tensor, low: torch.Tensor,
                 high: torch.Tensor, a: float = 1.0, percentile: float = 0.5, samples: int = 0) -> None:
        super().__init__()
        m = expression_basis.shape[0]
        width = NUM_POINTS * 2
        if tuple(expression_basis.shape) != (m, width) or tuple(expression_mean.shape) != (width,):
            raise ValueError(f"expression basis must be (m, 136) and its mean (136,), got "
                             f"{tuple(expression_basis.shape)} and {tuple(expression_mean.shape)}")
        if tuple(low.shape) != (3 + m,) or tuple(high.shape) != (3 + m,):
            raise ValueError(f"ranges must be ({3 + m},), got {tuple(low.shape)} and {tuple(high.shape)}")
        if not bool((high > low).all()):
            raise ValueError("every element of p needs a fitted range with high > low")
        if not a > 0:
            raise ValueError(f"a must be > 0, got {a}")
        model = torch.tensor(MEAN_FACE_3D, dtype=torch.float32)
        self.register_buffer("model", model)
        self.register_buffer("solver", _model_solver(model.double()).float())
        self.register_buffer("expression_mean", expression_mean.float())
        self.register_buffer("expression_basis", expression_basis.float())
        self.register_buffer("low", low.float())
        self.register_buffer("high", high.float())
        self.a, self.percentile, self.samples = float(a), float(percentile), int(samples)

    @property
    def expression_dims(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def dims(self) -> int:
        return 3 + self.expression_dims

    # -- measuring --------------------------------------------------------------------------------

    def normalise(self, points: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frontal 3-D shape (N, 68, 3) in model units, R, scale, translation): each point lifted
        with the fitted model's depth, rotated back to frontal and unscaled."""
        points = _check_points(points)
        R, scale, translation = fit_rigid(points, self.model, self.solver)
        posed = self.model.to(points) @ R.transpose(1, 2)              # (N, 68, 3) model in camera axes
        xy = (points - translation[:, None]) / scale[:, None, None]
        camera = torch.cat([xy, posed[..., 2:]], dim=-1)
        return camera @ R, R, scale, translation                         # R^T applied to each point

    def features(self, frontal: torch.Tensor) -> torch.Tensor:
        """(N, 136) expression features: frontal x, y minus the model's."""
        return (frontal[..., :2] - self.model[:, :2].to(frontal)).flatten(1)

    def raw(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3 + m) unscaled p: angles in radians, expression coefficients in model units."""
        frontal, R, _, _ = self.normalise(points)
        coeffs = (self.features(frontal) - self.expression_mean) @ self.expression_basis.T
        return torch.cat([euler_from_rotation(R), coeffs], dim=-1)

    def scale(self, raw: torch.Tensor) -> torch.Tensor:
        return self.a * (2 * (raw - self.low) / (self.high - self.low) - 1)

    def unscale(self, p: torch.Tensor) -> torch.Tensor:
        return self.low + (p / self.a + 1) * (self.high - self.low) / 2

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.scale(self.raw(points))

    def target_shape(self, points: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        """(N, 68, 2) landmarks with the identity (frontal shape less its expression), position and
        scale of `points` and the head pose and expression of scaled `p_target`: the ground-truth shape
        S_gt of the reenactment loss (paper eq. 4). target_shape(points, pose(points)) == points."""
        frontal, R, scale, translation = self.normalise(points)
        raw_s = torch.cat([euler_from_rotation(R),
                           (self.features(frontal) - self.expression_mean) @ self.expression_basis.T], -1)
        raw_t = self.unscale(p_target)
        delta = ((raw_t[:, 3:] - raw_s[:, 3:]) @ self.expression_basis).reshape(-1, NUM_POINTS, 2)
        shape = frontal + torch.cat([delta, torch.zeros_like(delta[..., :1])], dim=-1)
        R_t = rotation_from_euler(raw_t[:, :3])
        return scale[:, None, None] * (shape @ R_t.transpose(1, 2))[..., :2] + translation[:, None]

    # -- fitting and storing ------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def fit(cls, points: torch.Tensor, expression_dims: int = 8, a: float = 1.0,
            percentile: float = 0.5) -> PoseVector:
        """Fit the expression basis (PCA) and each element's range on (M, 68, 2) landmarks."""
        points = _check_points(points).double()
        if not 1 <= expression_dims <= NUM_POINTS * 2:
            raise ValueError(f"expression_dims must be in 1..136, got {expression_dims}")
        if points.shape[0] < expression_dims + 2:
            raise ValueError(f"fitting {expression_dims} expression components needs at least "
                             f"{expression_dims + 2} landmark sets, got {points.shape[0]}")
        if not bool(torch.isfinite(points).all()):
            raise ValueError("landmarks to fit on contain non-finite values")
        if not 0 <= percentile < 50:
            raise ValueError(f"percentile must be in [0, 50), got {percentile}")
        m = expression_dims
        probe = cls(torch.zeros(136), torch.eye(m, 136), -torch.ones(3 + m), torch.ones(3 + m), a,
                    percentile).double()
        frontal, R, _, _ = probe.normalise(points)
        feats = probe.features(frontal)
        mean = feats.mean(dim=0)
        _, _, vh = torch.linalg.svd(feats - mean, full_matrices=False)
        basis = vh[:m]
        raw = torch.cat([euler_from_rotation(R), (feats - mean) @ basis.T], dim=-1)
        q = torch.tensor([percentile / 100, 1 - percentile / 100], dtype=raw.dtype)
        low, high = torch.quantile(raw, q, dim=0)
        spread = (high - low).clamp_min(1e-6)
        centre = (high + low) / 2
        return cls(mean.float(), basis.float(), (centre - spread / 2).float(), (centre + spread / 2).float(),
                   a, percentile, int(points.shape[0]))

    def state(self) -> dict[str, Any]:
        return {"expression_mean": self.expression_mean.detach().cpu(),
                "expression_basis": self.expression_basis.detach().cpu(),
                "low": self.low.detach().cpu(), "high": self.high.detach().cpu(),
                "a": self.a, "percentile": self.percentile, "samples": self.samples}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PoseVector:
        return cls(state["expression_mean"], state["expression_basis"], state["low"], state["high"],
                   float(state["a"]), float(state["percentile"]), int(state["samples"]))

    def definition(self) -> dict[str, Any]:
        """How p is defined (for provenance): the method, sizes, ranges."""
        return {"elements": list(ANGLE_NAMES) + [f"expression_{i}" for i in range(self.expression_dims)],
                "head_pose": "weak-perspective rigid fit of MEAN_FACE_3D (models/directions.py), "
                             "R = Rz(roll) Ry(yaw) Rx(pitch), radians",
                "expression": "PCA coefficients of pose-normalised landmarks",
                "expression_dims": self.expression_dims, "a": self.a, "percentile": self.percentile,
                "fitted_on": self.samples,
                "low": [round(float(v), 6) for v in self.low],
                "high": [round(float(v), 6) for v in self.high]}

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, expression_dims={self.expression_dims}, a={self.a:g}, "
                f"fitted_on={self.samples}")


# ---------------------------------------------------------------------------------------------------
# The direction matrix


class DirectionMatrix(nn.Module):
    """Δp (N, d_in) -> Δw (N, num_ws, w_dim): the first `layers` rows of W+ move by A Δp (A is
    (layers * w_dim) x d_in, the paper's d_out x d_in), the other rows stay. Starts at A = 0 (no
    motion) unless `init_std` > 0."""

    def __init__(self, d_in: int, num_ws: int, w_dim: int, layers: int = 8, init_std: float = 0.0,
                 init_seed: int = 0) -> None:
        super().__init__()
        if d_in < 1 or num_ws < 1 or w_dim < 1:
            raise ValueError(f"d_in, num_ws and w_dim must be >= 1, got {d_in}, {num_ws}, {w_dim}")
        if not 1 <= layers <= num_ws:
            raise ValueError(f"layers must be in 1..{num_ws} (the generator's W+ rows), got {layers}")
        self.d_in, self.num_ws, self.w_dim, self.layers = int(d_in), int(num_ws), int(w_dim), int(layers)
        gen = torch.Generator().manual_seed(init_seed)
        self.weight = nn.Parameter(torch.randn(layers * w_dim, d_in, generator=gen) * init_std)
        self.init_std, self.init_seed = float(init_std), int(init_seed)

    @property
    def config(self) -> dict[str, Any]:
        return {"d_in": self.d_in, "num_ws": self.num_ws, "w_dim": self.w_dim, "layers": self.layers,
                "init_std": self.init_std, "init_seed": self.init_seed}

    def forward(self, dp: torch.Tensor) -> torch.Tensor:
        if dp.ndim != 2 or dp.shape[1] != self.d_in:
            raise ValueError(f"Δp must be (N, {self.d_in}), got {tuple(dp.shape)}")
        shift = (dp.to(self.weight) @ self.weight.T).reshape(-1, self.layers, self.w_dim)
        rest = shift.new_zeros(shift.shape[0], self.num_ws - self.layers, self.w_dim)
        return torch.cat([shift, rest], dim=1)

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.layers * self.w_dim} (first {self.layers} of {self.num_ws} "
                f"W+ rows x {self.w_dim})")


# ---------------------------------------------------------------------------------------------------
# The reenactment loss (paper eqs. 4-5) on 2-D landmarks


def inner_distances(points: torch.Tensor, pairs: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """(N, P) distances between the given point pairs."""
    i = torch.tensor([a for a, _ in pairs], device=points.device)
    j = torch.tensor([b for _, b in pairs], device=points.device)
    return torch.linalg.vector_norm(points[:, i] - points[:, j], dim=-1)


def reenactment_loss(points: torch.Tensor, target: torch.Tensor, scale: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """Per-sample (N,) terms: `shape` (mean L1 of the points to the target shape), `eye` and `mouth`
    (mean L1 of the inner distances, EYE_PAIRS / MOUTH_PAIRS), all divided by the face `scale` (pixels
    per model unit, from the source's fit) so they do not depend on the image size; `total` = sum."""
    s = scale.reshape(-1, 1)
    shape = (points - target).abs().sum(-1).mean(-1) / s[:, 0]
    eye = (inner_distances(points, EYE_PAIRS) - inner_distances(target, EYE_PAIRS)).abs().mean(-1)
    mouth = (inner_distances(points, MOUTH_PAIRS) - inner_distances(target, MOUTH_PAIRS)).abs().mean(-1)
    eye, mouth = eye / s[:, 0], mouth / s[:, 0]
    return {"shape": shape, "eye": eye, "mouth": mouth, "total": shape + eye + mouth}


def degrees(radians: torch.Tensor | float) -> torch.Tensor | float:
    return radians * (180.0 / math.pi)


# ---------------------------------------------------------------------------------------------------
# Checkpoints (written by stages/train_directions.py; read here so the reenact mode needs no trainer)

CHECKPOINT_FORMAT = "facereenact.directions"
CHECKPOINT_VERSION = 1
_REQUIRED = {"model_config": dict, "model": dict, "pose": dict, "optimizer": dict, "step": int, "rng": dict,
             "train_config": dict, "history": dict, "provenance": dict}


def read_directions_checkpoint(path: str | os.PathLike[str]
                               ) -> tuple[dict[str, Any], DirectionMatrix, PoseVector]:
    """(checkpoint dict, A, p) of a directions file, read with torch.load(weights_only=True) and checked
    (format, fields, shapes, finite values); anything else is a one-line CheckpointError."""
    from models.checkpoints import load_torch_weights_only
    from storage.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("directions file not found", path=path)
    if path.stat().st_size == 0:
        raise CheckpointError("empty file (0 bytes)", path=path)
    ckpt = load_torch_weights_only(path)
    check_envelope(ckpt, path, "directions file", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, _REQUIRED)
    try:
        pose = PoseVector.from_state(ckpt["pose"])
        A = DirectionMatrix(**ckpt["model_config"])
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"unusable directions settings ({err})", path=path) from None
    weight = ckpt["model"].get("weight")
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(A.weight.shape):
        raise CheckpointError(f"direction matrix must be {tuple(A.weight.shape)}, got "
                              f"{None if weight is None else tuple(weight.shape)}", path=path)
    if A.d_in != pose.dims:
        raise CheckpointError(f"direction matrix takes {A.d_in} pose elements, its pose vector has "
                              f"{pose.dims}", path=path)
    tensors = [weight] + [v for v in pose.state().values() if isinstance(v, torch.Tensor)]
    if not all(bool(torch.isfinite(v).all()) for v in tensors):
        raise CheckpointError("directions file contains NaN or infinite values", path=path)
    A.load_state_dict({"weight": weight})
    return ckpt, A, pose


def check_directions_for(ckpt: dict[str, Any], generator: dict[str, Any], landmarks: dict[str, Any],
                         path: str | os.PathLike[str], weights_name: str = "the generator") -> None:
    """Refuse (CheckpointError, one line) directions made for another generator (weights sha256 or W+
    shape) or another landmark backend (name or weights): their p and A mean nothing here."""
    from storage.errors import CheckpointError

    made = ckpt["provenance"]
    want = (made.get("generator") or {}).get("weights_sha256")
    have = generator.get("weights_sha256")
    if want and have and want != have:
        raise CheckpointError(f"directions were trained for the generator with weights sha256 "
                              f"{want[:16]}..., not for {weights_name} (sha256 {have[:16]}...)", path=path)
    config = ckpt["model_config"]
    if (config.get("num_ws"), config.get("w_dim")) != (generator.get("num_ws"), generator.get("w_dim")):
        raise CheckpointError(f"directions are for W+ ({config.get('num_ws')}, {config.get('w_dim')}), "
                              f"{weights_name} has ({generator.get('num_ws')}, {generator.get('w_dim')})",
                              path=path)
    recorded = made.get("landmarks") or {}
    for field in ("backend", "weights_sha256"):
        if recorded.get(field) != landmarks.get(field):
            made_with, used = recorded.get("backend"), landmarks.get("backend")
            raise CheckpointError(
                f"directions were made with landmark backend {made_with!r} (weights "
                f"{str(recorded.get('weights_sha256'))[:12]}...), this run uses {used!r} (weights "
                f"{str(landmarks.get('weights_sha256'))[:12]}...); use --landmarks {made_with} or train "
                "directions for it", path=path)
