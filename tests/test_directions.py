"""models/directions.py: the landmark-derived pose vector p and the direction matrix A."""

from __future__ import annotations

import math

import pytest
import torch

from models.directions import (
    MEAN_FACE_3D,
    DirectionMatrix,
    PoseVector,
    euler_from_rotation,
    fit_rigid,
    reenactment_loss,
    rotation_from_euler,
)

LIMITS = torch.tensor([0.6, 0.4, 0.5])  # yaw, pitch, roll half-ranges (radians): 34, 23, 29 degrees


def posed_points(angles: torch.Tensor, scale: float = 40.0, noise: float = 0.0, seed: int = 0,
                 shape: torch.Tensor | None = None) -> torch.Tensor:
    """Orthographic projections of the 3-D face (or `shape`, (N, 68, 3)) at known angles."""
    g = torch.Generator().manual_seed(seed)
    model = torch.tensor(MEAN_FACE_3D, dtype=torch.float32) if shape is None else shape
    pts = scale * (model @ rotation_from_euler(angles).transpose(1, 2))[..., :2]
    pts = pts + torch.tensor([100.0, 120.0])
    return pts + noise * scale * torch.randn(pts.shape, generator=g)


def random_angles(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g) * 2 - 1) * LIMITS


def test_euler_round_trip() -> None:
    angles = random_angles(50)
    assert torch.allclose(euler_from_rotation(rotation_from_euler(angles)), angles, atol=1e-5)
    R = rotation_from_euler(angles)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(50, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(50), atol=1e-5)


def test_rigid_fit_recovers_known_rotations() -> None:
    angles = random_angles(200)
    model = torch.tensor(MEAN_FACE_3D, dtype=torch.float32)
    R, scale, _ = fit_rigid(posed_points(angles), model)
    exact = (euler_from_rotation(R) - angles).abs().max() * 180 / math.pi
    assert exact < 0.01, f"noise-free error {exact:.4f} degrees"
    assert torch.allclose(scale, torch.full((200,), 40.0), rtol=1e-4)
    # landmark noise of 2 % of the face scale (about 1 px on a 50 px face) and a per-face shape change
    g = torch.Generator().manual_seed(3)
    shapes = model + 0.05 * torch.randn(200, 68, 3, generator=g)
    R, _, _ = fit_rigid(posed_points(angles, noise=0.02, shape=shapes), model)
    err = (euler_from_rotation(R) - angles).abs() * 180 / math.pi
    mean, worst = err.mean(dim=0), err.max(dim=0).values
    print(f"rigid fit error (deg) yaw/pitch/roll mean {mean.tolist()} max {worst.tolist()}")
    assert bool((mean < 1.5).all()) and bool((worst < 6.0).all()), (mean, worst)


