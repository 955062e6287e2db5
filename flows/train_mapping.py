"""The mapping-network training flow (Choe 2023, section 3.3): latents of the dataset inversion -> Δw net.

    cache (filled by `facereenact invert`)
      --inspect-training-data--> usable frames per video (latents + crops done, face detected), one
                                 generator, the held-out split; the checkpoint at `out` checked
      --train-mapping-network (tag "gpu")--> MSE on W+ (+ optional image loss through G), Adam;
                                 checkpoint + loss plot every N steps (atomic); resumes from `out`;
                                 then held-out Δw error vs the zero-Δw baseline
      --> markdown artifact (numbers + plot path), end summary

    train_mapping(cache, "mapping.pt", steps=2000, checkpoint_every=200, settings={"held_out": 0.1})

Rerunning the same command after a crash or a kill continues from the last checkpoint and ends with
the weights an uninterrupted run has (bitwise on a CPU). docs/mapping.md has the details.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from prefect import flow, get_run_logger

from flows.conventions import flow_run_name, one_line_failure
from flows.job_requests import TrainMappingRequest
from storage.errors import InputError
from tasks.train_mapping import inspect_data, train_network

__all__ = ["format_summary", "train_mapping"]


@flow(name="train-mapping", flow_run_name=flow_run_name("train-mapping"))
@one_line_failure
def train_mapping(cache: str, out: str, steps: int = TrainMappingRequest.steps,
                  checkpoint_every: int = TrainMappingRequest.checkpoint_every,
                  settings: dict[str, Any] | None = None, weights: str | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Train the landmark-to-latent network at `out` from the latents in `cache`.

    `settings` override tasks.train_mapping.DEFAULT_SETTINGS (representation, batch_size, image_loss,
    learning_rate, seed, held_out, split, inversion); `weights` (the generator the latents came from)
    is needed when image_loss > 0. All of it is a TrainMappingRequest (flows/job_requests.py), checked there.
    Returns the summary (also a markdown artifact keyed
"train-mapping-<checkpoint name>-<hash of its path>": one history per checkpoint).
    """
    logger = get_run_logger()
    began = time.monotonic()
    try:
        request = TrainMappingRequest(out, steps=steps, checkpoint_every=checkpoint_every, weights=weights,
                                      **(settings or {}))
    except TypeError as err:
        raise InputError(f"unknown training setting ({err})") from None
    settings = request.settings()
    data = inspect_data(cache, settings, out, steps)
    logger.info(f"training on {data.train_frames} frames of {data.videos} video(s), "
                f"{data.held_out_frames} held out (by {data.split}); generator "
                f"{str(data.generator_sha256)[:12]}...; checkpoint at step {data.checkpoint_steps}")
    result = train_network(cache, settings, out, steps, checkpoint_every, weights, device)
    summary = {"data": dataclasses.asdict(data), "training": dataclasses.asdict(result), "settings": settings,
               "seconds": round(time.monotonic() - began, 2)}
    _artifact(summary)
    logger.info(format_summary(summary))
    return summary


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _artifact(summary: dict[str, Any]) -> None:
    from tasks.conventions import table_artifact

    t, d, held = summary["training"], summary["data"], summary["training"]["held_out"]
    rows = [("steps", t["steps"]), ("resumed from step", t["resumed_from"]),
            ("training latent MSE (last steps)", t["train_mse"]),
            ("training zero-Δw baseline MSE", t["train_baseline_mse"]),
            ("training baseline / model", t["train_ratio"])]
    if held is not None:
        rows += [(f"held-out latent MSE ({held['pairs']} pairs, by {held['split']})", held["mse"]),
                 ("held-out zero-Δw baseline MSE", held["baseline_mse"]),
                 ("held-out baseline / model", held["ratio"])]
    rows += [("videos / training frames / held-out frames",
              f"{d['videos']} / {d['train_frames']} / {d['held_out_frames']}"),
             ("generator sha256", d["generator_sha256"]), ("pairs/s", t["pairs_per_second"]),
             ("checkpoint", f"`{t['checkpoint']}`"), ("loss curve", f"`{t['plot']}`")]
    table_artifact("train-mapping", t["checkpoint"], "Mapping network training",
                   [(name, _number(value)) for name, value in rows],
                   f"mapping network {t['checkpoint']}: {t['steps']} steps",
                   footer=f"\nLoss curve (PNG): `{t['plot']}`\n")


def versus_baseline(error: float | None, baseline: float | None, name: str = "the zero-Δw baseline") -> str:
    """An error against its baseline's in words that cannot be misread: "2.31x lower than the zero-Δw
    baseline: better", or "2.31x higher ...: worse" (a ratio below 1 is never printed as "lower")."""
    if error is None or baseline is None or not (math.isfinite(error) and math.isfinite(baseline)):
        return f"no comparison with {name}"
    if error == baseline:
        return f"the same as {name}: no better"
    if error == 0:
        return f"0 against {baseline:.4g} for {name}: better"
    if error < baseline:
        return f"{baseline / error:.3g}x lower than {name}: better"
    if baseline == 0:
        return f"{name} is 0: worse"
    return f"{error / baseline:.3g}x higher than {name}: WORSE"


def format_summary(summary: dict[str, Any]) -> str:
    """The end summary: data, training and held-out numbers, where the files are."""
    t, d, held = summary["training"], summary["data"], summary["training"]["held_out"]
    lines = [f"trained {t['trained_now']} step{'s' * (t['trained_now'] != 1)} in this run "
             f"({t['steps']} in all, resumed from step {t['resumed_from']}) in {t['seconds']:.1f} s"
             + (f", {t['pairs_per_second']:g} pairs/s" if t["pairs_per_second"] else "")
             + f" on {t['device']}",
             f"data: {d['videos']} video{'s' * (d['videos'] != 1)}, {d['train_frames']} training frames, "
             f"{d['held_out_frames']} held out (split by {d['split']}); generator "
             f"{str(d['generator_sha256'])[:12]}...",
             f"training latent MSE {_number(t['train_mse'])} vs zero-Δw baseline "
             f"{_number(t['train_baseline_mse'])} ({versus_baseline(t['train_mse'], t['train_baseline_mse'])}"
             f", last steps)"]
    if held is None:
        lines.append("held-out: none (--held-out 0)")
    else:
        lines.append(f"held-out Δw error: latent MSE {_number(held['mse'])} vs zero-Δw baseline "
                     f"{_number(held['baseline_mse'])} "
                     f"({versus_baseline(held['mse'], held['baseline_mse'])}; "
                     f"{held['pairs']} pairs)")
    if d["skipped_tables"]:
        lines.append(f"skipped {len(d['skipped_tables'])} latent table(s) with no usable frame")
    lines.append(f"checkpoint {t['checkpoint']}; loss curve {t['plot']}")
    return "\n".join(lines)
