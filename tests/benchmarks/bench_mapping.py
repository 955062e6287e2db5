"""Mapping network (models/mapping.py): accuracy and training speed of the two landmark
representations on the synthetic task, and reenactment frames per second, side by side in one run.

    python tests/benchmarks/bench_mapping.py [--threads 1] [--steps 600] [--frames 16] [--device cpu]

1. Synthetic task (tests/mapping_task.py): latents a known smooth function of realistic landmark
   motion, W+ of the 256 px configuration (14 x 512, motion on the first 7 rows). Each
   representation trains for the same number of steps (batch 32, Adam lr --lr) from the same
   pre-generated batches; reported: the training-loss drop (first step / mean of the last 20), the
   held-out gain over the zero-offset baseline (baseline MSE / model MSE on 256 pairs of 16 unseen
   identities), training pairs per second (data generation excluded) and the wall time. Rows:
   "coords" (the default: MLP on normalised coordinates), "raster" (64 px, 32 channels: the default
   raster encoder) and "raster-32" (32 px, 16 channels: a cheaper raster).
2. Reenactment: frames per second of `reenact_with_mapping` (one mapping pass and one generator pass
   per frame, batch --batch) on the tiny generator and the 256 px generator (stylegan2-ada-pytorch's
   paper256 config, random weights: speed does not depend on their values), beside the mapping pass
   alone and the generator pass alone.
3. A slot for projection reenactment (seed 000/001) on the same clip and generator, and the ratio of
   its speed to the mapping network's; `bench_projection` returns None until that work lands.

Default one torch thread: on this shared 2-core machine two threads made the small nets' steps
10-20x slower under load (threads waiting on each other); `--threads 2` to compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.mapping import (  # noqa: E402
    LandmarkMappingNetwork,
    MappingTrainConfig,
    MappingTrainer,
    evaluate_mapping,
    reenact_with_mapping,
)
from models.stylegan2 import Generator  # noqa: E402
from tests.mapping_task import SyntheticMappingTask  # noqa: E402
from tests.tiny import tiny_generator  # noqa: E402

REPRESENTATIONS = {
    "coords": ("coords", {}),
    "raster": ("raster", {}),
    "raster-32": ("raster", {"size": 32, "channels": 16}),
}
GENERATORS = {
    "tiny 32": lambda: tiny_generator(),
    "256 paper256": lambda: Generator(img_resolution=256, channel_base=16384, channel_max=512),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_training(args: argparse.Namespace) -> None:
    num_ws, w_dim = 14, 512
    task = SyntheticMappingTask(num_ws, w_dim, seed=0)
    rng = np.random.default_rng(1)
    batches = [task.batch(32, rng).to(args.device) for _ in range(args.steps)]
    held_out = [task.batch(64, np.random.default_rng(100 + i), task.test_ids).to(args.device)
                for i in range(4)]
    print(f"\n1. synthetic task: W+ ({num_ws}, {w_dim}), {args.steps} steps of 32 pairs, Adam lr {args.lr:g}")
    header = (f"{'representation':<15} {'params':>8} {'loss drop':>9} {'held-out gain':>13} {'pairs/s':>8} "
              f"{'train s':>8}")
    print(header)
    print("-" * len(header))
    for name, (representation, options) in REPRESENTATIONS.items():
        net = LandmarkMappingNetwork(num_ws, w_dim, representation, encoder_options=options).to(args.device)
        trainer = MappingTrainer(net, MappingTrainConfig(learning_rate=args.lr))
        trainer.train(3, batches[:3])  # warm-up (allocator, kernels), then start again from scratch
        net = LandmarkMappingNetwork(num_ws, w_dim, representation, encoder_options=options).to(args.device)
        trainer = MappingTrainer(net, MappingTrainConfig(learning_rate=args.lr))
        _sync(args.device)
        start = time.perf_counter()
        trainer.train(args.steps, batches)
        _sync(args.device)
        seconds = time.perf_counter() - start
        loss = trainer.history["loss"]
        drop = loss[0] / float(np.mean(loss[-20:]))
        gain = evaluate_mapping(net, held_out)["ratio"]
        params = sum(p.numel() for p in net.parameters())
        print(f"{name:<15} {params / 1e6:>7.1f}M {drop:>9.1f} {gain:>13.1f} "
              f"{args.steps * 32 / seconds:>8.0f} {seconds:>8.1f}", flush=True)


def _time(fn, repeats: int, device: str) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench_projection(G: Generator, src_landmarks: torch.Tensor, driving_landmarks: torch.Tensor,
                     w_src: torch.Tensor, device: str) -> float | None:
    """Seconds for projection reenactment (seed 000/001) of the same clip with the same generator, or
    None while models/ has no projection. The projection work fills this in: project every driving
    frame (its default steps) and return the wall time, measured like `bench_reenactment`'s rows."""
    return None


def bench_reenactment(args: argparse.Namespace) -> None:
    print(f"\n2. reenactment: {args.frames} frames, batch {args.batch}, best of {args.repeats}; frames/s")
    header = (f"{'generator':<14} {'representation':<15} {'mapping':>9} {'generator':>9} {'both':>9} "
              f"{'projection':>10} {'mapping/projection':>18}")
    print(header)
    print("-" * len(header))
    for gname, build in GENERATORS.items():
        torch.manual_seed(0)
        _reenactment_rows(args, gname, build().eval().requires_grad_(False).to(args.device))


def _reenactment_rows(args: argparse.Namespace, gname: str, G: Generator) -> None:
    task = SyntheticMappingTask(G.num_ws, G.w_dim, seed=0)
    clip = task.clip(task.test_ids[0], args.frames + 1, np.random.default_rng(2))
    src, drv = torch.from_numpy(clip.landmarks[0]), torch.from_numpy(clip.landmarks[1:])
    w_src = torch.from_numpy(clip.latents[0])
    ws = w_src.expand(args.frames, -1, -1).to(args.device)

    def generator_only() -> None:
        with torch.no_grad():
            for i in range(0, args.frames, args.batch):
                G.synthesis(ws[i:i + args.batch], noise_mode="const")

    def reenact(net: LandmarkMappingNetwork, render: bool) -> None:
        reenact_with_mapping(G, net, w_src, src, drv, args.batch, crop_resolution=task.crop_resolution,
                             on_images=(lambda start, images: None) if render else None)

    generator_s = _time(generator_only, args.repeats, args.device)
    projection_s = bench_projection(G, src, drv, w_src, args.device)
    for name, (representation, options) in REPRESENTATIONS.items():
        net = LandmarkMappingNetwork(G.num_ws, G.w_dim, representation, encoder_options=options)
        net = net.to(args.device).eval().requires_grad_(False)
        mapping_s = _time(lambda net=net: reenact(net, False), args.repeats, args.device)
        both_s = _time(lambda net=net: reenact(net, True), args.repeats, args.device)
        projection = "n/a" if projection_s is None else f"{args.frames / projection_s:.2f}"
        ratio = "n/a" if projection_s is None else f"{projection_s / both_s:.1f}x"
        print(f"{gname:<14} {name:<15} {args.frames / mapping_s:>9.1f} {args.frames / generator_s:>9.1f} "
              f"{args.frames / both_s:>9.1f} {projection:>10} {ratio:>18}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=600, help="training steps per representation")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--frames", type=int, default=16, help="driving frames per reenactment")
    parser.add_argument("--batch", type=int, default=8, help="frames per mapping + generator pass")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    if not args.skip_training:
        bench_training(args)
    bench_reenactment(args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at end (above the thread count: timings are inflated)")


if __name__ == "__main__":
    main()
