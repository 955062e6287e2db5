"""Inversion speed: seconds per frame-step at batch 1, 4 and 8, and what batching saves; and the
encoder-initialised inversion's speed / loss trade-off.

    python tests/benchmarks/bench_invert.py [--threads 1] [--steps 3] [--configs tiny,256] [--device cpu]
    python tests/benchmarks/bench_invert.py --tradeoff --encoder encoder.pt [--configs tiny] [--frames 4]
                                            [--reference-cache reference.json] [--rows ROWS] [--ks 0,50,...]

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
samples drawn with a seed no training uses (z from torch seed 777, half of them style-mixed),
rendered with per-frame random noise maps (seed 778; not G's constant noise, which the encoder's
training samples use and which an inversion keeping noise_const would match exactly), one batch of
`--frames`. The reference is the default inversion (1000 steps from w_avg); its final
reconstruction loss (models.inversion.reconstruction_loss: the weighted MSE + LPIPS + identity terms,
the frames' mean) is the target, and each term's mean is the target of that term. Each row is one
configuration (`--rows`, LEVER_ROWS' format): "encoder K settings" (the encoder's prediction, then K
steps of stages.encoder_init's refinement with the settings changed) or "w_avg K" (the default
objective and schedule over K steps); `batch=B` splits the frames into invert calls of B. Seconds
per frame include the encoder's forward pass and are this process's CPU time on a CPU (one thread:
what a frame costs whatever else the shared machine runs; wall time varied 2x between identical
rows), wall time on a GPU. "speed-up" is the reference's seconds per frame over the row's; "vs
target" the row's loss over the target, then each term's ratio (mse, lpips, id). `--encoder` is a
checkpoint for the configuration's generator (`facereenact train-encoder`); without it one is
trained first with `--encoder-steps` (not timed). `--reference-cache FILE` keeps the reference's
losses between runs, keyed by the generator's weights, every setting, the frames, seeds, torch,
device, threads, the schedules and a hash of the reference's first 30 steps' latents and noise maps
(run in every run, which also times its steps: with a cached reference its seconds are estimated as
setup + 1000 x the median step).
"""

from __future__ import annotations

import argparse
import contextlib
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
    """n generator samples no encoder training draws (stages.train_encoder seeds its own streams),
    rendered with per-frame random noise maps (torch seed 778), not G's constant noise: a real
    frame's noise is none of the inversion's candidates (with G's constant noise, which the encoder's
    training samples use, an inversion that keeps noise_const would reproduce the frame exactly)."""
    from stages.train_encoder import EncoderData

    data = EncoderData(G, {"mixing": 0.5, "cache_fraction": 0.0})
    _, ws = data.generated(n, torch.Generator().manual_seed(777))
    g = torch.Generator().manual_seed(778)
    noise = [torch.randn(n, 1, layer.resolution, layer.resolution, generator=g).to(ws.device)
             for _, layer in G.synthesis.noise_layers()]
    with torch.no_grad():
        return G.synthesis(ws, noise=noise or None)


# The trade-off table's rows: "start K [setting=value ...]" separated by ";". Settings are
# InversionConfig / EncoderInversionConfig fields (Python literals), plus batch=B (frames per invert
# call; default all --frames in one) and encoder=PATH (another encoder checkpoint than --encoder).
# The default rows: the refinement's defaults at K in --ks (the cheap first phase is the pixel_warmup
# fraction of K), the cheap first phase's length, the levers one at a time on the previous default's 100
# full steps (or 200 where a step costs less), and w_avg + 100 and + 200 (the default schedule over K).
LEVER_ROWS = (
    "encoder 100 pixel_warmup=0.0; "                     # the previous default: 100 full steps
    "encoder 150 pixel_warmup=0.0; "
    "encoder 150 pixel_warmup=0.467; "                    # cheap first phases of other lengths
    "encoder 300 pixel_warmup=0.667; "
    "encoder 500 pixel_warmup=0.8; "
    "encoder 100 pixel_warmup=0.0 noise_start='random'; "  # the noise maps' start of the projector
    "encoder 100 pixel_warmup=0.0 lr_rampup=0.0; "       # no warm-up
    "encoder 100 pixel_warmup=0.0 lr_rampup=0.0 learning_rate=0.2; "  # no warm-up, twice the peak
    "encoder 100 pixel_warmup=0.0 lr_rampup=0.0 lr_rampdown=1.0; "  # no warm-up, cosine over all
    "encoder 100 pixel_warmup=0.0 adam_betas=(0.9,0.99); "
    "encoder 100 pixel_warmup=0.0 optimize_noise=False; "
    "encoder 100 pixel_warmup=0.0 network_terms_every=2; "
    "encoder 200 pixel_warmup=0.0 network_terms_every=2; "
    "encoder 200 pixel_warmup=0.0 network_terms_every=4; "
    "encoder 200 pixel_warmup=0.0 plateau_patience=10 plateau_tolerance=0.005; "  # early stop
    "encoder 200 pixel_warmup=0.0 plateau_patience=5 plateau_tolerance=0.01; "
    "encoder 160 batch=1"                                    # one frame per invert call
)


