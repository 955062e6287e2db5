"""Learning the direction matrix A (Bounareli et al., sections 3.1-3.2), Prefect-free.

    trainer = DirectionsTrainer.start(G, backend, DirectionsConfig(), inverted=None)  # fits p first
    trainer.train(1000, out="directions.pt", checkpoint_every=100)   # checkpoint + OUT.loss.png
    trainer = DirectionsTrainer.resume("directions.pt", G, backend)  # continues where it stopped

One step (batch B): source latents w_s (random w from G's mapping, truncated by `truncation_psi`; with
inverted latents given, `inverted_fraction` of the batch are rows of those), their images, landmarks
and p_s; for `one_attribute` of the rows Δp changes one element by ε ~ U[-a, a], for the rest Δp =
p_t - p_s with p_t of another sampled latent. Then w_r = w_s + A Δp, I_r = G(w_r) and

    L = λ_r L_r + λ_id L_id + λ_per L_per                            (paper eq. 3)
    L_r = shape + eye + mouth (models.directions.reenactment_loss) of I_r's landmarks against the target
          shape (the source's identity with the target's pose and expression: PoseVector.target_shape)
    L_id = 1 - cos of face-api recognition descriptors of I_r and I_s (the paper: ArcFace)
    L_per = LPIPS(I_r, I_s)

Only A trains (Adam). The source side and the targets are computed without gradients; gradients reach
A through the generator, the landmark net (face-api's is differentiable) and the two loss nets.
Sampling has its own torch.Generator, saved in the checkpoint, so a resumed run takes the steps an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.directions import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    DirectionMatrix,
    PoseVector,
    check_directions_for,
    read_directions_checkpoint,
    reenactment_loss,
)
from models.training_files import restore_history, restore_optimizer, to_cpu
from storage.errors import CheckpointError, InputError

__all__ = ["HISTORY_FIELDS", "DirectionsConfig", "DirectionsTrainer", "attribute_response",
           "evaluate_reenactment", "landmarks_of", "plot_history"]

HISTORY_FIELDS = ("step", "loss", "reenactment", "shape", "eye", "mouth", "identity", "perceptual")


@dataclass(frozen=True)
class DirectionsConfig:
    """What a directions file is trained with (all of it is in the checkpoint and its provenance)."""

    layers: int = 8                  # first W+ rows A moves (the paper: 8)
    expression_dims: int = 8         # m_e, expression coefficients in p
    a: float = 1.0                   # p's elements are scaled to [-a, a]
    percentile: float = 0.5          # each element's range: these quantiles of the fitting samples
    fit_samples: int = 10000         # generated images p's statistics are fitted on (the paper: 10,000)
    batch_size: int = 8
    learning_rate: float = 1e-3      # Adam on A
    lambda_r: float = 1.0            # reenactment loss weight
    lambda_id: float = 1.0           # identity loss weight
    lambda_per: float = 1.0          # perceptual loss weight
    one_attribute: float = 0.5       # fraction of samples that change one element of p only
    inverted_fraction: float = 0.5   # fraction of source latents taken from the inversion cache (if any)
    truncation_psi: float = 0.7      # of the sampled latents
    delta_scale: float = 1.0         # Δp is this fraction of the paper's (ε ~ U[-a s, a s], p_s + s (p_t -
                                     # p_s)); 1 = the paper. A tiny random generator's landmarks move
                                     # linearly with w only over small steps: its tests use 0.2
    perceptual: str = "lpips-vgg"    # models.losses.PERCEPTUAL_CHOICES
    seed: int = 0                    # sampling seed

    def __post_init__(self) -> None:
        checks = [("layers", self.layers >= 1), ("expression_dims", 1 <= self.expression_dims <= 136),
                  ("a", self.a > 0), ("percentile", 0 <= self.percentile < 50),
                  ("fit_samples", self.fit_samples >= self.expression_dims + 2),
                  ("batch_size", self.batch_size >= 1), ("learning_rate", self.learning_rate > 0),
                  ("lambda_r", self.lambda_r >= 0), ("lambda_id", self.lambda_id >= 0),
                  ("lambda_per", self.lambda_per >= 0), ("one_attribute", 0 <= self.one_attribute <= 1),
                  ("inverted_fraction", 0 <= self.inverted_fraction <= 1),
                  ("truncation_psi", 0 <= self.truncation_psi <= 1),
                  ("delta_scale", 0 < self.delta_scale <= 1)]
        bad = [name for name, ok in checks if not ok]
        if bad:
            listed = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise ValueError(f"bad directions settings: {listed}")


def landmarks_of(backend, images: torch.Tensor) -> torch.Tensor:
    """(N, 68, 2) landmarks of generator images in [-1, 1] (whole image = the face crop)."""
    return backend((images + 1) / 2).points


def _synth(G, ws: torch.Tensor) -> torch.Tensor:
    return G.synthesis(ws, noise_mode="const")


class DirectionsTrainer:
    """A, p, the loss nets and the optimiser; `step()` one batch, `train()` a run with checkpoints."""

    def __init__(self, G, backend, pose: PoseVector, config: DirectionsConfig,
                 inverted: torch.Tensor | None = None, inverted_provenance: dict[str, Any] | None = None,
                 identity=None, perceptual=None) -> None:
        from models.losses import IdentityLoss, PerceptualLoss

        self.G, self.backend, self.config = G, backend, config
        self.device = G.w_avg.device
        if not 1 <= config.layers <= G.num_ws:
            raise ValueError(f"layers must be in 1..{G.num_ws} for this generator, got {config.layers}")
        self.pose = pose.to(self.device)
        self.A = DirectionMatrix(pose.dims, G.num_ws, G.w_dim, config.layers).to(self.device)
        self.optimizer = torch.optim.Adam(self.A.parameters(), lr=config.learning_rate)
        self.inverted = (None if inverted is None or len(inverted) == 0
                         else inverted.to(self.device, torch.float32))
        self.inverted_provenance = inverted_provenance
        # a loss net is built only when its term counts (a weight of 0 needs no LPIPS weights on disk)
        if identity is None and config.lambda_id > 0:
            identity = IdentityLoss()
        if perceptual is None and config.lambda_per > 0:
            perceptual = PerceptualLoss.from_choice(config.perceptual)
        self.identity = None if identity is None else identity.to(self.device)
        self.perceptual = None if perceptual is None else perceptual.to(self.device)
        for net in (G, backend, self.identity, self.perceptual):
            if net is not None:
                net.requires_grad_(False)
        self.rng = torch.Generator().manual_seed(config.seed + 1)
        self.step_count = 0
        self.history: dict[str, list[float]] = {name: [] for name in HISTORY_FIELDS}

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def start(cls, G, backend, config: DirectionsConfig, inverted: torch.Tensor | None = None,
              inverted_provenance: dict[str, Any] | None = None, identity=None, perceptual=None,
              on_fit: Callable[[int], None] | None = None) -> DirectionsTrainer:
        """A new trainer: p fitted on `config.fit_samples` generated images (and every inverted latent)."""
        points = fit_points(G, backend, config, inverted, on_fit)
        pose = PoseVector.fit(points, config.expression_dims, config.a, config.percentile)
        return cls(G, backend, pose, config, inverted, inverted_provenance, identity, perceptual)

    @classmethod
    def resume(cls, path: str | os.PathLike[str], G, backend, config: DirectionsConfig | None = None,
               inverted: torch.Tensor | None = None, inverted_provenance: dict[str, Any] | None = None,
               identity=None, perceptual=None) -> DirectionsTrainer:
        """The trainer a checkpoint left. Refused (CheckpointError) when it was made for another
        generator or landmark backend, with other settings (`config`, when given) or other latents."""
        ckpt, A, pose = read_directions_checkpoint(path)
        check_directions_for(ckpt, G.fingerprint(), backend.provenance(), path, str(G.source_path or "G"))
        try:
            saved = DirectionsConfig(**ckpt["train_config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"unusable training settings ({err})", path=path) from None
        if config is not None and config != saved:
            diff = [f"{f.name} {getattr(saved, f.name)!r} -> {getattr(config, f.name)!r}"
                    for f in dataclasses.fields(config) if getattr(saved, f.name) != getattr(config, f.name)]
            raise CheckpointError(f"was trained with other settings ({'; '.join(diff)}); choose another "
                                  "--out "
                                  "or the same settings", path=path)
        from storage.provenance import provenance_key

        recorded = ckpt["provenance"].get("inverted")
        now = None if inverted_provenance is None else provenance_key(inverted_provenance)
        if (recorded or {}).get("key") != now:
            raise CheckpointError(f"was trained with other inverted latents (recorded "
                                  f"{(recorded or {}).get('key')}, now {now}); choose another --out",
                                  path=path)
        trainer = cls(G, backend, pose, saved, inverted, inverted_provenance, identity, perceptual)
        trainer.A.load_state_dict(A.state_dict())
        restore_optimizer(trainer.optimizer, ckpt["optimizer"], path)
        trainer.step_count = int(ckpt["step"])
        trainer.history = restore_history(ckpt["history"], HISTORY_FIELDS)
        trainer.rng.set_state(ckpt["rng"]["sampler"])
        return trainer

    # -- sampling -----------------------------------------------------------------------------------

    def sample_latents(self, n: int, allow_inverted: bool = True) -> torch.Tensor:
        """(n, num_ws, w_dim): random w of G (truncated), `inverted_fraction` of them inverted latents."""
        z = torch.randn(n, self.G.z_dim, generator=self.rng).to(self.device)
        ws = self.G.mapping(z, None, truncation_psi=self.config.truncation_psi)
        if allow_inverted and self.inverted is not None:
            take = torch.rand(n, generator=self.rng) < self.config.inverted_fraction
            rows = torch.randint(0, len(self.inverted), (n,), generator=self.rng)
            ws = torch.where(take.to(self.device)[:, None, None], self.inverted[rows.to(self.device)], ws)
        return ws

    # -- one step -----------------------------------------------------------------------------------

    def losses(self, w_s: torch.Tensor, dp: torch.Tensor, source: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-sample loss terms of reenacting sources `w_s` by `dp` (scaled p units); `source` holds
        `points`, `p`, `scale`, `identity` and `perceptual` (from `source_side`)."""
        c = self.config
        target = self.pose.target_shape(source["points"], source["p"] + dp)
        images = _synth(self.G, w_s + self.A(dp))
        points = landmarks_of(self.backend, images)
        terms = reenactment_loss(points, target, source["scale"])
        terms["reenactment"] = terms.pop("total")
        from models.identity import identity_similarity

        zero = torch.zeros_like(terms["reenactment"])
        terms["identity"] = (1 - identity_similarity(self.identity.embed(images, points.detach()),
                                                     source["identity"]) if c.lambda_id > 0 else zero)
        terms["perceptual"] = (self.perceptual.distance(images, source["perceptual"]) if c.lambda_per > 0
                               else zero)
        terms["loss"] = c.lambda_r * terms["reenactment"] + c.lambda_id * terms["identity"] \
            + c.lambda_per * terms["perceptual"]
        return terms

    @torch.no_grad()
    def source_side(self, w_s: torch.Tensor) -> dict[str, torch.Tensor]:
        images = _synth(self.G, w_s)
        points = landmarks_of(self.backend, images)
        _, _, scale, _ = self.pose.normalise(points)
        out = {"points": points, "p": self.pose(points), "scale": scale}
        if self.config.lambda_id > 0:
            out["identity"] = self.identity.embed(images, points)
        if self.config.lambda_per > 0:
            out["perceptual"] = [f.detach() for f in self.perceptual.features(images)]
        return out

    @torch.no_grad()
    def sample_deltas(self, source: dict[str, torch.Tensor]) -> torch.Tensor:
        """Δp per row: one element by ε ~ U[-a, a] (`one_attribute` of the rows), else p_t - p_s."""
        n, d, a = source["p"].shape[0], self.pose.dims, self.config.a
        one = torch.rand(n, generator=self.rng) < self.config.one_attribute
        which = torch.randint(0, d, (n,), generator=self.rng)
        eps = (torch.rand(n, generator=self.rng) * 2 - 1) * a * self.config.delta_scale
        dp = torch.zeros(n, d)
        dp[torch.arange(n), which] = eps
        dp = dp.to(self.device)
        rest = (~one).nonzero().flatten()
        if rest.numel():
            w_t = self.sample_latents(rest.numel())
            p_t = self.pose(landmarks_of(self.backend, _synth(self.G, w_t)))
            dp[rest.to(self.device)] = (p_t - source["p"][rest.to(self.device)]) * self.config.delta_scale
        return dp

    def step(self) -> dict[str, float]:
        w_s = self.sample_latents(self.config.batch_size)
        source = self.source_side(w_s)
        dp = self.sample_deltas(source)
        terms = self.losses(w_s, dp, source)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].mean().backward()
        self.optimizer.step()
        self.step_count += 1
        record = {"step": float(self.step_count)} | {k: float(terms[k].detach().mean()) for k in
                                                      HISTORY_FIELDS if k != "step"}
        for k in HISTORY_FIELDS:
            self.history[k].append(record[k])
        return record

    # -- a run --------------------------------------------------------------------------------------

    def train(self, steps: int, out: str | os.PathLike[str] | None = None, checkpoint_every: int = 100,
              on_step: Callable[[dict[str, float]], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Train until `steps` in all, saving the checkpoint (and the loss plot) every
        `checkpoint_every` steps and at the end. Returns {"trained_now", "steps", "seconds"}."""
        began, start = time.perf_counter(), self.step_count
        while self.step_count < steps:
            record = self.step()
            if on_step is not None:
                on_step(record)
            if out is not None and (self.step_count % checkpoint_every == 0 or self.step_count == steps):
                self.save(out)
                self.plot(loss_plot_path(out))
            if should_stop is not None and should_stop():
                break
        if out is not None and self.step_count == start:  # nothing to do: the file stays as it is
            if not Path(out).exists():
                self.save(out)
            if not loss_plot_path(out).exists():
                self.plot(loss_plot_path(out))
        return {"trained_now": self.step_count - start, "steps": self.step_count,
                "seconds": time.perf_counter() - began}

    # -- checkpoints --------------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        from storage.provenance import base_provenance, code_version, provenance_key

        record = base_provenance("directions")
        c = self.config
        record.update({
            "generator": self.G.fingerprint(),
            "landmarks": self.backend.provenance(),
            "pose_vector": self.pose.definition(),
            "losses": {"lambda_r": c.lambda_r, "lambda_id": c.lambda_id, "lambda_per": c.lambda_per,
                       "reenactment": "shape + eye + mouth inner distances on 2-D landmarks",
                       "identity": None if self.identity is None else self.identity.provenance(),
                       "perceptual": None if self.perceptual is None else self.perceptual.provenance()},
            "steps": self.step_count,
            "inverted": None if self.inverted_provenance is None else {
                "key": provenance_key(self.inverted_provenance), "latents": int(len(self.inverted)),
                "provenance": self.inverted_provenance},
            "code_version": code_version(),
        })
        return record

    def checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            "model_config": self.A.config,
            "model": {k: v.detach().cpu() for k, v in self.A.state_dict().items()},
            "pose": self.pose.state(),
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "step": self.step_count,
            "rng": {"sampler": self.rng.get_state()},
            "train_config": dataclasses.asdict(self.config),
            "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.history.items()},
            "provenance": self.provenance(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the checkpoint atomically (complete or absent)."""
        from storage.atomic import atomic_output

        buffer = io.BytesIO()
        torch.save(self.checkpoint(), buffer)
        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        return path

    def plot(self, path: str | os.PathLike[str]) -> Path:
        return plot_history(self.history, path)


def loss_plot_path(out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".loss.png")


def plot_history(history: dict[str, list[float]], path: str | os.PathLike[str]) -> Path:
    from storage.plots import plot_curves

    curves = {name: history[name] for name in ("loss", "reenactment", "identity", "perceptual")
              if any(math.isfinite(v) and v > 0 for v in history[name])}
    return plot_curves([float(s) for s in history["step"]], curves, path, title="latent directions training",
                       xlabel="step", log_y=True)


@torch.no_grad()
def fit_points(G, backend, config: DirectionsConfig, inverted: torch.Tensor | None = None,
               on_fit: Callable[[int], None] | None = None, batch: int = 32) -> torch.Tensor:
    """Landmarks of `config.fit_samples` generated images (own seed: config.seed) and of every
    inverted latent: what p's expression basis and ranges are fitted on."""
    device = G.w_avg.device
    gen = torch.Generator().manual_seed(config.seed)
    out = []
    for first in range(0, config.fit_samples, batch):
        n = min(batch, config.fit_samples - first)
        z = torch.randn(n, G.z_dim, generator=gen).to(device)
        ws = G.mapping(z, None, truncation_psi=config.truncation_psi)
        out.append(landmarks_of(backend, _synth(G, ws)).cpu())
        if on_fit is not None:
            on_fit(n)
    if inverted is not None:
        for first in range(0, len(inverted), batch):
            out.append(landmarks_of(backend, _synth(G, inverted[first:first + batch].to(device))).cpu())
    points = torch.cat(out)
    finite = torch.isfinite(points).flatten(1).all(dim=1)
    if int(finite.sum()) < config.expression_dims + 2:
        raise InputError(f"only {int(finite.sum())} of {len(points)} fitting images gave landmarks")
    return points[finite]


# ---------------------------------------------------------------------------------------------------
# Measurements (tests, benchmark)


def held_out_pairs(trainer: DirectionsTrainer, pairs: int, seed: int = 1234
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """A fixed set of `pairs` (source latents, source side, Δp) drawn with `seed`; the trainer's
    sampling state is left as it was."""
    state = trainer.rng.get_state()
    trainer.rng.manual_seed(seed)
    try:
        w_s = trainer.sample_latents(pairs)
        source = trainer.source_side(w_s)
        return w_s, source, trainer.sample_deltas(source)
    finally:
        trainer.rng.set_state(state)


@torch.no_grad()
def evaluate_reenactment(trainer: DirectionsTrainer, pairs: int = 16, seed: int = 1234) -> dict[str, float]:
    """Mean loss terms over a fixed set of `pairs` (source, Δp) pairs drawn with `seed` (the trainer's
    sampling state is left as it was), beside the same terms with A = 0 (`baseline_*`: the source
    unmoved)."""
    w_s, source, dp = held_out_pairs(trainer, pairs, seed)
    terms = {k: float(v.mean()) for k, v in trainer.losses(w_s, dp, source).items()}
    saved = trainer.A.weight.detach().clone()
    trainer.A.weight.zero_()
    try:
        base = {f"baseline_{k}": float(v.mean()) for k, v in trainer.losses(w_s, dp, source).items()}
    finally:
        trainer.A.weight.copy_(saved)
    return terms | base


@torch.no_grad()
def attribute_response(G, backend, pose: PoseVector, A: DirectionMatrix, index: int, eps: float,
                       w_s: torch.Tensor) -> torch.Tensor:
    """Measured Δp (N, dims) of the images G(w_s + A eps e_index) against G(w_s)'s p."""
    dp = torch.zeros(len(w_s), pose.dims, device=w_s.device)
    dp[:, index] = eps
    before = pose(landmarks_of(backend, _synth(G, w_s)))
    after = pose(landmarks_of(backend, _synth(G, w_s + A(dp))))
    return after - before


# ---------------------------------------------------------------------------------------------------
# The stage: a whole training run (what the task calls)


def inverted_latents(cache: str, G) -> tuple[torch.Tensor, dict[str, Any]]:
    """Every done latent of the `invert` cache made with generator G, and their provenance (the latent
    tables' keys). InputError when there is none: the cache was made with another generator or is
    empty."""
    import numpy as np

    from storage.cache import Workspace
    from storage.latents import LatentCache

    if "://" not in str(cache) and not Path(cache).expanduser().is_dir():  # a Workspace would create it
        raise InputError("cache not found (run facereenact invert first, or leave out --cache)", path=cache)
    want = G.weights_sha256()
    rows, keys, other = [], [], 0
    for table in LatentCache.all(Workspace(cache)):
        made = (table.provenance.get("generator") or {}).get("weights_sha256")
        if made != want:
            other += 1
            continue
        _, latents = table.read_done()
        if len(latents):
            rows.append(latents)
            keys.append(table.key)
    if not rows:
        hint = f" ({other} latent table(s) of other generators)" if other else ""
        raise InputError(f"has no inverted latents of this generator (sha256 {want[:12]}...){hint}",
                         path=cache)
    latents = torch.from_numpy(np.concatenate(rows).astype(np.float32))
    return latents, {"latent_tables": sorted(keys), "latents": int(len(latents))}


def train_to(out: str | os.PathLike[str], G, backend, config: DirectionsConfig, steps: int,
             checkpoint_every: int = 100, cache: str | None = None,
             log: Callable[[str], None] = print, on_step: Callable[[dict[str, float]], None] | None = None,
             on_fit: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train directions until the file at `out` holds `steps` steps: a new one (p fitted first) or the
    one there continued (refused when made with another generator, landmark backend, settings or
    latents). Saves it and OUT.loss.png every `checkpoint_every` steps and at the end; then measures
    the reenactment loss on fixed held-out pairs beside A = 0's. Returns the numbers."""
    if steps < 1 or checkpoint_every < 1:
        raise InputError(f"--steps and --checkpoint-every must be >= 1, got {steps} and {checkpoint_every}")
    inverted, inverted_provenance = inverted_latents(cache, G) if cache else (None, None)
    if Path(out).exists():
        trainer = DirectionsTrainer.resume(out, G, backend, config, inverted, inverted_provenance)
        log(f"resuming {out} at step {trainer.step_count} of {steps}")
    else:
        trainer = DirectionsTrainer.start(G, backend, config, inverted, inverted_provenance, on_fit=on_fit)
        log(f"p fitted on {trainer.pose.samples} images ({trainer.pose.dims} elements)")
    first = trainer.step_count
    result = trainer.train(steps, out, checkpoint_every, on_step=on_step)
    evaluation = evaluate_reenactment(trainer, pairs=max(4, config.batch_size))
    recent = trainer.history["reenactment"][-20:]
    return {"checkpoint": str(out), "plot": str(loss_plot_path(out)), "steps": trainer.step_count,
            "resumed_from": first, "trained_now": result["trained_now"],
            "seconds": round(result["seconds"], 3),
            "samples_per_second": (round(result["trained_now"] * config.batch_size / result["seconds"], 2)
                                   if result["trained_now"] else None),
            "train_reenactment": float(sum(recent) / len(recent)) if recent else None,
            "evaluation": evaluation, "pose_vector": trainer.pose.definition(),
            "inverted_latents": 0 if inverted is None else int(len(inverted)), "device": str(trainer.device)}
