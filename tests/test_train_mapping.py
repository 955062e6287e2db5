"""Training the mapping network from the latent cache: which frames are used, the held-out split,
one-line errors, the Prefect flow (numbers, checkpoint provenance, plot, artifact) and `facereenact
train-mapping` killed with SIGKILL and resumed to the weights of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from models.mapping.checkpoint import read_mapping_checkpoint
from stages.train_mapping import check_checkpoint, loss_plot_path, plan_training, train_to
from storage.cache import Workspace
from storage.errors import CacheError, CheckpointError, InputError
from storage.latents import LatentCache
from storage.mapping_data import inversion_key, split_held_out, training_videos
from tests import mapping_cache
from tests.helpers import REPO_ROOT, assert_user_error
from tests.mapping_cache import GENERATOR_SHA, NUM_WS, W_DIM, add_video, build_cache

SMALL = {"batch_size": 8}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """4 videos x 24 frames, every frame done (read-only for the tests)."""
    return build_cache(tmp_path_factory.mktemp("mapcache") / "cache", videos=4, frames=24)


def test_usable_frames_are_done_latents_with_done_crops_and_detected_faces(tmp_path):
    ws = Workspace(tmp_path / "c")
    t = mapping_cache.task()
    rng = np.random.default_rng(1)
    clip = t.clip(t.train_ids[0], 12, rng)
    points, latents = np.asarray(clip.landmarks), np.asarray(clip.latents)
    location = add_video(ws, "a.mp4", points, latents, latents_done=np.array([0, 1, 2, 3, 5, 6, 7, 9]),
                         failed=np.array([4, 8]), interpolated=np.array([2, 6]))
    for memory in (0, 1 << 30):  # read on demand, and in memory: the same frames and values
        data = training_videos(ws, in_memory_bytes=memory)
        (video,) = data.videos
        assert video.latents_table == location
        assert video.frames.tolist() == [0, 1, 3, 5, 7, 9]  # not pending 10-11, failed 4/8, no-face 2/6
        assert video.counts == {"frames": 12, "latents_done": 8, "crops_done": 12, "interpolated": 2,
                                "usable": 6}
        np.testing.assert_array_equal(video.landmarks[video.frames], points[video.frames])
        assert np.isnan(video.landmarks[[2, 4, 10]]).all()
        for i in video.frames:
            np.testing.assert_array_equal(video.latents[int(i)], latents[i])
        assert (data.num_ws, data.w_dim, data.crop_resolution) == (NUM_WS, W_DIM, 32)
        assert data.generator["weights_sha256"] == GENERATOR_SHA
    prov = data.provenance()
    assert prov["tables"][0]["latents"] == location and prov["tables"][0]["frames"] == 6
    assert prov["tables"][0]["crops"] == video.crops_table
    # One more frame done: another frames hash, so a checkpoint of the old data is not continued.
    LatentCache.at(ws, location).write([10], latents[[10]], [0.1], [10])
    now = training_videos(ws).provenance()["tables"][0]
    assert now["frames_sha256"] != prov["tables"][0]["frames_sha256"]


def test_held_out_split_by_video_and_by_frame(cache):
    data = training_videos(Workspace(cache))
    by_video = split_held_out(data, 0.25, "video")
    assert list(by_video.values()) == [0] and set(by_video) < {v.latents_table for v in data.videos}
    assert split_held_out(data, 0.25, "video") == by_video          # deterministic
    assert len(split_held_out(data, 0.9, "video")) == 3             # keeps one training video
    by_frame = split_held_out(data, 0.1, "frame")
    assert by_frame == {v.latents_table: 21 for v in data.videos}   # the last ceil(2.4) = 3 of 24 frames
    assert split_held_out(data, 0, "video") == {}
    plan = plan_training(str(cache), {"held_out": 0.25, "split": "frame"})
    assert sum(len(c.valid.nonzero()[0]) for c in plan.clips()) == 4 * 18
    pairs = sum(len(b) for b in plan.held_out_batches())
    assert pairs == 4 * 6                                           # source: the video's first training frame
    one = build_cache(cache.parent / "one", videos=1, frames=10)
    assert plan_training(str(one), {}).split == "frame"             # auto: by frame with one video
    with pytest.raises(InputError, match="at least 2 videos"):
        plan_training(str(one), {"split": "video"})


def test_cache_errors_are_one_line(tmp_path, cache):
    missing = tmp_path / "nope"
    with pytest.raises(CacheError, match="no such cache directory"):
        plan_training(str(missing), {})
    assert not missing.exists()                                     # not created by the check
    Workspace(tmp_path / "empty")
    with pytest.raises(CacheError, match="no latents in this cache"):
        plan_training(str(tmp_path / "empty"), {})
    build_cache(tmp_path / "pending", videos=2, frames=6, latents_done=np.array([], int))
    with pytest.raises(CacheError, match="no usable frames: 0 of 12"):
        plan_training(str(tmp_path / "pending"), {})
    # A table of another generator beside the others.
    mixed = build_cache(tmp_path / "mixed", videos=2, frames=6)
    points, latents = np.zeros((6, 68, 2), np.float32) + 16, np.zeros((6, NUM_WS, W_DIM), np.float32)
    add_video(Workspace(mixed), "other.mp4", points, latents, generator={"weights_sha256": "b" * 64})
    with pytest.raises(CacheError, match="come from 2 generators") as err:
        plan_training(str(mixed), {})
    assert "\n" not in str(err.value) and "bbbbbbbbbbbb" in str(err.value)
    # A video inverted twice (other settings): ambiguous until --inversion picks one.
    twice = build_cache(tmp_path / "twice", videos=2, frames=6)
    build_cache(twice, videos=2, frames=6, inversion_steps=8)
    with pytest.raises(CacheError, match="choose one with --inversion KEY"):
        plan_training(str(twice), {})
    keys = {inversion_key(c.provenance): c.provenance["steps"] for c in LatentCache.all(Workspace(twice))}
    assert len(keys) == 2
    key8 = next(k for k, steps in keys.items() if steps == 8)
    assert plan_training(str(twice), {"inversion": key8}).data.inversion == key8
    with pytest.raises(CacheError, match="no latent tables of inversion settings 'zzz'"):
        plan_training(str(twice), {"inversion": "zzz"})


def test_checkpoint_of_other_settings_is_refused(tmp_path, cache):
    out = tmp_path / "m.pt"
    plan = plan_training(str(cache), SMALL)
    train_to(out, plan, 2, 2, log=lambda _: None)
    assert check_checkpoint(out, plan, 5) == 2                      # the same run: continued
    with pytest.raises(CheckpointError, match="batch_size 8 here 4"):
        check_checkpoint(out, plan_training(str(cache), {"batch_size": 4}), 5)
    with pytest.raises(CheckpointError, match="representation 'coords' here 'raster'"):
        check_checkpoint(out, plan_training(str(cache), {**SMALL, "representation": "raster"}), 5)
    with pytest.raises(CheckpointError, match="split of the training data"):
        check_checkpoint(out, plan_training(str(cache), {**SMALL, "held_out": 0.5}), 5)
    with pytest.raises(CheckpointError, match="holds 2 steps, more than --steps 1"):
        check_checkpoint(out, plan, 1)


def test_flow_trains_evaluates_and_records(cache, tmp_path, prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train_mapping import format_summary, train_mapping
    from tasks.conventions import artifact_key

    out = tmp_path / "run" / "mapping.pt"
    summary = train_mapping(str(cache), str(out), steps=150, checkpoint_every=50, settings=SMALL,
                            device="cpu")
    t, d, held = summary["training"], summary["data"], summary["training"]["held_out"]
    assert (d["videos"], d["train_frames"], d["held_out_frames"], d["split"]) == (4, 72, 24, "video")
    assert (t["steps"], t["trained_now"], t["resumed_from"]) == (150, 150, 0)
    # It learns the known function: training and held-out (an unseen video) error well below the
    # zero-offset baseline's.
    assert t["train_ratio"] > 2, t
    assert held["pairs"] == 23 and held["ratio"] > 2, held
    text = format_summary(summary)
    assert "held-out Δw error" in text
    assert f"{held['ratio']:.3g}x lower than the zero-Δw baseline: better" in text
    ckpt = read_mapping_checkpoint(out)
    prov = ckpt["provenance"]
    assert ckpt["step"] == 150 and prov["generator"]["weights_sha256"] == GENERATOR_SHA
    assert [r["latents"] for r in prov["latents"]["tables"]] == d["tables"]
    assert prov["latents"]["split"]["by"] == "video" and prov["code_version"]
    assert prov["training"]["batch_size"] == 8 and prov["model"]["representation"] == "coords"
    png = loss_plot_path(out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("train-mapping", out)])))
    assert any(str(png) in (a.data or "") and "held-out baseline / model" in (a.data or "")
               for a in artifacts)
    # A finished run trains nothing more and leaves the weights alone.
    before = out.read_bytes()
    again = train_mapping(str(cache), str(out), steps=150, checkpoint_every=50, settings=SMALL, device="cpu")
    assert again["training"]["trained_now"] == 0 and out.read_bytes() == before
    assert again["training"]["held_out"]["mse"] == held["mse"]


def test_cli_errors(tmp_path, cache, cli):
    missing = tmp_path / "nope"
    assert_user_error(cli("train-mapping", "--cache", missing, "--out", tmp_path / "m.pt"),
                      str(missing), "no such cache directory", code=5)
    out = tmp_path / "m.pt"
    train_to(out, plan_training(str(cache), SMALL), 1, 1, log=lambda _: None)
    before = out.read_bytes()
    proc = cli("train-mapping", "--cache", cache, "--out", out, "--batch-size", "16", "--device", "cpu")
    assert_user_error(proc, str(out), "other settings", "batch_size 8 here 16", code=3)
    assert out.read_bytes() == before                               # never overwritten
    assert_user_error(cli("train-mapping", "--cache", cache, "--out", out, "--image-loss", "1"),
                      "--image-loss needs --weights", code=2)


def _checkpoint_step(path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["step"])
    except Exception:  # not there yet (the file appears whole or not at all, but may be replaced)
        return None


def test_cli_resumes_after_sigkill_to_the_uninterrupted_weights(cache, tmp_path, prefect_api_env, cli):
    steps, every = 240, 20
    reference = tmp_path / "reference.pt"
    train_to(reference, plan_training(str(cache), SMALL), steps, every, log=lambda _: None)

    out = tmp_path / "killed" / "mapping.pt"
    args = [sys.executable, "-m", "flows.cli", "train-mapping", "--cache", str(cache), "--out", str(out),
            "--steps", str(steps), "--checkpoint-every", str(every), "--batch-size", "8", "--device", "cpu"]
    env = {**os.environ, **prefect_api_env, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.3))                          # somewhere in the next interval
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _checkpoint_step(out)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert killed_at is not None and 0 < killed_at < steps, killed_at

    # The same command again, in this process (the killed run was a process; one start-up fewer).
    resumed = cli(*args[3:])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {killed_at}" in resumed.stdout, resumed.stdout
    a, b = read_mapping_checkpoint(reference), read_mapping_checkpoint(out)
    assert a["step"] == b["step"] == steps
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert torch.equal(a["history"]["mse"], b["history"]["mse"])
    assert loss_plot_path(out).exists()


def test_reads_what_the_dataset_inversion_wrote(invert_dataset, tmp_path):
    """The real `invert_dataset` output (tests/invert_data.py): latents linked to their crops tables."""
    from tests import invert_data

    data = invert_dataset
    plan = plan_training(str(data.reference), {"held_out": 0.34, **SMALL})
    assert plan.split == "video" and len(plan.data.videos) == len(invert_data.FRAMES)
    ws = Workspace(data.reference)
    for video in plan.data.videos:
        crops = ws.open_table(video.crops_table)
        assert crops.stage == "crops"
        assert video.crops_table.split("/")[1] == video.latents_table.split("/")[1]  # same video
        usable = video.frames
        np.testing.assert_array_equal(video.landmarks[usable], crops.read("crop_landmarks", usable))
        latents = LatentCache.at(ws, video.latents_table).read(usable)
        np.testing.assert_array_equal(video.latents[usable], latents)
        assert usable.size == invert_data.FRAMES[video.name][1] - video.counts["interpolated"]
    from models.checkpoints import load_generator

    assert plan.data.generator["weights_sha256"] == load_generator(data.weights).weights_sha256()
    result = train_to(tmp_path / "m.pt", plan, 3, 3, log=lambda _: None)
    assert result.steps == 3 and np.isfinite(result.train_mse)
