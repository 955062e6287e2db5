"""Mapping network (models/mapping/): accuracy and training speed of the two landmark
representations on the synthetic task, and reenactment frames per second, side by side in one run.

    python tests/benchmarks/bench_mapping.py [--threads 1] [--steps 600] [--frames 16] [--device cpu]
        [--projection-frames 'tiny 32=8,256 paper256=3'] [--refine-steps 5] [--skip-training] [--skip-speed]

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
   alone and the generator pass alone; and mapping mode's stage + render per output frame, as it was
   (two generator passes: the stage's, for the landmark metrics, and the render's) and as it is (one:
   the stage makes latents only, the render's pass is measured), with the speed-up.
3. Mapping reenactment against projection reenactment (Uzolas 2021, our defaults) on the same clip
   and generator: frames per second, their ratio, and landmark NME to the targets; plus the mapping
   output refined by --refine-steps projection steps per frame (the hybrid of `--refine-steps K`).

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

from models.mapping.inference import evaluate_mapping, reenact_with_mapping  # noqa: E402
from models.mapping.network import LandmarkMappingNetwork  # noqa: E402
from models.mapping.training import MappingTrainConfig, MappingTrainer  # noqa: E402
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


def _nme(points: torch.Tensor, targets: torch.Tensor) -> float:
    from models.metrics import landmark_nme

    values = landmark_nme(points.float().cpu(), targets.float().cpu())
    return float(values[torch.isfinite(values)].mean())


def bench_versus_projection(args: argparse.Namespace) -> None:
    """3. The same clip and generator reenacted three ways: projection (ProjectionConfig() defaults:
    frame 0 from the source's latent, at most 300 then 50 steps with early stopping; LPIPS VGG-16 with
    the uncalibrated backbone offline: the same cost), the mapping network (coords, trained for
    --map-steps steps on the synthetic task at this W+) and the network + --refine-steps projection steps
    per frame from its output (models.reenact.refine_config). Frames per second (wall time of every
    frame, frame 0 included) and landmark NME of the faceapi landmarks of each frame's render to its
    target (relative targets: the clip's motion on the source landmarks, what the reenact flow
    measures as landmark_nme_target)."""
    from models.landmarks import load_landmark_backend
    from models.losses import PerceptualLoss

    landmarks = load_landmark_backend("faceapi", device=args.device)
    print(f"\n3. mapping vs projection on the same clip and generator (projection: our defaults, LPIPS "
          f"{args.perceptual}); frames/s over every frame, NME of the render's landmarks to the targets")
    header = (f"{'generator':<14} {'frames':>6} {'method':<22} {'frames/s':>9} {'s/frame':>8} "
              f"{'x projection':>12} {'NME':>7}")
    print(header)
    print("-" * len(header))
    perceptual = PerceptualLoss.from_choice(args.perceptual).to(args.device)
    for gname, build in GENERATORS.items():
        frames = args.projection_frames.get(gname, 0)
        if frames < 1:
            continue
        torch.manual_seed(0)
        _versus_rows(args, gname, build().eval().requires_grad_(False).to(args.device), frames, landmarks,
                     perceptual)


def _versus_rows(args: argparse.Namespace, gname: str, G: Generator, frames: int, landmarks,
                 perceptual) -> None:
    from models.projection import ProjectionConfig, Projector, retarget_landmarks
    from models.reenact import refine_config

    task = SyntheticMappingTask(G.num_ws, G.w_dim, seed=0)
    net = LandmarkMappingNetwork(G.num_ws, G.w_dim).to(args.device)
    trainer = MappingTrainer(net, MappingTrainConfig(learning_rate=args.lr))
    rng = np.random.default_rng(3)
    trainer.train(args.map_steps, (task.batch(32, rng) for _ in range(args.map_steps)))
    net.eval().requires_grad_(False)
    clip = task.clip(task.test_ids[0], frames + 1, np.random.default_rng(2))
    src, drv = torch.from_numpy(clip.landmarks[0]), torch.from_numpy(clip.landmarks[1:])
    w_src = torch.from_numpy(clip.latents[0])
    with torch.no_grad():
        look = G.synthesis(w_src[None].to(args.device), noise_mode="const")
    inputs = retarget_landmarks(drv, drv[0], src)  # the network's input as the flow's identity variant
    targets = inputs * (G.img_resolution / task.crop_resolution)  # G pixels, for the NME
    rows = []

    def project(config: ProjectionConfig, init=None) -> tuple[float, float]:
        projector = Projector(G, config, look=look, source_landmarks=src, init_latent=w_src,
                              landmark_resolution=task.crop_resolution, landmarks=landmarks,
                              perceptual=perceptual)
        _sync(args.device)
        start = time.perf_counter()
        result = projector.project_frames(0, drv, init_latents=init)
        _sync(args.device)
        return time.perf_counter() - start, _nme(result.points, targets)

    projection_s, projection_nme = project(ProjectionConfig(perceptual=args.perceptual))
    rows.append(("projection (defaults)", projection_s, projection_nme))
    mapped: list[torch.Tensor] = []
    _sync(args.device)
    start = time.perf_counter()
    ws = reenact_with_mapping(G, net, w_src, src, inputs, args.batch, crop_resolution=task.crop_resolution,
                              on_images=lambda _, images: mapped.append(images))
    _sync(args.device)
    mapping_s = time.perf_counter() - start
    with torch.no_grad():
        points = torch.cat([landmarks((x + 1) / 2).points.cpu() for x in mapped])
    rows.append(("mapping", mapping_s, _nme(points, targets)))
    refine_s, refine_nme = project(refine_config("identity", args.refine_steps,
                                                 {"perceptual": args.perceptual}), init=ws)
    rows.append((f"mapping + refine {args.refine_steps}", mapping_s + refine_s, refine_nme))
    for method, seconds, nme in rows:
        print(f"{gname:<14} {frames:>6} {method:<22} {frames / seconds:>9.2f} {seconds / frames:>8.3f} "
              f"{projection_s / seconds:>11.1f}x {nme:>7.3f}", flush=True)


def bench_reenactment(args: argparse.Namespace) -> None:
    print(f"\n2. reenactment: {args.frames} frames, batch {args.batch}, best of {args.repeats}; frames/s")
    header = (f"{'generator':<14} {'representation':<15} {'mapping':>9} {'generator':>9} {'both':>9} "
              f"{'mode 2-pass':>11} {'mode 1-pass':>11} {'speed-up':>8}")
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
    for name, (representation, options) in REPRESENTATIONS.items():
        net = LandmarkMappingNetwork(G.num_ws, G.w_dim, representation, encoder_options=options)
        net = net.to(args.device).eval().requires_grad_(False)
        mapping_s = _time(lambda net=net: reenact(net, False), args.repeats, args.device)
        both_s = _time(lambda net=net: reenact(net, True), args.repeats, args.device)
        # mapping mode, stage + render: before, the mapping stage rendered each frame to measure its
        # landmarks and the render rendered it again (both + generator); now the stage makes latents
        # only and the render's pass is also the measured one (mapping + generator). The landmark
        # net's pass is the same in both and left out.
        two_pass, one_pass = both_s + generator_s, mapping_s + generator_s
        print(f"{gname:<14} {name:<15} {args.frames / mapping_s:>9.1f} {args.frames / generator_s:>9.1f} "
              f"{args.frames / both_s:>9.1f} {args.frames / two_pass:>11.2f} {args.frames / one_pass:>11.2f} "
              f"{two_pass / one_pass:>7.2f}x", flush=True)


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
    parser.add_argument("--skip-speed", action="store_true", help="skip section 2")
    parser.add_argument("--projection-frames", default="tiny 32=8,256 paper256=0",
                        help="section 3: driving frames per generator (0: skip it), e.g. "
                             "'tiny 32=8,256 paper256=3'")
    parser.add_argument("--map-steps", type=int, default=300, help="section 3: mapping training steps")
    parser.add_argument("--refine-steps", type=int, default=5, help="section 3: refinement steps per frame")
    parser.add_argument("--perceptual", default="uncalibrated",
                        help="section 3: projection's LPIPS (uncalibrated: VGG-16 without weights, "
                             "same cost)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    args.projection_frames = {k.strip(): int(v) for k, v in
                              (item.rsplit("=", 1) for item in args.projection_frames.split(","))}
    if not args.skip_training:
        bench_training(args)
    if not args.skip_speed:
        bench_reenactment(args)
    bench_versus_projection(args)
    print(f"\nload average {os.getloadavg()[0]:.1f} at end (above the thread count: timings are inflated)")


if __name__ == "__main__":
    main()
