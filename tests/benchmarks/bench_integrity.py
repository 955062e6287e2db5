"""Cost of the damaged-frame check (FrameTable.damaged_frames) per 1000 frames, beside what a job pays
anyway when it opens a table (reading the status array) and beside writing the frames.

    python tests/benchmarks/bench_integrity.py [--frames 1000] [--repeat 3] [--layers 18 --dim 512]

A local cache with one latent-like table (latents (layers, dim) float32 + loss + seed, one chunk per
frame, every frame done); reported per 1000 frames, median of --repeat: reading the status array,
the check on an intact table, the check on a table with 1% of its chunks garbled (the per-frame
fallback that names them) and writing the frames. The check runs whenever a job opens a table
(Workspace.table) and in every `facereenact status`, so it must stay a small multiple of reading the
status it reads anyway.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from storage.cache import Field, Workspace  # noqa: E402


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    n = args.frames
    fields = {"latents": Field((args.layers, args.dim)), "loss": Field(()), "seed": Field((), "int64")}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "cache")
        table = ws.table("bench", "latents", {"bench": 1}, n, fields)
        latents = rng.standard_normal((n, args.layers, args.dim), dtype=np.float32)
        t0 = time.perf_counter()
        for first in range(0, n, 64):
            frames = np.arange(first, min(first + 64, n))
            table.write(frames, latents=latents[frames], loss=rng.random(frames.size),
                        seed=np.arange(frames.size))
        write = time.perf_counter() - t0
        status = timed(table.status, args.repeat)
        intact = timed(table.damaged_frames, args.repeat)
        assert table.damaged_frames().size == 0
        broken = rng.choice(n, max(1, n // 100), replace=False)
        chunks = Path(tmp) / "cache" / table.location / "latents" / "c"
        for i in broken:
            (chunks / str(int(i)) / "0" / "0").write_bytes(b"x")
        damaged = timed(table.damaged_frames, args.repeat)
        assert sorted(table.damaged_frames().tolist()) == sorted(int(i) for i in broken)
    per = 1000 / n
    mb = n * args.layers * args.dim * 4 / 1e6
    print(f"{n} frames of ({args.layers}, {args.dim}) float32 latents ({mb:.0f} MB), "
          f"median of {args.repeat}; seconds per 1000 frames:")
    print(f"  read the status array (every job does):   {status * per:7.3f}")
    print(f"  damaged_frames, intact table:             {intact * per:7.3f}  "
          f"({intact / status:.1f}x the status read)")
    print(f"  damaged_frames, 1% of the chunks garbled: {damaged * per:7.3f}  ({damaged / status:.1f}x)")
    print(f"  writing the frames (64 per call):         {write * per:7.3f}  "
          f"(the check is {intact / write:.2f}x of it)")


if __name__ == "__main__":
    main()
