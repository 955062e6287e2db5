"""The reenact flow on a Prefect test server: the output (frames, fps, audio, layouts, sub-frames,
paste-back), the sidecar and the cache tables, a frame without a face kept, latents equal to the
Projector called directly, a second run that does no work, and a missing output re-rendered from
the cache without projecting."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from flows.reenact import reenact
from models.reenact import SourceFace, make_projector, projection_config
from storage.cache import Workspace
from storage.errors import InputError
from storage.latents import LatentCache
from storage.reenact import ReenactCache
from storage.video import probe
from tests import reenact_data
from tests.reenact_data import OPTIONS, reenact_dirs, table_chunks

pytestmark = pytest.mark.usefixtures("prefect_harness")
FRAMES = 6
BLANK = 3  # driving frame without a face


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reenact")
    clip = reenact_data.driving_clip(root / "drive.mp4", FRAMES, blank=(BLANK,), audio=True)
    return root, reenact_data.tiny_weights(root), clip


@pytest.fixture(scope="module")
def first_run(inputs):
    root, weights, clip = inputs
    cache, out = root / "cache", root / "out" / "side.mp4"
    summary = reenact(str(reenact_data.source()), str(clip), str(out), str(cache), str(weights),
                      layout="side-by-side", device="cpu", **OPTIONS)
    return cache, out, summary


def test_end_to_end(inputs, first_run):
    _, weights, clip = inputs
    cache, out, summary = first_run
    info = probe(out)
    # Every driving frame (the one without a face too), at the driving fps, with its audio; side by
    # side is look | driving | result at the generator's 32 px.
    assert info.frame_count == FRAMES == summary["frames"] and info.fps == reenact_data.FPS
    assert info.has_audio and (info.width, info.height) == (3 * 32, 32)
    assert summary["interpolated_frames"] == 1 and summary["held_frames"] == []
    assert summary["failed_frames"] == 0
    assert summary["computed"] == {"source_inverted": 1, "projected": FRAMES, "resumed_from": 0,
                                   "rendered": True}
    m = summary["metrics"]
    assert 0 < m["landmark_nme"] < 5 and m["seconds_per_frame"] > 0
    # The tiny random generator draws no face: identity is claimed only over frames with one.
    assert 0 <= m["no_face_frames"] <= FRAMES
    assert (m["identity_similarity"] is None) == (m["no_face_frames"] == FRAMES)
    assert m["identity_similarity"] is None or 0 < m["identity_similarity"] <= 1
    assert m["landmark_jitter"] >= 0 and os.path.isfile(summary["preview"])

    ws = Workspace(cache)
    table = ReenactCache.at(ws, summary["tables"]["reenact"])
    assert table.counts() == {"pending": 0, "done": FRAMES, "failed": 0}
    per = table.per_frame()
    assert per["interpolated"].tolist() == [int(i == BLANK) for i in range(FRAMES)]
    # Provenance: the settings, the generator, the source's inversion, the driving crops.
    p = table.table.provenance
    assert p["settings"]["steps_first"] == OPTIONS["steps_first"] and p["mode"] == "projection"
    assert p["source_latents"] == LatentCache.at(ws, summary["tables"]["source_latents"]).key
    assert p["driving_crops"] == ws.open_table(summary["tables"]["driving_crops"]).key
    assert p["calibrated"] is False and table.table.attrs["code_version"]
    state = table.load_state()
    assert state["noise"] and state["driving_reference"].shape == (68, 2)

    # The sidecar: metrics, per-frame seconds, provenance (what `facereenact evaluate` reads).
    sidecar = json.loads((out.parent / "side.mp4.json").read_text())
    assert sidecar["metrics"] == m and len(sidecar["per_frame"]["seconds"]) == FRAMES
    assert sidecar["provenance"]["generator"]["weights_sha256"] == p["generator"]["weights_sha256"]

    # The latents are those of the Projector called directly on the cached source and driving crops.
    from tasks import resources

    G = resources.generator(str(weights), "cpu")
    crops = ws.open_table(summary["tables"]["source_crops"])
    face = SourceFace(crops.read("crop", [0])[0], crops.read("crop_landmarks", [0])[0],
                      LatentCache.at(ws, summary["tables"]["source_latents"]).read([0])[0])
    projector = make_projector(G, projection_config("identity", steps_first=4, steps_next=2,
                                                    perceptual="uncalibrated-alex"), face)
    driving = ws.open_table(summary["tables"]["driving_crops"]).read("crop_landmarks")
    direct = projector.project_frames(0, torch.from_numpy(driving))
    np.testing.assert_array_equal(table.read("latents"), direct.latents.numpy())


def test_second_run_does_no_work_and_a_missing_output_is_rendered_from_the_cache(inputs, first_run):
    root, weights, clip = inputs
    cache, out, first = first_run
    chunks, made = table_chunks(cache), out.stat().st_mtime_ns
    args = (str(reenact_data.source()), str(clip), str(out), str(cache), str(weights))
    again = reenact(*args, layout="side-by-side", device="cpu", **OPTIONS)
    assert again["computed"] == {"source_inverted": 0, "projected": 0, "resumed_from": FRAMES,
                                 "rendered": False}
    assert table_chunks(cache) == chunks and out.stat().st_mtime_ns == made
    assert again["metrics"] == first["metrics"]

    out.unlink()
    remade = reenact(*args, layout="side-by-side", device="cpu", **OPTIONS)
    assert remade["computed"]["projected"] == 0 and remade["computed"]["rendered"] is True
    assert table_chunks(cache) == chunks and probe(out).frame_count == FRAMES
    assert len(reenact_dirs(cache)) == 1


def test_subframes_and_paste_back(inputs, first_run):
    root, weights, clip = inputs
    cache, _, _ = first_run
    out = root / "out" / "pasted.mp4"
    chunks = table_chunks(cache)
    summary = reenact(str(reenact_data.source()), str(clip), str(out), str(cache), str(weights),
                      paste_back=True, subframes=True, device="cpu", **OPTIONS)
    info = probe(out)
    # Twice the frames at twice the rate (the same duration, so the audio still fits); pasted into
    # the driving frames: the driving clip's size. Same settings: the cached latents were reused.
    assert info.frame_count == 2 * FRAMES and info.fps == Fraction(2 * reenact_data.FPS)
    assert (info.width, info.height) == (256, 256) and info.has_audio
    assert summary["computed"]["projected"] == 0 and table_chunks(cache) == chunks

    # Another variant is another table beside the first (never mixed in).
    summary = reenact(str(reenact_data.source()), str(clip), str(root / "out" / "free.mp4"), str(cache),
                      str(weights), variant="free", device="cpu", **OPTIONS)
    assert summary["computed"]["projected"] == FRAMES and len(reenact_dirs(cache)) == 2


def test_unknown_mode_layout_and_option(inputs, tmp_path):
    root, weights, clip = inputs
    args = (str(reenact_data.source()), str(clip), str(tmp_path / "o.mp4"), str(tmp_path / "c"), str(weights))
    with pytest.raises(InputError, match="unknown mode 'mapping-v9'"):
        reenact(*args, mode="mapping-v9")
    with pytest.raises(InputError, match="unknown layout"):
        reenact(*args, layout="grid")
    with pytest.raises(InputError, match="unknown projection option"):
        reenact(*args, device="cpu", stepz_first=3, **OPTIONS)
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "c").exists()  # before any work
