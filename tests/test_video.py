"""storage/video.py on small videos made here, with the encoder and with the ffmpeg binary."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from storage import video
from storage.errors import InputError
from storage.video import VideoWriter, probe, read_frames

W, H = 64, 48


def ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg binary (to make test media the encoder under test did not make)."""
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-y", *args], check=True, capture_output=True)


def numbered_frames(n: int, width: int = W, height: int = H) -> list[np.ndarray]:
    """Frames that say which they are: frame i is flat grey 16 + 16*i, with a fixed coloured corner
    (top-left red, bottom-right blue) that reveals rotations and flips. Edges fall on even pixels,
    so yuv420p's 2x2 chroma does not smear them."""
    frames = []
    ch, cw = (height // 3) & ~1, (width // 3) & ~1
    for i in range(n):
        frame = np.full((height, width, 3), 16 + 16 * i, np.uint8)
        frame[:ch, :cw] = (220, 30, 30)
        frame[-ch:, -cw:] = (30, 30, 220)
        frames.append(frame)
    return frames


def frame_number(frame: np.ndarray) -> int:
    """Which numbered_frames() frame this is, from the grey of its middle."""
    h, w = frame.shape[:2]
    centre = frame[h // 2 - 2: h // 2 + 2, w // 2 - 2: w // 2 + 2].mean()
    return round((centre - 16) / 16)


def ffmpeg_children() -> list[int]:
    """PIDs of ffmpeg processes whose parent is this test process (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == os.getpid() and "ffmpeg" in comm:
            pids.append(int(entry))
    return pids


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    m = {name: d / name for name in [
        "numbered.mp4", "ntsc_audio.mp4", "rotated.mp4", "gop.mp4", "gop.mkv", "gop.ts", "gop.avi",
        "vfr.mp4", "edit_list.mp4", "audio.m4a", "tone.wav", "still.png", "zero.avi", "cut_header.mp4",
        "cut_tail.mp4",
    ]}
    with VideoWriter(m["numbered.mp4"], 25, crf=0) as writer:
        for frame in numbered_frames(12):
            writer.write(frame)
    # 12 frames at 30000/1001 with a sine tone (ffmpeg's own encoder, not ours).
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=30000/1001", "-f", "lavfi",
           "-i", "sine=frequency=440:sample_rate=44100", "-frames:v", "12", "-t", "0.4",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", m["ntsc_audio.mp4"])
    # Rotated by the display matrix only: the stored frames are unchanged.
    ffmpeg("-display_rotation", "90", "-i", m["numbered.mp4"], "-c", "copy", m["rotated.mp4"])
    # Short GOPs and B-frames, so seeking must land between keyframes and reorder.
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=25", "-frames:v", "24", "-c:v", "libx264",
           "-g", "6", "-bf", "2", "-pix_fmt", "yuv420p", m["gop.mp4"])
    # Cut at 0.3 s without re-encoding: MP4 keeps the packets from the keyframe before (frame 6) and
    # an edit list that hides frames 6 and 7. They are demuxed but never shown.
    ffmpeg("-ss", "0.3", "-i", m["gop.mp4"], "-c", "copy", m["edit_list.mp4"])
    ffmpeg("-i", m["gop.mp4"], "-c", "copy", m["gop.mkv"])
    ffmpeg("-i", m["gop.mp4"], "-c", "copy", m["gop.ts"])
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=25", "-frames:v", "24", "-c:v", "mpeg4",
           "-g", "6", "-bf", "2", m["gop.avi"])
    # Variable frame rate: frames 0-5 at 25 fps, then 10 fps.
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=25", "-frames:v", "16",
           "-vf", "settb=1/1000,setpts='if(lt(N,6),N*0.04,0.24+(N-6)*0.1)/TB'",
           "-fps_mode", "passthrough", "-enc_time_base:v", "1/1000",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", m["vfr.mp4"])
    ffmpeg("-f", "lavfi", "-i", "sine=sample_rate=44100", "-t", "0.5", m["audio.m4a"])
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000", "-t", "3", m["tone.wav"])
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}", "-frames:v", "1", m["still.png"])
    # A video stream with no frames (AVI keeps the stream header; MP4 drops empty tracks).
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}", "-frames:v", "0", "-c:v", "mpeg4", m["zero.avi"])
    # Cut mid-file: with the index at the end the header is lost; with it at the front (faststart)
    # the header survives and the frames before the cut decode.
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={W}x{H}:rate=25", "-frames:v", "48", "-c:v", "libx264",
           "-g", "12", "-pix_fmt", "yuv420p", str(d / "long.mp4"))
    data = (d / "long.mp4").read_bytes()
    assert data.index(b"moov") > data.index(b"mdat")  # index at the end
    m["cut_header.mp4"].write_bytes(data[: len(data) * 9 // 10])
    ffmpeg("-i", d / "long.mp4", "-c", "copy", "-movflags", "+faststart", d / "front.mp4")
    front = (d / "front.mp4").read_bytes()
    m["cut_tail.mp4"].write_bytes(front[: len(front) * 6 // 10])
    return m


# ------------------------------------------------------------------------------------------- probe
def test_probe_reports_size_rate_count_and_audio(media: dict[str, Path]) -> None:
    info = probe(media["ntsc_audio.mp4"])
    assert (info.width, info.height) == (W, H)
    assert info.fps == Fraction(30000, 1001)  # exact, not 29.97
    assert info.frame_count == 12 and info.frame_count_exact and info.frame_count_source == "decoded"
    assert info.duration == pytest.approx(12 * 1001 / 30000)
    assert info.has_audio and info.audio_codec == "aac"
    assert info.codec == "h264" and info.rotation == 0
    assert not info.variable_frame_rate and not info.truncated and info.warnings == ()

    plain = probe(media["numbered.mp4"])
    assert plain.fps == 25 and plain.frame_count == 12 and not plain.has_audio
    assert plain.to_dict()["fps"] == "25/1"


@pytest.mark.parametrize("name", ["gop.mp4", "gop.mkv", "gop.ts", "gop.avi"])
def test_probe_count_matches_decode_in_every_container(media: dict[str, Path], name: str) -> None:
    for count in ("auto", "packets", "decode"):
        info = probe(media[name], count=count)
        assert info.frame_count == 24, (count, info)
        assert info.fps == 25
    assert sum(1 for _ in read_frames(media[name])) == 24
    # The header-only estimate is labelled as such.
    estimated = probe(media["gop.mp4"], count="estimate")
    assert estimated.frame_count_source == "estimated" and not estimated.frame_count_exact
    assert abs(estimated.frame_count - 24) <= 1


def test_edit_list_hidden_frames_are_not_counted(media: dict[str, Path]) -> None:
    path = media["edit_list.mp4"]
    for count in ("packets", "decode"):
        assert probe(path, count=count).frame_count == 16  # frames 8..23 of gop.mp4
    full = list(read_frames(path))
    original = list(read_frames(media["gop.mp4"]))
    assert len(full) == 16
    for got, want in zip(full, original[8:], strict=True):
        np.testing.assert_array_equal(got, want)
    for start in (1, 2, 5, 15):
        np.testing.assert_array_equal(next(read_frames(path, start)), full[start])


def test_probe_variable_frame_rate(media: dict[str, Path]) -> None:
    info = probe(media["vfr.mp4"])
    assert info.variable_frame_rate
    assert info.frame_count == 16 == sum(1 for _ in read_frames(media["vfr.mp4"]))
    # Average rate: 15 steps over 0.24 + 9 * 0.1 seconds.
    assert float(info.fps) == pytest.approx(15 / 1.14, rel=1e-3)
    assert any("variable frame rate" in w for w in info.warnings)


def test_rotation_from_display_matrix(media: dict[str, Path]) -> None:
    info = probe(media["rotated.mp4"])
    assert info.rotation == 90
    assert (info.coded_width, info.coded_height) == (W, H)
    assert (info.width, info.height) == (H, W)  # display size: what decoding yields
    rotated = list(read_frames(media["rotated.mp4"]))
    upright = list(read_frames(media["numbered.mp4"]))
    assert rotated[0].shape == (W, H, 3)
    # 90 degrees counter-clockwise, exactly (same bitstream; the transpose is lossless).
    for r, u in zip(rotated, upright, strict=True):
        np.testing.assert_array_equal(r, np.rot90(u, k=1))
    assert rotated[0][-5, 5, 0] > 150  # the red corner is now bottom-left


# ------------------------------------------------------------------------------------------ decode
def test_decode_content_in_order(media: dict[str, Path]) -> None:
    frames = list(read_frames(media["numbered.mp4"]))
    assert len(frames) == 12
    expected = numbered_frames(12)
    for i, (got, want) in enumerate(zip(frames, expected, strict=True)):
        assert got.shape == (H, W, 3) and got.dtype == np.uint8 and got.flags.writeable
        assert frame_number(got) == i
        assert np.abs(got.astype(int) - want).mean() < 2.5  # crf 0: only yuv420p rounding


@pytest.mark.parametrize("name", ["gop.mp4", "gop.mkv"])
def test_seek_is_frame_accurate_everywhere(media: dict[str, Path], name: str) -> None:
    """MP4/Matroska seek by timestamp; every start frame gives exactly the frames of a full decode."""
    full = np.stack(list(read_frames(media[name])))
    for start in range(1, len(full)):
        part = np.stack(list(read_frames(media[name], start, start + 3)))
        np.testing.assert_array_equal(part, full[start: start + 3], err_msg=f"start={start}")


@pytest.mark.parametrize("name", ["gop.ts", "gop.avi", "vfr.mp4"])
def test_seek_exact_in_other_containers_and_vfr(media: dict[str, Path], name: str) -> None:
    full = np.stack(list(read_frames(media[name])))
    for start in (1, 5, 6, 7, len(full) - 1):
        part = np.stack(list(read_frames(media[name], start)))
        np.testing.assert_array_equal(part, full[start:], err_msg=f"start={start}")


def test_seek_by_content_and_slicing(media: dict[str, Path]) -> None:
    path = media["numbered.mp4"]
    assert [frame_number(f) for f in read_frames(path, 5)] == list(range(5, 12))
    assert [frame_number(f) for f in read_frames(path, 3, 7)] == [3, 4, 5, 6]
    assert [frame_number(f) for f in read_frames(path, 10, 100)] == [10, 11]
    assert list(read_frames(path, 12)) == []
    assert list(read_frames(path, 4, 4)) == []
    with pytest.raises(ValueError):
        read_frames(path, 5, 2)


def test_early_close_and_errors_leave_no_ffmpeg_process(media: dict[str, Path]) -> None:
    assert ffmpeg_children() == []
    frames = read_frames(media["gop.mp4"])
    next(frames)
    assert len(ffmpeg_children()) == 1  # the decoder is running (and blocked on the pipe)
    frames.close()
    assert ffmpeg_children() == []

    with pytest.raises(KeyError), read_frames(media["gop.mp4"]) as stream:
        for _ in stream:
            raise KeyError("consumer failed")
    assert ffmpeg_children() == []

    # Dropped without close(): collected, and the process goes with it.
    stream = read_frames(media["gop.mp4"], 3)
    next(stream)
    del stream
    assert ffmpeg_children() == []

    # Exhausted: ffmpeg exited and was reaped.
    assert len(list(read_frames(media["gop.mp4"]))) == 24
    assert ffmpeg_children() == []


# ------------------------------------------------------------------------------------------ encode
def test_writer_roundtrip_fraction_fps(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    frames = numbered_frames(12)
    with VideoWriter(out, Fraction(30000, 1001), crf=0) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == 12
    info = probe(out)
    assert info.fps == Fraction(30000, 1001) and info.frame_count == 12 and not info.has_audio
    decoded = list(read_frames(out))
    assert [frame_number(f) for f in decoded] == list(range(12))
    for got, want in zip(decoded, frames, strict=True):
        error = np.abs(got.astype(int) - want)
        assert error.mean() < 2 and error.max() <= 16  # yuv420p rounding; chroma filters at edges
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary left


def test_writer_odd_size_pads_by_repeating_the_edge(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (75 // 8 + 1, 101 // 8 + 1, 3), dtype=np.uint8)
    frame = np.kron(base, np.ones((8, 8, 1), np.uint8))[:75, :101]  # 8x8 blocks survive yuv420p
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 25, crf=0) as writer:
        for _ in range(3):
            writer.write(frame)
    info = probe(out)
    assert (info.width, info.height) == (102, 76)
    got = next(iter(read_frames(out))).astype(int)
    assert np.abs(got[:75, :101] - frame).mean() < 4  # nothing cropped (yuv420p costs ~3 levels)
    assert np.abs(got[:, 101] - got[:, 100]).mean() < 3  # the padding repeats the last column
    assert np.abs(got[75, :] - got[74, :]).mean() < 3  # ... and the last row (no black line)


def test_writer_copies_audio_trimmed_to_the_video(media: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "with_audio.mp4"
    with VideoWriter(out, 25, audio_from=media["ntsc_audio.mp4"]) as writer:
        for frame in numbered_frames(5):  # 0.2 s of video; the audio is 0.4 s
            writer.write(frame)
    info = probe(out)
    assert info.has_audio and info.audio_codec == "aac" and info.frame_count == 5
    assert audio_seconds(out) == pytest.approx(0.2, abs=0.05)

    # PCM in WAV does not go into MP4 as is: re-encoded to AAC. Longer video than audio: the video
    # keeps all its frames.
    out2 = tmp_path / "from_wav.mp4"
    with VideoWriter(out2, 2, audio_from=media["tone.wav"], audio_start=1.0) as writer:
        for frame in numbered_frames(10):  # 5 s of video, 2 s of audio after audio_start
            writer.write(frame)
    info2 = probe(out2)
    assert info2.audio_codec == "aac" and info2.frame_count == 10
    assert audio_seconds(out2) == pytest.approx(2.0, abs=0.1)

    # A source without audio: no audio, no error.
    out3 = tmp_path / "silent.mp4"
    with VideoWriter(out3, 25, audio_from=media["numbered.mp4"]) as writer:
        writer.write(numbered_frames(1)[0])
    assert not probe(out3).has_audio
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from_wav.mp4", "silent.mp4", "with_audio.mp4"]


def audio_seconds(path: Path) -> float:
    pcm = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-f",
                          "s16le", "-ac", "1", "-ar", "8000", "-"], capture_output=True, check=True).stdout
    return len(pcm) / 2 / 8000


def test_writer_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "fail.mp4"
    out_old = tmp_path / "kept.mp4"
    out_old.write_bytes(b"old content")
    for target in (out, out_old):
        with pytest.raises(ZeroDivisionError), VideoWriter(target, 25) as writer:
            writer.write(numbered_frames(1)[0])
            writer.write(numbered_frames(2)[1])
            _ = 1 / 0
    assert not out.exists()
    assert out_old.read_bytes() == b"old content"  # an existing file is replaced only on success
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.mp4"]
    assert ffmpeg_children() == []

    # The encoder dies under us: the next write or the close fails, and nothing is left.
    writer = VideoWriter(tmp_path / "dead.mp4", 25)
    writer.write(numbered_frames(1)[0])
    assert writer._proc is not None
    writer._proc.kill()
    with pytest.raises(RuntimeError, match="dead.mp4"):
        big = np.zeros((48, 64, 3), np.uint8)
        for _ in range(2000):  # far more than the pipe holds: a write hits the dead end
            writer.write(big)
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.mp4"]

    with pytest.raises(ValueError, match="differs"), VideoWriter(tmp_path / "mixed.mp4", 25) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
        writer.write(np.zeros((50, 64, 3), np.uint8))
    with pytest.raises(RuntimeError, match="no frames"), VideoWriter(tmp_path / "none.mp4", 25):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.mp4"]


def test_writer_killed_process_never_leaves_a_partial_target(tmp_path: Path) -> None:
    """SIGKILL of the writing process mid-video: the target name never holds a partial file."""
    out = tmp_path / "killed.mp4"
    script = (
        "import sys, time, numpy as np\n"
        "from storage.video import VideoWriter\n"
        f"w = VideoWriter({str(out)!r}, 25)\n"
        "w.__enter__()\n"
        "for i in range(5):\n"
        "    w.write(np.full((48, 64, 3), i * 40, np.uint8))\n"
        "print('written', flush=True)\n"
        "time.sleep(60)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=repo, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert all(name.startswith(".killed.partial-") for name in leftovers), leftovers


# ------------------------------------------------------------------------------------- bad inputs
def _one_line_error(call, fragment: str, path: Path) -> None:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message, message
    assert fragment.lower() in message.lower(), message


@pytest.fixture(scope="module")
def bad_files(media: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {
        "missing": d / "missing.mp4",
        "empty": d / "empty.mp4",
        "random": d / "random.mp4",
        "text": d / "notes.txt",
        "text_as_mp4": d / "notes.mp4",
        "directory": d,
    }
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, np.uint8).tobytes())
    files["text"].write_text("this is not a video\n" * 20)
    files["text_as_mp4"].write_text("this is not a video either\n")
    return files


BAD_CASES = [
    ("missing", "no such file"),
    ("empty", "empty file"),
    ("random", "not a readable video"),
    ("text", "not a readable video"),
    ("text_as_mp4", "not a readable video"),
    ("directory", "is a directory"),
]


@pytest.mark.parametrize(("name", "fragment"), BAD_CASES)
def test_bad_files_give_one_line_errors(bad_files: dict[str, Path], name: str, fragment: str) -> None:
    path = bad_files[name]
    _one_line_error(lambda: probe(path), fragment, path)
    _one_line_error(lambda: read_frames(path), fragment, path)


@pytest.mark.parametrize(("name", "fragment"), [
    ("audio.m4a", "no video stream (audio only)"),
    ("still.png", "still image (png)"),
    ("zero.avi", "no frames"),
    ("cut_header.mp4", "not a readable video"),
])
def test_unusable_media_give_one_line_errors(media: dict[str, Path], name: str, fragment: str) -> None:
    path = media[name]
    _one_line_error(lambda: probe(path), fragment, path)


def test_audio_only_refused_by_read_frames_too(media: dict[str, Path]) -> None:
    _one_line_error(lambda: read_frames(media["audio.m4a"]), "no video stream", media["audio.m4a"])
    _one_line_error(lambda: read_frames(media["still.png"]), "still image", media["still.png"])


def test_truncated_video_decodes_what_is_there_and_says_so(media: dict[str, Path]) -> None:
    path = media["cut_tail.mp4"]
    info = probe(path)
    assert info.truncated and info.frame_count_source == "decoded"
    assert 0 < info.frame_count < 48
    assert any("cut short" in w for w in info.warnings)
    frames = list(read_frames(path))
    assert len(frames) == info.frame_count
    # What decodes is the start of the video, in order (testsrc's counter moves every frame).
    full = list(read_frames(media["cut_tail.mp4"].with_name("long.mp4"), 0, info.frame_count))
    for got, want in zip(frames[:10], full[:10], strict=True):
        np.testing.assert_array_equal(got, want)


def test_huge_frames_refused_before_decoding(media: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = media["numbered.mp4"]
    _one_line_error(lambda: probe(path, max_pixels=W * H - 1), "above the limit", path)
    _one_line_error(lambda: read_frames(path, max_pixels=1000), "64x48", path)
    monkeypatch.setenv("FACEREENACT_MAX_PIXELS", str(W * H - 1))
    _one_line_error(lambda: probe(path), "FACEREENACT_MAX_PIXELS", path)
    monkeypatch.setenv("FACEREENACT_MAX_PIXELS", str(W * H))
    assert probe(path).frame_count == 12


def test_writer_refuses_bad_audio_source_and_extension(bad_files: dict[str, Path], tmp_path: Path) -> None:
    _one_line_error(lambda: VideoWriter(tmp_path / "o.mp4", 25, audio_from=bad_files["missing"]),
                    "no such file", bad_files["missing"])
    _one_line_error(lambda: VideoWriter(tmp_path / "o.avi", 25), "unsupported output extension",
                    tmp_path / "o.avi")