def parse_rows(spec: str, ks: list[int]) -> list[tuple[str, int, dict]]:
    """[(start, K, settings)] of a row spec (LEVER_ROWS' format); "defaults" expands to the
    refinement's defaults at each K of `ks` and "w_avg" to w_avg + K for K in `ks`."""
    import ast

    rows: list[tuple[str, int, dict]] = []
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        if item in ("defaults", "w_avg"):
            start = "encoder" if item == "defaults" else "w_avg"
            rows += [(start, k, {}) for k in ks if start == "encoder" or k > 0]
            continue
        start, k, *pairs = item.split()
        if start not in ("encoder", "w_avg"):
            raise SystemExit(f"bench_invert: a row starts at encoder or w_avg, got {item!r}")
        settings = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            settings[key] = value if key == "encoder" else ast.literal_eval(value)
        rows.append((start, int(k), settings))
    return rows


def reference_key(G: Generator, config: InversionConfig, targets: torch.Tensor, seeds: list[int],
                  threads: int, device: str, trajectory: str) -> str:
    """Everything the reference's losses depend on: the generator's weights, every setting, the
    frames' pixels and seeds, torch, the device and thread count, the learning-rate and w-noise
    schedules over all the steps, and `trajectory` (a hash of the latents and noise maps after the
    first steps of this run: the code's path, without keying on comments)."""
    import hashlib

    from storage.provenance import canonical_json

    schedule = [(config.learning_rate_at(s), config.w_noise_factor_at(s)) for s in range(config.steps)]
    record = {"generator": G.weights_sha256(), "settings": config.provenance()["settings"],
              "frames": hashlib.sha256(targets.detach().cpu().contiguous().numpy().tobytes()).hexdigest(),
              "seeds": seeds, "torch": torch.__version__, "threads": threads, "device": device,
              "schedule": hashlib.sha256(repr(schedule).encode()).hexdigest(), "trajectory": trajectory}
    return hashlib.sha256(canonical_json(record).encode()).hexdigest()


def step_breakdown(G: Generator, targets: torch.Tensor, config: InversionConfig, clock, sync,
                   repeats: int = 10) -> dict[str, float]:
    """Seconds of one optimisation step's parts on `targets` (the whole batch), the median of
    `repeats`: the generator's forward and backward pass alone, the LPIPS and the identity term
    each (forward and backward, on a fixed image), and the whole step's objective (forward and
    backward; Adam's update itself is negligible)."""
    from models.inversion import _Objective, inversion_losses

    losses = inversion_losses(config, targets.device)
    objective = _Objective(G, config, losses, targets, None)
    n = targets.shape[0]
    ws = G.w_avg.expand(n, G.num_ws, G.w_dim).clone().requires_grad_(True)
    noise = [torch.randn(n, 1, layer.resolution, layer.resolution, device=targets.device).requires_grad_(True)
             for _, layer in G.synthesis.noise_layers()]
    with torch.no_grad():
        image = G.synthesis(ws, noise=noise or None)

    def generator() -> None:
        G.synthesis(ws, noise=noise or None).square().sum().backward()

    def lpips() -> None:
        probe = image.clone().requires_grad_(True)
        losses.perceptual.distance(probe, objective.target_features).sum().backward()

    def identity() -> None:
        probe = image.clone().requires_grad_(True)
        losses.identity(probe, objective.target_identity, None).sum().backward()

    def whole() -> None:
        objective(ws, ws, noise)[1]["total"].sum().backward()

    times = {}
    for label, part in (("generator", generator), ("lpips", lpips), ("identity", identity), ("step", whole)):
        part()
        samples = []
        for _ in range(repeats):
            sync()
            began = clock()
            part()
            sync()
            samples.append(clock() - began)
        times[label] = statistics.median(samples)
    return times


