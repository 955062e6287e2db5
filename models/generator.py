"""What every generator family's `Generator` and synthesis network share (models.stylegan2,
models.stylegan3).

The contract the rest of the code relies on, in one place: the attributes (z_dim, c_dim, w_dim,
img_resolution, img_channels, num_ws, config, w_avg), where the weights came from (set by
models.checkpoints), the weights' content hash and the fingerprint that cache provenance records.
A family subclasses `GeneratorBase`, builds `mapping` and `synthesis` (a `SynthesisBase`: ws
(N, num_ws, w_dim) -> images, checked at its boundary), and sets `num_ws`.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["NOISE_MODES", "GeneratorBase", "SynthesisBase"]

# How a synthesis network fills its noise inputs: the stored maps, none, or fresh draws per call.
NOISE_MODES = ("const", "none", "random")


class SynthesisBase(nn.Module):
    """Base of the synthesis networks: ws (N, num_ws, w_dim) -> images (N, img_channels, R, R).

    Subclasses build their layers, set `num_ws` and implement `forward(ws, noise_mode=, force_fp32=,
    fused_modconv=, noise=)` (calling `check_ws` first) and `noise_layers()`.
    """

    num_ws: int

    def __init__(
        self,
        w_dim: int,                         # width of w
        img_resolution: int,                # output resolution
        img_channels: int,                  # image channels
    ) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels

    def noise_layers(self) -> list[tuple[str, nn.Module]]:
        """The layers with a noise input, in the order `forward(noise=...)` takes their maps."""
        raise NotImplementedError

    def check_ws(self, ws: torch.Tensor, noise_mode: str) -> None:
        """ValueError unless `ws` is (N, num_ws, w_dim) and `noise_mode` one of NOISE_MODES."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"synthesis: ws must be (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")


class GeneratorBase(nn.Module):
    """Base of the generator families: identity attributes, weights hash, fingerprint, extra_repr.

    Subclasses build `synthesis` (a SynthesisBase) and then `mapping` (with `z_dim` and a `w_avg`
    buffer) and hand both to `_set_networks`, which takes the latent space's shape (z_dim, w_dim,
    num_ws, img_resolution, img_channels) from them.
    A family may set `hash_prefix` and override `family_fingerprint` so that two families never
    share a hash.
    """

    hash_prefix: ClassVar[str] = ""     # hashed before the weights ("" for StyleGAN2: its hashes,
                                        # recorded in existing caches, predate the prefix)
    mapping: nn.Module
    synthesis: SynthesisBase

    def __init__(
        self,
        config: dict[str, Any],         # the constructor arguments (what the native checkpoint stores)
    ) -> None:
        super().__init__()
        self.config = config
        self.c_dim = 0  # unconditional; kept for code written against NVIDIA's attribute names
        # where the weights came from: set by models.checkpoints.load_generator
        self.source_path: str | None = None
        self.source_sha256: str | None = None
        self.source_format: str | None = None
        self.converted_from: dict[str, str] | None = None  # native files: the checkpoint they came from
        self._fingerprint_memo: tuple[tuple, str] | None = None

    def _set_networks(self, synthesis: SynthesisBase, mapping: nn.Module) -> None:
        """Register the two networks (synthesis first: the state_dict order of the checkpoints) and
        take the latent space's shape from them, so each number has one source."""
        self.synthesis = synthesis
        self.mapping = mapping
        self.z_dim: int = mapping.z_dim
        self.w_dim, self.num_ws = synthesis.w_dim, synthesis.num_ws
        self.img_resolution, self.img_channels = synthesis.img_resolution, synthesis.img_channels

    @property
    def w_avg(self) -> torch.Tensor:
        """Tracked average of w, (w_dim,); the truncation centre and the usual inversion start."""
        return self.mapping.w_avg

    def weights_sha256(self) -> str:
        """sha256 over `hash_prefix` and the state_dict (sorted names; name, shape and float32
        little-endian bytes of each tensor). Independent of the file format, device and dtype the
        weights came in."""
        state = self.state_dict()
        # Re-hash only when a tensor changed: in-place updates bump `_version`.
        key = tuple((name, t.data_ptr(), t._version) for name, t in sorted(state.items()))
        if self._fingerprint_memo is not None and self._fingerprint_memo[0] == key:
            return self._fingerprint_memo[1]
        digest = hashlib.sha256(self.hash_prefix.encode())
        for name, tensor in sorted(state.items()):
            array = tensor.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
            digest.update(f"{name}:{tuple(array.shape)}\n".encode())
            digest.update(array.tobytes())
        self._fingerprint_memo = (key, digest.hexdigest())
        return self._fingerprint_memo[1]

    def family_fingerprint(self) -> dict[str, Any]:
        """Fields a family adds in front of the common fingerprint (none for StyleGAN2)."""
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """Small dict for cache provenance: the weights' content hash and the shape of the latent space.

        `weights_sha256` is the same for the same weights in any format (pickle, .pt, native);
        `config` is there because the architecture options (e.g. conv_clamp) also change the output.
        """
        from storage.provenance import provenance_key

        return {
            **self.family_fingerprint(),
            "weights_sha256": self.weights_sha256(),
            "config_key": provenance_key(self.config),
            "img_resolution": self.img_resolution,
            "num_ws": self.num_ws,
            "w_dim": self.w_dim,
        }

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
                f"img_resolution={self.img_resolution}, img_channels={self.img_channels}")
