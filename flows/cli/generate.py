"""`facereenact generate`: render PNGs from a StyleGAN2 generator, from z seeds or from W+ codes.

    facereenact generate --weights ffhq-1024 --seeds 0-3,10 --psi 0.7 --out out/
    facereenact generate --weights G.pkl --wplus codes.npy --out out/

Seeds follow NVIDIA's generate.py (z = numpy RandomState(seed).randn(z_dim)), so seed N here and
there give the same image for the same weights. W+ files: .npy of shape (num_ws, w_dim) or
(N, num_ws, w_dim), or NVIDIA's projector output (.npz with key "w").
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  facereenact generate --weights ffhq-1024 --seeds 0-3,10 --psi 0.7 --out out/
  facereenact generate --weights G.pkl --wplus codes.npy --out out/"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, metavar="PATH|NAME",
                        help="checkpoint file (NVIDIA .pkl, rosinality .pt, native .safetensors) "
                             "or a registered weight name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--seeds", metavar="LIST", help="z seeds, e.g. 0,1,2 or 0-9,20")
    source.add_argument("--wplus", metavar="FILE", type=Path,
                        help="W+ codes: .npy (num_ws, w_dim) or (N, num_ws, w_dim), or a projector .npz")
    parser.add_argument("--psi", type=float, default=None,
                        help="truncation psi for --seeds (default 1: none)")
    parser.add_argument("--truncation-cutoff", type=int, default=None, metavar="N",
                        help="truncate only the first N ws (default: all)")
    parser.add_argument("--noise-mode", choices=["const", "none", "random"], default="const",
                        help="noise inputs: stored constants (default), none, or fresh random")
    parser.add_argument("-o", "--out", "--output", required=True, type=Path, metavar="DIR",
                        help="output folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=4, metavar="B",
                        help="images per generator call")


MAX_SEEDS = 100_000  # images per run; a range like 0-4000000000 would fill memory with seeds


def parse_seeds(text: str) -> list[int]:
    """'0,1,5-7' -> [0, 1, 5, 6, 7]; InputError on anything else."""
    from storage.errors import InputError

    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                if not 0 <= lo <= hi < 2**32:
                    raise InputError("--seeds: seeds must be in [0, 2**32)")
                if len(seeds) + hi - lo + 1 > MAX_SEEDS:  # checked before the list is made
                    raise InputError(f"--seeds: more than {MAX_SEEDS} seeds; render them in several runs")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise InputError(f"--seeds: {part!r} is not a seed or a range like 0-9") from None
    if any(not 0 <= s < 2**32 for s in seeds):
        raise InputError("--seeds: seeds must be in [0, 2**32)")
    return seeds


def load_wplus(path: Path, num_ws: int, w_dim: int):
    """W+ codes from .npy / .npz as float32 (N, num_ws, w_dim); InputError naming the file otherwise."""
    import numpy as np

    from storage.arrays import load_array
    from storage.errors import InputError

    if not Path(path).exists():
        raise InputError("W+ file not found", path=path)
    # The declared shape is checked before anything is allocated; pickled (object) arrays refused.
    array = load_array(path, key="w", what="W+ codes")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (num_ws, w_dim) or array.shape[0] == 0:
        raise InputError(f"W+ codes have shape {array.shape}; this generator needs "
                         f"(N, {num_ws}, {w_dim}) or ({num_ws}, {w_dim})", path=path)
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise InputError("W+ codes must be finite floating-point numbers", path=path)
    return array.astype(np.float32)


def to_uint8(images):
    """(N, 3, H, W) tensor in [-1, 1] -> (N, H, W, 3) uint8 numpy, NVIDIA's rounding."""
    return (images.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to("cpu").byte().numpy()


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from models import load_generator
    from storage.errors import InputError
    from storage.images import save_image

    if args.batch < 1:
        raise InputError("--batch must be at least 1")
    if args.wplus is not None and (args.psi is not None or args.truncation_cutoff is not None):
        raise InputError("--psi / --truncation-cutoff apply to --seeds, not to --wplus codes")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device available")
    if args.out.exists() and not args.out.is_dir():
        raise InputError("output exists and is not a folder", path=args.out)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None

    G = load_generator(args.weights, device=args.device)
    device = G.w_avg.device
    if seeds is not None:
        names = [f"seed{s:04d}.png" for s in seeds]
        latents = np.stack([np.random.RandomState(s).randn(G.z_dim) for s in seeds]).astype(np.float32)
    else:
        latents = load_wplus(args.wplus, G.num_ws, G.w_dim)
        names = [f"wplus{i:04d}.png" for i in range(len(latents))]

    from storage.overwrite import check_outputs_not_inputs

    check_outputs_not_inputs([(f"image {name}", args.out / name) for name in names],
                             [("weights", args.weights), ("W+ file", args.wplus)])
    args.out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for start in range(0, len(names), args.batch):
            batch = torch.from_numpy(latents[start:start + args.batch]).to(device)
            if seeds is not None:
                ws = G.mapping(batch, truncation_psi=1.0 if args.psi is None else args.psi,
                               truncation_cutoff=args.truncation_cutoff)
            else:
                ws = batch
            images = to_uint8(G.synthesis(ws, noise_mode=args.noise_mode))
            for image, name in zip(images, names[start:start + args.batch], strict=True):
                save_image(args.out / name, image)  # atomic: a PNG is complete or absent
    print(f"wrote {len(names)} image(s) of {G.img_resolution}px to {args.out}")
    return 0
