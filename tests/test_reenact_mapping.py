"""Mapping-mode reenactment (Choe 2023) through the reenact flow and `facereenact run`: a tiny mapping
network trained in the test by the real train-mapping flow, the output and its metrics, the cached
latents equal to w_src + Δw computed directly, a rerun that does no work, another checkpoint in
another table, `refine_steps` (projection steps from the network's output) and one-line errors."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from flows.reenact import reenact
from models.reenact import mapping_inputs
from storage.cache import Workspace
from storage.latents import LatentCache
from storage.provenance import sha256_file
from storage.reenact import ReenactCache
from storage.video import probe
from tests import reenact_data
from tests.helpers import assert_user_error
from tests.mapping_cache import train_checkpoint
from tests.reenact_data import reenact_dirs, table_chunks

pytestmark = pytest.mark.usefixtures("prefect_harness")
FRAMES = 6
BLANK = 3  # driving frame without a face (interpolated by prepare)
OPTIONS = {"invert_steps": 3, "perceptual": "uncalibrated-alex"}
REFINE = 8
MAPPING_CLI_OPTIONS = ["--invert-steps", "3", "--perceptual", "uncalibrated-alex", "--device", "cpu",
                       "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tasks import resources

    root = tmp_path_factory.mktemp("reenact-mapping")
    weights = reenact_data.tiny_weights(root)
    clip = reenact_data.driving_clip(root / "drive.mp4", FRAMES, blank=(BLANK,), audio=True)
    G = resources.generator(str(weights), "cpu")
    checkpoint = train_checkpoint(root, "mapping", 30, G.fingerprint())
    return root, weights, clip, checkpoint


@pytest.fixture(scope="module")
def first_run(inputs):
    root, weights, clip, checkpoint = inputs
    cache, out = root / "cache", root / "out" / "mapped.mp4"
    summary = reenact(str(reenact_data.source()), str(clip), str(out), str(cache), str(weights),
                      mode="mapping", mapping=checkpoint, layout="side-by-side", device="cpu", **OPTIONS)
    return cache, out, summary


def test_mapping_mode_end_to_end(inputs, first_run):
    from models.mapping.checkpoint import load_mapping_network
    from models.mapping.inference import reenact_with_mapping
    from tasks import resources

    _, weights, clip, checkpoint = inputs
    cache, out, summary = first_run
    info = probe(out)
    assert info.frame_count == FRAMES == summary["frames"] and info.fps == reenact_data.FPS
    assert info.has_audio and (info.width, info.height) == (3 * 32, 32)
    assert summary["mode"] == "mapping" and summary["failed_frames"] == 0
    assert summary["interpolated_frames"] == 1 and summary["computed"]["projected"] == FRAMES
    m = summary["metrics"]
    assert np.isfinite(m["landmark_nme"]) and np.isfinite(m["landmark_nme_target"])
    assert m["seconds_per_frame"] > 0 and m["landmark_jitter"] >= 0
    assert (m["identity_similarity"] is None) == (m["no_face_frames"] == FRAMES)  # no face: no number

    ws = Workspace(cache)
    table = ReenactCache.at(ws, summary["tables"]["reenact"])
    assert table.counts() == {"pending": 0, "done": FRAMES, "failed": 0}
    per = table.per_frame()
    assert per["steps"].tolist() == [0] * FRAMES and per["interpolated"].tolist()[BLANK] == 1
    p = table.table.provenance
    assert p["mode"] == "mapping" and p["refine_steps"] == 0 and p["refine"] is None
    assert p["mapping"]["checkpoint_sha256"] == sha256_file(checkpoint)
    assert p["source_latents"] == LatentCache.at(ws, summary["tables"]["source_latents"]).key
    assert table.load_state()["noise"] is None  # the render uses G's constant noise, as the network's pass
    sidecar = json.loads((out.parent / "mapped.mp4.json").read_text())
    assert sidecar["provenance"]["mapping"]["checkpoint_sha256"] == sha256_file(checkpoint)
    assert sidecar["metrics"] == m and sidecar["per_frame"]["steps"] == [0] * FRAMES

    # The cached latents are w_src + Δw of the network called directly on the cached landmarks
    # (relative inputs: the driving motion on the source's landmarks).
    G = resources.generator(str(weights), "cpu")
    net = load_mapping_network(checkpoint, generator=G)
    crops = ws.open_table(summary["tables"]["source_crops"])
    driving = ws.open_table(summary["tables"]["driving_crops"]).read("crop_landmarks")
    src = crops.read("crop_landmarks", [0])[0]
    w_src = LatentCache.at(ws, summary["tables"]["source_latents"]).read([0])[0]
    drv, _ = mapping_inputs(src, driving, relative=True)
    direct = reenact_with_mapping(G, net, *(torch.from_numpy(a) for a in (w_src, src, drv)))
    np.testing.assert_allclose(table.read("latents"), direct.numpy(), rtol=0, atol=1e-6)
    assert float(np.abs(direct.numpy() - w_src).max()) > 1e-4  # the network moved the latent


def test_rerun_does_no_work_and_another_checkpoint_makes_another_table(inputs, first_run):
    root, weights, clip, checkpoint = inputs
    cache, out, first = first_run
    chunks, made = table_chunks(cache), out.stat().st_mtime_ns
    args = (str(reenact_data.source()), str(clip), str(out), str(cache), str(weights))
    again = reenact(*args, mode="mapping", mapping=checkpoint, layout="side-by-side", device="cpu", **OPTIONS)
    assert again["computed"] == {"source_inverted": 0, "projected": 0, "resumed_from": FRAMES,
                                 "rendered": False}
    assert table_chunks(cache) == chunks and out.stat().st_mtime_ns == made

    other = train_checkpoint(root, "other", 12, _fingerprint(weights))
    summary = reenact(str(reenact_data.source()), str(clip), str(root / "out" / "other.mp4"), str(cache),
                      str(weights), mode="mapping", mapping=other, device="cpu", **OPTIONS)
    assert summary["computed"]["projected"] == FRAMES
    assert summary["tables"]["reenact"] != first["tables"]["reenact"]
    assert len(reenact_dirs(cache)) == 2


def _fingerprint(weights) -> dict:
    from tasks import resources

    return resources.generator(str(weights), "cpu").fingerprint()


def test_refine_steps_start_projection_at_the_network_output(inputs, first_run):
    root, weights, clip, checkpoint = inputs
    cache, _, first = first_run
    summary = reenact(str(reenact_data.source()), str(clip), str(root / "out" / "refined.mp4"), str(cache),
                      str(weights), mode="mapping", mapping=checkpoint, refine_steps=REFINE, device="cpu",
                      **OPTIONS)
    ws = Workspace(cache)
    plain = ReenactCache.at(ws, first["tables"]["reenact"])
    refined = ReenactCache.at(ws, summary["tables"]["reenact"])
    assert refined.location != plain.location and summary["computed"]["projected"] == FRAMES
    p = refined.table.provenance
    assert p["refine_steps"] == REFINE and p["refine"]["settings"]["steps_next"] == REFINE
    assert refined.per_frame()["steps"].tolist() == [REFINE] * FRAMES
    assert not np.array_equal(refined.read("latents"), plain.read("latents"))
    # K projection steps on the landmark term lower the error to the targets the network was given.
    before, after = first["metrics"]["landmark_nme_target"], summary["metrics"]["landmark_nme_target"]
    print(f"\nlandmark NME to the targets: mapping {before:.4f}, mapping + {REFINE} refine steps {after:.4f}")
    assert after < before


def test_user_errors(inputs, tmp_path, capsys):
    from flows.cli import main

    root, weights, clip, checkpoint = inputs
    out = tmp_path / "out.mp4"

    def run(*args) -> subprocess.CompletedProcess:
        try:
            code = main(["run", "--source", str(reenact_data.source()), "--driving", str(clip), "--weights",
                         str(weights), "-o", str(out), "--cache", str(tmp_path / "cache"), *map(str, args),
                         *MAPPING_CLI_OPTIONS])
        except SystemExit as exit_:  # the parser's own one-line errors
            code = exit_.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    assert_user_error(run("--mode", "mapping", "--mapping", tmp_path / "nope.pt"), "nope.pt", "not found",
                      code=3)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not a checkpoint")
    assert_user_error(run("--mode", "mapping", "--mapping", corrupt), "corrupt.pt", code=3)
    foreign = train_checkpoint(tmp_path, "foreign", 2, None)  # latents of another generator ("a" * 64)
    proc = run("--mode", "mapping", "--mapping", foreign)
    sha = _fingerprint(weights)["weights_sha256"]
    assert_user_error(proc, "foreign.pt", "a" * 16, sha[:16], str(weights), code=3)
    assert_user_error(run("--mode", "mapping"), "needs a mapping-network checkpoint", code=2)
    assert_user_error(run("--mode", "mapping", "--mapping", checkpoint, "--refine-steps", "-1"),
                      "--refine-steps", "must be between 0 and", code=2)
    assert_user_error(run("--refine-steps", "3"), "settings of --mode mapping", code=2)
    assert_user_error(run("--mode", "mapping", "--mapping", checkpoint, "--steps-first", "3"),
                      "steps_first", "--refine-steps", code=2)
    assert not (tmp_path / "cache").exists() and not out.exists()  # all before any work


def test_batch_manifest_job_in_mapping_mode_reaches_the_mapping_table(inputs, first_run):
    import yaml

    from flows.batch import reenact_batch

    root, weights, clip, checkpoint = inputs
    cache, _, _ = first_run
    manifest = root / "batch" / "nightly.yaml"
    manifest.parent.mkdir(exist_ok=True)
    manifest.write_text(yaml.safe_dump([{
        "name": "mapped", "source": str(reenact_data.source()), "driving": str(clip), "output": "mapped.mp4",
        "mode": "mapping", "options": {"mapping": checkpoint, **OPTIONS}}]))
    chunks, tables = table_chunks(cache), reenact_dirs(cache)
    summary = reenact_batch(str(manifest), str(cache), str(weights), device="cpu")
    assert summary["done"] == ["mapped"] and probe(manifest.parent / "mapped.mp4").frame_count == FRAMES
    # the same settings as the first run: its mapping table, nothing computed again
    assert reenact_dirs(cache) == tables and table_chunks(cache) == chunks


def test_one_generator_pass_per_output_frame(inputs, first_run, tmp_path):
    """Mapping mode renders each output frame once: the mapping stage makes latents only and the
    render's generator pass is also what the landmarks and NMEs are measured on (counted through a
    forward hook on the generator's synthesis network; the source is inverted in the cache already)."""
    import shutil

    from tasks import resources

    _, weights, clip, checkpoint = inputs
    cache, _, first = first_run
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    shutil.rmtree(copy / first["tables"]["reenact"])
    G = resources.generator(str(weights), "cpu")
    rows: list[int] = []
    handle = G.synthesis.register_forward_hook(lambda module, args, out: rows.append(int(out.shape[0])))
    try:
        summary = reenact(str(reenact_data.source()), str(clip), str(tmp_path / "again.mp4"), str(copy),
                          str(weights), mode="mapping", mapping=checkpoint, layout="side-by-side",
                          device="cpu", **OPTIONS)
    finally:
        handle.remove()
    assert summary["computed"]["projected"] == FRAMES and summary["computed"]["rendered"]
    assert sum(rows) == FRAMES  # was 2 * FRAMES: a metrics pass in the mapping stage, then the render
    # the metrics measured on the render's pass, stored in the table, as the first run's
    table = ReenactCache.at(Workspace(copy), summary["tables"]["reenact"])
    per, face = table.per_frame(), table.per_frame()["interpolated"] == 0
    assert np.isfinite(table.read("points")[face]).all() and np.isfinite(per["nme"][face]).all()
    assert summary["metrics"]["landmark_nme"] == first["metrics"]["landmark_nme"]
    assert summary["metrics"]["landmark_nme_target"] == first["metrics"]["landmark_nme_target"]
