"""The inversion-encoder training flow (issue 17; e4e-style encoder, models/encoder.py).

    generator weights (+ optionally a cache filled by `facereenact invert`)
      --train-inversion-encoder (tag "gpu")--> the generator's own samples z -> image -> W+ (+ cached
                                 inverted frames); checkpoint + loss curve every N steps (atomic);
                                 resumes from `out`; held-out loss before and after
      --> markdown artifact (numbers + plot path), end summary

    train_encoder("ffhq-256", "encoder.pt", steps=2000, cache=None, settings={"perceptual": "lpips-vgg"})

Rerunning the same command after a crash or a kill continues from the last checkpoint. The logic is
in stages/train_encoder.py (Prefect-free); docs/inversion.md has the details.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from flows.conventions import flow_run_name, one_line_failure
from tasks.train_encoder import train_encoder_network

__all__ = ["format_summary", "train_encoder"]


@flow(name="train-encoder", flow_run_name=flow_run_name("train-encoder"))
@one_line_failure
def train_encoder(weights: str, out: str, steps: int = 1000, cache: str | None = None,
                  checkpoint_every: int = 100, settings: dict[str, Any] | None = None,
                  device: str = "auto", progress: bool = False) -> dict[str, Any]:
    """Train the inversion encoder of the generator `weights` into `out`. `settings` override
    stages.train_encoder.DEFAULT_SETTINGS. Returns the summary (also a markdown artifact)."""
    logger = get_run_logger()
    began = time.monotonic()
    result = train_encoder_network(weights, out, steps, dict(settings or {}), cache, checkpoint_every, device,
                                   progress)
    summary = {"training": result, "seconds": round(time.monotonic() - began, 2)}
    _artifact(summary)
    logger.info(format_summary(summary))
    return summary


def _artifact(summary: dict[str, Any]) -> None:
    from tasks.conventions import table_artifact

    t = summary["training"]
    rows = [("steps", t["steps"]), ("resumed from step", t["resumed_from"]),
            ("held-out loss before", f"{t['eval_before']['total']:.4g}"),
            ("held-out loss after", f"{t['eval_after']['total']:.4g}"),
            ("held-out latent error before / after",
             f"{t['eval_before']['latent']:.4g} / {t['eval_after']['latent']:.4g}"),
            ("improvement (before / after)", f"{t['improvement']:.3g}x"),
            ("offsets switched on (e4e progressive)", t["active_deltas"]),
            ("cached frames used", t["cache_frames"]), ("generator sha256", t["generator_sha256"]),
            ("checkpoint", f"`{t['checkpoint']}`"), ("loss curve", f"`{t['plot']}`")]
    table_artifact("train-encoder", t["checkpoint"], "Inversion encoder training", rows,
                   f"inversion encoder {t['checkpoint']}: {t['steps']} steps",
                   footer=f"\nLoss curve (PNG): `{t['plot']}`\n")


def format_summary(summary: dict[str, Any]) -> str:
    """The end summary: steps, held-out loss before and after, where the files are."""
    t = summary["training"]
    before, after = t["eval_before"], t["eval_after"]
    return "\n".join([
        f"trained {t['trained_now']} step{'s' * (t['trained_now'] != 1)} in this run ({t['steps']} in all, "
        f"resumed from step {t['resumed_from']}) in {t['seconds']:.1f} s on {t['device']}",
        f"held-out loss {before['total']:.4g} -> {after['total']:.4g} ({t['improvement']:.3g}x lower); "
        f"latent error {before['latent']:.4g} -> {after['latent']:.4g}"
        + (f"; pixel MSE {before['pixel']:.4g} -> {after['pixel']:.4g}" if "pixel" in after else ""),
        f"checkpoint {t['checkpoint']}; loss curve {t['plot']}"])
