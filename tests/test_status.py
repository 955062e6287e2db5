"""`facereenact status`: progress from the cache alone; --repair turns damaged frames into failures."""

from __future__ import annotations

import json

import numpy as np

from storage.cache import Field, Workspace
from tests.helpers import assert_user_error

FIELDS = {"latents": Field((2, 3))}


def _filled_cache(path):
    ws = Workspace(path)
    ws.media("abc", {"source": "/data/clip.mp4"})
    t = ws.table("abc", "invert", {"steps": 3}, num_frames=4, fields=FIELDS)
    t.write([0, 1], latents=np.ones((2, 2, 3)))
    t.fail([2], "loss is NaN at step 2")
    ws.record_job("job-1", {"kind": "invert", "state": "finished", "tables": [t.location]})
    return ws, t


def test_status_counts_jobs_and_tables(tmp_path, cli):
    _filled_cache(tmp_path / "c")
    proc = cli("status", tmp_path / "c", "--json", check=True)
    report = json.loads(proc.stdout)
    assert report["jobs"] == [{"job": "job-1", "kind": "invert", "state": "finished", "updated": None,
                               "frames": 4, "done": 2, "failed": 1, "pending": 1}]
    (table,) = report["tables"]
    assert (table["media"], table["done"], table["failed"], table["pending"]) == ("/data/clip.mp4", 2, 1, 1)
    assert table["errors"] == {"2": "loss is NaN at step 2"}
    text = cli("status", tmp_path / "c", "--failed", check=True).stdout
    assert "frame 2: loss is NaN at step 2" in text and "job-1" in text


def test_status_repair_marks_damaged_frames_failed(tmp_path, cli):
    ws, t = _filled_cache(tmp_path / "c")
    t.group["latents"][1] = np.full((2, 3), np.nan, dtype=np.float32)
    cli("status", tmp_path / "c", "--repair", check=True)
    t2 = next(Workspace(tmp_path / "c").tables())
    assert t2.failed_frames().tolist() == [1, 2]
    assert "damaged" in t2.errors()[1]


def test_status_of_missing_or_foreign_cache_is_one_line(tmp_path, cli):
    assert_user_error(cli("status", tmp_path / "nothing"), "no cache here", code=5)
    (tmp_path / "file").write_text("x")
    assert_user_error(cli("status", tmp_path / "file"), "is a file", code=5)
