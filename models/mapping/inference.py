"""The trained mapping network applied: its held-out error (`evaluate_mapping`) and reenactment
(`reenact_with_mapping`: w_t = w_src + model(src, driving_t), optionally rendered through G)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from models.mapping.data import MappingBatch
from models.mapping.encoders import check_landmarks
from models.mapping.network import LandmarkMappingNetwork
from models.stylegan2 import Generator

__all__ = ["evaluate_mapping", "reenact_with_mapping"]


@torch.no_grad()
def evaluate_mapping(model: LandmarkMappingNetwork, batches: Iterable[MappingBatch]) -> dict[str, float]:
    """Latent MSE of w_src + delta against w_drv over held-out batches, beside the zero-offset
    baseline's (w_src against w_drv): `ratio` = baseline / model (> 1: better than predicting no
    motion)."""
    was_training = model.training
    model.eval()
    device = model.out.weight.device
    sq_model = sq_base = 0.0
    count = 0
    for batch in batches:
        batch = batch.to(device)
        delta = model(batch.src_landmarks, batch.drv_landmarks, batch.crop_resolution)
        sq_model += float((batch.w_src + delta - batch.w_drv).square().sum())
        sq_base += float((batch.w_src - batch.w_drv).square().sum())
        count += batch.w_src.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_mapping: no batches")
    mse, base = sq_model / count, sq_base / count
    return {"mse": mse, "baseline_mse": base, "ratio": base / mse if mse > 0 else float("inf")}


@torch.no_grad()
def reenact_with_mapping(
    G: Generator,
    model: LandmarkMappingNetwork,
    w_src: torch.Tensor,                    # (num_ws, w_dim) or (1, num_ws, w_dim): the source's latent
    src_landmarks: torch.Tensor,            # (68, 2) or (1, 68, 2): the source's crop landmarks
    driving_landmarks: torch.Tensor,        # (T, 68, 2): the driving frames' crop landmarks
    batch_size: int = 8,                    # frames per network + generator pass
    *,
    crop_resolution: int | None = None,     # side of the landmarks' crops; None = G.img_resolution
    on_images: Callable[[int, torch.Tensor], None] | None = None,  # gets (first frame, images
                                            # (B, 3, R, R) in [-1, 1] on G's device) per batch; None
                                            # = no generator pass (latents only)
    noise: list[torch.Tensor] | None = None,  # the source's noise maps ((1, 1, r, r) per noise layer,
                                            # e.g. from its inversion); None = noise_mode "const"
) -> torch.Tensor:
    """Reenacted latents (T, num_ws, w_dim) on the CPU: w_t = w_src + model(src, driving_t).

    One mapping pass and (with `on_images`) one generator pass per frame, `batch_size` frames at a
    time; nothing is kept but the latents, so a long video streams through `on_images`.
    """
    model.check_generator(G)
    device = G.w_avg.device
    w_src = w_src.reshape(-1, *w_src.shape[-2:]) if w_src.ndim == 3 else w_src[None]
    if tuple(w_src.shape) != (1, G.num_ws, G.w_dim):
        raise ValueError(f"reenact: w_src must be ({G.num_ws}, {G.w_dim}), got {tuple(w_src.shape)}")
    src = check_landmarks(src_landmarks[None] if src_landmarks.ndim == 2 else src_landmarks,
                          "reenact: src_landmarks", 1)
    drv = check_landmarks(driving_landmarks, "reenact: driving_landmarks")
    if batch_size < 1:
        raise ValueError(f"reenact: batch_size must be >= 1, got {batch_size}")
    for name, t in (("w_src", w_src), ("src_landmarks", src)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"reenact: {name} has non-finite values")
    bad = torch.nonzero(~torch.isfinite(drv).flatten(1).all(dim=1)).flatten().tolist()
    if bad:
        raise ValueError(f"reenact: driving landmarks of {len(bad)} frames are not finite (first: {bad[:5]})")
    if noise is not None:
        noise = [n.to(device, torch.float32) for n in noise]
    resolution = G.img_resolution if crop_resolution is None else crop_resolution
    was_training = model.training
    model.eval()
    w_src = w_src.to(device, torch.float32)
    src = src.to(device, torch.float32)
    out = []
    try:
        for start in range(0, drv.shape[0], batch_size):
            d = drv[start:start + batch_size].to(device, torch.float32)
            ws = w_src + model(src.expand(d.shape[0], -1, -1), d, resolution)
            if on_images is not None:
                maps = None if noise is None else [n.expand(d.shape[0], -1, -1, -1) for n in noise]
                on_images(start, G.synthesis(ws, noise_mode="const", noise=maps))
            out.append(ws.cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, G.num_ws, G.w_dim)
    return torch.cat(out)
