"""Start-up of the command line: seconds to the first error and to the first frame, cold and warm, this
tree beside a baseline tree (default: the commit before the torch-free checks of issue 13), measured
in one run with the same Python environment.

    python tests/benchmarks/bench_startup.py [--baseline REV] [--repeats 1] [--frames 4] [--skip-frames]

Each command runs as a user runs it, `python -m flows.cli ...` in a fresh process from the tree's root
(so that tree's code is imported), with an empty weights home (no official weights), one CPU thread
for both trees, and Prefect's temporary server (no PREFECT_API_URL).

- Errors: an unknown --mode, a missing source file, missing official weights (`run` with defaults),
  a missing cache for `status`, a missing dataset for `invert`, and `--help`.
  "cold": the first call after the tree's own bytecode (__pycache__ of flows/ models/ storage/
  tasks/) is deleted; "warm": the median of --repeats calls after it.
- First frame (`run` of the bundled photo with a generated clip and a tiny random generator, few
  steps): seconds until the projection's progress bar shows its first frame, and the whole run;
  "cold" again after the bytecode is deleted (a fresh cache), "warm" a second run into another fresh
  cache, then "no-op": the warm command again (everything cached and rendered).

Prints one row per measurement: baseline seconds, this tree's seconds, and their ratio
(baseline / this tree: above 1 means this tree is faster).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PACKAGES = ("flows", "models", "storage", "tasks")
FIRST_FRAME = re.compile(r"projecting:[^\r\n]*?\b([1-9]\d*)/\d+")


def default_baseline() -> str:
    """The parent of the commit that added flows/cli/preflight.py (this tree's HEAD~1 before it)."""
    added = subprocess.run(["git", "-C", str(ROOT), "log", "--diff-filter=A", "--format=%H", "--",
                            "flows/cli/preflight.py"], capture_output=True, text=True).stdout.split()
    return f"{added[-1]}~1" if added else "HEAD~1"


def drop_bytecode(tree: Path) -> None:
    for package in PACKAGES:
        for cache in (tree / package).rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)


def timed(tree: Path, argv: list[str], env: dict[str, str], first_frame: bool = False,
          timeout: float = 900) -> tuple[float, float | None, int, str]:
    """(seconds to exit, seconds to the first projected frame or None, exit code, stderr tail)."""
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    seen, first = b"", None
    assert proc.stderr is not None
    while True:
        chunk = proc.stderr.read1(4096) if first_frame else proc.stderr.read()
        if not chunk:
            break
        seen += chunk
        if first_frame and first is None and FIRST_FRAME.search(seen[-8192:].decode(errors="replace")):
            first = time.monotonic() - began
        if time.monotonic() - began > timeout:
            proc.kill()
            break
    code = proc.wait()
    return time.monotonic() - began, first, code, seen.decode(errors="replace")[-400:]


def row(name: str, base: float | None, this: float | None) -> None:
    def fmt(value: float | None) -> str:
        return "     n/a" if value is None else f"{value:8.2f}"

    ratio = f"{base / this:6.1f}x" if base is not None and this else "    n/a"
    print(f"{name:44s} {fmt(base)} {fmt(this)} {ratio}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=None, help="git revision to compare with (default: see above)")
    parser.add_argument("--repeats", type=int, default=1, help="warm calls per error (median)")
    parser.add_argument("--frames", type=int, default=4, help="frames of the generated driving clip")
    parser.add_argument("--skip-frames", action="store_true", help="errors only (no full runs)")
    args = parser.parse_args()

    from tests import reenact_data

    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    baseline_rev = args.baseline or default_baseline()
    base_tree = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree),
                    baseline_rev], check=True)
    try:
        weights = reenact_data.tiny_weights(work)
        clip = reenact_data.driving_clip(work / "drive.mp4", args.frames)
        source = str(reenact_data.source())
        env = {**os.environ, "FACEREENACT_HOME": str(work / "home"), "TORCH_HOME": str(work / "torch"),
               "PREFECT_HOME": str(work / "prefect"), "OMP_NUM_THREADS": "1",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
        env.pop("PREFECT_API_URL", None)
        env.pop("FACEREENACT_CACHE", None)
        out = str(work / "out.mp4")
        errors = {
            "--help": ["--help"],
            "run --mode foo (unknown choice)": ["run", "--source", source, "--driving", str(clip), "-o", out,
                                                "--mode", "foo"],
            "run --source missing.jpg": ["run", "--source", str(work / "missing.jpg"), "--driving",
                                         str(clip), "-o", out, "--weights", str(weights)],
            "run, official weights missing": ["run", "--source", source, "--driving", str(clip), "-o", out],
            "status CACHE, no such cache": ["status", str(work / "no-cache")],
            "invert DATASET, no such folder": ["invert", str(work / "no-clips"), "--cache",
                                               str(work / "c0"), "--weights", str(weights)],
        }
        short = subprocess.run(["git", "-C", str(base_tree), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True).stdout.strip()
        print(f"baseline {baseline_rev} ({short}) vs this tree {ROOT}; seconds, one thread, no official "
              "weights\n")
        print(f"{'measurement':44s} {'baseline':>8s} {'this':>8s} {'ratio':>7s}")
        trees = {"baseline": base_tree, "this": ROOT}
        for name, argv in errors.items():
            results: dict[str, tuple[float, float]] = {}
            for label, tree in trees.items():
                drop_bytecode(tree)
                cold, _, code, tail = timed(tree, argv, env)
                if (code == 0) != (name == "--help"):
                    print(f"  ({label}: unexpected exit {code}: {tail.strip()[-200:]})")
                warm = statistics.median(timed(tree, argv, env)[0] for _ in range(max(1, args.repeats)))
                results[label] = (cold, warm)
            row(f"error, cold: {name}", results["baseline"][0], results["this"][0])
            row(f"error, warm: {name}", results["baseline"][1], results["this"][1])

        if not args.skip_frames:
            options = ["--weights", str(weights), "--steps-first", "4", "--steps-next", "2", "--invert-steps",
                       "3", "--perceptual", "uncalibrated-alex", "--device", "cpu"]
            frames: dict[str, dict[str, tuple[float, float | None]]] = {}
            for label, tree in trees.items():
                drop_bytecode(tree)
                frames[label] = {}
                for run in ("cold", "warm", "no-op"):
                    folder = work / f"{label}-{'warm' if run == 'no-op' else run}"
                    argv = ["run", "--source", source, "--driving", str(clip), "-o", str(folder / "out.mp4"),
                            "--cache", str(folder / "cache"), *options]
                    folder.mkdir(exist_ok=True)
                    total, first, code, tail = timed(tree, argv, env, first_frame=True)
                    if code != 0:
                        print(f"  ({label} {run}: exit {code}: {tail.strip()[-300:]})")
                    frames[label][run] = (total, first)
            for run in ("cold", "warm"):
                row(f"run, {run}: first frame", frames["baseline"][run][1], frames["this"][run][1])
                row(f"run, {run}: whole run ({args.frames} frames)", frames["baseline"][run][0],
                    frames["this"][run][0])
            row("run, no-op rerun of the warm run", frames["baseline"]["no-op"][0],
                frames["this"]["no-op"][0])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