def tradeoff(name: str, device: str, frames: int, encoder: str | None, encoder_steps: int,
             ks: list[int], rows_spec: str, reference_cache: str | None, threads: int) -> None:
    """The encoder + K table (module docstring) for one generator configuration."""
    import json

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

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    # On the CPU the clock is this process's CPU time (one thread: what a frame costs, whatever else
    # the shared machine runs; wall time here varied 2x between identical rows); on a GPU wall time.
    clock_now = time.perf_counter if device == "cuda" else time.process_time

    def run(config: InversionConfig, batch: int) -> tuple[float, dict[str, float], float]:
        """(seconds per frame, mean of each term, mean reconstruction loss) of `config` on the frames
        in invert calls of `batch` frames (the encoder's forward pass timed too)."""
        seconds, losses = 0.0, []
        for i in range(0, frames, batch):
            sync()
            began = clock_now()
            init = encoder_start(G, targets[i:i + batch], config)
            result = invert(G, targets[i:i + batch], config, init=init, seeds=seeds[i:i + batch])
            sync()
            seconds += clock_now() - began
            losses.append(result.losses)
        merged = {k: torch.cat([part[k] for part in losses]) for k in losses[0]}
        terms = {k: float(v.mean()) for k, v in merged.items() if k in ("mse", "lpips", "id")}
        return seconds / frames, terms, float(reconstruction_loss(merged, config).mean())

    def reference_step_seconds(config: InversionConfig, timed: int = 30) -> tuple[float, float, str]:
        """(setup + final render seconds, median seconds per step, sha256 of the latents and noise
        maps after the last step) of `config` on the whole batch, from `timed` steps of it (the run
        is cut there)."""
        import hashlib

        stamps: list[float] = []
        state_hash = hashlib.sha256()

        class CutError(Exception):
            pass

        def clock(state) -> None:
            sync()
            stamps.append(clock_now())
            if len(stamps) > timed:
                for t in (state.latents, *state.noise):
                    state_hash.update(t.detach().cpu().contiguous().numpy().tobytes())
                raise CutError

        began = clock_now()
        with contextlib.suppress(CutError):
            invert(G, targets, config, seeds=seeds, callback=clock)
        step = statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False))
        return (stamps[0] - began) - step, step, state_hash.hexdigest()

    for batch in sorted({1, frames}):
        parts = step_breakdown(G, targets[:batch], base, clock_now, sync)
        print(f"  one step at batch {batch}: " + ", ".join(
            f"{k} {v * 1000:.1f} ms ({v / parts['step']:.0%})" for k, v in parts.items()
            if k != "step") + f"; the whole objective {parts['step'] * 1000:.1f} ms fwd+bwd "
            f"({parts['step'] / batch * 1000:.1f} ms per frame)", flush=True)

    # The reference (1000 steps from w_avg): its losses from the cache when an entry has the same key,
    # its seconds then estimated in this run from 30 of its steps (setup + 1000 x the median step).
    setup, step, trajectory = reference_step_seconds(base)
    key = reference_key(G, base, targets, seeds, threads, device, trajectory)
    cache = json.loads(Path(reference_cache).read_text()) if reference_cache and Path(
        reference_cache).exists() else {}
    estimate = (setup + base.steps * step) / frames
    if key in cache:
        entry = cache[key]
        ref_seconds, how = estimate, (f"estimated in this run from 30 of its steps; it took "
                                      f"{entry['seconds']:.2f} s/frame when it ran, losses from the cache")
    else:
        seconds, terms, loss = run(base, frames)
        entry = {"seconds": seconds, "terms": terms, "loss": loss}
        ref_seconds, how = seconds, f"measured in this run; 30-step estimate {estimate:.2f}"
        if reference_cache:
            cache[key] = entry
            Path(reference_cache).write_text(json.dumps(cache, indent=1))
    ref_terms, target = entry["terms"], entry["loss"]
    print(f"{name}: {frames} held-out frames; reference: w_avg + {base.steps} steps in one batch, "
          f"{ref_seconds:.3f} s/frame ({how}), loss {target:.4f} ("
          + ", ".join(f"{k} {v:.4f}" for k, v in ref_terms.items()) + ")", flush=True)
    header = (f"{'start':<8} {'K':>4} {'batch':>5} {'s/frame':>8} {'speed-up':>8} {'loss':>7} "
              f"{'vs target':>9} {'mse':>6} {'lpips':>6} {'id':>6}  settings")
    print(header)
    print("-" * len(header))
    for start, k, settings in parse_rows(rows_spec, ks):
        settings = dict(settings)
        batch = int(settings.pop("batch", frames))
        path = settings.pop("encoder", encoder)
        config = base.replace(steps=k)
        if start == "encoder":
            config = encoder_config(config, path, G).replace(**settings)
        else:
            config = config.replace(**settings)
        seconds, terms, loss = run(config, batch)
        ratios = " ".join(f"{terms[t] / ref_terms[t]:>5.2f}x" for t in ("mse", "lpips", "id"))
        label = " ".join(f"{a}={b}" for a, b in settings.items()) or "(defaults)"
        if path != encoder:
            label += f" encoder={Path(path).name}"
        print(f"{start:<8} {k:>4} {batch:>5} {seconds:>8.3f} {ref_seconds / seconds:>7.1f}x {loss:>7.4f} "
              f"{loss / target:>8.3f}x {ratios}  {label}", flush=True)
    setup, step, _ = reference_step_seconds(base)
    print(f"  (the reference's 30-step estimate again at the end: {(setup + base.steps * step) / frames:.2f} "
          f"s/frame; {'CPU' if clock_now is time.process_time else 'wall'} seconds)")


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
    parser.add_argument("--ks", default="0,50,100,140,160,180,200",
                        help="refinement steps of --tradeoff's rows")
    parser.add_argument("--rows", default="defaults; " + LEVER_ROWS + "; w_avg 100; w_avg 200",
                        help="--tradeoff's rows (LEVER_ROWS' format; 'defaults', 'w_avg': at each of --ks)")
    parser.add_argument("--reference-cache", help="JSON file keeping the reference's losses between runs "
                        "(keyed by everything that made them)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tradeoff:
        print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}; load average "
              f"{os.getloadavg()[0]:.1f} at start")
        for name in args.configs.split(","):
            tradeoff(name, args.device, args.frames, args.encoder, args.encoder_steps,
                     [int(k) for k in args.ks.split(",")], args.rows, args.reference_cache, args.threads)
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
