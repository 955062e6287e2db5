"""`facereenact invert` as a user runs it: one-line errors before any work, a multi-video job killed
with SIGKILL at a random point and resumed to the latents of an uninterrupted run, and failed frames
giving exit code 6 after the summary."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storage.cache import Workspace
from storage.latents import LatentCache, fixed_batches
from tests import invert_data
from tests.helpers import REPO_ROOT, assert_user_error, kill_cli_when
from tests.invert_data import BATCH, CLI_SETTINGS, FRAMES, latents_by_video
from tests.support.cache_files import chunk_mtimes

TOTAL = sum(n for _, n in FRAMES.values())
STARTED = re.compile(r"inverting frames (\d+)-(\d+) of (\S+) \(")
FINISHED = re.compile(r"frames (\d+)-(\d+) of (\S+): \d+ done")


@pytest.fixture(scope="module")
def data(invert_dataset) -> invert_data.Dataset:
    return invert_dataset


def test_errors_before_any_work(data, tmp_path, cli):
    cache = tmp_path / "cache"
    # Calibrated LPIPS (the default) without its backbone file: the fetch command and the opt-in.
    proc = cli("invert", data.videos, "--cache", cache, "--weights", data.weights, "--device", "cpu")
    assert_user_error(proc, "vgg16-397923af.pth", "facereenact weights fetch lpips-vgg16",
                      "--perceptual uncalibrated", code=4)
    # The generator's resolution is the crops': another one is refused.
    proc = cli("invert", data.videos, "--cache", cache, "--weights", data.weights, "--resolution", "64",
                   *CLI_SETTINGS)
    assert_user_error(proc, "--resolution 64 does not match the generator's 32 px", code=2)
    assert not cache.exists()  # nothing written, not even the cache


def done_frames(cache: Path) -> int:
    """Done (or failed) latent frames, counted from the status chunks on disk without opening the
    cache: a status chunk is written only after the frame's data (pending is the fill value)."""
    if not (cache / "media").exists():
        return 0
    return sum(1 for _ in (cache / "media").glob("*/latents-*/status/c/*"))


def batch_log(text: str) -> tuple[set, set]:
    """(started, finished) batches, as (clip name, first frame, last frame), from a run's log lines."""
    started = {(m[3], int(m[1]), int(m[2])) for m in STARTED.finditer(text)}
    finished = {(m[3], int(m[1]), int(m[2])) for m in FINISHED.finditer(text)}
    return started, finished


def frame_chunks(cache: Path, frames: set[tuple[str, int]]) -> dict[str, int]:
    """Modification times of every chunk of the latent tables that belongs to one of `frames`
    ((clip name, frame index)); chunk keys are <array>/c/<frame>[/0/0]."""
    ws = Workspace(cache)
    names = {key: Path(ws.media(key).attrs["source"]).name for key in ws.media_keys()}
    out = {}
    for path, mtime in chunk_mtimes(cache).items():
        if "/latents-" not in path:
            continue
        media_key = path.split("/media/")[1].split("/")[0]
        frame = int(path.split("/c/")[1].split("/")[0])
        if (names[media_key], frame) in frames:
            out[path] = mtime
    assert not frames or out, "no chunk found for the done frames"
    return out


def status_by_video(cache: Path) -> dict[str, np.ndarray]:
    ws = Workspace(cache)
    return {Path(ws.media(c.location.split("/")[1]).attrs["source"]).name: c.status()
            for c in LatentCache.all(ws)}


