"""Bad inputs through the commands a user runs: each gives one `facereenact: error: ...` line naming
the file and the problem, the documented exit code, no traceback, and no frame marked done.

Each case builds its bad file in the test's temp dir and returns the command line; the command runs
in this process (`cli`, see conftest.py: flows.cli.main, file descriptors captured). The cases where
the process itself matters are in test_processes.py and test_disk_full.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from storage.cache import Workspace
from tests.helpers import assert_user_error
from tests.reliability.inputs import Inputs, audio_only, png_header_only
from tests.support.folders import readonly_folder

INVERT = ["--steps", "1", "--batch-size", "2", "--perceptual", "uncalibrated-alex", "--device", "cpu",
          "--quiet"]
PREPARE = ["--resolution", "32", "--device", "cpu", "--quiet"]


def _prepare(bad: Path, cache: Path) -> list:
    return ["prepare", bad, "--cache", cache, *PREPARE]


def _invert(dataset: Path, cache: Path, weights: Path) -> list:
    return ["invert", dataset, "--cache", cache, "--weights", weights, *INVERT]


def _jsonl(path: Path, *rows: dict | str) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _bad_file(case: str, name: str, content: Callable[[Inputs], bytes], *problem: str) -> Callable:
    """A case: `prepare` of the file `name` holding `content(inputs)`; one line naming it and `problem`."""
    def make(t: Path, d: Inputs):
        (t / name).write_bytes(content(d))
        return _prepare(t / name, t / "cache"), [name, *problem], 2

    make.__name__ = case
    return make


def _head(path: Path, fraction: float) -> bytes:
    whole = path.read_bytes()
    return whole[:int(len(whole) * fraction)]


def _tail(path: Path, fraction: float) -> bytes:
    whole = path.read_bytes()
    return whole[int(len(whole) * (1 - fraction)):]


# ------------------------------------------------------------------------------------------ videos
video_corrupt = _bad_file("video_corrupt", "corrupt.mp4", lambda d: os.urandom(4096), "not a readable video")
video_empty = _bad_file("video_empty", "empty.mp4", lambda d: b"", "empty file (0 bytes)")
# the first half: the moov atom (the index) is at the end, gone
video_truncated = _bad_file("video_truncated", "cut.mp4", lambda d: _head(d.clip, 0.5), "no frames")
video_header_cut = _bad_file("video_header_cut", "headless.mp4", lambda d: _tail(d.clip, 2 / 3),
                             "not a readable video")


def video_audio_only(t: Path, d: Inputs):
    audio_only(t / "voice.m4a")
    return _prepare(t / "voice.m4a", t / "cache"), ["voice.m4a", "no video stream (audio only)"], 2


def video_huge_dimensions(t: Path, d: Inputs):
    # 128x128 frames against a limit of 100x100 pixels: refused from the header, before decoding.
    os.environ["FACEREENACT_MAX_PIXELS"] = "10000"  # restored by the test (monkeypatch)
    return _prepare(d.clip, t / "cache"), ["clip.mp4", "128x128", "above the limit"], 2


# ------------------------------------------------------------------------------------------ images
image_not_an_image = _bad_file("image_not_an_image", "notes.png", lambda d: b"not an image at all",
                               "not a readable image")
image_empty = _bad_file("image_empty", "empty.jpg", lambda d: b"", "empty file (0 bytes)")
image_truncated = _bad_file("image_truncated", "cut.png", lambda d: _head(d.face, 0.5), "truncated")


def image_decompression_bomb(t: Path, d: Inputs):
    png_header_only(t / "bomb.png", 100_000, 100_000)
    return _prepare(t / "bomb.png", t / "cache"), ["bomb.png", "above the limit"], 2


# ---------------------------------------------------------------------------------------- manifests
def manifest_path_traversal(t: Path, d: Inputs):
    (t / "jobs").mkdir()
    m = _jsonl(t / "jobs" / "videos.jsonl", {"path": str(Path("..") / ".." / ".." / "etc" / "passwd")})
    return _invert(m, t / "cache", d.weights), \
        ["videos.jsonl", "line 1", "escapes the manifest's directory"], 2


def manifest_symlink_escape(t: Path, d: Inputs):
    (t / "jobs").mkdir()
    (t / "jobs" / "clip.mp4").symlink_to(d.clip)  # inside by name, outside once resolved
    m = _jsonl(t / "jobs" / "videos.jsonl", {"path": "clip.mp4"})
    return _invert(m, t / "cache", d.weights), ["videos.jsonl", "escapes the manifest's directory"], 2


def manifest_bad_json(t: Path, d: Inputs):
    shutil.copy(d.clip, t / "clip.mp4")
    m = _jsonl(t / "videos.jsonl", {"path": "clip.mp4"}, '{"path": "clip.mp4"')
    return _invert(m, t / "cache", d.weights), ["videos.jsonl", "line 2", "not valid JSON"], 2


def manifest_not_utf8(t: Path, d: Inputs):
    (t / "videos.csv").write_bytes(b"path\n\xff\xfe\xfa.mp4\n")
    return _invert(t / "videos.csv", t / "cache", d.weights), ["videos.csv", "not UTF-8"], 2


def manifest_csv_without_path(t: Path, d: Inputs):
    (t / "videos.csv").write_text("file,label\nclip.mp4,a\n")
    return _invert(t / "videos.csv", t / "cache", d.weights), ["videos.csv", "line 2", "no 'path'"], 2


def manifest_missing_file(t: Path, d: Inputs):
    m = _jsonl(t / "videos.jsonl", {"path": "gone.mp4"})
    return _invert(m, t / "cache", d.weights), ["videos.jsonl", "file not found", "gone.mp4"], 2


def manifest_wrong_type(t: Path, d: Inputs):
    m = _jsonl(t / "videos.jsonl", '["clip.mp4"]')
    return _invert(m, t / "cache", d.weights), ["videos.jsonl", "line 1", "expected a JSON object"], 2


def manifest_empty(t: Path, d: Inputs):
    (t / "videos.jsonl").write_text("# nothing yet\n")
    return _invert(t / "videos.jsonl", t / "cache", d.weights), ["videos.jsonl", "no videos found"], 2


def video_wplus_is_a_video(t: Path, d: Inputs):
    return ["generate", "--weights", d.weights, "--wplus", d.clip, "--out", t / "out"], \
        ["clip.mp4", "cannot read W+ codes"], 2


def wplus_nan(t: Path, d: Inputs):
    codes = np.zeros((2, 8, 64), np.float32)
    codes[1, 3, 5] = np.nan
    np.save(t / "codes.npy", codes)
    return ["generate", "--weights", d.weights, "--wplus", t / "codes.npy", "--out", t / "out"], \
        ["codes.npy", "must be finite"], 2


# ------------------------------------------------------------------------- batch manifests and run
# Fast options for the jobs (the cases fail before any frame is computed).
REENACT = {"steps_first": 1, "steps_next": 1, "invert_steps": 1, "perceptual": "uncalibrated-alex"}


def _batch(t: Path, d: Inputs, manifest: str = "nightly.jsonl", *jobs: dict, output_dir: Path | None = None,
           text: str | None = None) -> list:
    """`facereenact batch` on a manifest in `t` beside copies of the clip and the face."""
    shutil.copy(d.clip, t / "clip.mp4")
    shutil.copy(d.face, t / "face.png")
    if text is not None:
        (t / manifest).write_text(text)
    else:
        _jsonl(t / manifest, *({"source": "face.png", "driving": "clip.mp4", "output": "out/a.mp4",
                                "options": REENACT} | job for job in jobs))
    extra = [] if output_dir is None else ["--output-dir", output_dir]
    return ["batch", t / manifest, "--cache", t / "cache", "--weights", d.weights, "--device", "cpu", *extra]


def _run(d: Inputs, source: Path, driving: Path, output: Path, cache: Path) -> list:
    return ["run", "--source", source, "--driving", driving, "-o", output, "--cache", cache, "--weights",
            d.weights, "--steps-first", "1", "--steps-next", "1", "--invert-steps", "1", "--perceptual",
            "uncalibrated-alex", "--device", "cpu", "--quiet"]


def batch_output_traversal(t: Path, d: Inputs):
    return _batch(t, d, "nightly.jsonl", {"output": "../../../tmp/evil.mp4"}), \
        ["nightly.jsonl: job 1 (line 1), output", "escapes the output directory"], 2


def batch_output_dir_missing(t: Path, d: Inputs):
    return _batch(t, d, "nightly.jsonl", {}, output_dir=t / "no" / "such"), \
        ["no/such", "output directory not found"], 2


def batch_output_dir_readonly(t: Path, d: Inputs):
    folder = readonly_folder(t)
    return _batch(t, d, "nightly.jsonl", {"output": "a.mp4"}, output_dir=folder), \
        ["nightly.jsonl: job 1 (line 1), output", f"folder {folder} is not writable"], 2


def batch_output_under_a_file(t: Path, d: Inputs):
    return _batch(t, d, "nightly.jsonl", {"output": "face.png/a.mp4"}), \
        ["job 1 (line 1), output", "face.png is a file, not a folder"], 2


def batch_unknown_option(t: Path, d: Inputs):
    text = (f"jobs:\n  - source: face.png\n    driving: clip.mp4\n    output: out/a.mp4\n"
            f"  - source: face.png\n    driving: clip.mp4\n    output: out/b.mp4\n"
            f"    options: {json.dumps({**REENACT, 'stepz_first': 3})}\n")
    return _batch(t, d, "nightly.yaml", text=text), \
        ["nightly.yaml: job 2 (line 5), options", "unknown projection option", "stepz_first"], 2


def batch_option_of_the_batch(t: Path, d: Inputs):
    return _batch(t, d, "nightly.jsonl", {"options": {"device": "cuda"}}), \
        ["job 1 (line 1), options", "'device' is not a job option", "set by the batch"], 2


def batch_empty_manifest(t: Path, d: Inputs):
    return _batch(t, d, "nightly.yaml", text="# no jobs tonight\n"), \
        ["nightly.yaml", "lists no jobs"], 2


def batch_driving_is_an_image(t: Path, d: Inputs):
    # A bad input of one job is that job's failure (the others would go on): exit 6 after the summary.
    return _batch(t, d, "nightly.jsonl", {"name": "still", "driving": "face.png"}), \
        ["1 of 1 jobs failed (still", "face.png", "is a still image, not a video"], 6


def run_source_is_a_video(t: Path, d: Inputs):
    return _run(d, d.clip, d.clip, t / "out" / "a.mp4", t / "cache"), \
        ["clip.mp4", "the source must be a still image"], 2


def run_output_readonly(t: Path, d: Inputs):
    folder = readonly_folder(t)
    return _run(d, d.face, d.clip, folder / "a.mp4", t / "cache"), \
        ["a.mp4", f"folder {folder} is not writable"], 2


# -------------------------------------------------------------------------------------- checkpoints
def checkpoint_truncated(t: Path, d: Inputs):
    whole = d.weights.read_bytes()
    (t / "cut.safetensors").write_bytes(whole[:len(whole) // 2])
    return _invert(d.clip, t / "cache", t / "cut.safetensors"), ["cut.safetensors", "truncated or corrupt"], 3


def checkpoint_empty(t: Path, d: Inputs):
    (t / "G.pkl").write_bytes(b"")
    return ["generate", "--weights", t / "G.pkl", "--seeds", "0", "--out", t / "out"], \
        ["G.pkl", "empty file"], 3


def checkpoint_wrong_type(t: Path, d: Inputs):
    shutil.copy(d.face, t / "G.pkl")  # an image under a checkpoint's name
    return ["generate", "--weights", t / "G.pkl", "--seeds", "0", "--out", t / "out"], \
        ["G.pkl", "unrecognised checkpoint format"], 3


def checkpoint_other_model(t: Path, d: Inputs):
    import torch
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(4, 4)}, str(t / "encoder.safetensors"))
    return _invert(d.clip, t / "cache", t / "encoder.safetensors"), \
        ["encoder.safetensors", "not a facereenact generator"], 3


def checkpoint_nan_weights(t: Path, d: Inputs):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(d.weights), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["mapping.fc0.bias"] = torch.full_like(tensors["mapping.fc0.bias"], float("nan"))
    save_file(tensors, str(t / "nan.safetensors"), metadata=meta)
    return _invert(d.clip, t / "cache", t / "nan.safetensors"), ["nan.safetensors", "NaN"], 3


def checkpoint_malicious_torch_file_convert(t: Path, d: Inputs):
    import torch

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {t / 'pwned'}",)

    torch.save({"g_ema": Payload()}, t / "evil.pt")
    return ["weights", "convert", t / "evil.pt", t / "out.safetensors"], \
        ["evil.pt", "refused by the weights-only loader"], 3


# --------------------------------------------------------------------------------------------- cache
def cache_is_a_file(t: Path, d: Inputs):
    (t / "cache").write_text("I am a file")
    return _prepare(d.face, t / "cache"), ["cache", "is a file, not a cache directory"], 5


def cache_foreign_zarr(t: Path, d: Inputs):
    zarr.open_group(str(t / "cache"), mode="w", zarr_format=3).attrs["tool"] = "someone else's"
    return _prepare(d.face, t / "cache"), ["cache", "not a facereenact cache"], 5


def cache_zarr_v2_store(t: Path, d: Inputs):
    zarr.open_group(str(t / "cache"), mode="w", zarr_format=2)
    return _prepare(d.face, t / "cache"), ["cache", "not a facereenact cache"], 5


def cache_future_layout(t: Path, d: Inputs):
    zarr.open_group(str(t / "cache"), mode="w", zarr_format=3,
                    attributes={"facereenact": {"layout": 99}})
    return ["status", t / "cache"], ["cache", "layout", "not the supported 1"], 5


def cache_unknown_url(t: Path, d: Inputs):
    return ["status", "nosuchfs://bucket/cache"], ["nosuchfs://bucket/cache", "cannot open the cache URL"], 5


def cache_tampered_provenance(t: Path, d: Inputs):
    cache = d.copy_prepared(t / "cache")
    (crops,) = Workspace(cache).tables(stage="crops")
    attrs = dict(crops.attrs)
    attrs["provenance"] = {**attrs["provenance"], "resolution": 1024}  # claims another model's crops
    crops.group.update_attributes(attrs)
    return ["status", cache], [crops.location, "provenance does not match its key"], 5


def cache_status_chunk_garbage(t: Path, d: Inputs):
    cache = d.copy_prepared(t / "cache")
    (crops,) = Workspace(cache).tables(stage="crops")
    (chunk,) = (cache / crops.location / "status" / "c").glob("1")
    chunk.write_bytes(os.urandom(64))
    return ["status", cache], [crops.location, "status array is unreadable"], 5


def cache_missing(t: Path, d: Inputs):
    return ["status", t / "nothing-here"], ["nothing-here", "no cache here"], 5


CASES: dict[str, Callable] = {f.__name__: f for f in [
    video_corrupt, video_empty, video_truncated, video_header_cut, video_audio_only, video_huge_dimensions,
    video_wplus_is_a_video, wplus_nan,
    image_not_an_image, image_empty, image_truncated, image_decompression_bomb,
    manifest_path_traversal, manifest_symlink_escape, manifest_bad_json, manifest_not_utf8,
    manifest_csv_without_path, manifest_missing_file, manifest_wrong_type, manifest_empty,
    checkpoint_truncated, checkpoint_empty, checkpoint_wrong_type, checkpoint_other_model,
    checkpoint_nan_weights, checkpoint_malicious_torch_file_convert,
    cache_is_a_file, cache_foreign_zarr, cache_zarr_v2_store, cache_future_layout, cache_unknown_url,
    cache_tampered_provenance, cache_status_chunk_garbage, cache_missing,
    batch_output_traversal, batch_output_dir_missing, batch_output_dir_readonly, batch_output_under_a_file,
    batch_unknown_option, batch_option_of_the_batch, batch_empty_manifest, batch_driving_is_an_image,
    run_source_is_a_video, run_output_readonly,
]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, data, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREENACT_MAX_PIXELS", os.environ.get("FACEREENACT_MAX_PIXELS", ""))
    argv, fragments, code = CASES[case](tmp_path, data)
    before = status_chunks(tmp_path / "cache")
    proc = cli(*argv)
    assert_user_error(proc, *fragments, code=code)
    # No partial result marked done: not one frame's status was written (every case fails before
    # any frame is computed; the damaged caches stay as they were).
    assert status_chunks(tmp_path / "cache") == before
    assert not (tmp_path / "pwned").exists()  # nothing in a checkpoint ran
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.safetensors").exists()


def status_chunks(cache: Path) -> dict[str, bytes]:
    """Every per-frame status chunk of a cache as stored (a chunk is written when a frame is marked
    done or failed; pending is the fill value, no chunk). Read as files, so that damaged and foreign
    caches can be compared too."""
    if not cache.is_dir():
        return {}
    return {str(p.relative_to(cache)): p.read_bytes() for p in cache.glob("media/*/*/status/c/*")}
