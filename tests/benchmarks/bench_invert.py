"""Inversion speed: seconds per frame-step at batch 1, 4 and 8, and what batching saves; and the
encoder-initialised inversion's speed / loss trade-off.

    python tests/benchmarks/bench_invert.py [--threads 1] [--steps 3] [--configs tiny,256] [--device cpu]
    python tests/benchmarks/bench_invert.py --tradeoff --encoder encoder.pt [--configs tiny] [--frames 4]

Each row runs `models.inversion.invert` on random targets with Choe 2023's loss (MSE + LPIPS +
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

The Prefect row times the dataset flow (`flows.invert.invert_dataset`, threads runner) on one clip of
N frames whose crops are already prepared, tiny generator, a few steps, against calling
`models.inversion.invert` directly on the same crops, batches, landmarks and seeds (crops read
beforehand, nothing stored): what the flow adds is Prefect's runs, the prepare check, table
bookkeeping and the zarr writes. The two are measured side by side, alternating direct / flow three times
(each flow run into a fresh copy of the prepared cache; the fastest of each), on a throwaway Prefect
test server.

The trade-off (`--tradeoff`, issue 17) runs in one process on held-out frames: the generator's own
samples drawn with a seed no training uses (z from torch seed 777, half of them style-mixed, G's
constant noise), one batch of `--frames`. The reference is the default inversion (1000 steps from
w_avg); its final reconstruction loss (models.inversion.reconstruction_loss: the weighted MSE +
LPIPS + identity terms, the frames' mean) is the target. Each row is one batched run: "encoder + K"
(the encoder's prediction, then K steps of stages.encoder_init's refinement) and "w_avg + K" (the
default objective and schedule with K steps), K in --ks. Seconds per frame include the encoder's
forward pass; "speed-up" is the reference's seconds per frame over the row's, "reached" whether its
loss is at or below the target. `--encoder` is a checkpoint for the configuration's generator
(`facereenact train-encoder`); without it one is trained first with `--encoder-steps` (not timed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
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


def prefect_overhead(num_frames: int, steps: int = 10, batch: int = 4, repeats: int = 3
                     ) -> tuple[float, float]:
    """(flow seconds, direct seconds), the fastest of `repeats` alternating runs each (on this shared
    machine other jobs only ever add time, so the minimum is the least disturbed estimate): the
    inversion flow on one prepared clip of `num_frames` frames against `invert` called directly on
    the same crops."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    from flows.invert import invert_dataset
    from flows.prepare import prepare_video
    from models.checkpoints import save_native
    from storage.cache import Workspace
    from storage.latents import fixed_batches, frame_seed
    from tests.clips import write_test_clip

    settings = {"steps": steps, "batch_size": batch, "perceptual": "uncalibrated", "device": "cpu"}
    with tempfile.TemporaryDirectory(prefix="bench-invert-") as tmp, prefect_test_harness():
        work = Path(tmp)
        clip = work / "clip.mp4"
        write_test_clip(clip, "all", frames=num_frames)
        G = tiny_generator()
        weights = save_native(G, work / "tiny.safetensors")
        prepared = work / "prepared"
        info = prepare_video(str(clip), str(prepared), resolution=G.img_resolution, device="cpu")
        (crops,) = Workspace(prepared).tables(info["key"], "crops")
        targets = torch.from_numpy(crops.read("crop")).permute(0, 3, 1, 2).float() / 127.5 - 1
        points = torch.from_numpy(crops.read("crop_landmarks"))
        seeds = [frame_seed(info["key"], i, 303) for i in range(num_frames)]
        config = InversionConfig(steps=steps, perceptual="uncalibrated")
        inversion_losses(config, "cpu")

        def direct() -> None:
            for start, stop in fixed_batches(num_frames, batch, range(num_frames)):
                invert(G, targets[start:stop], config, landmarks=points[start:stop], seeds=seeds[start:stop])

        def flow(cache: Path) -> None:
            summary = invert_dataset(str(clip), str(cache), str(weights), **settings)
            assert summary["inverted"] == num_frames, summary

        for run in range(-1, repeats):  # fresh copies of the prepared cache, made outside the timings
            shutil.copytree(prepared, work / f"run{run}")
        flow(work / "run-1")  # warm: the flow machinery, the loaders and the server's first runs
        t_flow, t_direct = [], []
        for run in range(repeats):
            began = time.perf_counter()
            direct()
            t_direct.append(time.perf_counter() - began)
            began = time.perf_counter()
            flow(work / f"run{run}")
            t_flow.append(time.perf_counter() - began)
        print(f"  (Prefect row, seconds per run: flow {', '.join(f'{t:.1f}' for t in t_flow)}; direct "
              f"{', '.join(f'{t:.1f}' for t in t_direct)})")
        return min(t_flow), min(t_direct)


