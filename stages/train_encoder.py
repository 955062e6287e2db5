"""Training of the inversion encoder (models/encoder.py), Prefect-free.

    summary = train_encoder_to(G, "encoder.pt", steps=2000, settings={"perceptual": "lpips-vgg"},
                               cache=None, device="cpu", progress=True)

Data: the generator's own samples, z -> w (mapped; with probability `mixing` two z mixed at a random
layer, so the targets cover W+ and not only W) -> image G.synthesis(w) with G's constant noise. The
encoder sees the image and is trained to give back w. When `cache` names a cache filled by
`facereenact invert`, a share `cache_fraction` of each batch is already-inverted real frames (their
crop and cached latent) of the same generator instead.

Loss per sample (weights in DEFAULT_SETTINGS):
    lambda_latent * mean((E(x) - w)^2) / scale^2       W+ distance; scale = RMS of mapped w per coordinate
  + lambda_pixel  * mean((G(E(x)) - x)^2)              pixel MSE, images in [-1, 1]
  + lambda_lpips  * LPIPS(G(E(x)), x)                  when `perceptual` is not "none"
  + lambda_dreg   * sum_i |delta_i| / scale            e4e's delta regulariser
with e4e's progressive schedule: the offset of layer i is switched on at step i * progressive_every.

The checkpoint at `out` is written atomically every `checkpoint_every` steps and at the end, with the
loss curve beside it (OUT.loss.png). It records its provenance (generator fingerprint, settings, data,
code version) and the full training state (optimizer, sampling RNG, history), so rerunning the same
call continues where it stopped and ends with the weights of an uninterrupted run (bitwise on a CPU).
A checkpoint of another generator or other settings is refused in one line, never overwritten.
A fixed held-out set of generator samples (seeded apart from training) is scored before training and
at every checkpoint: `eval_before` / `eval_after` in the summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.device import resolve_device
from models.encoder import (
    InversionEncoder,
    delta_regularization,
    read_encoder_checkpoint,
    save_encoder_checkpoint,
)
from models.stylegan2 import Generator, mapped_w_stats
from models.training_files import check_resume_steps, to_cpu
from storage.errors import CheckpointError, InputError
from storage.provenance import canonical_json

__all__ = ["DEFAULT_SETTINGS", "EncoderData", "EncoderLoss", "check_encoder_checkpoint",
           "encoder_loss_plot_path", "evaluate_encoder", "plan_encoder_training", "settings_with_defaults",
           "train_encoder_to"]

# Settings of a run (plain data: what crosses process boundaries and goes into the checkpoint).
DEFAULT_SETTINGS: dict[str, Any] = {
    "batch_size": 8,                # samples per step
    "learning_rate": 1e-3,          # Adam
    "lambda_latent": 1.0,           # W+ MSE in units of the per-coordinate spread of mapped w
    "lambda_pixel": 1.0,            # pixel MSE of G(E(x)) against x
    "lambda_lpips": 0.8,            # pSp's and e4e's LPIPS weight
    "perceptual": "lpips-vgg",      # models.losses.PERCEPTUAL_CHOICES key, or "none"
    "lambda_dreg": 2e-4,            # e4e's delta-regularisation weight
    "progressive_every": 100,       # steps between switching on one more layer's offset (0: all at once;
                                    # e4e: 2000 at FFHQ scale)
    "mixing": 0.5,                  # probability of a style-mixed (W+) sample
    "cache_fraction": 0.5,          # share of each batch from cached real frames (when a cache is given)
    "grad_clip": 1.0,               # clip the gradient's global L2 norm to this (0: off); without it
                                    # training diverged at lr 2e-3 once offsets switched on
    "seed": 0,                      # sampling seed
    "eval_samples": 32,             # held-out generator samples scored at each checkpoint
    "model": {},                    # InversionEncoder options (channels, max_channels, fpn_channels, ...)
}
EVAL_SEED_OFFSET = 1_000_003        # the held-out samples' seed is seed + this (never a training draw)


def encoder_loss_plot_path(out: str | Path) -> Path:
    """The loss-curve PNG beside a checkpoint: encoder.pt -> encoder.loss.png."""
    return Path(out).with_suffix(".loss.png")


def settings_with_defaults(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_SETTINGS overridden by `settings`; InputError for unknown keys or bad values."""
    from models.losses import PERCEPTUAL_CHOICES

    s = {**DEFAULT_SETTINGS, **(settings or {})}
    unknown = sorted(set(s) - set(DEFAULT_SETTINGS))
    if unknown:
        raise InputError(f"unknown encoder training settings: {', '.join(unknown)}")
    if s["perceptual"] != "none" and s["perceptual"] not in PERCEPTUAL_CHOICES:
        raise InputError(f"perceptual must be 'none' or one of {', '.join(PERCEPTUAL_CHOICES)}, got "
                         f"{s['perceptual']!r}")
    if int(s["batch_size"]) < 1 or int(s["eval_samples"]) < 1 or int(s["progressive_every"]) < 0:
        raise InputError("batch_size and eval_samples must be >= 1, progressive_every >= 0")
    for name in ("learning_rate", "lambda_latent", "lambda_pixel", "lambda_lpips", "lambda_dreg",
                 "grad_clip"):
        if not (math.isfinite(float(s[name])) and float(s[name]) >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {s[name]}")
    for name in ("mixing", "cache_fraction"):
        if not 0 <= float(s[name]) <= 1:
            raise InputError(f"{name} must be in [0, 1], got {s[name]}")
    return s


# ---------------------------------------------------------------------------------------------------
# Data


class EncoderData:
    """Training samples: the generator's own (always), plus already-inverted frames of a cache."""

    def __init__(self, G: Generator, settings: Mapping[str, Any], cache: str | None = None) -> None:
        self.G, self.settings = G, settings
        self.frames: list[tuple[Any, Any, int]] = []   # (latent table, crops table, frame)
        self.cache_record: dict[str, Any] | None = None
        if cache is not None:
            self._open_cache(cache)

    def _open_cache(self, cache: str) -> None:
        from storage.cache import Workspace
        from storage.errors import CacheError
        from storage.latents import LatentCache
        from storage.remote import cache_exists

        if not cache_exists(cache):
            raise CacheError("no such cache (run facereenact invert with it first)", path=cache)
        ws = Workspace(cache)
        sha = self.G.weights_sha256()
        tables = []
        for table in LatentCache.all(ws):
            if (table.provenance.get("generator") or {}).get("weights_sha256") != sha:
                continue
            media = table.location.split("/")[1]
            crops = ws.open_table(f"media/{media}/crops-{table.provenance.get('crops_table')}")
            frames = np.intersect1d(table.done_frames(), crops.done_frames())
            self.frames += [(table, crops, int(i)) for i in frames]
            if frames.size:
                tables.append({"table": table.location, "frames": int(frames.size),
                               "frames_sha256": _hash_frames(frames)})
        if not self.frames:
            raise CacheError(f"no inverted frames of this generator ({sha[:12]}...) in the cache; invert "
                             "with its weights first, or train without --cache", path=cache)
        self.cache_record = {"tables": sorted(tables, key=lambda t: t["table"])}

    def provenance(self) -> dict[str, Any] | None:
        """What the cached frames were (None without a cache)."""
        return self.cache_record

    @torch.no_grad()
    def generated(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (n, 3, R, R), latents (n, num_ws, w_dim)) of generator samples; random numbers from
        `rng` on the CPU only (the same draws on every device)."""
        G, device = self.G, self.G.w_avg.device
        z = torch.randn(n, G.z_dim, generator=rng)
        z2 = torch.randn(n, G.z_dim, generator=rng)
        mix = torch.rand(n, generator=rng) < float(self.settings["mixing"])
        cut = torch.randint(1, max(2, G.num_ws), (n,), generator=rng)
        ws = G.mapping(z.to(device))
        ws2 = G.mapping(z2.to(device))
        layer = torch.arange(G.num_ws, device=device)
        use2 = (mix.to(device)[:, None] & (layer[None, :] >= cut.to(device)[:, None]))[:, :, None]
        ws = torch.where(use2, ws2, ws)
        images = G.synthesis(ws, noise_mode="const")
        return images, ws

    def cached(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(crops, cached latents) of n frames drawn uniformly from the cache's inverted frames."""
        device = self.G.w_avg.device
        picks = torch.randint(0, len(self.frames), (n,), generator=rng).tolist()
        crops, latents = [], []
        for k in picks:
            table, crop_table, frame = self.frames[k]
            crops.append(np.asarray(crop_table.read("crop", [frame]))[0])
            latents.append(np.asarray(table.read([frame]))[0])
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return images.to(device), torch.from_numpy(np.stack(latents).astype(np.float32)).to(device)

    def batch(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(round(n * float(self.settings["cache_fraction"]))) if self.frames else 0
        images, latents = self.generated(n - k, rng)
        if k:
            real, real_latents = self.cached(k, rng)
            images, latents = torch.cat([images, real]), torch.cat([latents, real_latents])
        return images, latents


def _hash_frames(frames: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(frames, np.int64).tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Loss


class EncoderLoss:
    """The training objective (module docstring) for one generator and settings."""

    def __init__(self, G: Generator, settings: Mapping[str, Any]) -> None:
        from models.losses import PerceptualLoss

        self.G, self.s = G, settings
        self.perceptual = None
        if settings["perceptual"] != "none" and float(settings["lambda_lpips"]) > 0:
            self.perceptual = PerceptualLoss.from_choice(settings["perceptual"]).to(G.w_avg.device)
            self.perceptual.requires_grad_(False)

    def provenance(self) -> dict[str, Any] | None:
        return self.perceptual.provenance() if self.perceptual is not None else None

    def __call__(self, E: InversionEncoder, images: torch.Tensor, latents: torch.Tensor
                 ) -> dict[str, torch.Tensor]:
        s = self.s
        out = E.encode(images)
        scale = E.w_scale
        terms = {"latent": (out.latents - latents).square().mean(dim=(1, 2)) / scale.square(),
                 "dreg": delta_regularization(out.deltas) / scale}
        weights = {"latent": float(s["lambda_latent"]), "dreg": float(s["lambda_dreg"])}
        if float(s["lambda_pixel"]) > 0 or self.perceptual is not None:
            rendered = self.G.synthesis(out.latents, noise_mode="const")
            terms["pixel"] = (rendered - images).square().mean(dim=(1, 2, 3))
            weights["pixel"] = float(s["lambda_pixel"])
            if self.perceptual is not None:
                terms["lpips"] = self.perceptual(rendered, images)
                weights["lpips"] = float(s["lambda_lpips"])
        total = sum(weights[k] * v for k, v in terms.items())
        return {"total": total, **terms}


@torch.no_grad()
def evaluate_encoder(E: InversionEncoder, loss: EncoderLoss, images: torch.Tensor, latents: torch.Tensor,
                     batch: int = 16) -> dict[str, float]:
    """Mean of every loss term over a fixed set of samples (eval mode)."""
    was = E.training
    E.eval()
    sums: dict[str, float] = {}
    for start in range(0, images.shape[0], batch):
        terms = loss(E, images[start:start + batch], latents[start:start + batch])
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    E.train(was)
    return {k: v / images.shape[0] for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------------
# Checkpoints and the loop


def plan_encoder_training(G: Generator, settings: Mapping[str, Any] | None, cache: str | None = None,
                          w_stats: tuple[int, int] = (10_000, 123)
                          ) -> tuple[dict[str, Any], EncoderData, EncoderLoss]:
    """(the run's provenance, its data, its loss) before any training: one-line errors for bad
    settings, an unusable cache or missing LPIPS weights."""
    s = settings_with_defaults(settings)
    data = EncoderData(G, s, cache)
    loss = EncoderLoss(G, s)
    return _provenance(G, s, data, loss, w_stats), data, loss


def _provenance(G: Generator, settings: Mapping[str, Any], data: EncoderData, loss: EncoderLoss,
                w_stats: tuple[int, int]) -> dict[str, Any]:
    from storage.provenance import base_provenance

    record = base_provenance("inversion-encoder")
    record["generator"] = G.fingerprint()
    record["settings"] = dict(settings)
    record["w_stats"] = {"samples": w_stats[0], "seed": w_stats[1]}
    record["cache"] = data.provenance()
    record["perceptual"] = loss.provenance()
    return record


def _differences(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    return [k for k in sorted(set(want) | set(have))
            if canonical_json({"v": want.get(k)}) != canonical_json({"v": have.get(k)})]


def check_encoder_checkpoint(out: str | Path, provenance: Mapping[str, Any], steps: int) -> int:
    """Steps already in the checkpoint at `out` (0 when absent). One of another generator, settings or
    data, or past `steps`, is a one-line CheckpointError: never silently continued or overwritten."""
    out = Path(out)
    if out.is_dir():
        raise InputError("--out is a directory; give a file name such as encoder.pt", path=out)
    if not out.exists():
        return 0
    ckpt, _ = read_encoder_checkpoint(out)
    recorded = {k: v for k, v in ckpt["provenance"].items() if k != "code_version"}
    diffs = _differences(provenance, recorded)
    if diffs:
        raise CheckpointError(f"holds an encoder training run that differs in {', '.join(diffs)}; pass "
                              "another --out, or delete the file to start over", path=out)
    return check_resume_steps(int(ckpt["step"]), steps, out)


def _plot(history: Mapping[str, list[float]], path: Path) -> Path:
    from storage.plots import plot_curves

    curves = {f"train {k}": history[k] for k in ("total", "latent", "pixel", "lpips")
              if any(math.isfinite(v) for v in history.get(k, []))}
    steps = [float(s) for s in history["step"]]
    if not steps:  # nothing trained yet: an empty plot would say nothing
        return path
    out = plot_curves(steps, curves, path, title="inversion encoder training", xlabel="step", log_y=True)
    return out


def train_encoder_to(G: Generator, out: str | Path, steps: int, settings: Mapping[str, Any] | None = None,
                     cache: str | None = None, checkpoint_every: int = 100, device: str = "auto",
                     progress: bool = False, log: Callable[[str], None] = print,
                     w_stats: tuple[int, int] = (10_000, 123)) -> dict[str, Any]:
    """Train (or continue) the encoder at `out` until it holds `steps` steps; see the module docstring.
    Returns the summary (numbers and paths; no tensors)."""
    if steps < 1 or checkpoint_every < 1:
        raise InputError(f"--steps and --checkpoint-every must be >= 1, got {steps} and {checkpoint_every}")
    s = settings_with_defaults(settings)
    torch_device = resolve_device(device)
    G = G.to(torch_device).eval()
    out = Path(out)
    provenance, data, loss = plan_encoder_training(G, s, cache, w_stats)
    done_before = check_encoder_checkpoint(out, provenance, steps)

    rng = torch.Generator().manual_seed(int(s["seed"]))
    eval_rng = torch.Generator().manual_seed(int(s["seed"]) + EVAL_SEED_OFFSET)
    eval_data = EncoderData(G, {**s, "cache_fraction": 0.0})
    eval_images, eval_latents = eval_data.generated(int(s["eval_samples"]), eval_rng)
    history: dict[str, list[float]] = {"step": [], "total": [], "latent": [], "pixel": [], "lpips": [],
                                       "dreg": []}
    if done_before:
        ckpt, E = read_encoder_checkpoint(out)
        E = E.to(torch_device)
        optimizer = torch.optim.Adam(E.parameters(), lr=float(s["learning_rate"]))
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"optimizer state does not fit the encoder ({err})", path=out) from None
        rng.set_state(ckpt["rng"]["sampling"])
        history = {k: [float(x) for x in ckpt["history"].get(k, torch.zeros(0)).tolist()] for k in history}
        evals = ckpt.get("evals", [])
        step = int(ckpt["step"])
        log(f"resuming {out} at step {step} of {steps}")
    else:
        mean, spread = mapped_w_stats(G, *w_stats)
        torch.manual_seed(int(s["seed"]))  # the encoder's initial weights
        E = InversionEncoder.for_generator(G, (mean, spread), **dict(s["model"])).to(torch_device)
        optimizer = torch.optim.Adam(E.parameters(), lr=float(s["learning_rate"]))
        step = 0
        evals = [{"step": 0, **evaluate_encoder(E, loss, eval_images, eval_latents)}]
    E.train()
    G.requires_grad_(False)

    def save() -> None:
        save_encoder_checkpoint(out, {
            "model_config": E.config, "model": {k: v.detach().cpu() for k, v in E.state_dict().items()},
            "optimizer": to_cpu(optimizer.state_dict()), "step": step,
            "rng": {"sampling": rng.get_state()},
            "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in history.items()},
            "evals": evals, "provenance": {**provenance, "code_version": _code_version()}})
        _plot(history, encoder_loss_plot_path(out))

    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=steps, initial=step, desc="training encoder", unit="step", file=sys.stderr,
                   dynamic_ncols=True)
    began, first_step = time.perf_counter(), step
    every = int(s["progressive_every"])
    try:
        while step < steps:
            E.set_active_deltas(E.num_ws - 1 if every == 0 else step // every)
            images, latents = data.batch(int(s["batch_size"]), rng)
            terms = loss(E, images, latents)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].mean().backward()
            if float(s["grad_clip"]) > 0:
                torch.nn.utils.clip_grad_norm_(E.parameters(), float(s["grad_clip"]))
            optimizer.step()
            step += 1
            history["step"].append(float(step))
            for k in history:
                if k != "step":
                    history[k].append(float(terms[k].detach().mean()) if k in terms else float("nan"))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history['total'][-1]:.4g}", refresh=False)
            if step % checkpoint_every == 0 or step == steps:
                E.set_active_deltas(E.num_ws - 1 if every == 0 else step // every)
                evals.append({"step": step, **evaluate_encoder(E, loss, eval_images, eval_latents)})
                save()
                log(f"step {step}/{steps}: held-out loss {evals[-1]['total']:.4g} (latent "
                    f"{evals[-1]['latent']:.4g}); checkpoint {out}")
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - began
    before, after = evals[0], evals[-1]
    return {"checkpoint": str(out), "plot": str(encoder_loss_plot_path(out)), "steps": step,
            "resumed_from": first_step, "trained_now": step - first_step, "seconds": round(seconds, 3),
            "samples_per_second": (round((step - first_step) * int(s["batch_size"]) / seconds, 1)
                                   if step > first_step and seconds > 0 else None),
            "eval_before": before, "eval_after": after,
            "improvement": before["total"] / after["total"] if after["total"] > 0 else math.inf,
            "active_deltas": int(E.active_deltas), "device": str(torch_device),
            "generator_sha256": G.weights_sha256(),
            "cache_frames": len(data.frames), "settings": s}


def _code_version() -> str:
    from storage.provenance import code_version

    return code_version()
