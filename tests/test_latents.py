"""The latent cache (storage/latents.py) on a local directory and on memory://: per-frame status,
loss, seed and failure reason; readers see only done frames; other provenance, another table."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest

from storage.cache import DONE, FAILED, PENDING, Workspace
from storage.errors import CacheError
from storage.latents import SEED_RULE, LatentCache, fixed_batches, frame_seed, latents_provenance
from storage.provenance import code_version

NUM_WS, W_DIM, T = 4, 8, 6
INVERSION = {"stage": "inversion", "cache_format": 1, "settings": {"steps": 10, "lambda_mse": 0.1},
             "calibrated": False,
             "generator": {"weights_sha256": "ab" * 32, "num_ws": NUM_WS, "w_dim": W_DIM}}
PROV = latents_provenance(INVERSION, crops_key="c0ffee")


@pytest.fixture(params=["local", "memory"])
def ws(request, tmp_path) -> Workspace:
    url = str(tmp_path / "cache") if request.param == "local" else f"memory://latents-{uuid.uuid4().hex}"
    return Workspace(url)


def latents(n: int, offset: float = 0.0) -> np.ndarray:
    return (np.arange(n * NUM_WS * W_DIM, dtype=np.float32).reshape(n, NUM_WS, W_DIM) / 100 + offset)


def test_write_fail_and_read_only_done(ws):
    cache = LatentCache.require(ws, "vid", PROV, T, NUM_WS, W_DIM)
    assert cache.counts() == {"pending": T, "done": 0, "failed": 0}
    assert cache.provenance["crops_table"] == "c0ffee" and cache.provenance["frame_seeds"] == SEED_RULE
    assert cache.code_version == code_version()  # recorded beside the provenance, not in its key
    cache.write([1, 2], latents(2), np.array([0.5, 0.25]), [11, 12])
    cache.fail(4, "final loss 3.2 above --max-loss 1")
    assert cache.status().tolist() == [PENDING, DONE, DONE, PENDING, FAILED, PENDING]
    np.testing.assert_array_equal(cache.read([2, 1]), latents(2)[::-1])
    np.testing.assert_array_equal(cache.read_losses([1, 2]), np.float32([0.5, 0.25]))
    assert cache.read_seeds([1, 2]).tolist() == [11, 12]
    assert cache.errors() == {4: "final loss 3.2 above --max-loss 1"}
    with pytest.raises(CacheError, match="not done"):
        cache.read()  # readers never see a pending or failed frame
    frames, values = cache.read_done()
    assert frames.tolist() == [1, 2] and values.shape == (2, NUM_WS, W_DIM)
    assert cache.todo_frames().tolist() == [0, 3, 5]
    assert cache.todo_frames(retry_failed=True).tolist() == [0, 3, 4, 5]
    # Of some frames only (a batch reads its own frames' status chunks).
    assert cache.todo_frames(frames=[2, 3, 4]).tolist() == [3]
    assert cache.todo_frames(retry_failed=True, frames=[2, 3, 4]).tolist() == [3, 4]
    assert cache.table.status([4, 1]).tolist() == [FAILED, DONE]
    # A pending frame is NaN underneath: an unwritten latent can never pass for a real one.
    assert np.isnan(np.asarray(cache.table.group["latents"][0])).all()
    # A failed inversion cannot be stored as done.
    bad = latents(1)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        cache.write([0], bad, np.array([0.1]), [10])
    assert cache.status()[0] == PENDING
    # Reopened by location (how a task finds the table the flow made), same contents.
    again = LatentCache.at(Workspace(ws.url), cache.location)
    np.testing.assert_array_equal(again.read([1, 2]), latents(2))


def test_other_provenance_is_another_table_never_reused(ws):
    first = LatentCache.require(ws, "vid", PROV, T, NUM_WS, W_DIM)
    first.write(range(T), latents(T), np.ones(T), range(T))
    for changed in ({**INVERSION, "settings": {"steps": 11, "lambda_mse": 0.1}},   # settings
                    {**INVERSION, "calibrated": True},                                # LPIPS weights
                    {**INVERSION, "generator": {**INVERSION["generator"], "weights_sha256": "cd" * 32}}):
        other = LatentCache.require(ws, "vid", latents_provenance(changed, "c0ffee"), T, NUM_WS, W_DIM)
        assert other.key != first.key and other.counts()["done"] == 0
    other_crops = LatentCache.require(ws, "vid", latents_provenance(INVERSION, "beef"), T, NUM_WS, W_DIM)
    assert other_crops.key != first.key and other_crops.counts()["done"] == 0
    assert len(list(LatentCache.all(ws, "vid"))) == 5
    # The same provenance finds its results again.
    same = LatentCache.require(Workspace(ws.url), "vid", dict(PROV), T, NUM_WS, W_DIM)
    assert same.location == first.location and same.is_complete()
    # The same provenance with another shape is an error, never a silent mix.
    with pytest.raises(CacheError):
        LatentCache.require(ws, "vid", PROV, T + 1, NUM_WS, W_DIM)


def test_not_a_latent_table(ws):
    from storage.cache import Field

    table = ws.table("vid", "crops", {"stage": "crops"}, 3, {"crop": Field((2, 2, 3), "uint8")})
    with pytest.raises(CacheError, match="not a latents table"):
        LatentCache.at(ws, table.location)


def test_frame_seeds_depend_on_video_frame_and_base_seed_only():
    seed = frame_seed("ab" * 32, 7, 303)
    assert seed == frame_seed("ab" * 32, 7, 303) and 0 <= seed < 2**63
    others = {frame_seed("ab" * 32, 8, 303), frame_seed("cd" * 32, 7, 303), frame_seed("ab" * 32, 7, 304)}
    assert seed not in others and len(others) == 3
    # The rule recorded in the provenance (SEED_RULE), computed independently here.
    digest = hashlib.sha256(("ab" * 32 + ":7:303").encode()).digest()
    assert seed == int.from_bytes(digest[:8], "big") >> 1


def test_fixed_batches_depend_on_frame_index_only():
    assert fixed_batches(10, 4, range(10)) == [(0, 4), (4, 8), (8, 10)]
    # What is left does not move the boundaries: a resumed job runs the batches it would have run.
    assert fixed_batches(10, 4, [5, 6, 9]) == [(4, 8), (8, 10)]
    assert fixed_batches(10, 4, []) == []
    assert fixed_batches(3, 8, [2]) == [(0, 3)]
    with pytest.raises(ValueError):
        fixed_batches(10, 0, [1])
