"""A small inversion dataset shared by the flow and CLI tests of `facereenact invert`.

Three short synthetic clips (8, 7 and 6 frames: last batches of 4, 3 and 2 frames at batch size 4),
a tiny generator saved as a native checkpoint (32 px: the crops' resolution), a cache where the
clips are prepared (landmarks + crops), and a reference cache where an uninterrupted inversion job
has run, made once per test session by the `invert_dataset` fixture of tests/conftest.py (the prepare
and reference runs take ~15 s here).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FRAMES = {"a.mp4": ("all", 8), "b.mp4": ("mouth", 7), "c.mp4": ("rotate", 6)}
STEPS, BATCH = 4, 4
# The settings every test run uses: the uncalibrated AlexNet LPIPS (no weights in tests; its random
# backbone builds in 0.4 s where VGG-16's takes 3-5 s here) with Choe 2023's loss weights.
SETTINGS: dict[str, Any] = {"steps": STEPS, "batch_size": BATCH, "perceptual": "uncalibrated-alex",
                            "device": "cpu"}
CLI_SETTINGS = ["--steps", str(STEPS), "--batch-size", str(BATCH), "--perceptual", "uncalibrated-alex",
                "--device", "cpu"]


@dataclass
class Dataset:
    root: Path
    videos: Path            # folder of the three clips
    weights: Path           # tiny generator, native format
    prepared: Path          # cache with landmarks + crops of every clip done, no latents
    reference: Path         # cache after an uninterrupted job with SETTINGS
    summary: dict[str, Any]  # that job's summary
    flow_run_id: Any        # that job's flow run (its task runs are on the session's Prefect server)

    def fresh_cache(self, dst: Path, reference: bool = False) -> Path:
        """A copy of the prepared (or reference) cache at `dst`."""
        shutil.copytree(self.reference if reference else self.prepared, dst)
        return dst

    def reference_latents(self) -> dict[str, np.ndarray]:
        return latents_by_video(self.reference)

    def reference_reconstruction(self, name: str) -> np.ndarray:
        """The final reconstruction losses (models.inversion.reconstruction_loss: what --max-loss
        judges) of clip `name`'s frames in the reference job, by inverting its batches again directly
        (the stored loss is the total)."""
        import torch

        from models import load_generator
        from models.inversion import InversionConfig, invert, reconstruction_loss
        from storage.cache import Workspace
        from storage.latents import LatentCache, fixed_batches, frame_seed

        ws = Workspace(self.reference)
        (cache,) = [c for c in LatentCache.all(ws) if _source(ws, c) == name]
        media_key = cache.location.split("/")[1]
        (crops,) = ws.tables(media_key, "crops")
        G, config = load_generator(self.weights), InversionConfig(steps=STEPS, perceptual="uncalibrated-alex")
        out = []
        for start, stop in fixed_batches(cache.num_frames, BATCH, range(cache.num_frames)):
            frames = range(start, stop)
            targets = torch.from_numpy(crops.read("crop", frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
            points = torch.from_numpy(crops.read("crop_landmarks", frames))
            result = invert(G, targets, config, landmarks=points,
                            seeds=[frame_seed(media_key, i, config.seed) for i in frames])
            np.testing.assert_array_equal(result.losses["total"].numpy(), cache.read_losses(frames))
            out.append(reconstruction_loss(result.losses, config).numpy())
        return np.concatenate(out)

    def reference_losses(self) -> dict[str, np.ndarray]:
        from storage.cache import Workspace
        from storage.latents import LatentCache

        return {_source(Workspace(self.reference), c): c.read_losses()
                for c in LatentCache.all(Workspace(self.reference))}


def _source(ws, cache) -> str:
    return Path(ws.media(cache.location.split("/")[1]).attrs["source"]).name


def latents_by_video(cache_dir: Path) -> dict[str, np.ndarray]:
    """Latents of every latent table of a cache by clip name (every frame must be done)."""
    from storage.cache import Workspace
    from storage.latents import LatentCache

    ws = Workspace(cache_dir)
    return {_source(ws, c): c.read() for c in LatentCache.all(ws)}


def make(root: Path) -> Dataset:
    """The dataset in `root` (needs the Prefect test server: use the `invert_dataset` fixture)."""
    from flows.invert import invert_dataset
    from flows.prepare import prepare
    from tests.clips import write_test_clip
    from tests.reenact_data import tiny_weights

    videos = root / "videos"
    videos.mkdir()
    for name, (kind, frames) in FRAMES.items():
        write_test_clip(videos / name, kind, frames=frames)
    weights = tiny_weights(root)
    prepared = root / "prepared"
    prepare([str(videos / name) for name in FRAMES], str(prepared), resolution=32, device="cpu")
    reference = root / "reference"
    shutil.copytree(prepared, reference)
    state = invert_dataset(str(videos), str(reference), str(weights), return_state=True, **SETTINGS)
    return Dataset(root, videos, weights, prepared, reference, state.result(),
                   state.state_details.flow_run_id)
