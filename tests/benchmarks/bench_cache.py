"""The cache's cost on an object store: a local directory against a real S3 API server, side by side.

    python tests/benchmarks/bench_cache.py [--frames 24] [--clip-frames 8] [--steps 4] [--skip-invert]

Starts moto's S3 server on 127.0.0.1 (tests/s3_server.py; stopped by PID at the end) and measures,
for the same operations on a local cache and on s3://bench/<prefix>:
- per-frame write: `LatentCache.write` of one frame (18 x 512 W+ latent, loss, seed: data first,
  status last), one frame per call as the inversion's batches of 1 store them; and a batch of 4;
- per-frame read: `LatentCache.read([i])` (status check + latent), and `todo_frames` of a batch;
- opening the workspace and a table (what each task does first), a job record update, `status`;
- the whole `invert` of a short clip (prepare + inversion with the tiny generator, a few steps,
  threads runner, on a throwaway Prefect test server): seconds local and s3, and their ratio.
"requests" are the round trips the server answered (its log: one line per request), per frame or
per call. Latency on a loopback server is the floor of a real store's (add the network's RTT per
sequential request: that is why requests count).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.s3_server import S3Server, reset_s3_clients  # noqa: E402

NUM_WS, W_DIM = 18, 512


def timed(fn: Callable[[], object], server: S3Server | None, repeat: int) -> tuple[float, float]:
    """(median ms per call, requests per call) of `repeat` calls."""
    before = server.requests() if server else 0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if server is not None:
        time.sleep(0.05)  # the server's log line is written after its response
    requests = ((server.requests() - before) / repeat) if server else float("nan")
    return 1000 * statistics.median(times), requests


def cache_rows(url: str, server: S3Server | None, frames: int) -> dict[str, tuple[float, float]]:
    from storage.cache import Workspace
    from storage.latents import LatentCache

    rows: dict[str, tuple[float, float]] = {}
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, NUM_WS, W_DIM)).astype(np.float32)
    batch = rng.standard_normal((4, NUM_WS, W_DIM)).astype(np.float32)
    prov = {"bench": url}
    Workspace(url)  # the root exists before the timed rows (as after a job's first task)
    rows["create a table"] = timed(
        lambda: LatentCache.require(Workspace(url), "m" * 64, prov, frames + 8, NUM_WS, W_DIM), server, 1)
    rows["open workspace + table"] = timed(
        lambda: LatentCache.require(Workspace(url), "m" * 64, prov, frames + 8, NUM_WS, W_DIM), server, 5)
    cache = LatentCache.require(Workspace(url), "m" * 64, prov, frames + 8, NUM_WS, W_DIM)
    it = iter(range(frames))
    rows["write 1 frame"] = timed(lambda: cache.write([next(it)], latent, [0.5], [1]), server, frames)
    starts = iter(range(frames, frames + 8, 4))

    def write4() -> None:
        s = next(starts)
        cache.write(list(range(s, s + 4)), batch, [0.5] * 4, [1] * 4)

    ms, req = timed(write4, server, 2)
    rows["write batch of 4 (per frame)"] = (ms / 4, req / 4)
    it = iter(range(frames))
    rows["read 1 frame"] = timed(lambda: cache.read([next(it)]), server, frames)
    rows["todo_frames of a batch of 4"] = timed(lambda: cache.todo_frames(False, np.arange(4)), server, 5)
    ws = Workspace(url)
    rows["record_job update"] = timed(lambda: ws.record_job("bench-job", {"state": "running"}), server, 5)

    def status() -> None:
        from flows.cli.status import collect_status

        collect_status(Workspace(url), repair=False)

    rows["status (whole cache)"] = timed(status, server, 3)
    return rows


def invert_seconds(url: str, clip: Path, weights: Path, steps: int) -> float:
    from flows.invert import invert_dataset

    t0 = time.perf_counter()
    invert_dataset(str(clip), url, str(weights), steps=steps, batch_size=4, perceptual="uncalibrated-alex",
                   device="cpu")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=24, help="frames written and read per row")
    parser.add_argument("--clip-frames", type=int, default=8, help="frames of the inverted clip")
    parser.add_argument("--steps", type=int, default=4, help="inversion steps per frame")
    parser.add_argument("--skip-invert", action="store_true", help="only the per-frame rows")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    with S3Server() as server:
        os.environ.update(server.env())
        reset_s3_clients()
        server.create_bucket("bench")
        local = cache_rows(str(work / "local"), None, args.frames)
        s3 = cache_rows("s3://bench/rows", server, args.frames)
        print(f"cache operations, local directory vs moto S3 server on 127.0.0.1 ({args.frames} frames)")
        print(f"{'operation':32s} {'local ms':>9s} {'s3 ms':>9s} {'s3/local':>9s} {'s3 requests':>12s}")
        for name in local:
            (lm, _), (sm, sr) = local[name], s3[name]
            print(f"{name:32s} {lm:9.2f} {sm:9.2f} {sm / lm:9.1f} {sr:12.1f}")
        if not args.skip_invert:
            invert_rows(server, work, args)
    shutil.rmtree(work, ignore_errors=True)


def invert_rows(server: S3Server, work: Path, args: argparse.Namespace) -> None:
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    from models.checkpoints import save_native
    from tests.clips import write_test_clip
    from tests.tiny import tiny_generator

    clip = work / "clip.mp4"
    write_test_clip(clip, "all", frames=args.clip_frames)
    weights = save_native(tiny_generator(), work / "tiny-G.safetensors")
    with prefect_test_harness(server_startup_timeout=300):
        invert_seconds(str(work / "warm"), clip, weights, 1)  # imports, nets, Prefect: warm both runs
        results = {"local": [], "s3": []}
        for i in range(2):  # alternated, fastest of each
            results["local"].append(invert_seconds(str(work / f"inv-{i}"), clip, weights, args.steps))
            before = server.requests()
            results["s3"].append(invert_seconds(f"s3://bench/inv-{i}", clip, weights, args.steps))
            requests = server.requests() - before
    local, s3 = min(results["local"]), min(results["s3"])
    print(f"\nwhole invert of a {args.clip_frames}-frame clip (prepare + {args.steps} steps, tiny G): "
          f"local {local:.2f} s, s3 {s3:.2f} s, ratio s3/local {s3 / local:.2f}; "
          f"{requests} requests on s3 ({requests / args.clip_frames:.1f} per frame)")


if __name__ == "__main__":
    main()