def held_out_frames(G: Generator, n: int) -> torch.Tensor:
    """n generator samples no encoder training draws (stages.train_encoder seeds its own streams)."""
    from stages.train_encoder import EncoderData

    data = EncoderData(G, {"mixing": 0.5, "cache_fraction": 0.0})
    images, _ = data.generated(n, torch.Generator().manual_seed(777))
    return images


def tradeoff(name: str, device: str, frames: int, encoder: str | None, encoder_steps: int,
             ks: list[int]) -> None:
    """The encoder + K table (module docstring) for one generator configuration."""
    from models.inversion import reconstruction_loss
    from stages.encoder_init import encoder_config, encoder_start

    G = make_generator(name, device)
    if encoder is None:
        from stages.train_encoder import train_encoder_to

        encoder = str(Path(tempfile.mkdtemp(prefix="bench-encoder-")) / "encoder.pt")
        began = time.perf_counter()
        train_encoder_to(G, encoder, encoder_steps, {"perceptual": "none", "lambda_lpips": 0.0,
                                                     "learning_rate": 2e-3},
                         checkpoint_every=encoder_steps, device=device, log=lambda _: None)
        print(f"  (trained an encoder for {name}: {encoder_steps} steps in "
              f"{time.perf_counter() - began:.0f} s)")
    targets = held_out_frames(G, frames).to(device)
    seeds = list(range(frames))
    base = InversionConfig(perceptual="uncalibrated")
    inversion_losses(base, device)

    def run(config: InversionConfig) -> tuple[float, dict[str, float], float]:
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        init = encoder_start(G, targets, config)
        result = invert(G, targets, config, init=init, seeds=seeds)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - began) / frames
        terms = {k: float(v.mean()) for k, v in result.losses.items() if k in ("mse", "lpips", "id")}
        return seconds, terms, float(reconstruction_loss(result.losses, config).mean())

    ref_seconds, ref_terms, target = run(base)
    print(f"{name}: {frames} held-out frames in one batch; reference: w_avg + {base.steps} steps "
          f"{ref_seconds:.3f} s/frame, loss {target:.4f} ("
          + ", ".join(f"{k} {v:.4f}" for k, v in ref_terms.items()) + ")", flush=True)
    header = (f"{'start':<10} {'K':>5} {'s/frame':>9} {'speed-up':>9} {'loss':>8} {'vs target':>9} "
              f"{'reached':>7}  terms")
    print(header)
    print("-" * len(header))
    for start in ("encoder", "w_avg"):
        for k in ks:
            config = base.replace(steps=k)
            if start == "encoder":
                config = encoder_config(config, encoder, G)
            elif k == 0:
                continue
            seconds, terms, loss = run(config)
            print(f"{start:<10} {k:>5} {seconds:>9.3f} {ref_seconds / seconds:>8.1f}x {loss:>8.4f} "
                  f"{loss / target:>8.2f}x {'yes' if loss <= target else 'no':>7}  "
                  + ", ".join(f"{t} {v:.4f}" for t, v in terms.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (+1 warm-up)")
    parser.add_argument("--configs", default="tiny,256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prefect-frames", type=int, default=100, help="frames of the Prefect row's clip")
    parser.add_argument("--prefect-steps", type=int, default=10, help="steps per frame in the Prefect row")
    parser.add_argument("--no-prefect", action="store_true", help="skip the Prefect row")
    parser.add_argument("--tradeoff", action="store_true",
                        help="only the encoder + K trade-off table (module docstring)")
    parser.add_argument("--encoder", help="encoder checkpoint for --tradeoff (default: train one first)")
    parser.add_argument("--encoder-steps", type=int, default=1500, help="steps of that training")
    parser.add_argument("--frames", type=int, default=4, help="held-out frames of --tradeoff (one batch)")
    parser.add_argument("--ks", default="0,25,50,100,200", help="refinement steps of --tradeoff's rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tradeoff:
        print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}; load average "
              f"{os.getloadavg()[0]:.1f} at start")
        for name in args.configs.split(","):
            tradeoff(name, args.device, args.frames, args.encoder, args.encoder_steps,
                     [int(k) for k in args.ks.split(",")])
        print(f"load average {os.getloadavg()[0]:.1f} at end")
        return
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
    if not args.no_prefect:
        flow, direct = prefect_overhead(args.prefect_frames, args.prefect_steps)
        print(f"Prefect overhead: flow on {args.prefect_frames} frames ({args.prefect_steps} steps, batch 4, "
              f"tiny) {flow:.2f} s vs direct {direct:.2f} s: ratio {flow / direct:.3f}")
    print(f"load average {os.getloadavg()[0]:.1f} at end (above the thread count: timings are inflated)")


if __name__ == "__main__":
    main()
