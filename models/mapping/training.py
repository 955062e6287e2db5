"""Training the mapping network (`MappingTrainer`): MSE between w_src + delta and w_drv, times seed
003's weight 10, optionally plus an image-space loss through the generator; Adam; checkpoints that
resume bitwise (their format: models.mapping.checkpoint). docs/mapping.md has the measured numbers.

    trainer = MappingTrainer(net, MappingTrainConfig(), sampler=PairSampler(clips), generator=G)
    trainer.train(steps=1000)
    trainer.save("mapping.pt")
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.mapping.checkpoint import (
    check_generator_fingerprint,
    new_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from models.mapping.data import MappingBatch, PairSampler
from models.mapping.network import LandmarkMappingNetwork
from models.stylegan2 import Generator
from models.training_files import restore_history, restore_optimizer
from storage.errors import CheckpointError

__all__ = ["HISTORY_FIELDS", "MappingTrainConfig", "MappingTrainer", "plot_history"]


@dataclass(frozen=True)
class MappingTrainConfig:
    """Settings of a training run; all of them go into the checkpoint."""

    learning_rate: float = 1e-3         # Adam. Choe 2023 used 2e-4 (over ~113k steps); on the synthetic
                                        # task 1e-3 gets 26x below the baseline in 500 steps, 2e-4 9x
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8              # torch's default. Choe 2023 used 1e-4: on the synthetic task that
                                        # stalls the raster encoder at the baseline for 300+ steps (its
                                        # gradients are below 1e-4); docs/mapping.md
    batch_size: int = 32                # pairs per step (Choe 2023)
    lambda_mse: float = 10.0            # weight of the latent MSE (Choe 2023, eq. 3.7)
    lambda_image: float = 0.0           # weight of the image-space loss through G (off by default)
    image_loss: str = "mse"             # "mse", or a models.losses.PERCEPTUAL_CHOICES key (LPIPS)
    seed: int = 0                       # seed of the pair sampler

    def __post_init__(self) -> None:
        from models.losses import PERCEPTUAL_CHOICES

        for name in ("learning_rate", "adam_eps"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("lambda_mse", "lambda_image"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.lambda_mse == 0 and self.lambda_image == 0:
            raise ValueError("lambda_mse and lambda_image are both 0: nothing to train")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.image_loss != "mse" and self.image_loss not in PERCEPTUAL_CHOICES:
            raise ValueError(f"image_loss must be 'mse' or one of {', '.join(PERCEPTUAL_CHOICES)}, "
                             f"got {self.image_loss!r}")
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))

    def replace(self, **changes: Any) -> MappingTrainConfig:
        return dataclasses.replace(self, **changes)


HISTORY_FIELDS = ("step", "loss", "mse", "baseline_mse", "image")


class MappingTrainer:
    """Adam on a LandmarkMappingNetwork from batches of pairs; checkpoints resume bitwise.

        trainer = MappingTrainer(net, MappingTrainConfig(), sampler=PairSampler(clips),
                                 provenance=latents_provenance, generator=G)
        trainer.train(steps=1000)            # draws config.batch_size pairs per step from the sampler
        trainer.save("mapping.pt")           # atomic; model, Adam, step, RNG states, history, provenance
        trainer = MappingTrainer.resume("mapping.pt", sampler=PairSampler(clips), generator=G)

    The sampler is re-seeded with `config.seed` at construction, so a run is a function of the model's
    config, the training config and the clips. `train_step(batch)` takes batches from elsewhere.
    Per step, `history` records the total loss, the latent MSE, the zero-offset baseline's MSE on the
    same batch (how much motion there was to predict) and the image loss (NaN when off).
    """

    def __init__(
        self,
        model: LandmarkMappingNetwork,
        config: MappingTrainConfig | None = None,
        *,
        sampler: PairSampler | None = None,     # where train() draws its pairs
        generator: Generator | None = None,     # needed for the image loss; its fingerprint is recorded
        provenance: dict[str, Any] | None = None,  # the provenance of the latents trained from
    ) -> None:
        self.model = model
        self.config = config if config is not None else MappingTrainConfig()
        self.device = model.out.weight.device
        self.sampler = sampler
        if sampler is not None:
            self._check_sampler(sampler)
            sampler.generator.manual_seed(self.config.seed)
        self.generator = generator
        if generator is not None:
            model.check_generator(generator)
        if self.config.lambda_image > 0 and generator is None:
            raise ValueError("lambda_image > 0 needs the generator (generator=G)")
        self.latents_provenance = dict(provenance or {})
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.config.learning_rate,
                                          betas=self.config.adam_betas, eps=self.config.adam_eps)
        self.step = 0
        self.history: dict[str, list[float]] = {name: [] for name in HISTORY_FIELDS}
        self._perceptual = None
        if self.config.lambda_image > 0 and self.config.image_loss != "mse":
            from models.losses import PerceptualLoss

            self._perceptual = PerceptualLoss.from_choice(self.config.image_loss).to(self.device)

    def _check_sampler(self, sampler: PairSampler) -> None:
        if (sampler.num_ws, sampler.w_dim) != (self.model.num_ws, self.model.w_dim):
            raise ValueError(f"clips hold ({sampler.num_ws}, {sampler.w_dim}) latents, the network is for "
                             f"({self.model.num_ws}, {self.model.w_dim})")

    # -- steps --------------------------------------------------------------------------------------

    def losses(self, batch: MappingBatch) -> dict[str, torch.Tensor]:
        """The loss terms of a batch (with gradients to the model): total, mse, baseline_mse, image."""
        batch = batch.to(self.device)
        if tuple(batch.w_src.shape[1:]) != (self.model.num_ws, self.model.w_dim):
            raise ValueError(f"batch latents are {tuple(batch.w_src.shape[1:])}, the network is for "
                             f"({self.model.num_ws}, {self.model.w_dim})")
        c = self.config
        delta = self.model(batch.src_landmarks, batch.drv_landmarks, batch.crop_resolution)
        w = batch.w_src + delta
        terms = {"mse": (w - batch.w_drv).square().mean(),                       # Choe 2023, eq. 3.6
                 "baseline_mse": (batch.w_src - batch.w_drv).square().mean().detach()}
        total = c.lambda_mse * terms["mse"]
        if c.lambda_image > 0:
            G = self.generator
            images = G.synthesis(w, noise_mode="const")
            with torch.no_grad():
                targets = G.synthesis(batch.w_drv, noise_mode="const")
            if self._perceptual is None:
                terms["image"] = (images - targets).square().mean()
            else:
                terms["image"] = self._perceptual(images, targets).mean()
            total = total + c.lambda_image * terms["image"]
        terms["total"] = total
        return terms

    def train_step(self, batch: MappingBatch) -> dict[str, float]:
        """One Adam step on `batch`; returns its loss terms. A non-finite loss raises before the step
        (the model stays as it was)."""
        self.model.train()
        terms = self.losses(batch)
        if not bool(torch.isfinite(terms["total"])):
            raise FloatingPointError(f"mapping training: loss became {float(terms['total'])} at step "
                                     f"{self.step} (lower learning_rate, or check the latents)")
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        self.step += 1
        values = {name: float(t.detach()) for name, t in terms.items()}
        record = {"step": float(self.step), "loss": values["total"], "mse": values["mse"],
                  "baseline_mse": values["baseline_mse"], "image": values.get("image", float("nan"))}
        for name in HISTORY_FIELDS:
            self.history[name].append(record[name])
        return record

    def train(
        self,
        steps: int,
        batches: Iterable[MappingBatch] | None = None,   # None: draw from the sampler
        callback: Callable[[dict[str, float]], None] | None = None,  # after every step
    ) -> dict[str, float] | None:
        """Run `steps` steps; returns the last step's record (None for 0 steps)."""
        if batches is None:
            if self.sampler is None:
                raise ValueError("train: no batches and no sampler")
            batches = (self.sampler.sample(self.config.batch_size) for _ in range(steps))
        record = None
        for _, batch in zip(range(steps), batches, strict=False):
            record = self.train_step(batch)
            if callback is not None:
                callback(record)
        return record

    # -- checkpoints --------------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        from storage.provenance import base_provenance, code_version

        record = base_provenance("mapping")
        record["latents"] = self.latents_provenance
        if self.generator is not None:
            record["generator"] = self.generator.fingerprint()
        else:  # the latents' own record of the generator they were inverted with, if any
            record["generator"] = self.latents_provenance.get("generator")
        record["code_version"] = code_version()
        record["model"] = self.model.config
        record["training"] = dataclasses.asdict(self.config)
        if self._perceptual is not None:
            record["image_loss"] = self._perceptual.provenance()
        return record

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint as a dict of tensors and plain values (what `save` writes)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.sampler is not None:
            rng["sampler"] = self.sampler.state_dict()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return new_checkpoint(
            model=self.model, optimizer_state=self.optimizer.state_dict(), step=self.step, rng=rng,
            train_config=dataclasses.asdict(self.config),
            history={name: torch.tensor(values, dtype=torch.float64)
                     for name, values in self.history.items()},
            provenance=self.provenance())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the checkpoint atomically (complete or absent; storage.atomic)."""
        return write_checkpoint(self.checkpoint(), path)

    @classmethod
    def resume(
        cls,
        path: str | os.PathLike[str],
        *,
        sampler: PairSampler | None = None,
        generator: Generator | None = None,
        provenance: dict[str, Any] | None = None,   # the latents' provenance now; must match the
                                                    # checkpoint's when given
        device: str | torch.device = "cpu",
    ) -> MappingTrainer:
        """A trainer in the state `save` left: the next steps are the ones an uninterrupted run takes."""
        ckpt, model = read_checkpoint(path)
        model = model.to(device)
        try:
            config = MappingTrainConfig(**ckpt["train_config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"unusable training settings ({err})", path=path) from None
        recorded = ckpt["provenance"].get("latents", {})
        if provenance is not None:
            from storage.provenance import provenance_key

            if provenance_key(provenance) != provenance_key(recorded):
                raise CheckpointError(f"checkpoint was trained from other latents (provenance "
                                      f"{provenance_key(recorded)}, these are {provenance_key(provenance)}); "
                                      "start a new checkpoint for them", path=path)
        check_generator_fingerprint(ckpt, generator, path)
        trainer = cls(model, config, sampler=None, generator=generator, provenance=recorded)
        restore_optimizer(trainer.optimizer, ckpt["optimizer"], path)
        trainer.step = int(ckpt["step"])
        trainer.history = restore_history(ckpt["history"], HISTORY_FIELDS)
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if sampler is not None:
            trainer._check_sampler(sampler)
            if "sampler" not in rng:
                raise CheckpointError("checkpoint has no sampler state (it was trained from batches "
                                      "given to train_step)", path=path)
            try:
                sampler.load_state_dict(rng["sampler"])
            except (ValueError, KeyError, RuntimeError, TypeError) as err:
                raise CheckpointError(f"sampler state does not fit these clips ({err})", path=path) from None
            trainer.sampler = sampler
        return trainer

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw the loss curves (latent MSE and the zero-offset baseline) into a PNG."""
        return plot_history(self.history, path)


def plot_history(history: dict[str, Sequence[float]], path: str | os.PathLike[str]) -> Path:
    """Loss curves of a trainer's (or a checkpoint's) history as a PNG (log scale)."""
    from storage.plots import plot_curves

    steps = [float(s) for s in history["step"]]
    curves = {"latent MSE": history["mse"], "zero-offset baseline": history["baseline_mse"]}
    if any(math.isfinite(float(v)) for v in history.get("image", [])):
        curves["image loss"] = history["image"]
    return plot_curves(steps, {k: [float(v) for v in vals] for k, vals in curves.items()}, path,
                       title="mapping network training", xlabel="step", log_y=True)
