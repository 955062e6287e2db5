"""The contract every reenact mode of the mode table (flows/reenact.py REENACTORS) keeps, through
`facereenact run --mode MODE` as a user runs it:

- offered by `run --mode`;
- bad inputs (a missing source, a video as the source, an image as the driving clip): one line, exit
  2, nothing made;
- the same command again does no work (no chunk of the reenact table written) and renders a missing
  output from the cache;
- SIGKILL at a random point (a process of its own), then `facereenact resume JOB` once the job shows
  stale: the latents are the uninterrupted run's bit for bit, frames done before the kill are not
  written again, no half video at the output path.

A new mode gets these by being in the table, once tests/support/modes.py says what it needs on the
command line (a mode without an entry there fails here). Mode-specific behaviour is tested in the
mode's own module (test_reenact_cli.py, test_reenact_flow.py, test_reenact_mapping.py, ...).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from flows.reenact import REENACTORS
from storage.cache import DONE, Workspace
from storage.reenact import ReenactCache
from storage.video import probe
from tests import reenact_data
from tests.helpers import REPO_ROOT, assert_user_error, kill_cli_when
from tests.reenact_data import reenact_dirs, table_chunks
from tests.support.modes import MODE_ARGS, TOO_FAST_TO_KILL_MID_TABLE

MODES = list(REENACTORS)
FRAMES = 8
# The options of every mode (its own, e.g. its steps per frame, are in tests/support/modes.py).
OPTIONS = ["--invert-steps", "3", "--perceptual", "uncalibrated-alex", "--device", "cpu", "--quiet"]


@dataclass
class ModeRun:
    """A mode's command line (without -o / --cache) and its uninterrupted run's cache and output."""

    name: str
    args: list[str]
    cache: Path
    output: Path

    def table(self, cache: Path) -> ReenactCache:
        (table_dir,) = reenact_dirs(cache)
        return ReenactCache.at(Workspace(cache), str(table_dir.relative_to(cache)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reenact-modes")
    return reenact_data.driving_clip(root / "drive.mp4", FRAMES), reenact_data.tiny_weights(root)


def main_in_this_process(argv: list) -> int:
    """flows.cli.main(argv), leaving this process's environment and thread count as they were."""
    import torch

    from flows.cli import main

    saved, threads = dict(os.environ), torch.get_num_threads()
    try:
        return main([str(a) for a in argv])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=MODES)
def mode(request, inputs, tmp_path_factory, prefect_harness) -> ModeRun:
    name = request.param
    if name not in MODE_ARGS:
        pytest.fail(f"reenact mode {name!r} is in flows/reenact.py's table but not in tests/support/modes.py")
    clip, weights = inputs
    root = tmp_path_factory.mktemp(f"mode-{name}")
    args = ["run", "--mode", name, "--source", reenact_data.source(), "--driving", clip, "--weights", weights,
            *MODE_ARGS[name](root, weights), *OPTIONS]
    run = ModeRun(name, [str(a) for a in args], root / "reference", root / "reference.mp4")
    assert main_in_this_process([*run.args, "-o", run.output, "--cache", run.cache]) == 0
    assert probe(run.output).frame_count == FRAMES
    return run


def test_every_mode_is_offered_by_run(cli):
    proc = cli("run", "--help")
    offered = {tuple(c.split(",")) for c in re.findall(r"--mode \{([\w,-]+)\}", proc.stdout)}
    assert offered == {tuple(MODES)}, offered


@pytest.mark.parametrize("bad", ["missing_source", "video_as_source", "image_as_driving"])
@pytest.mark.parametrize("name", MODES)
def test_bad_inputs_are_one_line_and_make_nothing(name, bad, inputs, cli, tmp_path, prefect_harness):
    """Before any work (the mode's own settings are not needed to refuse these)."""
    clip, weights = inputs
    source, driving = reenact_data.source(), clip
    if bad == "missing_source":
        source, fragments = tmp_path / "nope.jpg", ["nope.jpg"]
    elif bad == "video_as_source":
        source, fragments = clip, ["drive.mp4"]
    else:
        driving, fragments = source, ["astronaut.jpg", "must be a video"]
    out = tmp_path / "out.mp4"
    proc = cli("run", "--mode", name, "--source", source, "--driving", driving, "--weights", weights,
               "-o", out, "--cache", tmp_path / "cache", *OPTIONS)
    assert_user_error(proc, *fragments, code=2)
    assert not (tmp_path / "cache").exists() and not out.exists()


