"""What `facereenact demo` needs besides the pipeline: a driving clip with known motion made from a
photo, and, offline, a small random-weight generator built in code.

    demo_driving_clip("drive.mp4", photo, frames=24)    # head motion + mouth opening (models.synthetic)
    G = random_generator(resolution=64, seed=0)         # deterministic: the same weights every time

The random generator shows the pipeline working (tracking, inversion, projection, rendering,
encoding), not the quality of real weights: its images are not faces. It is the real
`models.stylegan2.Generator` with every tensor made non-trivial (random biases and noise strengths,
`w_avg` the mean of mapped z), so it exercises the same code as a loaded checkpoint.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from models.stylegan2 import Generator, mean_w

__all__ = ["demo_driving_clip", "photo_landmarks", "random_generator"]


def random_generator(
    resolution: int = 64,               # output size (power of two >= 4)
    seed: int = 0,                      # the weights are a function of the seed alone
    z_dim: int = 64,                    # input latent width (512 in real checkpoints)
    w_dim: int = 64,                    # W width (512 in real checkpoints)
    channels: int = 32,                 # feature maps at every resolution
    mapping_layers: int = 2,            # mapping depth (8 in real checkpoints)
    conv_clamp: float | None = None,    # activation clamp (256 in NVIDIA's checkpoints)
    w_avg_samples: int = 2000,          # z samples averaged into w_avg
    device: str | torch.device = "cpu",
) -> Generator:
    """A small random StyleGAN2 generator in eval mode with requires_grad off (like
    `models.load_generator`); the tests' tiny generators are these too (tests/tiny.py)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(img_resolution=resolution, z_dim=z_dim, w_dim=w_dim, mapping_layers=mapping_layers,
                      channel_base=channels * resolution, channel_max=channels, conv_clamp=conv_clamp)
        with torch.no_grad():
            for name, param in G.named_parameters():
                if name.endswith(".bias"):
                    # mapping biases are stored divided by its lr multiplier (equalised lr)
                    scale = 0.1 / G.config["mapping_lr_multiplier"] if name.startswith("mapping.") else 0.1
                    param.add_(scale * torch.randn_like(param))
                elif name.endswith("noise_strength"):
                    param.copy_(0.05 + 0.1 * torch.rand_like(param))
            G.mapping.w_avg.copy_(mean_w(G, num_samples=w_avg_samples, seed=seed))
    return G.eval().requires_grad_(False).to(device)


def photo_landmarks(photo: np.ndarray) -> np.ndarray:
    """The 68 landmarks of the largest face of a photo (Haar detector + face-api landmark net)."""
    from models.detection import make_detector
    from models.landmarks import load_landmark_backend

    boxes = make_detector("haar").detect(photo)  # largest first
    if not boxes:
        raise ValueError("no face in the demo photo")
    box = boxes[0]
    return load_landmark_backend("faceapi").predict_frame(photo, box)


def demo_driving_clip(path: str | Path, photo: np.ndarray, frames: int = 24, fps: int = 25,
                      size: int = 256) -> np.ndarray:
    """A driving clip of `photo`'s face moving (shift, rotation, zoom) and opening its mouth, one
    cycle over `frames` frames (models.synthetic.motion("all")); returns the true landmarks."""
    from models.synthetic import motion, write_clip

    return write_clip(path, photo, photo_landmarks(photo), motion("all", frames), fps=Fraction(fps),
                      size=size)
