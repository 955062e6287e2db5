"""Bad inputs whose command runs a flow (Prefect's own console output must stay quiet in a fresh
process, as a user sees it), code that must never run, and two runs on one cache at once.

Each case runs `python -m flows.cli ...` in its own process; the processes of the cases start
together (one module fixture) so the suite pays the interpreter start-up about once, not per case.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from storage.cache import Workspace
from storage.latents import LatentCache
from tests.helpers import REPO_ROOT, assert_user_error
from tests.reliability.inputs import Inputs, blank_clip, two_faces

INVERT = ["--steps", "1", "--batch-size", "2", "--perceptual", "uncalibrated-alex", "--device", "cpu",
          "--quiet"]
PREPARE = ["--resolution", "32", "--device", "cpu", "--quiet"]


class _System:
    """Pickles as os.system(command): what a hostile checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def video_no_face(t: Path, d: Inputs):
    blank_clip(t / "wall.mp4")
    return ["prepare", t / "wall.mp4", "--cache", t / "cache", *PREPARE], \
        ["wall.mp4", "no face found in any of the 3 frames"], 2


def image_no_face(t: Path, d: Inputs):
    from storage.images import save_image

    save_image(t / "wall.jpg", np.full((120, 160, 3), 128, np.uint8))
    return ["prepare", t / "wall.jpg", "--cache", t / "cache", *PREPARE], \
        ["wall.jpg", "no face found in the image"], 2


def image_many_faces(t: Path, d: Inputs):
    two_faces(t / "pair.png")
    return ["prepare", t / "pair.png", "--cache", t / "cache", *PREPARE, "--face-index", "5"], \
        ["pair.png", "no face found in the image at face index 5"], 2


def checkpoint_malicious_pickle(t: Path, d: Inputs):
    (t / "evil.pkl").write_bytes(pickle.dumps({"G_ema": _System(f"touch {t / 'pwned'}")}, protocol=4))
    d.copy_prepared(t / "cache")
    return ["invert", d.clip, "--cache", t / "cache", "--weights", t / "evil.pkl", *INVERT], \
        ["evil.pkl", "refused global"], 3


CASES: dict[str, Callable] = {f.__name__: f for f in [
    video_no_face, image_no_face, image_many_faces, checkpoint_malicious_pickle]}


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory, prefect_api_env) -> dict[str, tuple]:
    """Every case's (temp dir, fragments, code, CompletedProcess), run side by side."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env}
    running = {}
    for name, make in CASES.items():
        t = tmp_path_factory.mktemp(name)
        argv, fragments, code = make(t, data)
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, argv)], cwd=REPO_ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running[name] = (t, fragments, code, argv, proc)
    out = {}
    for name, (t, fragments, code, argv, proc) in running.items():
        try:
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        out[name] = (t, fragments, code, subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_in_a_fresh_process(case, finished):
    t, fragments, code, proc = finished[case]
    assert_user_error(proc, *fragments, code=code)
    assert not (t / "pwned").exists()  # nothing in a checkpoint ran
    if (t / "cache").exists():
        ws = Workspace(t / "cache")
        assert all(c.counts()["done"] == 0 for c in LatentCache.all(ws))  # no latent stored
        if case != "checkpoint_malicious_pickle":  # came prepared
            assert all(table.counts()["done"] == 0 for table in ws.tables())


def test_nan_in_a_done_frame_is_recomputed(data, tmp_path, prefect_api_env):
    """A done crops frame whose landmarks were damaged to NaN after the fact (once an exit-5 case): the
    next command finds it (FrameTable.damaged_frames when prepare opens the table), computes it again
    and goes on; every frame ends done and finite."""
    cache = data.copy_prepared(tmp_path / "cache")
    (crops,) = Workspace(cache).tables(stage="crops")
    crops.group["crop_landmarks"][1] = np.full(crops.fields["crop_landmarks"].shape, np.nan, np.float32)
    assert crops.damaged_frames().tolist() == [1]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "invert", str(data.clip), "--cache", str(cache),
                           "--weights", str(data.weights), *INVERT], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (crops,) = Workspace(cache).tables(stage="crops")
    assert crops.is_complete() and np.isfinite(crops.read("crop_landmarks")).all()
    (latents,) = LatentCache.all(Workspace(cache))
    assert latents.is_complete()


def test_two_runs_on_one_cache_at_once(data, tmp_path, prefect_api_env):
    """Two `facereenact invert` processes of the same job on one cache at the same time: both finish,
    every frame is done, and the latents are those of one run alone (bit for bit): the frames both
    computed were written twice with the same bits, never mixed or torn."""
    from flows.invert import invert_dataset

    alone = data.copy_prepared(tmp_path / "alone")
    invert_dataset(str(data.clip), str(alone), str(data.weights), steps=1, batch_size=2,
                   perceptual="uncalibrated-alex", device="cpu")
    cache = data.copy_prepared(tmp_path / "shared")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **prefect_api_env}
    argv = [sys.executable, "-m", "flows.cli", "invert", str(data.clip), "--cache", str(cache),
            "--weights", str(data.weights), *INVERT, "--batches-per-task", "1"]
    procs = [subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        results = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-2000:]
    ws = Workspace(cache)
    (latents,) = LatentCache.all(ws)
    assert latents.is_complete()
    (reference,) = LatentCache.all(Workspace(alone))
    np.testing.assert_array_equal(latents.read(), reference.read())
    assert all(t.is_complete() for t in ws.tables())
    (job,) = ws.jobs().values()
    assert job["state"] == "finished"
