"""A synthetic mapping task: latents that are a known smooth function of realistic landmark motion.

    task = SyntheticMappingTask(num_ws=G.num_ws, w_dim=G.w_dim)
    batch = task.batch(32, rng, identities=task.train_ids)     # a models.mapping.data.MappingBatch
    clip = task.clip(task.train_ids[0], 50, rng)                # a models.mapping.data.MappingClip

Faces. An identity is the FFHQ-crop mean face (models.losses.ffhq_mean_landmarks) with its own jaw
width, face length, eye spacing, nose length and mouth width (a few per cent each) and a little
per-point jitter. A frame of that person has motion coefficients m (MOTIONS): jaw opening, smile,
pucker, brow raise, blink (displacements of the lips, chin, corners, brows and lids, in units of the
face's size), and head yaw, pitch and roll (the points lifted onto a rough head-shaped depth, rotated
in 3-D and projected orthographically). The frame is then re-aligned by the FFHQ recipe
(models.alignment.ffhq_quad), as the prepare stage does, so the landmarks are what a crops table
holds: aligned-crop pixels, with the crop following the eyes and mouth. Detection noise
(`landmark_noise_px`, Gaussian) is added last.

Latents. w_drv = w_src + g(m_drv - m_src) with
    g(dm) = sum_k D_k phi(dm_k) + D_jaw,smile dm_jaw dm_smile + D_yaw,pitch dm_yaw dm_pitch,
phi(x) = x + 0.5 x |x| (smooth, monotone, not linear), D_roll = 0 (the aligned crop undoes roll), the
other D's random (active_ws, w_dim) directions on
the first `active_ws` rows of W+ only (coarse layers: pose and expression). Motion coefficients are in
units where a typical motion is about 1, so every term matters. The landmarks determine dm only
approximately (identity shape, source expression and re-alignment interact with it; detection noise),
so a perfect mapping does not reach zero error: the held-out floor is part of what the tests see.

Sources are near-neutral frames (motions at 20 % amplitude), as Choe 2023 picks "the frontal,
closed-mouth image" per person; drivers use the full range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.alignment import crop_from_frame_matrix, ffhq_quad
from models.losses import ffhq_mean_landmarks
from models.mapping.data import MappingBatch, MappingClip

MOTIONS = ("jaw_open", "smile", "pucker", "brow_raise", "blink", "yaw", "pitch", "roll")
# Radians per unit of the pose coefficients (yaw 0.3 rad = 17 degrees).
_POSE_SCALE = {"yaw": 0.30, "pitch": 0.20, "roll": 0.08}

# How far the nose stands out of the head's surface, in units of the face's size (bridge 27-30 rising
# to the tip, then the lower nose 31-35).
_NOSE_DEPTH = np.array([0.10, 0.20, 0.30, 0.35, 0.15, 0.20, 0.25, 0.20, 0.15])

# Jaw opening: how far each point moves (fraction of the opening) down the face.
_JAW_WEIGHTS = {**{i: 1.0 for i in (55, 56, 57, 58, 59, 65, 66, 67, 7, 8, 9)},
                **{i: 0.5 for i in (48, 54, 60, 64, 5, 11)}, 6: 0.8, 10: 0.8, 4: 0.2, 12: 0.2}


@dataclass
class Identity:
    shape: np.ndarray       # (68, 2) neutral landmarks, aligned-crop pixels
    w: np.ndarray           # (num_ws, w_dim) the neutral frame's latent


class SyntheticMappingTask:
    def __init__(
        self,
        num_ws: int,
        w_dim: int,
        *,
        crop_resolution: int = 256,
        active_ws: int | None = None,       # rows of W+ that motion changes; None = num_ws // 2
        landmark_noise_px: float = 0.3,     # detection noise (std, crop pixels at crop_resolution)
        delta_scale: float = 0.3,           # RMS of one direction's entries
        num_train_ids: int = 32,
        num_test_ids: int = 16,
        generator=None,                     # a Generator: identities' latents are its mapped w (W+
                                            # with a little per-row spread); None = N(0, 1)
        seed: int = 0,
    ) -> None:
        self.num_ws, self.w_dim, self.crop_resolution = num_ws, w_dim, crop_resolution
        self.active_ws = num_ws // 2 if active_ws is None else active_ws
        self.noise = landmark_noise_px * crop_resolution / 256
        rng = np.random.default_rng(seed)
        self.mean = np.array(ffhq_mean_landmarks(crop_resolution))
        k = len(MOTIONS)
        scale = delta_scale
        self.directions = rng.normal(0, scale, (k, self.active_ws, w_dim))
        # The FFHQ re-alignment undoes in-plane rotation: an aligned crop (so its latent) shows no
        # roll; roll stays in the landmarks as a nuisance (through the 3-D head shape, slightly).
        self.directions[MOTIONS.index("roll")] = 0
        self.interactions = rng.normal(0, scale, (2, self.active_ws, w_dim))
        self.generator = generator
        self.train_ids = [self._identity(rng) for _ in range(num_train_ids)]
        self.test_ids = [self._identity(rng) for _ in range(num_test_ids)]

    # -- identities and motion ------------------------------------------------------------------

    def _identity(self, rng: np.random.Generator) -> Identity:
        p = self.mean.copy()
        c = p.mean(axis=0)
        u = np.sqrt(((p - c) ** 2).sum(1).mean())
        p[0:17, 0] = c[0] + (p[0:17, 0] - c[0]) * (1 + rng.normal(0, 0.05))          # jaw width
        p[4:13, 1] += rng.normal(0, 0.04) * u                                          # face length
        eyes = np.r_[36:48]
        p[eyes, 0] = c[0] + (p[eyes, 0] - c[0]) * (1 + rng.normal(0, 0.04))           # eye spacing
        p[31:36, 1] += rng.normal(0, 0.04) * u                                         # nose length
        mouth = np.r_[48:68]
        mc = p[mouth].mean(axis=0)
        p[mouth, 0] = mc[0] + (p[mouth, 0] - mc[0]) * (1 + rng.normal(0, 0.06))       # mouth width
        p += rng.normal(0, 0.01 * u, p.shape)
        p = self._realign(p[None])[0]
        if self.generator is not None:
            G = self.generator
            z = torch.from_numpy(rng.standard_normal((1, G.z_dim)).astype(np.float32))
            with torch.no_grad():
                w = G.mapping(z)[0].numpy().astype(np.float64)
            w = w + rng.normal(0, 0.1 * w.std(), w.shape)
        else:
            w = rng.normal(0, 1, (self.num_ws, self.w_dim))
        return Identity(p, w)

    def sample_motion(self, rng: np.random.Generator, n: int, amplitude: float = 1.0) -> np.ndarray:
        """(n, len(MOTIONS)) coefficients, each about unit scale at amplitude 1."""
        m = np.zeros((n, len(MOTIONS)))
        m[:, 0] = rng.uniform(0, 1, n) * (rng.uniform(size=n) > 0.3)       # jaw open (30 % closed)
        m[:, 1] = rng.uniform(-0.3, 1, n)                                  # smile
        m[:, 2] = rng.uniform(-1, 1, n)                                    # pucker / stretch
        m[:, 3] = rng.uniform(-0.5, 1, n)                                  # brow raise
        m[:, 4] = rng.uniform(0, 1, n) * (rng.uniform(size=n) > 0.7)       # blink (70 % open)
        m[:, 5:8] = rng.normal(0, 1, (n, 3)).clip(-2.5, 2.5)               # yaw, pitch, roll
        return m * amplitude

    def landmarks(self, shapes: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, 68, 2) aligned-crop landmarks of neutral `shapes` ((68, 2) or (n, 68, 2), an
        Identity's `shape`) with motions `m` (n, K), with detection noise."""
        p = np.array(np.broadcast_to(shapes, (len(m), 68, 2)), dtype=np.float64)
        c = p.mean(axis=1, keepdims=True)                               # (n, 1, 2)
        u = np.sqrt(((p - c) ** 2).sum(2).mean(1))[:, None]             # (n, 1)
        jaw, smile, pucker, brow, blink = (m[:, i:i + 1] for i in range(5))
        for i, weight in _JAW_WEIGHTS.items():
            p[:, i, 1] += (0.35 * weight * u * jaw)[:, 0]
        for i, sign, weight in ((48, -1, 1.0), (54, 1, 1.0), (60, -1, 0.7), (64, 1, 0.7),
                                (49, -1, 0.4), (53, 1, 0.4), (59, -1, 0.4), (55, 1, 0.4)):
            p[:, i, 0] += (sign * 0.10 * weight * u * smile)[:, 0]
            p[:, i, 1] -= (0.07 * weight * u * smile)[:, 0]
        mouth = np.r_[48:68]
        mc = p[:, mouth].mean(axis=1, keepdims=True)
        p[:, mouth, 0] = mc[..., 0] + (p[:, mouth, 0] - mc[..., 0]) * (1 - 0.2 * pucker)
        p[:, 17:27, 1] -= 0.12 * u * brow
        for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
            p[:, upper] += 0.9 * blink * (p[:, lower] - p[:, upper])
        p = self._pose(p, c, u, m[:, 5:8])
        p = self._realign(p)
        return p + rng.normal(0, self.noise, p.shape)

    @staticmethod
    def _pose(p: np.ndarray, c: np.ndarray, u: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Rotate the points in 3-D about the head's centre (a rough depth: a sphere of radius 1.7 u
        behind the face, the nose standing out of it by _NOSE_DEPTH) and project orthographically."""
        xy = (p - c) / u[..., None]
        z = np.sqrt(np.clip(1.7 ** 2 - (xy ** 2).sum(-1), 0, None)) - 1.7
        z[:, 27:36] += _NOSE_DEPTH
        xyz = np.concatenate([xy, z[..., None]], axis=-1)               # (n, 68, 3)
        yaw, pitch, roll = (pose * [_POSE_SCALE[k] for k in ("yaw", "pitch", "roll")]).T
        one, zero = np.ones_like(yaw), np.zeros_like(yaw)
        ry = np.stack([np.stack([np.cos(yaw), zero, np.sin(yaw)], -1), np.stack([zero, one, zero], -1),
                       np.stack([-np.sin(yaw), zero, np.cos(yaw)], -1)], -2)
        rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, np.cos(pitch), -np.sin(pitch)], -1),
                       np.stack([zero, np.sin(pitch), np.cos(pitch)], -1)], -2)
        rz = np.stack([np.stack([np.cos(roll), -np.sin(roll), zero], -1),
                       np.stack([np.sin(roll), np.cos(roll), zero], -1), np.stack([zero, zero, one], -1)], -2)
        q = np.einsum("nij,nkj->nki", rz @ rx @ ry, xyz)
        return q[..., :2] * u[..., None] + c

    def _realign(self, p: np.ndarray) -> np.ndarray:
        """Treat `p` as frame landmarks and map them into their own FFHQ crop (the prepare stage)."""
        m = crop_from_frame_matrix(ffhq_quad(p), self.crop_resolution)
        return np.einsum("nij,nkj->nki", m[:, :2, :2], p) + m[:, None, :2, 2]

    # -- latents ------------------------------------------------------------------------------------

    def delta_w(self, m_src: np.ndarray, m_drv: np.ndarray) -> np.ndarray:
        """(n, num_ws, w_dim) true offsets g(m_drv - m_src)."""
        dm = m_drv - m_src
        phi = dm + 0.5 * dm * np.abs(dm)
        active = np.einsum("nk,kaw->naw", phi, self.directions)
        active += (dm[:, 0] * dm[:, 1])[:, None, None] * self.interactions[0]
        active += (dm[:, 5] * dm[:, 6])[:, None, None] * self.interactions[1]
        out = np.zeros((len(dm), self.num_ws, self.w_dim))
        out[:, :self.active_ws] = active
        return out

    # -- data ---------------------------------------------------------------------------------------

    def batch(self, n: int, rng: np.random.Generator, identities: list[Identity] | None = None
              ) -> MappingBatch:
        """n pairs, each of a random identity from `identities` (default: the training ones)."""
        identities = self.train_ids if identities is None else identities
        pick = rng.integers(len(identities), size=n)
        shapes = np.stack([identities[i].shape for i in pick])
        w_src = np.stack([identities[i].w for i in pick])
        m_src = self.sample_motion(rng, n, amplitude=0.2)
        m_drv = self.sample_motion(rng, n)
        src_pts = self.landmarks(shapes, m_src, rng)
        drv_pts = self.landmarks(shapes, m_drv, rng)
        w_drv = w_src + self.delta_w(m_src, m_drv)
        return MappingBatch(*(torch.tensor(a, dtype=torch.float32) for a in (src_pts, drv_pts, w_src, w_drv)),
                            self.crop_resolution)

    def clip(self, identity: Identity, num_frames: int, rng: np.random.Generator, name: str = ""
             ) -> MappingClip:
        """A clip of `num_frames` frames; frame 0 is the near-neutral source (source_index 0), and
        every latent is w_src + g(m_t - m_0)."""
        m = np.concatenate([self.sample_motion(rng, 1, amplitude=0.2),
                            self.sample_motion(rng, num_frames - 1)])
        points = self.landmarks(identity.shape, m, rng).astype(np.float32)
        latents = (identity.w[None] + self.delta_w(np.repeat(m[:1], num_frames, 0), m)).astype(np.float32)
        return MappingClip(points, latents, self.crop_resolution, source_index=0, name=name)
