"""CPU threads of `facereenact run`: seconds per frame at 1 and 2 threads and at torch's default (one
per CPU), side by side in one run, on the demo's small random generator (64 px) with a generated clip.

    python tests/benchmarks/bench_threads.py [--frames 6] [--steps 30] [--threads 1,2,default]

Each setting is a fresh `python -m flows.cli run --threads N` process into a fresh cache (so it
inverts the source and projects every frame); reported: the projection seconds per frame from the
output's sidecar, the whole run's wall time, and the ratio to one thread. The CLI's default
(flows/cli/options.default_threads) was set from these numbers (docs/reenact.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--steps", type=int, default=30, help="steps on later frames (frame 0: twice)")
    parser.add_argument("--threads", default="1,2,default")
    args = parser.parse_args()

    from flows.cli.options import usable_cpus
    from models.checkpoints import save_native
    from models.demo import random_generator
    from tests import reenact_data

    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    try:
        weights = save_native(random_generator(64), work / "random-64.safetensors")
        clip = reenact_data.driving_clip(work / "drive.mp4", args.frames)
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env.update(FACEREENACT_HOME=str(work / "home"),
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
        print(f"{usable_cpus()} usable CPUs; {args.frames} frames, {args.steps * 2}/{args.steps} steps, "
              f"64 px random generator, uncalibrated AlexNet LPIPS\n")
        print(f"{'threads':>16s} {'s/frame':>8s} {'run s':>7s} {'vs 1 thread':>12s}")
        first, measured = None, set()
        for setting in args.threads.split(","):
            n = usable_cpus() if setting == "default" else int(setting)
            if n in measured:
                continue
            measured.add(n)
            folder = work / f"t{setting}"
            out = folder / "out.mp4"
            began = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "flows.cli", "run", "--source", str(reenact_data.source()),
                 "--driving", str(clip), "-o", str(out), "--cache", str(folder / "cache"), "--weights",
                 str(weights), "--steps-first", str(args.steps * 2), "--steps-next", str(args.steps),
                 "--invert-steps", str(args.steps), "--perceptual", "uncalibrated-alex", "--device", "cpu",
                 "--quiet", "--threads", str(n)], cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.monotonic() - began
            if proc.returncode != 0:
                print(f"{setting}: failed ({proc.returncode}): {proc.stderr[-500:]}")
                continue
            per_frame = json.loads(Path(f"{out}.json").read_text())["metrics"]["projection_seconds_per_frame"]
            first = first or per_frame
            label = f"{n} (torch default)" if setting == "default" else str(n)
            print(f"{label:>16s} {per_frame:8.3f} {wall:7.1f} {per_frame / first:11.2f}x", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
