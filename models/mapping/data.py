"""Training data of the mapping network: batches of (source, driving) pairs, the clips they come
from, and the seeded sampler that draws them (its state goes into the trainer's checkpoint)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.landmarks.base import NUM_LANDMARKS
from models.mapping.encoders import check_landmarks

__all__ = ["MappingBatch", "MappingClip", "PairSampler"]


@dataclass
class MappingBatch:
    """Training pairs: the same person's source and driving frames, their landmarks and latents."""

    src_landmarks: torch.Tensor         # (N, 68, 2) aligned-crop pixels
    drv_landmarks: torch.Tensor         # (N, 68, 2)
    w_src: torch.Tensor                 # (N, num_ws, w_dim)
    w_drv: torch.Tensor                 # (N, num_ws, w_dim)
    crop_resolution: int                # side of the crops the landmarks are in

    def __post_init__(self) -> None:
        self.src_landmarks = check_landmarks(self.src_landmarks, "batch: src_landmarks")
        n = self.src_landmarks.shape[0]
        self.drv_landmarks = check_landmarks(self.drv_landmarks, "batch: drv_landmarks", n)
        if self.w_src.ndim != 3 or self.w_src.shape[0] != n:
            raise ValueError(f"batch: w_src must be ({n}, num_ws, w_dim), got {tuple(self.w_src.shape)}")
        if self.w_drv.shape != self.w_src.shape:
            raise ValueError(f"batch: w_drv {tuple(self.w_drv.shape)} != w_src {tuple(self.w_src.shape)}")

    def __len__(self) -> int:
        return self.src_landmarks.shape[0]

    def to(self, device: str | torch.device) -> MappingBatch:
        return MappingBatch(*(t.to(device, torch.float32) for t in (
            self.src_landmarks, self.drv_landmarks, self.w_src, self.w_drv)), self.crop_resolution)


@dataclass
class MappingClip:
    """One video's frames for training: landmarks and latents in frame order (numpy arrays, torch
    tensors, or anything indexable by a frame number, e.g. zarr arrays: frames are read on demand).

    A frame is usable when `valid` says so (the caller's: done in both the crops and the latents
    table) and, always, when its landmarks and latent are finite. Pairs are (source, driving) frames
    of this clip: source `source_index` (Choe 2023: one representative frontal, closed-mouth frame per
    person) or, when None, any usable frame.
    """

    landmarks: Any                      # (T, 68, 2) aligned-crop pixels
    latents: Any                        # (T, num_ws, w_dim)
    crop_resolution: int
    source_index: int | None = None
    valid: Any = None                   # (T,) bool, or None = all frames
    name: str = ""                      # for error messages


class PairSampler:
    """Random (source, driving) pairs from clips, deterministic given its seed; its state (a
    torch.Generator's) goes into the trainer's checkpoint so a resumed run draws the same pairs."""

    def __init__(
        self,
        clips: Sequence[MappingClip],   # one or more clips, all with the same crop_resolution
        seed: int = 0,                  # seed of the pair draws (MappingTrainer re-seeds it with its
                                        # config's seed)
    ) -> None:
        if not clips:
            raise ValueError("PairSampler: no clips")
        resolutions = {int(c.crop_resolution) for c in clips}
        if len(resolutions) != 1:
            raise ValueError(f"PairSampler: clips have different crop resolutions {sorted(resolutions)}")
        self.crop_resolution = resolutions.pop()
        self.clips = list(clips)
        self.usable: list[np.ndarray] = []      # per clip: usable frame indices
        for clip in self.clips:
            self.usable.append(self._usable_frames(clip))
        if self.source_frames_missing():
            raise ValueError(f"PairSampler: source frame not usable in {self.source_frames_missing()}")
        counts = np.array([len(u) for u in self.usable])
        if counts.sum() == 0:
            raise ValueError("PairSampler: no usable frames (no finite landmarks and latents)")
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.generator = torch.Generator().manual_seed(int(seed))
        first = next(i for i, u in enumerate(self.usable) if len(u))
        self.num_ws, self.w_dim = np.asarray(self.clips[first].latents[int(self.usable[first][0])]).shape

    @staticmethod
    def _usable_frames(clip: MappingClip) -> np.ndarray:
        points = np.asarray(clip.landmarks[:], dtype=np.float32)
        latents = clip.latents
        if points.ndim != 3 or points.shape[1:] != (NUM_LANDMARKS, 2):
            raise ValueError(f"clip {clip.name!r}: landmarks must be (T, 68, 2), got {points.shape}")
        if len(latents) != len(points):
            raise ValueError(f"clip {clip.name!r}: {len(points)} landmark frames, {len(latents)} latents")
        ok = np.isfinite(points).all(axis=(1, 2))
        if clip.valid is not None:
            valid = np.asarray(clip.valid, dtype=bool)
            if valid.shape != ok.shape:
                raise ValueError(f"clip {clip.name!r}: valid has shape {valid.shape}, expected {ok.shape}")
            ok &= valid
        frames = np.flatnonzero(ok)
        if isinstance(latents, (np.ndarray, torch.Tensor)):  # in memory: one vectorised check
            finite = np.isfinite(np.asarray(latents[frames])).reshape(len(frames), -1).all(axis=1)
        else:  # e.g. a zarr array: read the candidate frames one by one
            finite = np.array([bool(np.isfinite(np.asarray(latents[int(i)])).all()) for i in frames],
                              dtype=bool)
        return frames[finite] if len(frames) else frames

    def source_frames_missing(self) -> list[str]:
        return [c.name or str(i) for i, c in enumerate(self.clips)
                if c.source_index is not None and c.source_index not in set(self.usable[i].tolist())]

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    def sample(self, batch_size: int) -> MappingBatch:
        """`batch_size` pairs: driving frames uniform over all usable frames, each with its clip's
        source frame (or a uniform usable frame of the same clip)."""
        drv_global = torch.randint(self.num_frames, (batch_size,), generator=self.generator).numpy()
        src_u = torch.rand(batch_size, generator=self.generator, dtype=torch.float64).numpy()
        clip_ids = np.searchsorted(self.offsets, drv_global, side="right") - 1
        src_pts, drv_pts, w_src, w_drv = [], [], [], []
        for k, (c, g) in enumerate(zip(clip_ids, drv_global, strict=True)):
            clip, usable = self.clips[c], self.usable[c]
            d = int(usable[g - self.offsets[c]])
            s = (clip.source_index if clip.source_index is not None
                 else int(usable[int(src_u[k] * len(usable))]))
            src_pts.append(np.asarray(clip.landmarks[s], dtype=np.float32))
            drv_pts.append(np.asarray(clip.landmarks[d], dtype=np.float32))
            w_src.append(np.asarray(clip.latents[s], dtype=np.float32))
            w_drv.append(np.asarray(clip.latents[d], dtype=np.float32))
        return MappingBatch(*(torch.from_numpy(np.stack(a)) for a in (src_pts, drv_pts, w_src, w_drv)),
                            self.crop_resolution)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "num_frames": self.num_frames}

    def __repr__(self) -> str:
        return (f"PairSampler(clips={len(self.clips)}, usable_frames={self.num_frames}, "
                f"crop_resolution={self.crop_resolution}, num_ws={self.num_ws}, w_dim={self.w_dim})")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_frames"]) != self.num_frames:
            raise ValueError(f"sampler state is for {int(state['num_frames'])} usable frames, these clips "
                             f"have {self.num_frames}")
        self.generator.set_state(state["generator"])
