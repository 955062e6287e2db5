"""Generator speed on this machine: seconds per image, forward and forward+backward, real configs.

    python tests/benchmarks/bench_generator.py [--threads 2] [--repeats 2] [--device cpu]

Random weights (speed does not depend on their values), official FFHQ channel counts:
  256 paper256   stylegan2-ada-pytorch's `--cfg paper256`: channel_base 16384, channel_max 512
  256 config-f   config F at 256 px:                       channel_base 32768, channel_max 512
  1024 config-f  the official ffhq.pkl:                    channel_base 32768, channel_max 512
(default: paper256 and 1024; `--configs` picks others)
8 mapping layers, noise_mode const, float32. "fwd" is G.synthesis under no_grad; "fwd+bwd" also back-
propagates a loss to ws (weights frozen), which is what inversion and projection do per step. Both
modulated-conv strategies are timed side by side (fused = per-sample weights in one grouped conv;
unfused = activation scaling around one shared conv), and the default picks fused for batch 1 only.
NVIDIA's CPU numbers from the design notes (their code, batch 1) are printed beside ours as a ratio; they come
from another machine, so the ratio is indicative only.

StyleGAN3 (`--sg3 sg3-t,sg3-r`, default both; `--sg3 ""` skips): models.stylegan3 at the official
1024 px configurations (T: 3x3 convs, channel_base 32768 / max 512; R: 1x1 convs, radial filters,
65536 / 1024), random weights, batch 1: fwd and fwd+bwd seconds per image with our filtered leaky
ReLU and with the literal reference (zero insertion, full 2-D FIR filters, subsampling) in the same
run, and the same ratio for the op alone on each distinct layer geometry (`--sg3-ops`). At 1024 px a
StyleGAN3 keeps 2048 x 2048 activations per channel: fwd+bwd with the reference needs tens of GB, so
`--sg3-passes fwd` (the default) times only the forward pass of the whole network; `fwd,fwd+bwd` adds
the backward where memory allows (the op table always has both).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.stylegan2 import Generator  # noqa: E402

CONFIGS = {
    "256 paper256": dict(img_resolution=256, channel_base=16384, channel_max=512),
    "256 config-f": dict(img_resolution=256, channel_base=32768, channel_max=512),
    "1024 config-f": dict(img_resolution=1024, channel_base=32768, channel_max=512),
}
DEFAULT_CONFIGS = "256 paper256,1024 config-f"
NVIDIA_CPU = {256: (0.35, 1.1), 1024: (1.1, 3.6)}  # design notes: seconds, batch 1, (fwd, fwd+bwd)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)  # the least disturbed run: this machine's cores are shared


def bench(G: Generator, batch: int, fused: bool, backward: bool, repeats: int, device: str) -> float:
    ws = G.w_avg.expand(batch, G.num_ws, -1).clone()

    def forward():
        with torch.no_grad():
            G.synthesis(ws, fused_modconv=fused)

    def forward_backward():
        w = ws.clone().requires_grad_(True)
        G.synthesis(w, fused_modconv=fused).square().mean().backward()

    def run():
        (forward_backward if backward else forward)()
        if device == "cuda":
            torch.cuda.synchronize()

    return _time(run, repeats) / batch


def tune_malloc() -> None:
    """Keep glibc from mmap-ing (and page-faulting afresh) every large tensor: at 1024 px each
    activation is 100+ MB, above glibc's mmap threshold, and the first-touch page faults of each new
    one cost more system time than the convolutions' user time (measured here: sys 11 s -> 1 s)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"of: {', '.join(CONFIGS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--passes", default="fwd,fwd+bwd", help="StyleGAN2 passes to time")
    parser.add_argument("--sg3", default="sg3-t,sg3-r", help="StyleGAN3 configs to time ('' = none)")
    parser.add_argument("--sg3-passes", default="fwd", help="fwd and/or fwd+bwd for the whole SG3 network")
    parser.add_argument("--sg3-bwd-max-mb", type=float, default=1024,
                        help="skip an op's fwd+bwd when one upsampled activation exceeds this")
    parser.add_argument("--sg3-ops", action=argparse.BooleanOptionalAction, default=True,
                        help="time filtered_lrelu against the naive one per layer geometry")
    parser.add_argument("--tune-malloc", action="store_true",
                        help="raise glibc's mmap/trim thresholds first (Linux; see tune_malloc)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tune_malloc:
        tune_malloc()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
          f"best of {args.repeats} after a warm-up; seconds per image; "
          f"load average {os.getloadavg()[0]:.1f} at start; "
          f"malloc {'tuned' if args.tune_malloc else 'default'}")
    header = (f"{'config':<14} {'batch':>5} {'pass':<8} {'fused':>8} {'unfused':>8} {'default':>8} "
              f"{'NVIDIA b1':>9} {'ours/NV':>7}")
    print(header)
    print("-" * len(header))
    for name in args.configs.split(","):
        torch.manual_seed(0)
        G = Generator(**CONFIGS[name]).eval().requires_grad_(False).to(args.device)
        for batch in batches:
            for backward in [p == "fwd+bwd" for p in args.passes.split(",")]:
                fused = bench(G, batch, True, backward, args.repeats, args.device)
                unfused = bench(G, batch, False, backward, args.repeats, args.device)
                default = fused if batch == 1 else unfused
                nvidia = NVIDIA_CPU[G.img_resolution][int(backward)]
                print(f"{name:<14} {batch:>5} {'fwd+bwd' if backward else 'fwd':<8} {fused:>8.3f} "
                      f"{unfused:>8.3f} {default:>8.3f} {nvidia:>9.2f} {default / nvidia:>7.2f}",
                      flush=True)
    for name in filter(None, args.sg3.split(",")):
        bench_sg3(name, args)
    print(f"load average {os.getloadavg()[0]:.1f} at end (above the thread count: timings are inflated)")


