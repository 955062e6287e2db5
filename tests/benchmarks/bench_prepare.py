"""Benchmark of the prepare stage, one row per measurement, each against a reference run side by side.

    python tests/benchmarks/bench_prepare.py [--seconds 3] [--sizes 256 1024] [--repeats 3]

Video rows (storage/video.py):
- decode: `read_frames` (rgb24 frames through a pipe into numpy) vs the ffmpeg binary alone decoding
  the same file to nothing (`ffmpeg -i f -f null -`: no colour conversion, no pipe), and vs ffmpeg
  converting to rgb24 as we do but writing to /dev/null (the rest is our pipe + numpy overhead).
- encode: `VideoWriter` (numpy frames into libx264) vs the same raw frames piped in one piece into a
  bare ffmpeg command with the same codec settings.
- probe: `probe` (header + packet scan + decode count for short files) vs `ffmpeg -i f` alone.

Each measurement runs `--repeats` times, ours and the reference alternating so that load from other
processes hits both alike; the table shows the median rate of each and their ratio (ours /
reference: 1.0 means no overhead, below 1 means slower).

Stage rows (models/, tasks/, flows/), on a synthetic 1280x720 talking-head clip (the astronaut photo
zoomed 2.5x with known motion, models/synthetic.py), torch on `--threads` threads (default 1):
- detect: `FaceDetector.detect` (Haar, frames shrunk to 640 px) vs OpenCV's `detectMultiScale` alone
  on the same shrunk grey frames (what is left is our wrapper).
- track+landmarks: `track_frames` (FaceTracker + face-api net, re-detection every 30 frames) vs the
  landmark net alone in fixed boxes (what is left is tracking: boxes, checks, detections).
- smoothing: `plan_crops` (gap filling, One-Euro on landmarks and quads, FFHQ quads) vs the same with
  method "none" (gap filling and quads only).
- align R: `crop_frames` at R x R (FFHQ crop, area pre-filter, bicubic, reflect) vs one
  `cv2.warpAffine` of the frame to R x R (bicubic, no pre-filter).
- flow R: the whole `prepare_video` flow on a fresh cache (probe, hash, decode twice, track, smooth,
  align, zarr writes, Prefect bookkeeping on a local test server) vs decoding the clip once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from storage import video  # noqa: E402
from storage.video import VideoWriter, probe, read_frames  # noqa: E402

FPS = 25
CRF, PRESET = 18, "medium"


@dataclass
class Row:
    """One measurement: `ours` and `reference` are rates in `unit` (higher is better)."""

    stage: str
    size: str
    items: int
    ours: float
    reference: float
    reference_name: str
    unit: str = "frames/s"

    @property
    def ratio(self) -> float:
        return self.ours / self.reference


def print_table(rows: list[Row], title: str) -> None:
    """A plain-text table (also valid Markdown)."""
    header = ["stage", "size", "items", "ours", "reference", "ratio", "reference is"]
    body = [[r.stage, r.size, str(r.items), f"{r.ours:,.1f} {r.unit}", f"{r.reference:,.1f} {r.unit}",
             f"{r.ratio:.2f}", r.reference_name] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    print(f"\n{title}\n")
    for line in [header, ["-" * w for w in widths], *body]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |")


def side_by_side(ours: Callable[[], object], reference: Callable[[], object], repeats: int
                 ) -> tuple[float, float]:
    """Median seconds of `ours` and `reference`, run alternately `repeats` times each."""
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(repeats):
        for name, fn in (("ours", ours), ("reference", reference)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["reference"])


def ffmpeg(*args: str | Path, stdin: bytes | None = None) -> None:
    subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", *map(str, args)],
                   input=stdin, check=True, stdout=subprocess.DEVNULL)


def make_clip(path: Path, size: int, seconds: float) -> Path:
    """A clip with motion and detail (ffmpeg's testsrc2 plus grain), encoded like a camera would."""
    ffmpeg("-y", "-f", "lavfi", "-i", f"testsrc2=size={size}x{size}:rate={FPS}", "-t", str(seconds),
           "-vf", "noise=alls=6:allf=t", "-c:v", "libx264", "-preset", "fast", "-crf", "20",
           "-pix_fmt", "yuv420p", path)
    return path


# ----------------------------------------------------------------------------------- measurements
def measure_decode(clip: Path, size: int, repeats: int, to_rgb: bool = False) -> Row:
    """read_frames vs ffmpeg decoding alone: to nothing (`-f null`), or, with `to_rgb`, converting
    to rgb24 as we do and writing to /dev/null (what is left is our pipe and numpy overhead)."""
    count = probe(clip).frame_count

    def ours() -> None:
        n = 0
        for frame in read_frames(clip):
            n += int(frame[0, 0, 0] >= 0)  # touch every frame
        assert n == count

    output = ["-pix_fmt", "rgb24", "-f", "rawvideo", "-y", "/dev/null"] if to_rgb else ["-f", "null", "-"]

    def reference() -> None:
        ffmpeg("-i", clip, *output)

    t_ours, t_ref = side_by_side(ours, reference, repeats)
    return Row("decode", f"{size}x{size}", count, count / t_ours, count / t_ref,
               "ffmpeg -i f " + " ".join(output))


def measure_encode(clip: Path, size: int, repeats: int, workdir: Path) -> Row:
    frames = list(read_frames(clip))
    raw = b"".join(frame.tobytes() for frame in frames)
    out_ours, out_ref = workdir / f"ours-{size}.mp4", workdir / f"ref-{size}.mp4"

    def ours() -> None:
        with VideoWriter(out_ours, Fraction(FPS), crf=CRF, preset=PRESET) as writer:
            for frame in frames:
                writer.write(frame)

    def reference() -> None:
        ffmpeg("-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}", "-framerate", str(FPS),
               "-i", "pipe:", "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p",
               out_ref, stdin=raw)

    t_ours, t_ref = side_by_side(ours, reference, repeats)
    assert probe(out_ours).frame_count == len(frames) == probe(out_ref).frame_count
    return Row("encode", f"{size}x{size}", len(frames), len(frames) / t_ours, len(frames) / t_ref,
               f"raw frames piped to ffmpeg, libx264 {PRESET} crf {CRF}")


def measure_probe(clip: Path, size: int, repeats: int) -> Row:
    def ours() -> None:
        video._parsed_cached.cache_clear()
        video._scan_packets_cached.cache_clear()
        video._count_decoded_cached.cache_clear()
        probe(clip)

    def reference() -> None:
        subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-i", str(clip)], capture_output=True)

    t_ours, t_ref = side_by_side(ours, reference, repeats)
    return Row("probe", f"{size}x{size}", 1, 1 / t_ours, 1 / t_ref, "ffmpeg -i f (header only)",
               unit="files/s")


# ----------------------------------------------------------------------------------- stage rows
STAGE_SIZE = (1280, 720)


def make_talking_clip(path: Path, frames: int) -> Path:
    """A 1280x720 clip of the astronaut photo zoomed 2.5x (face about 240 px wide) with head motion
    and a mouth opening (models/synthetic.py), H.264 crf 18."""
    import skimage.data

    from models.detection import make_detector
    from models.landmarks import load_landmark_backend
    from models.synthetic import Pose, motion, write_clip

    photo = skimage.data.astronaut()
    (box,) = make_detector("haar").detect(photo)
    points = load_landmark_backend("faceapi").predict_frame(photo, box)
    poses = [Pose(p.dx * 3, p.dy * 3, p.angle, 2.5 * p.scale, p.mouth) for p in motion("all", frames)]
    write_clip(path, photo, points, poses, fps=FPS, size=STAGE_SIZE)
    return path


def measure_detect(frames: list[np.ndarray], repeats: int) -> Row:
    import cv2

    from models.detection import make_detector

    detector = make_detector("haar")
    scale = min(1.0, detector.max_side / max(frames[0].shape[:2]))
    size = (round(frames[0].shape[1] * scale), round(frames[0].shape[0] * scale))
    greys = [cv2.equalizeHist(cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size,
                                         interpolation=cv2.INTER_AREA)) for f in frames]
    cascade = detector._cascade  # the same classifier, called directly

    def ours() -> None:
        assert all(detector.detect(f) for f in frames)

    def reference() -> None:
        side = max(20, int(detector.min_size * min(size)))
        for g in greys:
            cascade.detectMultiScale3(g, scaleFactor=detector.scale_factor,
                                      minNeighbors=detector.min_neighbors, minSize=(side, side),
                                      outputRejectLevels=True)

    t_ours, t_ref = side_by_side(ours, reference, repeats)
    n = len(frames)
    return Row("detect (haar)", _size(frames), n, n / t_ours, n / t_ref,
               "cv2 detectMultiScale on the shrunk grey frames")


