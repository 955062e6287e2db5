"""Video I/O: probe, streaming decode, streaming encode. The only module that runs ffmpeg.

ffmpeg-python builds the command lines (it is unmaintained since 2019, so its use stays here); the
binary is the one in the imageio-ffmpeg wheel, so no system ffmpeg is needed. That wheel has no
ffprobe, so metadata comes from two cheap ffmpeg runs:

- `ffmpeg -i FILE` (header only): container, streams, codec, size, rotation (display matrix),
  nominal rates, audio streams.
- `ffmpeg -copyts -i FILE -map 0:V -c copy -f framecrc -` (demux only, no decoding): one line per
  video packet with its raw timestamp. This gives the frame count, the exact frame rate as a
  fraction (timebase / frame duration: 30000/1001, not 29.97), whether the rate is constant, and
  the timestamp of every frame, which makes seeking frame-accurate.

Short or damaged files are also decoded once to count frames exactly as `read_frames` yields them.

Decoding streams rgb24 frames through a pipe, one frame at a time, with ffmpeg's autorotation and
`-fps_mode passthrough` (every decoded frame exactly once: no frames duplicated or dropped to fake a
constant rate). Encoding streams rgb24 frames into libx264/yuv420p, writes under a temporary name and
renames into place on success only. See docs/video.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import select
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import ffmpeg  # ffmpeg-python: command-line building only
import imageio_ffmpeg
import numpy as np

from storage.atomic import commit, partial_path
from storage.errors import InputError
from storage.files import disk_full_message, require_readable_file
from storage.limits import check_pixels

# Containers whose demuxers seek by an index to exact timestamps (verified frame by frame in
# tests/test_video.py). Others (MPEG-TS, AVI, raw streams, GIF) are decoded from the start and the
# frames before `start` dropped inside ffmpeg: slower, but exact.
_INDEXED_CONTAINERS = ("mov", "mp4", "matroska", "webm")

# Demuxers that make a "video" out of something that is not one: still images and text art.
_STILL_IMAGE_FORMATS = ("image2", "_pipe")
_TEXT_FORMATS = ("tty", "bin", "adf", "idf", "xbin")

# Audio codecs the MP4 muxer takes as they are; others are re-encoded to AAC.
_MP4_AUDIO_COPY = {"aac", "mp3", "alac", "ac3", "eac3"}

# Files up to this many pixels in all (~130 frames of 1080p, ~4000 of 256x256; a second or so of
# decoding) have their frames counted by decoding; longer ones by packets.
DECODE_COUNT_BUDGET = 2**28

_NOPTS = -(2**63)
_KEY_FLAG, _DISCARD_FLAG = 0x1, 0x4  # AV_PKT_FLAG_*; framecrc prints F=0x.. unless flags == KEY
FFMPEG_TIMEOUT = 600.0  # seconds; see ffmpeg_timeout()
FFMPEG_TIMEOUT_ENV = "FACEREENACT_FFMPEG_TIMEOUT"
_PIPE_SIZE = 1 << 20  # Linux's unprivileged maximum; fewer syscalls per frame than the 64 KiB default


def ffmpeg_timeout() -> float:
    """Seconds any one ffmpeg run (a probe, a scan, a mux) or any one read from a decoding ffmpeg may
    take: $FACEREENACT_FFMPEG_TIMEOUT, else FFMPEG_TIMEOUT. A stuck read (a stalled network mount, a
    file that is still being written) ends in a one-line error instead of a hang."""
    raw = os.environ.get(FFMPEG_TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else FFMPEG_TIMEOUT
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{FFMPEG_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def _run_ffmpeg(cmd: list[str], path: str | Path, doing: str) -> subprocess.CompletedProcess[str]:
    """subprocess.run of an ffmpeg command, bounded by ffmpeg_timeout(): InputError naming `path`
    when it takes longer (the process is killed by subprocess.run)."""
    limit = ffmpeg_timeout()
    try:
        return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=limit,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InputError(f"ffmpeg took more than {limit:g} s {doing}; refused (raise "
                         f"{FFMPEG_TIMEOUT_ENV} for very long files)", path=path) from None


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    return imageio_ffmpeg.get_ffmpeg_exe()


# ------------------------------------------------------------------------------------------ probe
@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a video file.

    path:               the file, absolute
    width, height:      size of the frames `read_frames` yields: the display size, after rotation
    fps:                frame rate as an exact fraction (30000/1001); the average rate if variable
    frame_count:        number of frames `read_frames` yields for the whole file
    frame_count_source: "decoded" (counted by decoding; exact), "packets" (counted by demuxing,
                        exact for intact files), or "estimated" (duration x fps, when asked for)
    duration:           frame_count / fps, seconds
    rotation:           counter-clockwise display rotation in degrees, 0/90/180/270, that decoding
                        applies (from the display matrix; `ffmpeg -display_rotation` sets it)
    coded_width/height: size of the frames as stored, before rotation
    codec:              video codec name ("h264")
    container:          demuxer name ("mov,mp4,m4a,3gp,3g2,mj2")
    stream_index:       index of the video stream used (the first that is not cover art)
    has_audio:          whether the file has an audio stream
    audio_codec:        codec of the first audio stream, or None
    variable_frame_rate: frame timestamps are not evenly spaced (beyond timestamp rounding)
    truncated:          the file ends early (cut mid-file); frame_count is what still decodes
    warnings:           one line per thing the caller may want to tell the user
    """

    path: str
    width: int
    height: int
    fps: Fraction
    frame_count: int
    frame_count_source: str
    duration: float
    rotation: int
    coded_width: int
    coded_height: int
    codec: str
    container: str
    stream_index: int
    has_audio: bool
    audio_codec: str | None
    variable_frame_rate: bool
    truncated: bool
    warnings: tuple[str, ...] = ()

    @property
    def frame_count_exact(self) -> bool:
        return self.frame_count_source != "estimated"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (fps as "30000/1001"), for cache attributes and manifests."""
        data = asdict(self)
        data["fps"] = f"{self.fps.numerator}/{self.fps.denominator}"
        data["warnings"] = list(self.warnings)
        return data


@dataclass(frozen=True)
class _Header:
    """What `ffmpeg -i` prints about a file (see `_parse_header`)."""

    container: str
    start: float | None  # the file's start time in seconds; -ss is relative to it
    duration: float | None
    stream_index: int
    codec: str
    coded_width: int
    coded_height: int
    rotation: int  # counter-clockwise degrees decoding applies, 0/90/180/270
    avg_fps: str | None  # "29.97", "25", "1k"
    tbr: str | None
    audio_codec: str | None
    sar: Fraction = Fraction(1)  # sample (pixel) aspect ratio; not 1 for anamorphic video

    @property
    def square_size(self) -> tuple[int, int]:
        """(width, height) of a frame resampled to square pixels, as a player shows it, before
        rotation: the coded size stretched along one axis (never shrunk, so no detail is lost)."""
        w, h = self.coded_width, self.coded_height
        if self.sar > 1:
            return max(1, round(w * self.sar)), h
        if self.sar < 1:
            return w, max(1, round(h / self.sar))
        return w, h

    @property
    def width(self) -> int:
        w, h = self.square_size
        return h if self.rotation in (90, 270) else w

    @property
    def height(self) -> int:
        w, h = self.square_size
        return w if self.rotation in (90, 270) else h


@dataclass(frozen=True)
class _Packets:
    """The demux-only scan of the video stream."""

    timebase: Fraction
    times: tuple[int, ...]  # presentation timestamps in timebase units, sorted; () if unknown
    durations: tuple[int, ...]
    count: int
    damaged: str | None  # the demuxer's complaint when the file ends early or is damaged


def probe(path: str | Path, *, count: str = "auto", max_pixels: int | None = None) -> VideoInfo:
    """Metadata of a video file; raises a one-line InputError naming the file when it is not usable.

    count: how to count frames.
      "auto"     demux the file (cheap, no decoding) and count its packets; decode to count when the
                 file is short (under DECODE_COUNT_BUDGET decoded pixels) or ends early
      "decode"   always count by decoding (exact, costs a decode)
      "packets"  count packets only
      "estimate" duration x fps from the header; no scan (for huge remote files)
    max_pixels: refuse frames larger than this (default: storage.limits.max_pixels()).
    """
    if count not in ("auto", "decode", "packets", "estimate"):
        raise ValueError(f"count must be auto, decode, packets or estimate, not {count!r}")
    path = _existing_file(path)
    header = _header(path)
    check_pixels(header.width, header.height, path, "frame", max_pixels)
    warnings: list[str] = []

    if count == "estimate":
        fps = _snap_rate(header.avg_fps or header.tbr)
        if fps is None or header.duration is None:
            raise InputError("cannot estimate the frame count: the header gives no duration or rate",
                             path=path)
        frames = max(0, round(header.duration * fps))
        source, vfr, truncated = "estimated", False, False
    else:
        packets = _scan_packets(path, header.stream_index)
        fps, vfr = _rate_from_packets(packets, header)
        frames, source = packets.count, "packets"
        truncated = packets.damaged is not None
        short = packets.count * header.coded_width * header.coded_height <= DECODE_COUNT_BUDGET
        if count == "decode" or truncated or (count == "auto" and short):
            frames, decode_error = _count_decoded(path, header.stream_index)
            source = "decoded"
            truncated = truncated or (decode_error is not None and frames < packets.count)
        if truncated:
            lost = f" ({packets.count - frames} damaged frames dropped)" if frames < packets.count else ""
            warnings.append(f"file is cut short or damaged ({packets.damaged or 'decode errors'}): "
                            f"the first {frames} frames decode{lost}")
        if header.sar != 1:
            warnings.append(f"anamorphic (sample aspect ratio {header.sar.numerator}:{header.sar.denominator}"
                            f"): frames are resampled to square pixels, {header.width}x{header.height}")
        if vfr:
            warnings.append(f"variable frame rate: average {float(fps):.3f} fps is used for output")
    if frames == 0:
        raise InputError("video stream has no frames", path=path)
    if fps is None or fps <= 0:
        raise InputError("video stream has no usable frame rate", path=path)
    return VideoInfo(
        path=str(path), width=header.width, height=header.height, fps=fps, frame_count=frames,
        frame_count_source=source, duration=float(frames / fps), rotation=header.rotation,
        coded_width=header.coded_width, coded_height=header.coded_height, codec=header.codec,
        container=header.container, stream_index=header.stream_index,
        has_audio=header.audio_codec is not None, audio_codec=header.audio_codec,
        variable_frame_rate=vfr, truncated=truncated, warnings=tuple(warnings),
    )


def has_audio(path: str | Path) -> bool:
    """Whether a media file (a video, or audio only) has an audio stream. Reads the header only."""
    return _parsed(_existing_file(path)).audio_codec is not None


def _existing_file(path: str | Path) -> Path:
    return require_readable_file(path, "a video file")  # a FIFO or /dev/zero: refused, never opened


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _input_url(path: Path) -> str:
    # "file:" keeps ffmpeg from reading a name as a protocol ("pipe:", "http:") or an option ("-x").
    return f"file:{path}"


def _ffmpeg_error(stderr: str) -> str:
    """The most telling line of ffmpeg's stderr, without its `[demuxer @ 0x...]` prefix."""
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("At least one output", "Input #"))]
    for line in lines:
        if line.startswith("Error opening input:"):
            return line.removeprefix("Error opening input:").strip()
    return lines[-1] if lines else "ffmpeg failed without a message"