SG3_CONFIGS = {
    "sg3-t": dict(img_resolution=1024, channel_base=32768, channel_max=512, conv_kernel=3),
    "sg3-r": dict(img_resolution=1024, channel_base=65536, channel_max=1024, conv_kernel=1,
                  use_radial_filters=True),
}


def _interleaved(fns: dict[str, object], repeats: int) -> dict[str, float]:
    """Best-of-`repeats` seconds of each callable, run alternately (load changes hit all alike)."""
    if repeats > 1:  # a single repeat is for the big 1024 px runs: no separate warm-up
        for fn in fns.values():
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def bench_sg3(name: str, args: argparse.Namespace) -> None:
    from models.stylegan3 import Generator as Generator3
    from models.stylegan3 import filtered_lrelu, filtered_lrelu_reference

    torch.manual_seed(0)
    G = Generator3(**SG3_CONFIGS[name]).eval().requires_grad_(False).to(args.device)
    print(f"\n{name} 1024: {sum(p.numel() for p in G.parameters()) / 1e6:.1f} M parameters, batch 1")
    if args.sg3_ops:
        print(f"{'layer':<14} {'x':<18} {'up/down':>7} {'pass':<8} {'ours':>8} {'naive':>8} "
              f"{'naive/ours':>10}")
        seen = set()
        for lname, layer in zip(G.synthesis.layer_names, G.synthesis.layers(), strict=True):
            c, size = layer.out_channels, layer.in_size + layer.conv_kernel - 1
            key = (c, size, layer.up_factor, layer.down_factor, layer.down_radial)
            if key in seen or layer.is_torgb:
                continue
            seen.add(key)
            x = torch.randn(1, c, size, size, device=args.device)
            kw = dict(up=layer.up_factor, down=layer.down_factor, padding=layer.padding,
                      clamp=layer.conv_clamp)
            upsampled_bytes = 4 * c * (size * layer.up_factor) ** 2
            for backward in (False, True):
                if backward and upsampled_bytes > args.sg3_bwd_max_mb * 2 ** 20:
                    print(f"{lname:<14} {str(tuple(x.shape)):<18} fwd+bwd skipped: the naive op keeps 4 x "
                          f"{upsampled_bytes / 2 ** 30:.1f} GiB (--sg3-bwd-max-mb)")
                    continue

                def run(op, backward=backward, x=x, layer=layer, kw=kw):
                    xi = x.clone().requires_grad_(backward)
                    y = op(xi, layer.up_filter, layer.down_filter, layer.bias, **kw)
                    if backward:
                        y.square().mean().backward()
                times = _interleaved({"ours": lambda: run(filtered_lrelu),
                                      "naive": lambda: run(filtered_lrelu_reference)}, args.repeats)
                print(f"{lname:<14} {str(tuple(x.shape)):<18} {layer.up_factor}/{layer.down_factor:<5} "
                      f"{'fwd+bwd' if backward else 'fwd':<8} {times['ours']:>8.3f} {times['naive']:>8.3f} "
                      f"{times['naive'] / times['ours']:>10.2f}", flush=True)
    ws = G.w_avg.expand(1, G.num_ws, -1).clone()
    for backward in [p == "fwd+bwd" for p in args.sg3_passes.split(",")]:
        def run(fast: bool, backward=backward) -> None:
            G.set_fast_filters(fast)
            if backward:
                G.synthesis(ws.clone().requires_grad_(True)).square().mean().backward()
            else:
                with torch.no_grad():
                    G.synthesis(ws)
        times = _interleaved({"ours": lambda: run(True), "naive": lambda: run(False)}, args.repeats)
        print(f"{name} 1024 synthesis {'fwd+bwd' if backward else 'fwd':<8} ours {times['ours']:.2f} "
              f"s/image, with the naive filtered_lrelu {times['naive']:.2f} s/image: naive/ours "
              f"{times['naive'] / times['ours']:.2f}", flush=True)
    G.set_fast_filters(True)


if __name__ == "__main__":
    main()
