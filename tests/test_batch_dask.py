"""`reenact_batch(..., runner="dask:2", gpu_resources=True)`: the jobs of a manifest spread over a
local Dask cluster of two worker processes, each declaring GPU=1 and each job holding it, so the two
real jobs run at once on different workers. Every output is made, the bad job fails alone with its
one-line reason, the records and the summary name the worker (host:pid) of each job, and the cache
holds the latents of the sequential run, bit for bit (CPU)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from flows.batch import reenact_batch
from storage.cache import Workspace
from storage.errors import JobFailedError
from storage.video import probe
from tests import reenact_data
from tests.support.manifests import batch_jobs, yaml_manifest

pytestmark = pytest.mark.usefixtures("prefect_harness")
FRAMES = 2  # of drive.mp4; drive2.mp4 has one more (another clip: the jobs share no driving table)


def latents(cache) -> dict[tuple[str, str], np.ndarray]:
    """Every latent field of every table of a cache, by (table, field)."""
    tables = Workspace(cache).tables()
    return {(t.location, name): t.read(name) for t in tables for name in t.fields if "latent" in name}


def run(root, weights, cache: str, out: str, **runner) -> dict:
    (root / out).mkdir()
    plain, free, broken = batch_jobs()
    manifest = yaml_manifest(root / "jobs.yaml", [plain, {**free, "driving": "drive2.mp4"}, broken])
    with pytest.raises(JobFailedError) as failed:
        reenact_batch(manifest, str(root / cache), str(weights), output_dir=str(root / out), device="cpu",
                      **runner)
    return failed.value.summary


def test_batch_jobs_spread_over_two_dask_workers_with_gpu_resources(tmp_path):
    root = tmp_path
    reenact_data.driving_clip(root / "drive.mp4", FRAMES)
    reenact_data.driving_clip(root / "drive2.mp4", FRAMES + 1)
    shutil.copy(reenact_data.source(), root / "face.jpg")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # not a video
    weights = reenact_data.tiny_weights(root)

    sequential = run(root, weights, "cache-seq", "seq")
    spread = run(root, weights, "cache-dask", "dask", runner="dask:2", gpu_resources=True)

    for summary, out in ((sequential, "seq"), (spread, "dask")):
        assert summary["done"] == ["plain", "free"] and list(summary["failed"]) == ["broken"]
        assert "broken.mp4" in summary["failed"]["broken"] and "\n" not in summary["failed"]["broken"]
        assert probe(root / out / "out" / "plain.mp4").frame_count == FRAMES
        assert probe(root / out / "out" / "free.mp4").frame_count == 2 * (FRAMES + 1)  # sub-frames
        assert not (root / out / "out" / "broken.mp4").exists()
    # Sequential: every job in this process; Dask: the two real jobs (each holding its worker's one
    # GPU, submitted together) on two different worker processes.
    assert len(set(sequential["workers"].values())) == 1 and set(sequential["workers"]) == {"plain", "free",
                                                                                            "broken"}
    assert spread["workers"]["plain"] != spread["workers"]["free"]
    assert all(w.rsplit(":", 1)[1].isdigit() for w in spread["workers"].values())
    records = {r["name"]: r for r in Workspace(root / "cache-dask").jobs().values()
               if r.get("kind") == "reenact"}
    assert {n: r["worker"] for n, r in records.items()} == spread["workers"]
    assert records["plain"]["state"] == "finished" and records["broken"]["state"] == "failed"

    reference, got = latents(root / "cache-seq"), latents(root / "cache-dask")
    assert reference and sorted(got) == sorted(reference)
    for key, values in reference.items():
        np.testing.assert_array_equal(got[key], values, err_msg=str(key))
