"""Tiny random-weight StyleGAN2 generators for fast tests.

    from tests.tiny import tiny_generator
    G = tiny_generator()                 # 32 px, z_dim = w_dim = 64, 8 ws, ~0.1 M parameters
    ws = G.w_avg.expand(1, G.num_ws, -1) # start point of an inversion
    img = G.synthesis(ws)                # (1, 3, 32, 32) in a few milliseconds on one CPU core

It is the real `models.stylegan2.Generator` (same code path as a loaded checkpoint), only small and
random. Unlike a freshly constructed one, every tensor is non-trivial: biases and noise strengths are
random (freshly built they are 0 or 1, which would hide a mixed-up or ignored tensor), and `w_avg` is
the mean of mapped z (not zeros), so truncation and "start from w_avg" behave as with real weights.
The same seed gives the same generator.
"""

from __future__ import annotations

import torch

from models.stylegan2 import Generator, mean_w


def tiny_generator(
    resolution: int = 32,               # output size (power of two >= 4); num_ws = 2 * log2(res) - 2
    seed: int = 0,                      # weights are a function of the seed alone
    z_dim: int = 64,                    # input latent width
    w_dim: int = 64,                    # W width (512 in real checkpoints)
    channels: int = 32,                 # feature maps at every resolution
    mapping_layers: int = 2,            # mapping depth (8 in real checkpoints)
    conv_clamp: float | None = None,    # activation clamp (256 in NVIDIA's checkpoints)
    w_avg_samples: int = 2000,          # z samples averaged into w_avg
    device: str | torch.device = "cpu",
) -> Generator:
    """A small random Generator in eval mode, requires_grad off (like `models.load_generator`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(img_resolution=resolution, z_dim=z_dim, w_dim=w_dim, mapping_layers=mapping_layers,
                      channel_base=channels * resolution, channel_max=channels, conv_clamp=conv_clamp)
        with torch.no_grad():
            for name, param in G.named_parameters():
                if name.endswith(".bias"):
                    # mapping biases are stored / lr_multiplier (equalised lr), like its weights
                    scale = 0.1 / G.config["mapping_lr_multiplier"] if name.startswith("mapping.") else 0.1
                    param.add_(scale * torch.randn_like(param))
                elif name.endswith("noise_strength"):
                    param.copy_(0.05 + 0.1 * torch.rand_like(param))
            G.mapping.w_avg.copy_(mean_w(G, num_samples=w_avg_samples, seed=seed))
    return G.eval().requires_grad_(False).to(device)