@dataclass(frozen=True)
class _Parsed:
    """`ffmpeg -i FILE`, parsed: the container and its streams (kind, description, side data)."""

    container: str
    start: float | None
    duration: float | None
    streams: tuple[tuple[int, str, str, tuple[str, ...]], ...]

    @property
    def audio_codec(self) -> str | None:
        return next((_codec(desc) for _, kind, desc, _ in self.streams if kind == "Audio"), None)


def _codec(description: str) -> str:
    return description.split()[0].rstrip(",")


def _parsed(path: Path) -> _Parsed:
    return _parsed_cached(*_stat_key(path))


@lru_cache(maxsize=64)
def _parsed_cached(path_str: str, size: int, mtime_ns: int) -> _Parsed:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", _input_url(Path(path_str))]
    proc = _run_ffmpeg(cmd, path_str, "reading its header")
    return _parse_header(proc.stderr, path_str)


_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)\S*: (Video|Audio|Subtitle|Data|Attachment): (.*)$")
_SIZE_RE = re.compile(r"(?<![\w.])([1-9]\d{0,5})x([1-9]\d{0,5})(?![\w.])")
_SAR_RE = re.compile(r"\[SAR (\d+):(\d+) DAR ")
_ROTATION_RE = re.compile(r"[Dd]isplay [Mm]atrix: rotation of (-?[\d.]+) degrees")


