"""models/metrics.py against answers known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.face_shape import MEAN_SHAPE_68
from models.metrics import (
    identity_distance_to_source,
    identity_similarity_to_source,
    inter_ocular_distance,
    landmark_jitter,
    landmark_nme,
    latent_jitter,
    seconds_per_frame,
)


def face(scale: float = 20.0, centre=(64.0, 64.0)) -> torch.Tensor:
    return torch.tensor(MEAN_SHAPE_68 * scale + np.asarray(centre), dtype=torch.float64)


def test_inter_ocular_distance_is_between_outer_eye_corners():
    points = torch.zeros(1, 68, 2, dtype=torch.float64)
    points[0, 36] = torch.tensor([10.0, 20.0])
    points[0, 45] = torch.tensor([40.0, 60.0])
    points[0, 39] = torch.tensor([100.0, 100.0])  # an inner corner: not used
    assert inter_ocular_distance(points).tolist() == [50.0]


def test_nme_of_a_known_shift():
    target = face()
    iod = float(inter_ocular_distance(target))
    shifted = target + torch.tensor([3.0, 4.0], dtype=torch.float64)  # every point 5 px off
    nme = landmark_nme(torch.stack([target, shifted]), torch.stack([target, target]))
    assert nme.tolist() == pytest.approx([0.0, 5.0 / iod])
    # one point off by 68 px, the rest exact: mean error 1 px
    one = target.clone()
    one[30, 0] += 68
    assert float(landmark_nme(one, target)) == pytest.approx(1.0 / iod)
    # normalised by the target's eyes: scaling both scales nothing
    assert float(landmark_nme(shifted * 2, target * 2)) == pytest.approx(5.0 / iod)
    # numpy in, and a frame without landmarks is NaN
    bad = target.clone()
    bad[3] = float("nan")
    out = landmark_nme(np.stack([target.numpy(), bad.numpy()]), np.stack([target.numpy()] * 2))
    assert out[0] == 0 and bool(torch.isnan(out[1]))
    with pytest.raises(ValueError, match="68, 2"):
        landmark_nme(torch.zeros(2, 5, 2), torch.zeros(2, 5, 2))


def test_jitter_of_known_tracks():
    base = face()
    t = torch.arange(6, dtype=torch.float64)[:, None, None]
    steady = base + t * torch.tensor([1.5, -0.5], dtype=torch.float64)  # constant velocity
    assert landmark_jitter(steady) == pytest.approx(0.0, abs=1e-12)
    a = 0.7
    sign = torch.tensor([1.0, -1.0] * 3, dtype=torch.float64)[:, None, None]
    shaky = base + sign * torch.tensor([a, 0.0], dtype=torch.float64)  # x - a, x + a, ...
    assert landmark_jitter(shaky) == pytest.approx(4 * a)
    assert landmark_jitter(shaky, normalize=True) == pytest.approx(4 * a / float(inter_ocular_distance(base)))
    with pytest.raises(ValueError, match="3 frames"):
        landmark_jitter(shaky[:2])
    ws = torch.zeros(4, 2, 3)
    ws[1, 0, 0] = 1.0  # second differences: (1, 0, ...) - 2 * 0 ... -> |.| 2 then 1
    assert latent_jitter(ws) == pytest.approx((2.0 + 1.0) / 2)


def test_identity_similarity_known_answers(faces_fixture_dir):
    """On the astronaut's dlib chip (a face): the same image scores exactly 1 and the float and uint8
    inputs agree; a mirrored face scores below 1, and noise far below the face itself."""
    chip = np.load(faces_fixture_dir / "astronaut_dlib_chip150.npy")  # (150, 150, 3) uint8
    assert chip.dtype == np.uint8 and chip.shape == (150, 150, 3)
    mirrored = np.ascontiguousarray(chip[:, ::-1])
    noise = np.random.default_rng(0).integers(0, 256, chip.shape, dtype=np.uint8)
    frames = np.stack([chip, mirrored, noise])
    sims = identity_similarity_to_source(frames, chip)
    assert sims.shape == (3,)
    assert float(sims[0]) == pytest.approx(1.0, abs=1e-6)
    assert 0.8 < float(sims[1]) < 1.0
    assert float(sims[2]) < float(sims[1])
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(identity_similarity_to_source(as_float, chip), sims, atol=1e-5)
    # batching does not change the answers
    assert torch.allclose(identity_similarity_to_source(frames, chip, batch=1), sims, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        identity_similarity_to_source(frames.astype(np.float32), chip)
    # dlib's measure: 0 for the same image, under 0.6 (same person) for the mirrored face, not noise
    dist = identity_distance_to_source(frames, chip)
    assert float(dist[0]) == pytest.approx(0.0, abs=1e-5)
    assert float(dist[1]) < 0.6 < float(dist[2])


def test_seconds_per_frame():
    assert seconds_per_frame(10.0, 4) == 2.5
    with pytest.raises(ValueError):
        seconds_per_frame(1.0, 0)