def test_pose_vector_is_differentiable_and_scaled() -> None:
    angles = random_angles(300)
    g = torch.Generator().manual_seed(4)
    model = torch.tensor(MEAN_FACE_3D, dtype=torch.float32)
    mouth = torch.zeros(68, 3)
    mouth[[56, 57, 58, 65, 66, 67, 7, 8, 9], 1] = 0.3            # lower lip and chin move down
    open_amount = torch.rand(300, generator=g)
    shapes = model + open_amount[:, None, None] * mouth
    points = posed_points(angles, noise=0.005, shape=shapes)
    pose = PoseVector.fit(points, expression_dims=4, a=1.0)
    assert pose.dims == 7 and "dims=7" in repr(pose)
    p = pose(points)
    assert p.shape == (300, 7)
    assert float(p.min()) > -1.5 and float(p.max()) < 1.5            # about [-a, a]
    assert float((p.abs() <= 1.0).float().mean()) > 0.95
    # the angles are the first three elements (scaled), the mouth opening is mostly expression 0
    raw = pose.raw(points)
    assert (raw[:, :3] - angles).abs().max() * 180 / math.pi < 2.0
    corr = torch.corrcoef(torch.stack([raw[:, 3], open_amount]))[0, 1].abs()
    assert corr > 0.95, f"expression 0 vs mouth opening correlation {corr:.3f}"
    # target_shape of the source's own p is the source; gradients reach the points
    assert torch.allclose(pose.target_shape(points[:8], p[:8]), points[:8], atol=1e-3)
    x = points[:4].clone().requires_grad_(True)
    pose(x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    # state round trip
    again = PoseVector.from_state(pose.state())
    assert torch.allclose(again(points[:5]), p[:5])
    assert pose.definition()["expression_dims"] == 4


def test_target_shape_changes_only_the_asked_attribute() -> None:
    angles = random_angles(100)
    points = posed_points(angles, noise=0.005)
    pose = PoseVector.fit(points, expression_dims=3)
    p = pose(points[:6])
    p_t = p.clone()
    p_t[:, 0] += 0.5  # yaw only
    measured = pose(pose.target_shape(points[:6], p_t))
    assert torch.allclose(measured[:, :3], p_t[:, :3], atol=5e-3)
    # expression re-measured after a 0.5 yaw step: lifting 2-D points with the model's depth is not
    # exact for a noisy shape, so it drifts a little (measured: up to 0.06 of the [-1, 1] range)
    drift = (measured[:, 3:] - p_t[:, 3:]).abs().max()
    assert drift < 0.1, f"expression drift {drift:.3f} for a yaw step of 0.5"


def test_pose_vector_refuses_bad_input() -> None:
    points = posed_points(random_angles(20))
    with pytest.raises(ValueError, match="68, 2"):
        PoseVector.fit(points[:, :60])
    with pytest.raises(ValueError, match="at least"):
        PoseVector.fit(points[:5], expression_dims=8)
    with pytest.raises(ValueError, match="non-finite"):
        PoseVector.fit(torch.cat([points, torch.full((1, 68, 2), float("nan"))]), expression_dims=2)


def test_direction_matrix_shapes() -> None:
    A = DirectionMatrix(d_in=11, num_ws=14, w_dim=64, layers=8)
    assert "d_in=11, d_out=512" in repr(A)
    dw = A(torch.randn(3, 11)).detach()
    assert dw.shape == (3, 14, 64) and float(dw.abs().sum()) == 0.0    # starts at zero motion
    A = DirectionMatrix(d_in=11, num_ws=14, w_dim=64, layers=8, init_std=0.1)
    dw = A(torch.randn(3, 11)).detach()
    assert float(dw[:, :8].abs().sum()) > 0 and float(dw[:, 8:].abs().sum()) == 0
    with pytest.raises(ValueError, match=r"\(N, 11\)"):
        A(torch.randn(3, 10))
    with pytest.raises(ValueError, match="layers"):
        DirectionMatrix(d_in=3, num_ws=4, w_dim=8, layers=8)


def test_reenactment_loss_terms() -> None:
    points = posed_points(random_angles(4))
    target = points.clone()
    target[:, 57, 1] += 4.0  # lower lip down: shape and mouth terms move, eyes do not
    terms = reenactment_loss(points, target, torch.full((4,), 40.0))
    assert torch.allclose(terms["eye"], torch.zeros(4))
    assert bool((terms["mouth"] > 0).all()) and bool((terms["shape"] > 0).all())
    assert torch.allclose(terms["total"], terms["shape"] + terms["eye"] + terms["mouth"])
    assert torch.allclose(reenactment_loss(points, points, torch.ones(4))["total"], torch.zeros(4))


def test_image_rotation_changes_roll_only() -> None:
    # a face that is not the model (noise, per-point shape change) at some yaw and pitch, rotated in the
    # image plane: the symmetric orthonormalisation keeps yaw and pitch (Gram-Schmidt did not)
    g = torch.Generator().manual_seed(7)
    model = torch.tensor(MEAN_FACE_3D, dtype=torch.float32)
    shape = model + 0.08 * torch.randn(1, 68, 3, generator=g)
    angles = torch.tensor([[0.3, -0.2, 0.0]])
    points = posed_points(angles, shape=shape)[0] - torch.tensor([100.0, 120.0])
    turns = torch.linspace(-0.6, 0.6, 9)
    rot = torch.stack([torch.stack([turns.cos(), -turns.sin()], -1),
                       torch.stack([turns.sin(), turns.cos()], -1)], 1)
    R, _, _ = fit_rigid(points @ rot.transpose(1, 2), model)
    measured = euler_from_rotation(R)
    assert (measured[:, :2] - measured[4, :2]).abs().max() < 1e-4
    assert torch.allclose(measured[:, 2] - measured[4, 2], turns, atol=1e-4)