def _parse_header(stderr: str, path: str | Path) -> _Parsed:
    lines = stderr.splitlines()
    input_line = next((line for line in lines if line.startswith("Input #0, ")), None)
    if input_line is None:
        message = _ffmpeg_error(stderr)
        if "Invalid data found" in message:
            raise InputError("not a readable video (corrupt, or not a format ffmpeg knows)", path=path)
        if "End of file" in message:
            raise InputError("not a readable video (truncated or corrupt: it ends inside its header)",
                             path=path)
        raise InputError(f"not a readable video ({message})", path=path)
    container = input_line[len("Input #0, "):].split(", from ", 1)[0]
    start = duration = None
    if m := re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", stderr):
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    if m := re.search(r"Duration: [^,]*, start: (-?\d+(?:\.\d+)?)", stderr):
        start = float(m.group(1))
    # Streams, each with the indented lines that follow it (metadata, "Side data").
    streams: list[tuple[int, str, str, list[str]]] = []
    for line in lines:
        if m := _STREAM_RE.match(line):
            streams.append((int(m.group(1)), m.group(2), m.group(3), []))
        elif streams and line.startswith("    "):
            streams[-1][3].append(line.strip())
    return _Parsed(container, start, duration, tuple((i, k, d, tuple(x)) for i, k, d, x in streams))


