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
reference: 1.0 means no overhead, below 1 means slower). The stage rows of the prepare pipeline
(detect, landmarks, smoothing, align) go in as more `measure_*` functions returning `Row`s.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        workdir = Path(tmp)
        for size in args.sizes:
            clip = make_clip(workdir / f"clip-{size}.mp4", size, args.seconds)
            rows.append(measure_probe(clip, size, args.repeats))
            rows.append(measure_decode(clip, size, args.repeats))
            rows.append(measure_decode(clip, size, args.repeats, to_rgb=True))
            rows.append(measure_encode(clip, size, args.repeats, workdir))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print_table(rows, f"prepare stage: {args.seconds:g} s clips at {FPS} fps, median of {args.repeats}, "
                      f"{cpus} CPUs, ffmpeg {video.ffmpeg_exe().rsplit('-v', 1)[-1]}")
    bad = np.array([not np.isfinite(r.ratio) for r in rows])
    if bad.any():
        raise SystemExit("a measurement failed")


if __name__ == "__main__":
    main()