def test_rerun_does_no_work_and_renders_a_missing_output(mode, cli, tmp_path):
    cache = Path(shutil.copytree(mode.cache, tmp_path / "cache"))
    before = table_chunks(cache)
    assert len(before) > 0
    out = tmp_path / "out.mp4"
    proc = cli(*mode.args, "-o", out, "--cache", cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert table_chunks(cache) == before  # not a frame computed again
    assert probe(out).frame_count == FRAMES
    np.testing.assert_array_equal(mode.table(cache).read("latents"), mode.table(mode.cache).read("latents"))


def done_frames(cache: Path) -> int:
    """Finished frames of the reenact table, counted from its status chunks on disk (a status chunk is
    written after the frame's data; pending is the fill value, never written)."""
    return sum(1 for d in reenact_dirs(cache) for _ in (d / "status" / "c").glob("*"))


def test_killed_run_resumes_to_the_uninterrupted_latents(mode, tmp_path, cli, prefect_api_env):
    if mode.name in TOO_FAST_TO_KILL_MID_TABLE:
        pytest.skip(f"{mode.name}: a short clip's table is filled within one poll (tests/support/modes.py)")
    reference_latents = mode.table(mode.cache).read("latents")
    reference_status = json.loads(cli("status", mode.cache, "--json", check=True).stdout)
    reference_jobs = {j["job"] for j in reference_status["jobs"]}
    # The same job in a cache with everything but the reenact table: its time is making the latents.
    cache = tmp_path / "cache"
    shutil.copytree(mode.cache, cache)
    (table_dir,) = reenact_dirs(cache)
    shutil.rmtree(table_dir)
    out = tmp_path / "out.mp4"
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    kill_after, delay = rng.randint(1, FRAMES - 3), rng.uniform(0.0, 0.3)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env, "FACEREENACT_LEASE_SECONDS": "1.5"}
    kill_cli_when([*mode.args, "-o", out, "--cache", cache], env, lambda: done_frames(cache) >= kill_after,
                  delay, log=tmp_path / "killed.log")
    done_at_kill = done_frames(cache)
    assert 0 < done_at_kill < FRAMES, f"kill (seed {seed}) came too late: {done_at_kill} done"
    assert not out.exists()  # no half video at the output path
    status = mode.table(cache).table.status()
    done = [i for i in range(FRAMES) if status[i] == DONE]
    assert done == list(range(len(done)))  # in order: a prefix of the clip
    before = {k: v for k, v in table_chunks(cache).items() if int(k.split("/c/")[1].split("/")[0]) in done}

    # `run` recorded the job; killed without a word, it is shown stale once its lease lapsed, and
    # `facereenact resume JOB` runs it again (in this process: the killed run was a process).
    time.sleep(1.6)

    def killed_job() -> dict:  # the cache's other job is the reference run's (another output)
        jobs = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
        (job,) = [j for j in jobs if j["job"] not in reference_jobs]
        return job

    job = killed_job()
    assert (job["kind"], job["state"]) == ("reenact", "stale"), job
    resumed = cli("resume", job["job"], "--cache", cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    job = killed_job()
    assert job["state"] == "finished" and job["frames"] >= FRAMES and job["pending"] == 0
    after = table_chunks(cache)
    assert {k: after[k] for k in before} == before  # frames done before the kill: not written again
    np.testing.assert_array_equal(mode.table(cache).read("latents"), reference_latents)  # bit for bit
    assert probe(out).frame_count == FRAMES
    print(f"\n{mode.name}: kill seed {seed}: killed with {len(done)} of {FRAMES} frames done; resumed to the "
          "same latents")