def _header(path: Path) -> _Header:
    """The header of a file that must be a video; InputError otherwise."""
    parsed = _parsed(path)
    container, audio = parsed.container, parsed.audio_codec
    videos = [s for s in parsed.streams if s[1] == "Video" and "(attached pic)" not in s[2]]
    if any(container == f or container.endswith(f) for f in _STILL_IMAGE_FORMATS):
        codec = _codec(videos[0][2]) if videos else container
        raise InputError(f"is a still image ({codec}), not a video", path=path)
    if container in _TEXT_FORMATS:
        raise InputError("is a text file, not a video", path=path)
    if not videos:
        if audio and any(s[1] == "Video" for s in parsed.streams):
            what = "audio with cover art"
        else:
            what = "audio only" if audio else "no streams at all" if not parsed.streams else "no video"
        raise InputError(f"has no video stream ({what})", path=path)

    index, _, desc, extra = videos[0]
    codec = _codec(desc)
    size = _SIZE_RE.search(desc)
    if size is None:
        raise InputError(f"video stream has no frame size (codec {codec})", path=path)
    rotation = 0
    for line in extra:
        if m := _ROTATION_RE.search(line):
            rotation = _decode_rotation(float(m.group(1)))
    sar = Fraction(1)
    if (m := _SAR_RE.search(desc)) and int(m.group(1)) > 0 and int(m.group(2)) > 0:  # 0:1 = unknown
        sar = Fraction(int(m.group(1)), int(m.group(2)))
        if not Fraction(1, 16) <= sar <= 16:
            raise InputError(f"sample aspect ratio {m.group(1)}:{m.group(2)} is not a plausible video's",
                             path=path)
    fps = re.search(r"([\d.]+k?) fps", desc)
    tbr = re.search(r"([\d.]+k?) tbr", desc)
    return _Header(
        container=container, start=parsed.start, duration=parsed.duration, stream_index=index,
        codec=codec, coded_width=int(size.group(1)), coded_height=int(size.group(2)),
        rotation=rotation, avg_fps=fps.group(1) if fps else None, tbr=tbr.group(1) if tbr else None,
        audio_codec=audio, sar=sar,
    )


def _decode_rotation(display_ccw: float) -> int:
    """The rotation ffmpeg's autorotation applies for a display-matrix angle (ffmpeg prints the
    matrix's counter-clockwise angle). Like ffmpeg: multiples of 90 within a degree are applied as
    transposes/flips; other angles are applied by a rotate filter that keeps the frame size, so for
    sizing they count as 0."""
    ccw = display_ccw % 360
    nearest = round(ccw / 90) * 90
    if abs(ccw - nearest) > 1:
        return 0
    return int(nearest % 360)


def _scan_packets(path: Path, stream_index: int) -> _Packets:
    return _scan_packets_cached(*_stat_key(path), stream_index)


