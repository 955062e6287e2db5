"""The workspace cache: provenance keys, per-frame status, readers see only done frames."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import zarr

from storage.cache import DONE, FAILED, PENDING, Field, Workspace
from storage.errors import CacheError
from storage.provenance import provenance_key

FIELDS = {"latents": Field((3, 4)), "loss": Field(())}
PROV = {"stage": "invert", "generator_sha256": "ab" * 32, "steps": 10, "weights": {"mse": 0.1, "lpips": 1.5}}


def test_provenance_key_is_order_independent_and_value_sensitive():
    a = {"x": 1, "y": {"b": 2.0, "a": [1, 2]}}
    b = {"y": {"a": [1, 2], "b": 2.0}, "x": 1}
    assert provenance_key(a) == provenance_key(b)
    assert provenance_key(a) != provenance_key({**a, "x": 2})
    assert provenance_key(a) != provenance_key({**a, "y": {"b": 2.5, "a": [1, 2]}})


def test_write_then_read_only_done_frames(tmp_path):
    ws = Workspace(tmp_path / "cache")
    t = ws.table("vid1", "invert", PROV, num_frames=5, fields=FIELDS)
    assert t.counts() == {"pending": 5, "done": 0, "failed": 0}
    lat = np.arange(2 * 12, dtype=np.float32).reshape(2, 3, 4)
    t.write([1, 3], latents=lat, loss=np.array([0.5, 0.25]))
    assert t.status().tolist() == [PENDING, DONE, PENDING, DONE, PENDING]
    np.testing.assert_array_equal(t.read("latents", [3, 1]), lat[::-1])
    with pytest.raises(CacheError, match="not done"):
        t.read("latents", [0, 1])
    # unwritten frames stay NaN underneath (never a plausible zero)
    assert np.isnan(np.asarray(t.group["latents"][0])).all()


def test_failed_frames_keep_reason_and_retry_selection(tmp_path):
    ws = Workspace(tmp_path / "cache")
    t = ws.table("vid1", "invert", PROV, num_frames=4, fields=FIELDS)
    t.fail([2], "loss became NaN at step 17\nsecond line")
    assert t.status()[2] == FAILED
    assert t.errors() == {2: "loss became NaN at step 17 second line"}
    assert t.todo_frames().tolist() == [0, 1, 3]
    assert t.todo_frames(retry_failed=True).tolist() == [0, 1, 2, 3]
    t.write([2], latents=np.zeros((1, 3, 4)), loss=np.zeros(1))
    assert t.errors() == {}


def test_other_provenance_gets_its_own_table(tmp_path):
    ws = Workspace(tmp_path / "cache")
    a = ws.table("vid1", "invert", PROV, num_frames=2, fields=FIELDS)
    a.write([0, 1], latents=np.ones((2, 3, 4)), loss=np.ones(2))
    b = ws.table("vid1", "invert", {**PROV, "steps": 11}, num_frames=2, fields=FIELDS)
    assert b.key != a.key
    assert b.counts()["done"] == 0  # nothing reused across settings
    again = Workspace(tmp_path / "cache").table("vid1", "invert", PROV, num_frames=2, fields=FIELDS)
    assert again.counts()["done"] == 2
    assert {t.key for t in ws.tables("vid1", "invert")} == {a.key, b.key}


def test_frame_count_mismatch_is_an_error(tmp_path):
    ws = Workspace(tmp_path / "cache")
    ws.table("vid1", "invert", PROV, num_frames=3, fields=FIELDS)
    with pytest.raises(CacheError, match="3 frames"):
        ws.table("vid1", "invert", PROV, num_frames=4, fields=FIELDS)


def test_tampered_provenance_is_refused(tmp_path):
    ws = Workspace(tmp_path / "cache")
    t = ws.table("vid1", "invert", PROV, num_frames=2, fields=FIELDS)
    t.group.attrs["provenance"] = {**PROV, "steps": 999}
    with pytest.raises(CacheError, match="does not match its key"):
        Workspace(tmp_path / "cache").table("vid1", "invert", PROV, num_frames=2, fields=FIELDS)


def test_nan_in_a_done_frame_is_reported_not_passed_on(tmp_path):
    ws = Workspace(tmp_path / "cache")
    t = ws.table("vid1", "invert", PROV, num_frames=2, fields=FIELDS)
    t.write([0, 1], latents=np.ones((2, 3, 4)), loss=np.ones(2))
    t.group["latents"][1] = np.full((3, 4), np.nan, dtype=np.float32)  # damage after the fact
    with pytest.raises(CacheError, match="NaN"):
        t.read("latents")
    assert t.check_finite().tolist() == [1]


def test_nan_ok_fields_keep_their_nan(tmp_path):
    ws = Workspace(tmp_path / "cache")
    fields = {"points": Field((2,), nan_ok=True)}
    t = ws.table("vid1", "landmarks", PROV, num_frames=2, fields=fields)
    t.write([0, 1], points=np.array([[1.0, 2.0], [np.nan, np.nan]]))
    assert np.isnan(t.read("points")[1]).all()
    assert t.check_finite().size == 0


def test_half_made_table_is_rebuilt(tmp_path):
    ws = Workspace(tmp_path / "cache")
    t = ws.table("vid1", "invert", PROV, num_frames=2, fields=FIELDS)
    # simulate a crash between creating the group and writing its metadata
    grp = zarr.open_group(ws.store, path=t.group.path, mode="w")  # an empty group, no attributes
    assert "provenance_key" not in grp.attrs
    ws2 = Workspace(tmp_path / "cache")
    ws2.creation_timeout = 0.1
    rebuilt = ws2.table("vid1", "invert", PROV, num_frames=2, fields=FIELDS)
    assert rebuilt.counts() == {"pending": 2, "done": 0, "failed": 0}


def test_foreign_zarr_store_is_refused(tmp_path):
    g = zarr.open_group(tmp_path / "other", mode="w")
    g.create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(CacheError, match="not a facereenact cache"):
        Workspace(tmp_path / "other")


def test_a_file_is_not_a_cache(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(CacheError, match="is a file"):
        Workspace(f)


def test_fsspec_memory_url():
    ws = Workspace("memory://facereenact-test-cache")
    t = ws.table("vid1", "invert", PROV, num_frames=3, fields=FIELDS)
    t.write([2], latents=np.full((1, 3, 4), 2.0), loss=np.array([0.1]))
    again = Workspace("memory://facereenact-test-cache").table("vid1", "invert", PROV, 3, FIELDS)
    np.testing.assert_array_equal(again.read("latents", [2])[0], np.full((3, 4), 2.0))


def test_jobs_are_recorded(tmp_path):
    ws = Workspace(tmp_path / "cache")
    ws.record_job("job-1", {"kind": "invert", "inputs": ["a.mp4"]})
    ws.record_job("job-1", {"state": "running"})
    assert ws.jobs()["job-1"] == {"kind": "invert", "inputs": ["a.mp4"], "state": "running"}


def _writer(path: str, start: int, n: int) -> None:
    ws = Workspace(path)
    t = ws.table("vid1", "invert", PROV, num_frames=40, fields=FIELDS)
    for i in range(start, start + n):
        t.write([i], latents=np.full((1, 3, 4), float(i)), loss=np.array([float(i)]))


def test_two_processes_write_one_table_without_corrupting_it(tmp_path):
    path = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, s, 20)) for s in (0, 20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    t = Workspace(path).table("vid1", "invert", PROV, num_frames=40, fields=FIELDS)
    assert t.is_complete()
    np.testing.assert_array_equal(t.read("loss"), np.arange(40, dtype=np.float32))
    assert len(list(Workspace(path).tables())) == 1
