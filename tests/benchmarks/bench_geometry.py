"""Face geometry numbers for docs/faces.md: smoothing quality on synthetic head motion, and the time
of detection, alignment and paste-back on one CPU thread.

Run: .venv/bin/python tests/benchmarks/bench_geometry.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.alignment import AlignTransform, align, paste_back  # noqa: E402
from models.detection import make_detector  # noqa: E402
from models.smoothing import SmoothingConfig, smooth_landmarks  # noqa: E402
from tests.support.motion import head_motion, jitter, lag_frames  # noqa: E402

FACES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "faces"


def smoothing_table() -> None:
    from models.face_shape import MEAN_SHAPE_68

    configs = {
        "one_euro (default)": SmoothingConfig(),
        "one_euro causal": SmoothingConfig(zero_phase=False),
        "savgol (default)": SmoothingConfig(method="savgol"),
        "savgol 9": SmoothingConfig(method="savgol", window=9),
    }
    print("smoothing: 1 px noise on a face with |x| = 149 px; jitter and error ratios are before / after")
    header = ("config", "fps", "jitter x", "error x", "lag", "2 Hz kept", "4 Hz kept")
    print("{:22s} {:>4s} {:>9s} {:>8s} {:>4s} {:>10s} {:>10s}".format(*header))
    for name, config in configs.items():
        for fps in (25.0, 30.0):
            true, noisy = head_motion(fps, T=300)
            s, _ = smooth_landmarks(noisy, config, fps)
            jr = jitter(noisy) / jitter(s)
            er = np.abs(noisy - true).mean() / np.abs(s - true).mean()
            kept = []
            for f in (2.0, 4.0):
                t = np.arange(300) / fps
                lm = np.repeat((MEAN_SHAPE_68 * 60 + 256)[None], 300, axis=0)
                lm[:, 48:68, 1] += 5 * np.sin(2 * np.pi * f * t)[:, None]
                sm, _ = smooth_landmarks(lm, config, fps)
                kept.append(np.std(sm[30:-30, 57, 1]) / np.std(lm[30:-30, 57, 1]))
            lag = lag_frames(s, true)
            print(f"{name:22s} {fps:4.0f} {jr:9.1f} {er:8.2f} {lag:4d} {kept[0]:10.2f} {kept[1]:10.2f}")


def timed(fn, repeat: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def speed_table() -> None:
    import cv2
    import skimage.data

    cv2.setNumThreads(1)
    astronaut = skimage.data.astronaut()
    points = np.load(FACES / "astronaut_dlib68.npy").astype(np.float64)
    hd = cv2.resize(astronaut, (1080, 1080), interpolation=cv2.INTER_CUBIC)
    hd = np.pad(hd, ((0, 0), (420, 420), (0, 0)), mode="edge")  # 1080 x 1920
    hd_points = (points + 0.5) * (1080 / 512) - 0.5 + [420, 0]
    detector = make_detector("haar")
    print("\ntimes, one thread (ms)")
    print(f"haar detect 512x512: {timed(lambda: detector.detect(astronaut)) * 1e3:8.1f}")
    print(f"haar detect 1920x1080 (shrunk to 640): {timed(lambda: detector.detect(hd)) * 1e3:8.1f}")
    for R in (256, 1024):
        t = AlignTransform.from_landmarks(hd_points, R)
        crop = align(hd, t)
        print(
            f"1080p, face {2 * np.hypot(*t.quad[2:]):.0f} px -> R={R}: align "
            f"{timed(lambda t=t: align(hd, t)) * 1e3:.1f}, paste_back "
            f"{timed(lambda t=t, c=crop: paste_back(hd, c, t)) * 1e3:.1f}"
        )


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    smoothing_table()
    speed_table()