def measure_track(frames: list[np.ndarray], repeats: int) -> tuple[Row, np.ndarray, np.ndarray]:
    from models.detection import FaceFlag, FaceTracker, box_from_landmarks, make_detector
    from models.face_track import track_frames
    from models.landmarks import load_landmark_backend

    backend = load_landmark_backend("faceapi")
    detector = make_detector("haar")
    faces = list(track_frames(frames, FaceTracker(detector, backend.predict_frame)))
    points = np.stack([f.points for f in faces])
    flags = np.array([f.flag for f in faces], dtype=np.uint8)
    assert (flags != FaceFlag.LOST).all()
    boxes = [box_from_landmarks(p) for p in points]

    def ours() -> None:
        list(track_frames(frames, FaceTracker(detector, backend.predict_frame)))

    def reference() -> None:
        for frame, box in zip(frames, boxes, strict=True):
            backend.predict_frame(frame, box)

    t_ours, t_ref = side_by_side(ours, reference, repeats)
    n = len(frames)
    row = Row("track+landmarks (faceapi)", _size(frames), n, n / t_ours, n / t_ref,
              "the landmark net alone in fixed boxes")
    return row, points, flags


def measure_smoothing(points: np.ndarray, flags: np.ndarray, repeats: int) -> Row:
    from models.face_track import plan_crops
    from models.smoothing import SmoothingConfig

    points = np.tile(points, (10, 1, 1))  # a longer track: the per-call overhead is not the point
    flags = np.tile(flags, 10)

    def ours() -> None:
        plan_crops(points, flags, SmoothingConfig(), FPS, 256)

    def reference() -> None:
        plan_crops(points, flags, SmoothingConfig(method="none"), FPS, 256)

    t_ours, t_ref = side_by_side(ours, reference, repeats)
    n = len(points)
    return Row("smoothing (one-euro)", "68x2", n, n / t_ours, n / t_ref, "gap filling + quads, no filter")


