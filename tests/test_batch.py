"""`facereenact batch`: a manifest of reenactment jobs on a tiny generator, each job through the real
reenact flow. A job with a corrupt driving clip fails alone with its one-line reason while the others
finish (exit 6 after the summary); a rerun skips the finished jobs without rewriting a chunk; the
same jobs written as JSONL are the same jobs; `facereenact resume BATCH` reruns only the failed job
once its input is fixed; `facereenact status --job BATCH` lists the batch's jobs."""

from __future__ import annotations

import json
import shutil

import pytest

from flows.cli import main
from storage.cache import Workspace
from storage.video import probe
from tests import reenact_data
from tests.reenact_data import table_chunks
from tests.support.manifests import batch_jobs as jobs
from tests.support.manifests import jsonl_manifest, yaml_manifest

pytestmark = pytest.mark.usefixtures("prefect_harness")
FRAMES = 3


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    reenact_data.driving_clip(root / "drive.mp4", FRAMES)
    shutil.copy(reenact_data.source(), root / "face.jpg")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # not a video
    return root, reenact_data.tiny_weights(root)


@pytest.fixture(scope="module")
def first_batch(batch_dir):
    """The batch run once through the CLI's entry point in this process (module-wide: the tests below
    read what it left). What the CLI sets in the environment is undone after the module."""
    root, weights = batch_dir
    manifest = yaml_manifest(root / "nightly.yaml", jobs())
    argv = ["batch", manifest, "--cache", root / "cache", "--weights", weights, "--device", "cpu"]
    with pytest.MonkeyPatch.context() as m:
        m.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        yield root, weights, manifest, argv, main([str(a) for a in argv])


def test_each_job_runs_through_reenact_and_a_bad_one_fails_alone(first_batch, cli):
    root, weights, manifest, argv, code = first_batch
    assert code == 6
    for name, frames in (("plain", FRAMES), ("free", 2 * FRAMES)):
        info = probe(root / "out" / f"{name}.mp4")
        assert info.frame_count == frames  # the free job has sub-frames
        sidecar = json.loads((root / "out" / f"{name}.mp4.json").read_text())
        assert sidecar["frames"] == frames
    assert probe(root / "out" / "free.mp4").width == 3 * 32  # side by side at the tiny generator's 32 px
    assert not (root / "out" / "broken.mp4").exists()

    ws = Workspace(root / "cache")
    records = ws.jobs()
    (batch,) = [r for r in records.values() if r.get("kind") == "batch"]
    assert batch["state"] == "failed"
    summary = batch["summary"]
    assert summary["done"] == ["plain", "free"] and list(summary["failed"]) == ["broken"]
    reason = summary["failed"]["broken"]
    assert "broken.mp4" in reason and "\n" not in reason and "Traceback" not in reason
    by_name = {r["name"]: r for r in records.values() if r.get("kind") == "reenact"}
    assert by_name["plain"]["state"] == "finished" and by_name["broken"]["state"] == "failed"
    assert by_name["free"]["options"]["variant"] == "free"
    # The job records name their cache tables (what `status` counts).
    assert all(loc in {t.location for t in ws.tables()} for loc in by_name["plain"]["tables"])


def test_rerun_skips_finished_jobs_and_prints_the_summary_before_exit_6(first_batch, cli):
    root, weights, manifest, argv, _ = first_batch
    chunks = table_chunks(root / "cache")
    made = {p: p.stat().st_mtime_ns for p in (root / "out").glob("*.mp4")}
    again = cli(*argv)
    assert again.returncode == 6
    lines = again.stdout.splitlines()
    assert lines[0].startswith("batch batch-") and "3 jobs, 0 done, 1 failed, 2 skipped" in lines[0]
    assert any(line.startswith("  skipped: plain ->") for line in lines)
    assert any(line.startswith("  failed:  broken:") and "broken.mp4" in line for line in lines)
    (error,) = [line for line in again.stderr.splitlines() if line.startswith("facereenact: error:")]
    assert "1 of 3 jobs failed (broken" in error
    # progress: a line per job as it ends (the skipped ones, and the one that failed again)
    assert "batch [1/3] plain: finished before, skipped" in again.stderr
    assert "batch [3/3] broken: failed:" in again.stderr
    assert table_chunks(root / "cache") == chunks  # not one chunk rewritten
    assert {p: p.stat().st_mtime_ns for p in (root / "out").glob("*.mp4")} == made

    # The same jobs in JSONL are the same jobs: the finished ones are skipped there too.
    jl = cli("batch", jsonl_manifest(root / "nightly.jsonl", jobs()[:2]), *argv[2:])
    assert jl.returncode == 0, jl.stderr
    assert "2 jobs, 0 done, 0 failed, 2 skipped" in jl.stdout and table_chunks(root / "cache") == chunks


def test_status_and_resume_of_the_batch_rerun_only_the_failed_job(first_batch, cli):
    root, weights, manifest, argv, _ = first_batch
    cache = root / "cache"
    ws = Workspace(cache)
    (batch_id,) = [j for j, r in ws.jobs().items() if r.get("kind") == "batch" and r["manifest"] == manifest]
    status = cli("status", cache, "--job", batch_id, "--json")
    assert status.returncode == 0, status.stderr
    rows = {row["job"]: row for row in json.loads(status.stdout)["jobs"]}
    names = {ws.jobs()[j].get("name"): row for j, row in rows.items() if j != batch_id}
    assert set(names) == {"plain", "free", "broken"} and rows[batch_id]["state"] == "failed"
    assert names["plain"]["state"] == "finished" and names["plain"]["done"] >= FRAMES
    assert names["broken"]["state"] == "failed"
    text = cli("status", cache, "--job", batch_id)
    assert batch_id[:40] in text.stdout and text.stdout.count("reenact") >= 3

    # The input fixed, `resume BATCH` runs only the failed job; the finished ones are skipped.
    shutil.copy(root / "drive.mp4", root / "broken.mp4")
    chunks = table_chunks(cache)
    resumed = cli("resume", batch_id, "--cache", cache)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 jobs, 1 done, 0 failed, 2 skipped" in resumed.stdout
    assert "  done:    broken ->" in resumed.stdout
    assert probe(root / "out" / "broken.mp4").frame_count == FRAMES
    # broken.mp4 now holds drive.mp4's bytes: the same content, so its cached tables were reused too.
    assert table_chunks(cache) == chunks
    assert Workspace(cache).jobs()[batch_id]["state"] == "finished"

    # `resume` of one job of the batch resumes its batch: here nothing is left to do.
    (broken_id,) = [j for j, r in Workspace(cache).jobs().items() if r.get("name") == "broken"]
    again = cli("resume", broken_id, "--cache", cache)
    assert again.returncode == 0, again.stderr
    assert f"is one job of {batch_id}" in again.stdout
    assert "3 jobs, 0 done, 0 failed, 3 skipped" in again.stdout
