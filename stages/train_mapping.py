"""The train-mapping stage: the plan of a run (data, held-out split, network and training config), the
checkpoint at `out` checked against it, training until it holds the steps asked (resuming from it,
saved atomically every `checkpoint_every` steps) and the held-out evaluation. No Prefect
(tasks/train_mapping.py calls `inspect` and `train` here); models/mapping/ computes.

    plan = plan_training(cache, settings)           # one-line errors for unusable data or settings
    check_checkpoint(out, plan, steps)              # steps already in `out` (CheckpointError for another run)
    run = train(out, plan, steps, checkpoint_every) # trains, evaluates the held-out part
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.device import resolve_device
from models.mapping.checkpoint import read_mapping_checkpoint
from models.mapping.data import MappingBatch, MappingClip, PairSampler
from models.mapping.inference import evaluate_mapping
from models.mapping.network import LandmarkMappingNetwork
from models.mapping.training import MappingTrainConfig, MappingTrainer
from models.training_files import check_resume_steps
from storage.cache import Workspace
from storage.errors import CacheError, CheckpointError, InputError
from storage.mapping_data import TrainingData, split_held_out, training_videos
from storage.provenance import canonical_json

__all__ = ["DEFAULT_SETTINGS", "DataSummary", "Plan", "TrainingRun", "check_checkpoint", "data_summary",
           "evaluate_held_out", "inspect", "loss_plot_path", "open_cache", "plan_training", "train",
           "train_to"]
# Settings of a run (plain data: what crosses process boundaries and goes into the checkpoint).
DEFAULT_SETTINGS: dict[str, Any] = {
    "representation": "coords",     # models.mapping.encoders.ENCODERS
    "batch_size": 32,               # pairs per step
    "image_loss": 0.0,              # weight of the pixel MSE through the generator (0: latent MSE only)
    "learning_rate": 1e-3,          # MappingTrainConfig's default (docs/mapping.md)
    "seed": 0,                      # pair sampler seed
    "held_out": 0.1,                # fraction held out for evaluation (Choe 2023: a 90-10 split)
    "split": "auto",                # "video", "frame", or "auto": by video when >= 2 videos
    "inversion": None,              # inversion settings key to train from (None: the only ones)
}
HELD_OUT_PAIRS = 4096               # at most this many held-out pairs are evaluated (evenly spaced)
RECENT = 50                         # steps averaged for the summary's "final" training numbers


def loss_plot_path(out: str | Path) -> Path:
    """The loss-curve PNG beside a checkpoint: mapping.pt -> mapping.loss.png."""
    return Path(out).with_suffix(".loss.png")


def open_cache(cache: str) -> Workspace:
    """The workspace of an existing cache (a local directory that is absent is an error here, not an
    empty new cache)."""
    from storage.remote import cache_exists, is_remote

    if not cache_exists(cache):
        if is_remote(cache):
            raise CacheError("no cache at this URL (run `facereenact invert` with it first)", path=cache)
        raise CacheError("no such cache directory", path=Path(cache.removeprefix("file://")).expanduser())
    return Workspace(cache)


@dataclass
class Plan:
    """Everything a run is a function of: data, held-out split, network and training config."""

    data: TrainingData
    split: str                      # "video" or "frame" (auto resolved)
    held: dict[str, int]            # latents table -> first held-out frame
    model_config: dict[str, Any]
    train_config: MappingTrainConfig
    held_out_fraction: float = 0.0

    def provenance(self) -> dict[str, Any]:
        """The data provenance recorded in (and checked against) the checkpoint."""
        return {**self.data.provenance(),
                "split": {"by": self.split, "fraction": self.held_out_fraction, "held_out": self.held}}

    def clips(self) -> list[MappingClip]:
        """Training clips: each video's usable frames before its first held-out frame."""
        out = []
        for v in self.data.videos:
            first = self.held.get(v.latents_table)
            frames = v.frames if first is None else v.frames[v.frames < first]
            if frames.size == 0:
                continue
            valid = np.zeros(v.num_frames, bool)
            valid[frames] = True
            out.append(MappingClip(v.landmarks, v.latents, v.crop_resolution, valid=valid, name=v.name))
        return out

    def held_out_batches(self, batch_size: int = 256) -> list[MappingBatch]:
        """Held-out pairs: per held-out video, its source (the first usable training frame of the video
        for a split by frame, its own first frame for a split by video) with every other held-out frame
        as driving frame; at most HELD_OUT_PAIRS, evenly spaced."""
        pairs = []
        for v in self.data.videos:
            first = self.held.get(v.latents_table)
            if first is None:
                continue
            test, train = v.frames[v.frames >= first], v.frames[v.frames < first]
            src = int(train[0]) if train.size else int(test[0])
            pairs += [(v, src, int(d)) for d in test if d != src]
        if len(pairs) > HELD_OUT_PAIRS:
            pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, HELD_OUT_PAIRS).round().astype(int)]
        batches = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            arrays = [np.stack([np.asarray(v.landmarks[s]) for v, s, _ in chunk]),
                      np.stack([np.asarray(v.landmarks[d]) for v, _, d in chunk]),
                      np.stack([np.asarray(v.latents[s]) for v, s, _ in chunk]),
                      np.stack([np.asarray(v.latents[d]) for v, _, d in chunk])]
            batches.append(MappingBatch(*(torch.from_numpy(a.astype(np.float32)) for a in arrays),
                                        self.data.crop_resolution))
        return batches