def measure_align(frames: list[np.ndarray], points: np.ndarray, flags: np.ndarray, resolution: int,
                  repeats: int) -> Row:
    import cv2

    from models.face_track import crop_frames, plan_crops
    from models.smoothing import SmoothingConfig

    plan = plan_crops(points, flags, SmoothingConfig(), FPS, resolution)
    matrices = [plan.transform(i).crop_from_frame[:2] for i in range(len(frames))]

    def ours() -> None:
        for _ in crop_frames(enumerate(frames), plan):
            pass

    def reference() -> None:
        for frame, m in zip(frames, matrices, strict=True):
            cv2.warpAffine(frame, m, (resolution, resolution), flags=cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REFLECT)

    t_ours, t_ref = side_by_side(ours, reference, repeats)
    n = len(frames)
    return Row(f"align R={resolution}", _size(frames), n, n / t_ours, n / t_ref,
               "cv2.warpAffine to R x R alone")


def measure_flow(clip: Path, resolution: int, repeats: int, workdir: Path) -> Row:
    from flows.prepare import prepare_video

    count = probe(clip).frame_count
    caches = iter(range(10**6))

    def ours() -> None:
        result = prepare_video(str(clip), str(workdir / f"cache-{next(caches)}"), resolution=resolution)
        assert result["crops"]["computed"] == count

    def reference() -> None:
        for _ in read_frames(clip):
            pass

    ours()  # warm: loads the models and the flow machinery once, as a worker would
    t_ours, t_ref = side_by_side(ours, reference, repeats)
    return Row(f"prepare_video flow R={resolution}", f"{STAGE_SIZE[0]}x{STAGE_SIZE[1]}", count,
               count / t_ours, count / t_ref, "decoding the clip once (read_frames)")


def _size(frames: list[np.ndarray]) -> str:
    return f"{frames[0].shape[1]}x{frames[0].shape[0]}"


def stage_rows(args: argparse.Namespace, workdir: Path) -> list[Row]:
    import torch

    torch.set_num_threads(args.threads)
    clip = make_talking_clip(workdir / "talking-720p.mp4", args.stage_frames)
    frames = list(read_frames(clip))
    rows = [measure_detect(frames[:10], args.repeats)]
    row, points, flags = measure_track(frames, args.repeats)
    rows += [row, measure_smoothing(points, flags, args.repeats)]
    rows += [measure_align(frames, points, flags, r, args.repeats) for r in args.crops]
    if not args.no_flow:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness():  # a throwaway local server: nothing written to the user's Prefect
            rows += [measure_flow(clip, r, args.repeats, workdir) for r in args.crops]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stage-frames", type=int, default=50, help="frames of the stage rows' clip")
    parser.add_argument("--crops", type=int, nargs="+", default=[256, 1024], help="crop sizes R")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the stage rows")
    parser.add_argument("--no-video", action="store_true", help="skip the video I/O rows")
    parser.add_argument("--no-stages", action="store_true", help="skip the stage rows")
    parser.add_argument("--no-flow", action="store_true", help="skip the whole-flow rows")
    args = parser.parse_args()

    rows: list[Row] = []
    stages: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        workdir = Path(tmp)
        for size in [] if args.no_video else args.sizes:
            clip = make_clip(workdir / f"clip-{size}.mp4", size, args.seconds)
            rows.append(measure_probe(clip, size, args.repeats))
            rows.append(measure_decode(clip, size, args.repeats))
            rows.append(measure_decode(clip, size, args.repeats, to_rgb=True))
            rows.append(measure_encode(clip, size, args.repeats, workdir))
        if not args.no_stages:
            stages = stage_rows(args, workdir)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    if rows:
        ffmpeg_version = video.ffmpeg_exe().rsplit("-v", 1)[-1]
        print_table(rows, f"prepare stage, video I/O: {args.seconds:g} s clips at {FPS} fps, median of "
                          f"{args.repeats}, {cpus} CPUs{load}, ffmpeg {ffmpeg_version}")
    if stages:
        print_table(stages, f"prepare stage, per stage: {args.stage_frames} frames at {FPS} fps, median of "
                            f"{args.repeats}, {cpus} CPUs{load}, torch threads {args.threads}")
    rows += stages
    bad = np.array([not np.isfinite(r.ratio) for r in rows])
    if bad.any():
        raise SystemExit("a measurement failed")


if __name__ == "__main__":
    main()