@lru_cache(maxsize=16)
def _scan_packets_cached(path_str: str, size: int, mtime_ns: int, stream_index: int) -> _Packets:
    cmd = _compile(
        ffmpeg.input(_input_url(Path(path_str)), copyts=None)[str(stream_index)]
        .output("pipe:", format="framecrc", c="copy")
    )
    proc = _run_ffmpeg(cmd, path_str, "scanning its packets")
    timebase = Fraction(1)
    times: list[int] = []
    durations: list[int] = []
    for line in proc.stdout.splitlines():
        if line.startswith("#tb 0:"):
            timebase = Fraction(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            fields = [field.strip() for field in line.split(",")]
            flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=")), _KEY_FLAG)
            if flags & _DISCARD_FLAG:
                continue  # before the start of an edit list: demuxed for decoding, never shown
            dts, pts, duration = int(fields[1]), int(fields[2]), int(fields[3])
            times.append(pts if pts != _NOPTS else dts)
            durations.append(duration)
    damaged = None
    complaint = re.search(r"(partial file|ended prematurely|[Tt]runcat\w*|Invalid NAL)", proc.stderr)
    if complaint or (proc.returncode != 0 and times):
        damaged = complaint.group(1) if complaint else _ffmpeg_error(proc.stderr)
    elif proc.returncode != 0 and "Output file is empty" not in proc.stderr:
        raise InputError(f"cannot be read ({_ffmpeg_error(proc.stderr)})", path=path_str)
    known = all(t != _NOPTS for t in times)
    return _Packets(timebase=timebase, times=tuple(sorted(times)) if known else (),
                    durations=tuple(durations), count=len(times), damaged=damaged)


def _count_decoded(path: Path, stream_index: int) -> tuple[int, str | None]:
    return _count_decoded_cached(*_stat_key(path), stream_index)


@lru_cache(maxsize=16)
def _count_decoded_cached(path_str: str, size: int, mtime_ns: int, stream_index: int
                          ) -> tuple[int, str | None]:
    """Frames that decode, the way read_frames decodes them (passthrough timing), and the last
    decode error if any."""
    cmd = _compile(
        ffmpeg.input(_input_url(Path(path_str)))[str(stream_index)]
        .output("pipe:", format="null", fps_mode="passthrough"),
        "-progress", "pipe:1",
    )
    proc = _run_ffmpeg(cmd, path_str, "counting its frames")
    counts = re.findall(r"^frame=(\d+)$", proc.stdout, flags=re.M)
    if proc.returncode != 0 and not counts:
        raise InputError(f"cannot be decoded ({_ffmpeg_error(proc.stderr)})", path=path_str)
    error = _ffmpeg_error(proc.stderr) if proc.stderr.strip() else None
    return (int(counts[-1]) if counts else 0), error


def _rate_from_packets(packets: _Packets, header: _Header) -> tuple[Fraction | None, bool]:
    """(frame rate, variable?) from the packet timestamps.

    Constant rate: (nearly) every step between consecutive timestamps is the same, and the rate is
    exactly 1 / (step x timebase). Steps that alternate by one tick (a coarse timebase such as
    Matroska's 1 ms) are rounding: their average is snapped to the standard rate it stands for. A few
    odd steps are tolerated (a cut-off tail, a dropped frame). Anything else is variable: the
    average rate, as a fraction with a readable denominator.
    """
    nominal = _snap_rate(header.tbr) or _snap_rate(header.avg_fps)
    times = packets.times
    if len(times) < 2:
        steps = [d for d in packets.durations if d > 0]
        return (1 / (steps[0] * packets.timebase) if steps else nominal), False
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    typical = Counter(steps).most_common(1)[0][0]
    if typical <= 0:
        return nominal, True
    regular_enough = 0.95 * len(steps)
    if sum(step == typical for step in steps) >= regular_enough:
        return 1 / (typical * packets.timebase), False
    near = [step for step in steps if abs(step - typical) <= 1]
    if len(near) >= regular_enough:
        average = float(1 / (Fraction(sum(near), len(near)) * packets.timebase))
        return _snap_rate(average) or nominal, False
    span = (times[-1] - times[0]) * packets.timebase
    if span <= 0:
        return nominal, True
    average = (len(times) - 1) / span
    snapped = _snap_rate(float(average))
    if snapped is not None and abs(snapped - average) <= 1e-4 * average:
        return snapped, True
    return average.limit_denominator(1001), True


def _snap_rate(value: str | float | None) -> Fraction | None:
    """A rate printed by ffmpeg ("29.97", "23.98", "25", "1k") or measured, as the standard fraction
    it stands for: n or n*1000/1001 when within rounding, else the value itself as a fraction."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        scale = 1000 if text.endswith("k") else 1
        text = text.removesuffix("k")
        try:
            rate = float(text) * scale
        except ValueError:
            return None
        decimals = len(text.split(".")[1]) if "." in text else 0
        tolerance = 0.5 * 10.0 ** (-decimals) * scale + 1e-9
    else:
        rate = float(value)
        tolerance = 1e-3 * rate
    if not math.isfinite(rate) or rate <= 0:
        return None
    candidates = [Fraction(round(rate)), Fraction(round(rate * 1.001) * 1000, 1001)]
    best = min(candidates, key=lambda c: abs(float(c) - rate))
    if best > 0 and abs(float(best) - rate) <= tolerance:
        return best
    return Fraction(rate).limit_denominator(1001)


def _compile(stream: Any, *global_args: str) -> list[str]:
    """ffmpeg-python's command line, with global options placed before the inputs (ffmpeg ignores
    trailing options)."""
    args = stream.compile(cmd="ffmpeg")[1:]
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-v", "error", *global_args, *args]


# ----------------------------------------------------------------------------------------- decode
class FrameStream(Iterator[np.ndarray]):
    """Iterator of rgb24 frames (H, W, 3) uint8 from an ffmpeg subprocess, one frame in memory at a
    time. Use as a context manager (or call `close()`) to stop early; the subprocess is also
    stopped when the stream is exhausted, fails, or is garbage collected."""

    def __init__(self, path: Path, cmd: list[str], width: int, height: int, first_index: int) -> None:
        self.path = path
        self.width, self.height = width, height
        self.next_index = first_index  # index in the file of the next frame
        self._cmd = cmd
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._done = False
        self._timeout = ffmpeg_timeout()  # the longest wait for any one read

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> FrameStream:
        return self

    def _start(self) -> subprocess.Popen[bytes]:
        # A file, not a pipe, for stderr: a chatty ffmpeg cannot block on it. Closed in close().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(self._cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._stderr, bufsize=0)
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._proc.stdout, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        return self._proc

    def __next__(self) -> np.ndarray:
        if self._done:
            raise StopIteration
        proc = self._proc or self._start()
        frame = np.empty((self.height, self.width, 3), np.uint8)
        view = memoryview(frame).cast("B")
        got = 0
        try:
            assert proc.stdout is not None
            while got < len(view):
                if not select.select([proc.stdout], [], [], self._timeout)[0]:
                    self.close()
                    raise InputError(f"decoding stalled at frame {self.next_index}: no data from ffmpeg "
                                     f"for {self._timeout:g} s (raise {FFMPEG_TIMEOUT_ENV} if the "
                                     "file is on a slow disk)", path=self.path)
                n = proc.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
        except BaseException:
            self.close()
            raise
        if got == len(view):
            self.next_index += 1
            return frame
        # End of stream: a clean end, or a failure.
        try:
            returncode = proc.wait(timeout=self._timeout)
        except subprocess.TimeoutExpired:  # its output closed, yet it does not exit
            proc.kill()
            returncode = proc.wait()
        message = self._stderr_text()
        self.close()
        if returncode != 0:
            raise InputError(f"decoding failed at frame {self.next_index} ({_ffmpeg_error(message)})",
                             path=self.path)
        if got:
            raise InputError(f"decoding failed at frame {self.next_index} (incomplete frame)",
                             path=self.path)
        raise StopIteration

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self) -> None:
        """Stop the subprocess (if running) and release its pipes. Idempotent."""
        self._done = True
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
            proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def read_frames(path: str | Path, start: int = 0, stop: int | None = None, *,
                max_pixels: int | None = None) -> FrameStream:
    """Stream the frames [start, stop) of a video as rgb24 arrays (H, W, 3) uint8, rotation applied.

    Frame i here is frame i of `probe(path)` and of a full decode. For MP4/MOV/Matroska/WebM,
    ffmpeg seeks to the timestamp of frame `start` (half a frame before it, from the packet scan) so
    a resumed job does not decode from frame 0; other containers are decoded from the start with the
    frames before `start` dropped inside ffmpeg. `stop` beyond the end just ends the stream.
    Errors (unreadable file, decode failure) raise a one-line InputError naming the file.
    """
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"need 0 <= start <= stop, got start={start}, stop={stop}")
    path = _existing_file(path)
    header = _header(path)
    check_pixels(header.width, header.height, path, "frame", max_pixels)

    source = ffmpeg.input(_input_url(path), **_seek_args(path, header, start))
    video = source[str(header.stream_index)]
    if start > 0 and not _seekable(header, path):
        video = video.filter("select", f"gte(n,{start})")
    if header.sar != 1:  # anamorphic: resampled to square pixels, as a player displays it
        video = video.filter("scale", header.width, header.height).filter("setsar", "1")
    out_args: dict[str, Any] = {"format": "rawvideo", "pix_fmt": "rgb24", "fps_mode": "passthrough"}
    if stop is not None:
        out_args["frames:v"] = stop - start
    cmd = _compile(video.output("pipe:", **out_args))
    stream = FrameStream(path, cmd, header.width, header.height, start)
    if stop is not None and stop == start:
        stream.close()
    return stream


def _seekable(header: _Header, path: Path) -> bool:
    if header.start is None or not any(name in header.container for name in _INDEXED_CONTAINERS):
        return False
    packets = _scan_packets(path, header.stream_index)
    # A damaged file's timestamps may include packets that never decode: count, don't seek.
    return bool(packets.times) and packets.damaged is None


def _seek_args(path: Path, header: _Header, start: int) -> dict[str, Any]:
    """Input options that make ffmpeg start at frame `start`: `-ss` halfway between the timestamps
    of frames start-1 and start. ffmpeg seeks to the keyframe before and drops the frames before
    that time (accurate seek), so the first frame out is exactly frame `start`."""
    if start == 0 or not _seekable(header, path):
        return {}
    packets = _scan_packets(path, header.stream_index)
    if start >= len(packets.times):
        # Past the end: seek past the last frame, so nothing comes out.
        seconds = (packets.times[-1] + 1) * packets.timebase
    else:
        seconds = Fraction(packets.times[start - 1] + packets.times[start], 2) * packets.timebase
    assert header.start is not None
    return {"ss": f"{float(seconds) - header.start:.6f}"}


# ----------------------------------------------------------------------------------------- encode
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


class VideoWriter:
    """Streaming H.264 encoder: `with VideoWriter(out, fps) as w: w.write(frame) ...`.

    path:       output file (.mp4, .m4v, .mov or .mkv); appears only when the writer closes cleanly.
                Parent directories are created.
    fps:        frame rate; a Fraction keeps 30000/1001 exact (floats and "30000/1001" also accepted)
    crf:        libx264 constant rate factor (0 lossless .. 51; 18 is visually transparent)
    preset:     libx264 speed/size trade-off ("ultrafast" .. "veryslow")
    audio_from: a media file whose first audio stream is added to the output, if it has one
    audio_start: where in `audio_from` the audio starts, seconds (for a clip starting mid-video)

    Frames are (H, W, 3) uint8 RGB, all the same size (set by the first). Odd widths/heights are
    padded to even by repeating the last column/row (yuv420p needs even sizes): nothing is cropped
    and no black line appears. Colour is converted with BT.709 (limited range) and tagged so.
    Audio is trimmed to the video's length (never the other way round), copied when the codec fits
    the container and re-encoded to AAC otherwise. On an exception inside the `with` block, or
    `abort()`, the encoder is killed and nothing is left at `path`.
    """

    def __init__(self, path: str | Path, fps: Fraction | int | float | str, *, crf: int = 18,
                 preset: str = "medium", audio_from: str | Path | None = None,
                 audio_start: float = 0.0) -> None:
        self.path = Path(path).expanduser().absolute()
        self.format = _FORMATS.get(self.path.suffix.lower())
        if self.format is None:
            raise InputError(f"unsupported output extension {self.path.suffix!r} (use "
                             f"{', '.join(sorted(_FORMATS))})", path=self.path)
        self.fps = _as_fraction(fps)
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be in 0..51, got {crf}")
        self.crf, self.preset = crf, preset
        self.audio_from = None if audio_from is None else _existing_file(audio_from)
        self.audio_start = audio_start
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the frames given
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._video_tmp: Path | None = None  # the encoder's output
        self._muxed_tmp: Path | None = None  # the same plus audio
        self._closed = False

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self._closed:
            raise RuntimeError("VideoWriter is closed")
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
        height, width = frame.shape[:2]
        if self.size is None:
            self.size = (width, height)
            self._start()
        elif self.size != (width, height):
            raise ValueError(f"frame size {width}x{height} differs from the first frame's "
                             f"{self.size[0]}x{self.size[1]}")
        pad_h, pad_w = height % 2, width % 2
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        data = np.ascontiguousarray(frame)
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(memoryview(data).cast("B"))
        except BrokenPipeError:
            message = self._encoder_error()
            returncode = self._proc.returncode
            self.abort()
            _raise_if_disk_full(message, self.path, returncode)
            raise RuntimeError(f"{self.path}: ffmpeg encoder stopped: {message}") from None
        self.frames_written += 1

    def _start(self) -> None:
        assert self.size is not None
        width, height = self.size[0] + self.size[0] % 2, self.size[1] + self.size[1] % 2
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._video_tmp = partial_path(self.path)
        raw = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}",
                           framerate=f"{self.fps.numerator}/{self.fps.denominator}")
        video = raw.filter("scale", out_color_matrix="bt709", out_range="tv")
        out = video.output(
            str(self._video_tmp), format=self.format, vcodec="libx264", preset=self.preset,
            crf=self.crf, pix_fmt="yuv420p", colorspace="bt709", color_primaries="bt709",
            color_trc="bt709", color_range="tv",
            **({"movflags": "+faststart"} if self.format in ("mp4", "mov") else {}),
        )
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _cleanup)
        self._proc = subprocess.Popen(_compile(out, "-y"), stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=self._stderr, bufsize=0)
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._proc.stdin, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)

    def _encoder_error(self) -> str:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=30)
        if self._stderr is None:
            return "no message"
        self._stderr.seek(0)
        return _ffmpeg_error(self._stderr.read().decode(errors="replace"))

    def close(self) -> Path:
        """Finish encoding, add audio, and move the file into place. Returns the output path."""
        if self._closed:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise RuntimeError(f"{self.path}: no frames were written; no video made")
        assert self._proc is not None and self._proc.stdin is not None and self._video_tmp
        try:
            self._proc.stdin.close()
            returncode = self._proc.wait()
            if returncode != 0:
                message = self._encoder_error()
                _raise_if_disk_full(message, self.path, returncode)
                raise RuntimeError(f"{self.path}: ffmpeg encoder failed: {message}")
            final = self._video_tmp
            if self.audio_from is not None and has_audio(self.audio_from):
                final = self._mux_audio(self._video_tmp)
            commit(final, self.path)
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        self._closed = True
        return self.path

    def _mux_audio(self, video_tmp: Path) -> Path:
        """Second pass (stream copy, cheap): the encoded video plus the audio, cut to its length."""
        assert self.audio_from is not None
        audio_codec = _parsed(self.audio_from).audio_codec
        seconds = self.frames_written / self.fps
        copy = self.format == "matroska" or audio_codec in _MP4_AUDIO_COPY
        muxed = self._muxed_tmp = partial_path(self.path)
        video = ffmpeg.input(str(video_tmp))
        audio_in: dict[str, Any] = {"t": f"{float(seconds):.6f}"}
        if self.audio_start:
            audio_in["ss"] = f"{self.audio_start:.6f}"
        audio = ffmpeg.input(_input_url(self.audio_from), **audio_in)
        out = ffmpeg.output(
            video["v:0"], audio["a:0"], str(muxed), format=self.format, vcodec="copy",
            acodec="copy" if copy else "aac", **({} if copy else {"b:a": "192k"}),
            **({"movflags": "+faststart"} if self.format in ("mp4", "mov") else {}),
        )
        proc = _run_ffmpeg(_compile(out, "-y"), self.audio_from, "adding its audio")
        if proc.returncode != 0:
            _raise_if_disk_full(proc.stderr, self.path, proc.returncode)
            raise InputError(f"cannot add its audio to {self.path.name} ({_ffmpeg_error(proc.stderr)})",
                             path=self.audio_from)
        return muxed

    def abort(self) -> None:
        """Stop the encoder and delete everything written; nothing appears at `path`."""
        self._closed = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None:
            if self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
            self._proc.wait()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        for tmp in (self._video_tmp, self._muxed_tmp):
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def _raise_if_disk_full(ffmpeg_stderr: str, output: Path, returncode: int | None = None) -> None:
    """The one-line error of a full disk (or quota, or file-size limit) when ffmpeg says so, or was
    killed by SIGXFSZ (over RLIMIT_FSIZE: subprocess restores that signal's default in children)."""
    if returncode == -signal.SIGXFSZ:
        raise InputError("no space left to write it (file size limit exceeded: ffmpeg was stopped by "
                         "SIGXFSZ); free some space or write elsewhere", path=output)
    if disk_full_message(ffmpeg_stderr):
        raise InputError(f"no space left to write it ({_ffmpeg_error(ffmpeg_stderr)}); free some space "
                         "or write elsewhere", path=output)


def _as_fraction(fps: Fraction | int | float | str) -> Fraction:
    if isinstance(fps, Fraction):
        return fps
    if isinstance(fps, float):
        return Fraction(fps).limit_denominator(1001)
    return Fraction(fps)
