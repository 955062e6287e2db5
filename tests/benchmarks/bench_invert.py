"""Inversion speed: seconds per frame-step at batch 1, 4 and 8, and what batching saves.

    python tests/benchmarks/bench_invert.py [--threads 1] [--steps 3] [--configs tiny,256] [--device cpu]

Each row runs `models.inversion.invert` on random targets with the seed-003 loss (MSE + LPIPS +
identity + delta-reg + per-frame noise maps and their regulariser) and times the steps themselves
(the gaps between step callbacks, median after the first step; setup and the final render excluded).
"s/frame-step" is a step's time divided by the batch; "vs singles" is a batch-k step against k
batch-1 steps measured in the same run (below 1: batching pays).

Generators (random weights; speed does not depend on their values):
  tiny   tests/tiny.py's 32 px generator (what the tests use)
  256    stylegan2-ada-pytorch's paper256 config (the ffhq-256 checkpoint's): 256 px, channel_base
         16384, channel_max 512, 8 mapping layers, 14 ws (as in bench_generator.py)
LPIPS runs as the "uncalibrated" opt-in (VGG-16 with a random backbone: the same cost as the
calibrated net, whose weights this machine may not have).

The Prefect row is a placeholder for the dataset flow (see `prefect_overhead`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.inversion import InversionConfig, inversion_losses, invert  # noqa: E402
from models.stylegan2 import Generator  # noqa: E402
from tests.benchmarks.bench_generator import CONFIGS  # noqa: E402
from tests.tiny import tiny_generator  # noqa: E402

BATCHES = (1, 4, 8)


def make_generator(name: str, device: str) -> Generator:
    if name == "tiny":
        return tiny_generator(device=device)
    torch.manual_seed(0)
    return Generator(**CONFIGS["256 paper256"]).eval().requires_grad_(False).to(device)


def seconds_per_step(G: Generator, batch: int, config: InversionConfig, steps: int, device: str) -> float:
    """Median time of one optimisation step on `batch` frames (after a first, warm-up step)."""
    g = torch.Generator().manual_seed(batch)
    r = G.img_resolution
    targets = (torch.rand(batch, 3, r, r, generator=g) * 2 - 1).to(device)
    stamps: list[float] = []

    def clock(state) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    invert(G, targets, config.replace(steps=steps + 1), seeds=list(range(batch)), callback=clock)
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def prefect_overhead(num_frames: int) -> tuple[float, float] | None:
    """Dataset-flow engineer: time the inversion flow on `num_frames` frames against calling
    `invert` directly on the same frames and settings (same batch size), and return (flow seconds,
    direct seconds). None = not measured yet; the table prints a placeholder row."""
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (+1 warm-up)")
    parser.add_argument("--configs", default="tiny,256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prefect-frames", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = InversionConfig(perceptual="uncalibrated")
    inversion_losses(config, args.device)  # build the loss nets outside the timings
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, median of "
          f"{args.steps} steps after a warm-up; load average {os.getloadavg()[0]:.1f} at start")
    header = f"{'generator':<10} {'batch':>5} {'s/step':>9} {'s/frame-step':>13} {'vs singles':>10}"
    print(header)
    print("-" * len(header))
    for name in args.configs.split(","):
        G = make_generator(name, args.device)
        single = None
        for batch in BATCHES:
            step = seconds_per_step(G, batch, config, args.steps, args.device)
            single = step if batch == 1 else single
            ratio = step / (batch * single)
            print(f"{name:<10} {batch:>5} {step:>9.3f} {step / batch:>13.4f} {ratio:>10.2f}", flush=True)
    measured = prefect_overhead(args.prefect_frames)
    if measured is None:
        print(f"{'Prefect overhead: flow on N frames vs calling the model directly':<60} (not measured yet)")
    else:
        flow, direct = measured
        print(f"Prefect overhead: flow on {args.prefect_frames} frames {flow:.2f} s vs direct "
              f"{direct:.2f} s: x{flow / direct:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at end (above the thread count: timings are inflated)")


if __name__ == "__main__":
    main()