def test_killed_job_resumes_to_the_uninterrupted_latents(data, tmp_path, run_cli, prefect_api_env):
    cache = data.fresh_cache(tmp_path / "cache")  # prepared: the job's time is inversion
    args = ["invert", str(data.videos), "--cache", str(cache), "--weights", str(data.weights), *CLI_SETTINGS,
            "--verbose"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env, "PREFECT_LOGGING_LEVEL": "INFO"}
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    # A random point: after a random number of frames are done, plus a random part of a batch's time.
    kill_after, delay = rng.randint(1, TOTAL - 2 * BATCH), rng.uniform(0.0, 0.8)
    log = tmp_path / "run1.log"
    kill_cli_when(args, env, lambda: done_frames(cache) >= kill_after, delay, log=log)
    status_at_kill = status_by_video(cache)
    done_at_kill = {(name, int(i)) for name, s in status_at_kill.items() for i in np.flatnonzero(s == 1)}
    assert 0 < len(done_at_kill) < TOTAL, f"kill (seed {seed}) came too late: {len(done_at_kill)} done"
    started, finished = batch_log(log.read_text())
    in_flight = {(name, i) for name, first, last in started - finished for i in range(first, last + 1)}
    done_chunks = frame_chunks(cache, done_at_kill)

    resumed = run_cli(*args, env={**prefect_api_env, "PREFECT_LOGGING_LEVEL": "INFO"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # What the second run computed, measured from its own log: exactly the fixed batches holding a
    # frame not done at the kill (a frame of a video whose table did not exist yet counts as not done).
    ran, _ = batch_log(resumed.stderr)
    not_done = {(name, i) for name, (_, n) in FRAMES.items() for i in range(n)} - done_at_kill
    expected = {(name, first, last - 1) for name, (_, n) in FRAMES.items()
                for first, last in fixed_batches(n, BATCH, [i for nm, i in not_done if nm == name])}
    computed = {(name, i) for name, first, last in ran for i in range(first, last + 1)}
    recomputed = computed & (done_at_kill | in_flight)  # frames the first run had already worked on
    inverted = int(re.search(r"inverted (\d+) frames? in this run", resumed.stdout)[1])
    print(f"\nkill seed {seed}: killed after {len(done_at_kill)} of {TOTAL} frames done; in flight at the "
          f"kill: {len(in_flight)} frames; second run computed {len(computed)} frames in {len(ran)} batches, "
          f"stored {inverted}; recomputed (already worked on by the first run) {len(recomputed)}")
    assert ran == expected, seed
    assert recomputed <= in_flight, f"recomputed {sorted(recomputed - in_flight)} that were not in flight"
    assert inverted == len(not_done)
    # Nothing done at the kill was written again (data, loss, seed, status or error) ...
    assert frame_chunks(cache, done_at_kill) == done_chunks
    # ... and the latents are those of the uninterrupted run, bit for bit.
    final, reference = latents_by_video(cache), data.reference_latents()
    assert sorted(final) == sorted(reference)
    for name in FRAMES:
        np.testing.assert_array_equal(final[name], reference[name], err_msg=name)
    (job,) = Workspace(cache).jobs().values()  # the same job id for the same command: one record
    assert job["state"] == "finished" and job["summary"]["done"] == TOTAL


def test_failed_frames_exit_6_after_the_summary(data, tmp_path, prefect_api_env, cli):
    """Frames fail through the real --max-loss quality gate (their final reconstruction loss is above it)."""
    losses = data.reference_reconstruction("b.mp4")
    threshold = float(np.median(losses))
    failed = np.flatnonzero(losses > threshold).tolist()
    cache = data.fresh_cache(tmp_path / "cache")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env}
    command = [sys.executable, "-m", "flows.cli", "invert", str(data.videos / "b.mp4"), "--cache", str(cache),
               "--weights", str(data.weights), *CLI_SETTINGS, "--quiet", "--max-loss", str(threshold)]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 6, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    lines = proc.stdout.strip().splitlines()
    (error,) = [i for i, line in enumerate(lines) if line.startswith("facereenact: error:")]
    assert f"{len(failed)} of {FRAMES['b.mp4'][1]} frames failed" in lines[error]
    assert "--retry-failed" in lines[error]
    summary = next(i for i, line in enumerate(lines) if line.startswith("inverted "))
    assert summary < error  # the summary first, then the one-line error
    assert lines[summary].startswith(f"inverted {FRAMES['b.mp4'][1] - len(failed)} frames in this run, "
                                     f"{len(failed)} failed")
    listed = [line for line in lines if line.strip().startswith("failed:")]
    assert [int(re.search(r"frame (\d+):", line)[1]) for line in listed] == failed
    assert all("above --max-loss" in line for line in listed)
    # `facereenact status` shows the job, failed, with its failed frames, from the cache alone.
    status = cli("status", cache, "--failed", check=True)
    (row,) = [line for line in status.stdout.splitlines() if line.startswith("invert-")]
    assert row.split()[1:3] == ["invert", "failed"]
    assert status.stdout.count("above --max-loss") == len(failed)


@pytest.mark.timeout(1200)  # seconds on an idle machine; 10 min at load average 18
def test_two_jobs_on_the_same_inputs_split_the_work(data, tmp_path, prefect_api_env):
    """Two `facereenact invert` commands on the same dataset and cache at once claim fixed batches with
    expiring leases: each inverts a part, together every frame once (a racing claim may at worst
    duplicate a batch), and the latents are bitwise those of one job alone."""
    from flows.invert import invert_dataset
    from tests.invert_data import SETTINGS

    steps = 30  # long enough that both commands are up before either could finish alone
    settings = {**SETTINGS, "steps": steps}
    # Two of the three clips (4 fixed batches: 8 + 7 frames at 4 a batch): enough to split, a third
    # less work than all three.
    clips = tmp_path / "two-clips"
    clips.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (clips / name).symlink_to(data.videos / name)
    single = data.fresh_cache(tmp_path / "single")
    invert_dataset(str(clips), str(single), str(data.weights), **settings)

    cache = data.fresh_cache(tmp_path / "cache")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env}
    cli_settings = [*CLI_SETTINGS]
    cli_settings[cli_settings.index("--steps") + 1] = str(steps)
    command = [sys.executable, "-m", "flows.cli", "invert", str(clips), "--cache", str(cache),
               "--weights", str(data.weights), *cli_settings, "--quiet"]
    procs = [subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    inverted = [int(re.search(r"^inverted (\d+) frames? in this run", o, re.M)[1]) for o in outputs]
    total = FRAMES["a.mp4"][1] + FRAMES["b.mp4"][1]
    assert all(0 < n < total for n in inverted), (inverted, outputs)
    assert total <= sum(inverted) <= total + BATCH, inverted
    assert sorted(latents_by_video(single)) == ["a.mp4", "b.mp4"]
    for name, latents in latents_by_video(single).items():
        np.testing.assert_array_equal(latents_by_video(cache)[name], latents)
