"""Face detector recall for docs/faces.md: Haar against face-api's SSD MobileNet v1, side by side, on
1280 x 720 frames with one 40-60 px face and on frames with five faces of 40-140 px (tests/face_scenes.py:
the astronaut's face pasted at known places, some mirrored, tilted up to 20 degrees or narrowed like
a turned head), and the CPU seconds per detected frame on one thread (process time: the machine may
be shared).

Run: .venv/bin/python tests/benchmarks/bench_detection.py [--frames N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from models.detection import make_detector  # noqa: E402
from tests import face_scenes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="frames with one small face (default 16)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    small = face_scenes.small_face_scenes(args.frames, seed=5)
    crowd = face_scenes.crowd_scenes(max(2, args.frames // 4), seed=6)
    frames = [face_scenes.render(f, seed=k) for k, f in enumerate(small)]
    frames += [face_scenes.render(f, seed=k) for k, f in enumerate(crowd)]
    detectors = {"haar": make_detector("haar"), "ssd (no tiles)": make_detector("ssd", tile=0),
                 "ssd (default)": make_detector("ssd")}
    print(f"{'detector':16s} {'small 40-60 px':>15s} {'several faces':>14s} {'false':>6s} "
          f"{'CPU s/frame':>12s}")
    rows = {}
    for name, det in detectors.items():
        det.detect(frames[0])  # load the net outside the timing
        t0 = time.process_time()
        found = [det.detect(frame) for frame in frames]
        per_frame = (time.process_time() - t0) / len(frames)
        fs, ts, xs = face_scenes.recall(found[:len(small)], small)
        fc, tc, xc = face_scenes.recall(found[len(small):], crowd)
        rows[name] = (fs / ts, fc / tc, per_frame)
        print(f"{name:16s} {fs:>5d}/{ts:<3d} {fs / ts:5.0%} {fc:>4d}/{tc:<3d} {fc / tc:5.0%} {xs + xc:>6d} "
              f"{per_frame:12.3f}")
    h, s = rows["haar"], rows["ssd (default)"]
    print(f"ssd/haar: recall small x{s[0] / max(h[0], 1e-9):.2f}, several x{s[1] / max(h[1], 1e-9):.2f}, "
          f"time x{s[2] / h[2]:.1f}")


if __name__ == "__main__":
    main()
