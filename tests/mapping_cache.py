"""A latent cache with known answers for the mapping-training tests, written through the real cache API.

    ws_dir = build_cache(tmp_path / "cache", videos=4, frames=24)

Each video is a clip of tests/mapping_task.py's synthetic task (latents a known function of the
landmark motion) stored the way `facereenact prepare` + `facereenact invert` store it: a crops table
(`crop_landmarks`, `interpolated`, ...) and a latents table whose provenance names that crops table
and the generator's fingerprint. Knobs make the awkward cases: frames still pending or failed in the
latents, interpolated (no face) frames in the crops, a table of another generator.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tests.mapping_task import SyntheticMappingTask

NUM_WS, W_DIM, RESOLUTION = 8, 64, 32   # tests.tiny.tiny_generator()'s W+ and resolution
GENERATOR_SHA = "a" * 64


def task(seed: int = 0) -> SyntheticMappingTask:
    return SyntheticMappingTask(NUM_WS, W_DIM, crop_resolution=RESOLUTION, num_train_ids=8, num_test_ids=1,
                                seed=seed)


def add_video(ws, name: str, points: np.ndarray, latents: np.ndarray, *, generator: dict | None = None,
              latents_done: np.ndarray | None = None, failed: np.ndarray | None = None,
              interpolated: np.ndarray | None = None, inversion_steps: int = 4,
              resolution: int = RESOLUTION) -> str:
    """One video's crops and latents tables (W+ shape from `latents`, crops of `resolution` px);
    returns the latents table's location."""
    from models.smoothing import SmoothingConfig
    from stages.prepare import crop_fields, crops_provenance
    from storage.latents import LatentCache, latents_provenance

    t = len(points)
    num_ws, w_dim = np.asarray(latents).shape[1:]
    media_key = hashlib.sha256(name.encode()).hexdigest()  # as prepare keys a file by its content
    ws.media(media_key, {"source": f"/data/{name}"})
    provenance = crops_provenance(f"landmarks-of-{name}", SmoothingConfig(), resolution)
    crops = ws.table(media_key, "crops", provenance, t, crop_fields(resolution))
    flags = np.zeros(t, np.uint8)
    if interpolated is not None:
        flags[interpolated] = 1
    crops.write(np.arange(t), crop=np.zeros((t, resolution, resolution, 3), np.uint8),
                quad=np.zeros((t, 4)), frame_from_crop=np.broadcast_to(np.eye(3), (t, 3, 3)),
                landmarks=points, crop_landmarks=points, interpolated=flags)
    generator = generator or {"weights_sha256": GENERATOR_SHA, "num_ws": NUM_WS, "w_dim": W_DIM,
                              "img_resolution": RESOLUTION}
    inversion = {"stage": "latents", "steps": inversion_steps, "generator": generator}
    cache = LatentCache.require(ws, media_key, latents_provenance(inversion, crops.key), t, num_ws, w_dim)
    done = np.arange(t) if latents_done is None else np.asarray(latents_done)
    if done.size:
        cache.write(done, latents[done], np.full(done.size, 0.1), np.arange(done.size))
    if failed is not None and len(failed):
        cache.fail(failed, "final loss 0.9 above --max-loss 0.5")
    return cache.location


def build_cache(path: Path, videos: int = 4, frames: int = 24, seed: int = 0, **knobs) -> Path:
    """A cache of `videos` synthetic clips of `frames` frames, every frame done (unless knobs say)."""
    from storage.cache import Workspace

    ws = Workspace(path)
    t = task(seed)
    rng = np.random.default_rng(seed)
    for i in range(videos):
        clip = t.clip(t.train_ids[i % len(t.train_ids)], frames, rng)
        add_video(ws, f"clip{i}.mp4", np.asarray(clip.landmarks), np.asarray(clip.latents), **knobs)
    return path


def train_checkpoint(root: Path, name: str, steps: int, generator: dict | None) -> str:
    """A mapping checkpoint trained by the train-mapping flow on this module's synthetic latents (W+
    8 x 64, 32 px crops: the tiny generator's), recorded as made for `generator` (a generator's
    fingerprint; None: build_cache's default)."""
    from flows.train_mapping import train_mapping

    cache = build_cache(root / f"{name}-latents", videos=3, frames=16, **({"generator": generator}
                                                                            if generator else {}))
    out = root / f"{name}.pt"
    train_mapping(str(cache), str(out), steps=steps, checkpoint_every=steps,
                  settings={"batch_size": 8, "held_out": 0.0}, device="cpu")
    return str(out)
