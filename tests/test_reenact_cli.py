"""`facereenact run` and `facereenact demo` as a user runs them: one-line errors with their exit codes,
a run killed with SIGKILL at a random point and resumed to the latents of an uninterrupted run
(bitwise, frames done before the kill not written again), and the demo command end to end."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from storage.cache import Workspace
from storage.reenact import ReenactCache
from storage.video import probe
from tests import reenact_data
from tests.helpers import REPO_ROOT, assert_user_error, kill_cli_when
from tests.reenact_data import CLI_OPTIONS, reenact_dirs, table_chunks

FRAMES = 8
# Enough steps that a frame takes a noticeable time (a kill lands mid-run), still seconds in all.
RESUME_OPTIONS = ["--steps-first", "6", "--steps-next", "6", "--invert-steps", "3",
                  "--perceptual", "uncalibrated-alex", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reenact-cli")
    clip = reenact_data.driving_clip(root / "drive.mp4", FRAMES)
    return root, reenact_data.tiny_weights(root), clip


def test_user_errors(inputs, tmp_path, capsys, monkeypatch, prefect_harness):
    from flows.cli import main

    root, weights, clip = inputs
    src = str(reenact_data.source())
    out = tmp_path / "out.mp4"

    def run(*args) -> subprocess.CompletedProcess:
        """The CLI's entry point in this process (the checks before any work need no subprocess)."""
        code = main(["run", *map(str, args), "-o", str(out), "--cache", str(tmp_path / "cache"),
                     *CLI_OPTIONS])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    assert_user_error(run("--source", tmp_path / "nope.jpg", "--driving", clip, "--weights", weights),
                      "nope.jpg", code=2)
    assert_user_error(run("--source", src, "--driving", src, "--weights", weights),
                      "astronaut.jpg", "must be a video", code=2)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    assert_user_error(run("--source", src, "--driving", corrupt, "--weights", weights), "corrupt.mp4", code=2)
    assert_user_error(run("--source", src, "--driving", clip, "--weights", "ffhq-1024"),
                      "facereenact weights fetch ffhq-1024", code=4)
    with pytest.raises(SystemExit) as exit_:  # the parser's choices: before anything else runs
        run("--source", src, "--driving", clip, "--weights", weights, "--mode", "nope")
    assert exit_.value.code == 2
    assert_user_error(subprocess.CompletedProcess([], 2, "", capsys.readouterr().err),
                      "--mode: invalid choice: 'nope'", code=2)
    assert not (tmp_path / "cache").exists() and not out.exists()  # nothing done before these checks
    # A source without a face is found by the prepare stage: as a user runs it, one line, exit 2.
    from storage.images import save_image

    blank = save_image(tmp_path / "wall.png", np.full((128, 128, 3), 118, np.uint8))
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")  # as the CLI sets it
    proc = run("--source", blank, "--driving", clip, "--weights", weights)
    assert_user_error(proc, "wall.png", "no face", code=2)
    assert not out.exists()


def done_frames(cache: Path) -> int:
    """Finished frames of the reenact table, counted from its status chunks on disk (a status chunk is
    written after the frame's data; pending is the fill value, never written)."""
    return sum(1 for d in reenact_dirs(cache) for _ in (d / "status" / "c").glob("*"))


def test_killed_run_resumes_to_the_uninterrupted_latents(inputs, tmp_path, cli, prefect_api_env):
    root, weights, clip = inputs
    reference = tmp_path / "reference"
    args = ["run", "--source", str(reenact_data.source()), "--driving", str(clip), "--weights", str(weights),
            *RESUME_OPTIONS]
    # The uninterrupted run, in this process (one subprocess fewer; same single-thread CPU maths).
    from flows.reenact import reenact

    reenact(str(reenact_data.source()), str(clip), str(tmp_path / "ref.mp4"), str(reference), str(weights),
            device="cpu", steps_first=6, steps_next=6, invert_steps=3, perceptual="uncalibrated-alex")
    (table_dir,) = reenact_dirs(reference)
    ref_table = ReenactCache.at(Workspace(reference), str(table_dir.relative_to(reference)))
    ref_latents = ref_table.read("latents")

    # The same job in a cache with everything but the reenact table: its time is projection.
    cache = tmp_path / "cache"
    shutil.copytree(reference, cache)
    shutil.rmtree(cache / table_dir.relative_to(reference))
    out = tmp_path / "out.mp4"
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    kill_after, delay = rng.randint(1, FRAMES - 3), rng.uniform(0.0, 0.3)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env, "FACEREENACT_LEASE_SECONDS": "1.5"}
    kill_cli_when([*args, "-o", out, "--cache", cache], env, lambda: done_frames(cache) >= kill_after, delay)
    done_at_kill = done_frames(cache)
    assert 0 < done_at_kill < FRAMES, f"kill (seed {seed}) came too late: {done_at_kill} done"
    assert not out.exists()  # no half video at the output path
    status = ReenactCache.at(Workspace(cache), str(table_dir.relative_to(reference))).table.status()
    done = [i for i in range(FRAMES) if status[i] == 1]
    assert done == list(range(len(done)))  # in order: a prefix of the clip
    (kill_dir,) = reenact_dirs(cache)
    before = {k: v for k, v in table_chunks(cache).items() if int(k.split("/c/")[1].split("/")[0]) in done}

    # `run` recorded the job; killed without a word, it is shown stale once its lease lapsed, and
    # `facereenact resume JOB` runs it again (in this process: the killed run was a process).
    time.sleep(1.6)
    (job,) = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
    assert (job["kind"], job["state"]) == ("reenact", "stale"), job
    resumed = cli("resume", job["job"], "--cache", cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (job,) = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
    assert job["state"] == "finished" and job["frames"] >= FRAMES and job["pending"] == 0
    after = table_chunks(cache)
    assert {k: after[k] for k in before} == before  # frames done before the kill: not written again
    table = ReenactCache.at(Workspace(cache), str(kill_dir.relative_to(cache)))
    np.testing.assert_array_equal(table.read("latents"), ref_latents)  # bit for bit
    assert probe(out).frame_count == FRAMES
    print(f"\nkill seed {seed}: killed with {len(done)} of {FRAMES} frames done; resumed to the same latents")


def test_demo_command(tmp_path, cli, prefect_harness):
    out = tmp_path / "demo"
    proc = cli("demo", "--out", out, "--frames", "3", "--steps", "4", "--resolution", "32", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Offline (tests have no weights): the random generator, said plainly; LPIPS uncalibrated, said too.
    assert "NOT the quality of real weights" in proc.stderr and "LPIPS runs uncalibrated" in proc.stderr
    info = probe(out / "reenacted.mp4")
    assert info.frame_count == 3 and info.width == 3 * 32  # look | driving | result
    assert (out / "preview.png").is_file() and (out / "reenacted.mp4.json").is_file()
    assert "reenacted 3 frames" in proc.stdout
