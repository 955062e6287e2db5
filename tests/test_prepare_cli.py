"""`facereenact prepare` as a user runs it: one-line errors for bad input, and a run killed with SIGKILL
that resumes to the same arrays as an uninterrupted one, after which a third run does nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from storage.cache import Workspace
from storage.images import save_image
from storage.video import ffmpeg_exe
from tests.clips import write_test_clip
from tests.helpers import REPO_ROOT, assert_user_error
from tests.support.cache_files import chunk_mtimes

FRAMES = 30


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-clips") / "talking.mp4"
    write_test_clip(path, "all", frames=FRAMES)
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, prefect_harness, clip) -> Path:
    """The clip prepared at 64 px in this process (one torch thread like the CLI's), once: the
    reference of the killed run and the first run of the second-run test (which copies it)."""
    from flows.prepare import prepare_video

    cache = tmp_path_factory.mktemp("cli-prepared") / "cache"
    first = prepare_video(str(clip), str(cache), resolution=64)  # the CLI's defaults match it
    assert first["landmarks"]["computed"] == FRAMES and first["crops"]["computed"] == FRAMES
    return cache


def done_frames(cache: Path) -> int:
    """Done frames of every table, counted without opening anything: a status chunk is written (as
    done) only after the frame's data."""
    if not (cache / "media").exists():
        return 0
    return sum(1 for p in (cache / "media").glob("*/*/status/c/*"))


def assert_nothing_done(cache: Path) -> None:
    if cache.exists():
        assert all(t.counts()["done"] == 0 for t in Workspace(cache).tables())


def bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    (tmp / "corrupt.mp4").write_bytes(os.urandom(4096))
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "notes.png").write_text("not an image at all")
    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.5",
                    "-c:a", "aac", str(tmp / "voice.m4a")], check=True)
    return {
        "corrupt": (tmp / "corrupt.mp4", "not a readable video"),
        "empty": (tmp / "empty.mp4", "empty file (0 bytes)"),
        "audio only": (tmp / "voice.m4a", "has no video stream (audio only)"),
        "not an image": (tmp / "notes.png", "not a readable image"),
        "missing": (tmp / "missing.mp4", "no such file"),
    }


def test_bad_inputs_fail_at_once_with_one_line(tmp_path, run_cli, cli, clip):
    cache = tmp_path / "cache"
    bad = bad_inputs(tmp_path)
    proc = run_cli("prepare", bad["corrupt"][0], "--cache", cache)
    assert_user_error(proc, "corrupt.mp4", "not a readable video", code=2)
    # Every file is checked before any work starts, and every problem named in the one line (the
    # rest in this process: the same entry point, without a start-up each).
    proc = cli("prepare", clip, *(path for path, _ in bad.values()), "--cache", cache)
    assert_user_error(proc, f"{len(bad)} of {len(bad) + 1} inputs are unusable", code=2)
    line = proc.stderr.strip().splitlines()[-1]
    for name, (path, problem) in bad.items():
        assert f"{path}: {problem}" in line, name
    assert "talking.mp4" not in line
    assert not cache.exists()  # not even a cache made
    proc = cli("prepare", clip, "--cache", cache, "--smoothing", "savgol", "--window", "4")
    assert_user_error(proc, "smoothing", "odd window", code=2)
    proc = cli("prepare", clip, "--cache", cache, "--landmarks", "fan")
    assert_user_error(proc, "2DFAN4", "weights fetch fan-2d", code=4)  # no weights here, none fetched
    assert_nothing_done(cache)


def test_no_face_through_the_cli(tmp_path, cli, prefect_harness):
    save_image(tmp_path / "wall.jpg", np.full((240, 320, 3), 128, np.uint8))
    cache = tmp_path / "cache"
    proc = cli("prepare", tmp_path / "wall.jpg", "--cache", cache)
    assert_user_error(proc, "wall.jpg", "no face found in the image", code=2)
    assert_nothing_done(cache)


def test_killed_run_resumes_to_the_same_arrays_and_a_third_run_does_no_work(
        tmp_path, run_cli, prefect_api_env, clip, prepared):
    """SIGKILL mid-prepare, then the same command: only what was left is computed and the arrays are
    the uninterrupted run's; the same command once more does no work (no chunk written, one line)."""
    args = ["prepare", str(clip), "--resolution", "64"]
    reference = prepared  # uninterrupted, in this process

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args, "--cache", str(killed)], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while done_frames(killed) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    at_kill = done_frames(killed)
    assert proc.returncode == -signal.SIGKILL
    assert 5 <= at_kill < FRAMES, f"the kill came too late to test anything ({at_kill} frames done)"

    resumed = run_cli(*args, "--cache", killed, env=prefect_api_env, check=True)
    assert "frame/s" in resumed.stderr  # the progress bar
    tracked = int(resumed.stdout.split(" of ")[0].rsplit(" ", 1)[-1])
    assert 0 < tracked <= FRAMES - at_kill + 1  # only what was left (+ the frame in flight)

    ref_ws, ws = Workspace(reference), Workspace(killed)
    ref_tables = {t.location: t for t in ref_ws.tables()}
    tables = {t.location: t for t in ws.tables()}
    assert sorted(tables) == sorted(ref_tables) and len(tables) == 2  # same keys: same provenance
    for location, table in tables.items():
        assert table.is_complete()
        for name in table.fields:
            np.testing.assert_array_equal(table.read(name), ref_tables[location].read(name),
                                          err_msg=f"{location}/{name}")

    # The cache is complete now: the same command again does nothing, says so in one line, and with
    # --quiet prints nothing else (Prefect's own lines are off).
    chunks = chunk_mtimes(killed)
    assert len(chunks) > 2 * FRAMES
    again = run_cli(*args, "--cache", killed, "--quiet", env=prefect_api_env, check=True)
    assert again.stdout.strip().splitlines() == [f"prepared 1 video ({FRAMES} frames): 0 of {FRAMES} frames "
                                                 f"tracked and 0 cropped in this run; cache {killed}"]
    assert again.stderr.strip() == ""
    assert chunk_mtimes(killed) == chunks
