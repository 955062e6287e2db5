"""The landmark-to-latent mapping network (Choe 2023, section 3.3): landmark motion -> a W+ offset.

    net = LandmarkMappingNetwork(num_ws=G.num_ws, w_dim=G.w_dim)          # "coords" (the default)
    delta = net(src_points, drv_points, crop_resolution)                 # (N, num_ws, w_dim)
    w = w_src + delta                                                     # reenacted latent

A landmark encoder (models.mapping.encoders) turns the driving-minus-source landmark difference into
features; a shared head maps them to the offset of the first `num_delta_ws` rows of W+ (all by default;
the rest stay 0). Its last layer starts at zero, so an untrained network predicts no motion (the
zero-offset baseline) rather than noise, and with `zero_at_rest` the output for identical source and
driving landmarks is exactly zero (the network returns f(d) - f(0)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.mapping.encoders import ENCODERS, check_landmarks, normalize_landmarks
from models.stylegan2 import Generator

__all__ = ["LandmarkMappingNetwork"]


class LandmarkMappingNetwork(nn.Module):
    """(source, driving) landmarks in crop pixels -> delta w (N, num_ws, w_dim); w = w_src + delta.

    `net.config` holds the constructor arguments (what a checkpoint stores); the initial weights are a
    function of them alone (`init_seed`), whatever the caller's random state.
    """

    def __init__(
        self,
        num_ws: int,                        # rows of W+ of the generator the latents belong to
        w_dim: int,                         # width of w
        representation: str = "coords",     # "coords" or "raster" (see ENCODERS)
        hidden_features: int = 512,         # width of the encoder's output and the head's hidden layer
        num_delta_ws: int | None = None,    # predict offsets for the first N rows of W+ only (the
                                            # coarse layers carry pose and expression); None = all
        zero_at_rest: bool = True,          # subtract the output for a zero difference, so identical
                                            # landmarks give exactly delta = 0
        init_seed: int = 0,                 # seed of the initial weights
        encoder_options: dict[str, Any] | None = None,  # extra constructor arguments of the encoder
                                            # (raster: size, sigma, channels, max_channels;
                                            # coords: layers, input_gain)
    ) -> None:
        super().__init__()
        if representation not in ENCODERS:
            raise ValueError(f"representation must be one of {', '.join(ENCODERS)}, got {representation!r}")
        num_delta_ws = num_ws if num_delta_ws is None else int(num_delta_ws)
        if not 1 <= num_delta_ws <= num_ws:
            raise ValueError(f"num_delta_ws must be in 1..{num_ws}, got {num_delta_ws}")
        encoder_options = dict(encoder_options or {})
        self.config: dict[str, Any] = dict(
            num_ws=num_ws, w_dim=w_dim, representation=representation, hidden_features=hidden_features,
            num_delta_ws=num_delta_ws, zero_at_rest=zero_at_rest, init_seed=init_seed,
            encoder_options=encoder_options)
        self.num_ws, self.w_dim, self.num_delta_ws = num_ws, w_dim, num_delta_ws
        self.representation, self.zero_at_rest = representation, zero_at_rest
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.encoder = ENCODERS[representation](out_features=hidden_features, **encoder_options)
            self.hidden = nn.Linear(hidden_features, hidden_features)
            self.act = nn.LeakyReLU(0.2)
            self.out = nn.Linear(hidden_features, num_delta_ws * w_dim)
        with torch.no_grad():  # start at the zero-offset baseline (see the module docstring)
            self.out.weight.zero_()
            self.out.bias.zero_()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LandmarkMappingNetwork:
        return cls(**config)

    def forward(
        self,
        src_landmarks: torch.Tensor,        # (N, 68, 2) source landmarks, aligned-crop pixels
        drv_landmarks: torch.Tensor,        # (N, 68, 2) driving landmarks, aligned-crop pixels
        crop_resolution: int | float,       # side of the crops those pixels belong to
    ) -> torch.Tensor:
        src = check_landmarks(src_landmarks, "mapping: src_landmarks")
        drv = check_landmarks(drv_landmarks, "mapping: drv_landmarks", src.shape[0])
        device = self.out.weight.device
        src = normalize_landmarks(src.to(device, torch.float32), crop_resolution)
        drv = normalize_landmarks(drv.to(device, torch.float32), crop_resolution)
        return self.delta_from_normalized(src, drv)

    def delta_from_normalized(self, src: torch.Tensor, drv: torch.Tensor) -> torch.Tensor:
        """forward() on normalised [-1, 1] crop coordinates."""
        n = src.shape[0]
        difference = self.encoder.represent(drv) - self.encoder.represent(src)
        if self.zero_at_rest:  # one extra row: the features of "no motion"
            difference = torch.cat([difference, torch.zeros_like(difference[:1])])
        delta = self.out(self.act(self.hidden(self.encoder.encode(difference))))
        if self.zero_at_rest:
            # f(d) - f(0); rows without any motion are set to 0 outright (the batched matmuls would
            # leave ~1e-8 of rounding where exactly 0 is meant)
            moving = difference[:n].flatten(1).any(dim=1)
            delta = torch.where(moving[:, None], delta[:n] - delta[n:], 0.0)
        delta = delta.reshape(n, self.num_delta_ws, self.w_dim)
        if self.num_delta_ws < self.num_ws:
            delta = torch.cat([delta, delta.new_zeros(n, self.num_ws - self.num_delta_ws, self.w_dim)], dim=1)
        return delta

    def check_generator(self, G: Generator) -> None:
        if (G.num_ws, G.w_dim) != (self.num_ws, self.w_dim):
            raise ValueError(f"mapping network is for W+ ({self.num_ws}, {self.w_dim}), the generator's is "
                             f"({G.num_ws}, {G.w_dim})")

    def extra_repr(self) -> str:
        return (f"representation={self.representation!r}, num_ws={self.num_ws}, w_dim={self.w_dim}, "
                f"num_delta_ws={self.num_delta_ws}, zero_at_rest={self.zero_at_rest}")