def plan_training(cache: str, settings: Mapping[str, Any], in_memory_bytes: int | None = None) -> Plan:
    """The plan of a run from the cache and the settings; one-line errors for unusable ones."""
    s = {**DEFAULT_SETTINGS, **settings}
    kwargs = {} if in_memory_bytes is None else {"in_memory_bytes": in_memory_bytes}
    data = training_videos(open_cache(cache), s["inversion"], **kwargs)
    split = s["split"]
    if split == "auto":
        split = "video" if len(data.videos) >= 2 else "frame"
    try:
        held = split_held_out(data, float(s["held_out"]), split)
        model = LandmarkMappingNetwork(data.num_ws, data.w_dim, representation=s["representation"])
        config = MappingTrainConfig(learning_rate=float(s["learning_rate"]), batch_size=int(s["batch_size"]),
                                    lambda_image=float(s["image_loss"]), seed=int(s["seed"]))
    except ValueError as err:
        raise InputError(f"bad training settings: {err}") from None
    plan = Plan(data, split, held, model.config, config, held_out_fraction=float(s["held_out"]))
    if not plan.clips():
        raise InputError("every usable frame is held out; lower --held-out")
    return plan


def _differences(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    return [k for k in sorted(set(want) | set(have))
            if canonical_json({"v": want.get(k)}) != canonical_json({"v": have.get(k)})]


def check_checkpoint(out: str | Path, plan: Plan, steps: int) -> int:
    """Steps already in the checkpoint at `out` (0 when absent). A checkpoint of another run (other
    network or training settings, other data or split) or one past `steps` is a CheckpointError:
    it is never silently continued or overwritten."""
    out = Path(out)
    if out.is_dir():
        raise InputError("--out is a directory; give a file name such as mapping.pt", path=out)
    if not out.exists():
        return 0
    ckpt = read_mapping_checkpoint(out)
    diffs = [f"{k} {ckpt['model_config'].get(k)!r} here {plan.model_config.get(k)!r}"
             for k in _differences(plan.model_config, ckpt["model_config"])]
    train = dataclasses.asdict(plan.train_config)
    diffs += [f"{k} {ckpt['train_config'].get(k)!r} here {train.get(k)!r}"
              for k in _differences(train, ckpt["train_config"])]
    recorded = ckpt["provenance"].get("latents", {})
    diffs += [f"{k} of the training data" for k in _differences(plan.provenance(), recorded)]
    if diffs:
        raise CheckpointError(f"holds a training run with other settings or data ({'; '.join(diffs[:4])}); "
                              "pass another --out, or delete the file to start over", path=out)
    return check_resume_steps(int(ckpt["step"]), steps, out)


def _generator(weights: str | None, plan: Plan, device: torch.device,
               load: Callable[[str, str], Any] | None = None):
    """The generator for the image loss: the one the latents were inverted with. `load(weights,
    device)` loads it (default: models.load_generator)."""
    if plan.train_config.lambda_image == 0:
        return None
    if weights is None:
        raise InputError("--image-loss needs --weights (the generator the latents were inverted with)")
    if load is None:
        from models import load_generator as load
    G = load(weights, str(device))
    want = plan.data.generator.get("weights_sha256", "")
    if G.weights_sha256() != want:
        raise InputError(f"is generator {G.weights_sha256()[:12]}..., the latents were inverted with "
                         f"{want[:12]}...", path=weights)
    return G


@dataclass(frozen=True)
class TrainingRun:
    """A training run's numbers: the checkpoint and its loss plot, the steps it holds, where this run
    resumed and how many it trained, its speed, the training latent MSE (mean of the last steps) beside
    the zero-Δw baseline's, the image loss (None without), the device, and the held-out evaluation
    (None when nothing is held out, or not evaluated)."""

    checkpoint: str
    plot: str
    steps: int
    resumed_from: int
    trained_now: int
    seconds: float
    pairs_per_second: float | None
    train_mse: float
    train_baseline_mse: float
    train_ratio: float
    image_loss: float | None
    device: str
    held_out: dict[str, Any] | None = None


def train_to(out: str | Path, plan: Plan, steps: int, checkpoint_every: int, weights: str | None = None,
             device: str = "auto", log: Callable[[str], None] = print,
             load_generator: Callable[[str, str], Any] | None = None) -> TrainingRun:
    """Train until the checkpoint at `out` holds `steps` steps, saving it (and its loss plot) every
    `checkpoint_every` steps and at the end; continues from the checkpoint when there is one. Returns
    the training numbers (no evaluation)."""
    if steps < 1 or checkpoint_every < 1:
        raise InputError(f"--steps and --checkpoint-every must be >= 1, got {steps} and {checkpoint_every}")
    torch_device = resolve_device(device)
    done_before = check_checkpoint(out, plan, steps)
    G = _generator(weights, plan, torch_device, load_generator)
    sampler = PairSampler(plan.clips(), seed=plan.train_config.seed)
    if done_before:
        trainer = MappingTrainer.resume(out, sampler=sampler, generator=G, provenance=plan.provenance(),
                                        device=torch_device)
        log(f"resuming {out} at step {trainer.step} of {steps}")
    else:
        model = LandmarkMappingNetwork.from_config(plan.model_config).to(torch_device)
        trainer = MappingTrainer(model, plan.train_config, sampler=sampler, generator=G,
                                 provenance=plan.provenance())
    began, first_step = time.perf_counter(), trainer.step
    while trainer.step < steps:
        trainer.train(min(checkpoint_every - trainer.step % checkpoint_every, steps - trainer.step))
        trainer.save(out)
        trainer.plot(loss_plot_path(out))
        recent = slice(-min(RECENT, len(trainer.history["mse"])), None)
        log(f"step {trainer.step}/{steps}: latent MSE {np.mean(trainer.history['mse'][recent]):.4g} "
            f"(zero-offset baseline {np.mean(trainer.history['baseline_mse'][recent]):.4g}); "
            f"checkpoint {out}")
    seconds = time.perf_counter() - began
    if not loss_plot_path(out).exists():
        trainer.plot(loss_plot_path(out))
    history = trainer.history
    recent = slice(-min(RECENT, len(history["mse"])), None)
    mse, base = float(np.mean(history["mse"][recent])), float(np.mean(history["baseline_mse"][recent]))
    trained = trainer.step - first_step
    image = [v for v in history["image"][recent] if math.isfinite(v)]
    return TrainingRun(checkpoint=str(out), plot=str(loss_plot_path(out)), steps=trainer.step,
                       resumed_from=first_step, trained_now=trained, seconds=round(seconds, 3),
                       pairs_per_second=(round(trained * plan.train_config.batch_size / seconds, 1)
                                         if trained else None),
                       train_mse=mse, train_baseline_mse=base,
                       train_ratio=base / mse if mse > 0 else math.inf,
                       image_loss=float(np.mean(image)) if image else None, device=str(torch_device))


def evaluate_held_out(out: str | Path, plan: Plan, device: str = "auto") -> dict[str, Any] | None:
    """Held-out latent MSE of the trained network beside the zero-Δw baseline's (None when nothing is
    held out)."""
    from models.mapping.checkpoint import load_mapping_network

    batches = plan.held_out_batches()
    if not batches:
        return None
    model = load_mapping_network(out, device=resolve_device(device))
    result = evaluate_mapping(model, batches)
    return {**result, "pairs": sum(len(b) for b in batches), "split": plan.split}


@dataclass(frozen=True)
class DataSummary:
    """What a run trains on: videos and frames, the tables skipped (no usable frame), the generator and
    inversion, W+ and crop sizes, the split and its sizes, the tables and per-video counts, and the
    steps already in the checkpoint at `out`."""

    videos: int
    frames: int
    skipped_tables: list[str]
    generator_sha256: str | None
    inversion: str
    num_ws: int
    w_dim: int
    crop_resolution: int
    split: str
    held_out_videos: int
    held_out_frames: int
    train_frames: int
    tables: list[str]
    per_video: dict[str, dict[str, int]]
    checkpoint_steps: int = 0


def data_summary(plan: Plan, checkpoint_steps: int = 0) -> DataSummary:
    data = plan.data
    held_frames = sum(int((v.frames >= plan.held[v.latents_table]).sum())
                      for v in data.videos if v.latents_table in plan.held)
    return DataSummary(
        videos=len(data.videos), frames=data.num_frames, skipped_tables=list(data.skipped),
        generator_sha256=data.generator.get("weights_sha256"), inversion=data.inversion,
        num_ws=data.num_ws, w_dim=data.w_dim, crop_resolution=data.crop_resolution, split=plan.split,
        held_out_videos=sum(1 for v in plan.held.values() if v == 0) if plan.split == "video" else 0,
        held_out_frames=held_frames, train_frames=data.num_frames - held_frames,
        tables=[v.latents_table for v in data.videos], per_video={v.name: v.counts for v in data.videos},
        checkpoint_steps=checkpoint_steps)


def inspect(cache: str, settings: Mapping[str, Any], out: str | Path, steps: int) -> DataSummary:
    """What the run will train on (videos, frames, generator, split); fails in one line before any
    training when the cache or the checkpoint at `out` cannot be used. Latents are not read."""
    plan = plan_training(cache, settings, in_memory_bytes=0)
    return data_summary(plan, check_checkpoint(out, plan, steps))


def train(cache: str, settings: Mapping[str, Any], out: str | Path, steps: int, checkpoint_every: int,
          weights: str | None = None, device: str = "auto", log: Callable[[str], None] = print,
          load_generator: Callable[[str, str], Any] | None = None) -> TrainingRun:
    """Train (or continue) the network at `out` to `steps` steps, then evaluate it on the held-out part."""
    plan = plan_training(cache, settings)
    run = train_to(out, plan, steps, checkpoint_every, weights, device, log, load_generator)
    return dataclasses.replace(run, held_out=evaluate_held_out(out, plan, device))
