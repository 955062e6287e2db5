"""The latent-directions training flow (Bounareli et al., sections 3.1-3.2): generator -> A.

    generator (+ optional `invert` cache)
      --train-directions (tag "gpu")--> p fitted on generated images (and the cache's inverted
                                        latents); A trained with the reenactment, identity and
                                        perceptual losses; directions file + loss plot every N steps
                                        (atomic); resumes from `out`; held-out loss vs A = 0
      --> markdown artifact (numbers + plot path), end summary

    train_directions("ffhq-1024", "directions.pt", steps=2000, settings={"batch_size": 8})

Rerunning the same command after a crash or a kill continues from the last checkpoint.
docs/directions.md has the details.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from flows.conventions import flow_run_name, one_line_failure
from tasks.train_directions import directions_config, train_directions_task

__all__ = ["format_summary", "train_directions"]


@flow(name="train-directions", flow_run_name=flow_run_name("train-directions"))
@one_line_failure
def train_directions(weights: str, out: str, steps: int = 1000, checkpoint_every: int = 100,
                     settings: dict[str, Any] | None = None, cache: str | None = None, device: str = "auto",
                     landmarks: str = "faceapi", progress: bool = False) -> dict[str, Any]:
    """Train (or continue) the direction matrix at `out` for the generator `weights`.

    `settings` are stages.train_directions.DirectionsConfig fields (layers, expression_dims, batch_size,
    learning_rate, lambda_r, lambda_id, lambda_per, fit_samples, perceptual, seed, ...); `cache` an
    `invert` cache whose latents of this generator are mixed into training (paper section 3.2).
    """
    began = time.monotonic()
    settings = dict(settings or {})
    directions_config(settings)  # bad settings: fail before any work
    result = train_directions_task(weights, out, settings, steps, checkpoint_every, cache=cache,
                                   device=device, landmarks=landmarks, progress=progress)
    summary = {"training": result, "settings": settings, "weights": weights, "cache": cache,
               "landmarks": landmarks, "seconds": round(time.monotonic() - began, 2)}
    _artifact(summary)
    get_run_logger().info(format_summary(summary))
    return summary


def _artifact(summary: dict[str, Any]) -> None:
    from tasks.conventions import table_artifact

    t, e = summary["training"], summary["training"]["evaluation"]
    rows = [("steps", t["steps"]), ("resumed from step", t["resumed_from"]),
            ("held-out reenactment loss", f"{e['reenactment']:.4g}"),
            ("held-out reenactment loss with A = 0", f"{e['baseline_reenactment']:.4g}"),
            ("held-out identity loss", f"{e['identity']:.4g}"), ("held-out LPIPS", f"{e['perceptual']:.4g}"),
            ("p elements", len(t["pose_vector"]["elements"])),
            ("fitted on images", t["pose_vector"]["fitted_on"]),
            ("inverted latents mixed in", t["inverted_latents"]), ("samples/s", t["samples_per_second"]),
            ("directions file", f"`{t['checkpoint']}`"), ("loss curve", f"`{t['plot']}`")]
    table_artifact("train-directions", t["checkpoint"], "Latent directions training", rows,
                   f"directions {t['checkpoint']}: {t['steps']} steps")


def format_summary(summary: dict[str, Any]) -> str:
    """The end summary: steps, the held-out loss against A = 0's, where the files are."""
    t, e = summary["training"], summary["training"]["evaluation"]
    ratio = e["baseline_reenactment"] / e["reenactment"] if e["reenactment"] > 0 else float("inf")
    rate = f", {t['samples_per_second']:g} samples/s" if t["samples_per_second"] else ""
    return "\n".join([
        f"trained {t['trained_now']} step{'s' * (t['trained_now'] != 1)} in this run ({t['steps']} in all, "
        f"resumed from step {t['resumed_from']}) in {t['seconds']:.1f} s{rate} on {t['device']}",
        f"p: {len(t['pose_vector']['elements'])} elements fitted on {t['pose_vector']['fitted_on']} images "
        f"({t['inverted_latents']} inverted latents mixed in)",
        f"held-out reenactment loss {e['reenactment']:.4g} vs {e['baseline_reenactment']:.4g} with A = 0 "
        f"({ratio:.3g}x {'lower' if ratio >= 1 else 'HIGHER'}); identity loss {e['identity']:.4g}, "
        f"LPIPS {e['perceptual']:.4g}",
        f"directions {t['checkpoint']}; loss curve {t['plot']}"])
