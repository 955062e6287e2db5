"""The heatmap form of the projection's landmark loss (Uzolas 2021: FAN's heatmaps of the generated
image against those of the driving crop) through `facereenact run` as a user runs it, on a tiny
generator, a short clip made here and a stand-in FAN in a scratch torch hub folder (face-shaped
heatmaps, tests/support/landmarks.py: random weights answer no plausible face, and `--landmarks fan`
tracks the clip with FAN too):

- `run --landmarks fan --landmark-form heatmaps --landmark-input minmax --fan-flip` makes the video,
  and the reenact table's provenance records the form, the input, the flip (settings and the FAN
  backend's record) and absolute targets; `resume` of its job, with frames left pending, comes to the
  same latents bit for bit;
- the refused combinations are one line, exit 2, nothing made: heatmaps with face-api, the flip with
  face-api, heatmaps with relative landmarks (a batch-style request), an unknown form.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.job_requests import ReenactRequest
from storage.cache import Workspace
from storage.errors import InputError
from storage.reenact import ReenactCache
from storage.video import probe
from tests import reenact_data
from tests.helpers import assert_user_error
from tests.reenact_data import CLI_OPTIONS, reenact_dirs
from tests.support.landmarks import face_shaped_fan

FRAMES = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reenact-heatmaps")
    hub = root / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    face_shaped_fan(hub)  # under face-alignment's TorchScript file name
    return (reenact_data.driving_clip(root / "drive.mp4", FRAMES), reenact_data.tiny_weights(root),
            {"TORCH_HOME": str(root / "torch")})


def test_run_heatmap_form_end_to_end(inputs, cli, tmp_path, prefect_harness):
    clip, weights, env = inputs
    out, cache = tmp_path / "out.mp4", tmp_path / "cache"
    proc = cli("run", "--source", reenact_data.source(), "--driving", clip, "--weights", weights,
               "-o", out, "--cache", cache, "--landmarks", "fan", "--landmark-form", "heatmaps",
               "--landmark-input", "minmax", "--fan-flip", *CLI_OPTIONS, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert probe(out).frame_count == FRAMES
    (table_dir,) = reenact_dirs(cache)
    table = ReenactCache.at(Workspace(cache), str(table_dir.relative_to(cache)))
    provenance = table.table.provenance
    settings = provenance["settings"]
    assert (settings["landmark_form"], settings["landmark_input"], settings["fan_flip"]) == \
        ("heatmaps", "minmax", True)
    assert settings["relative_landmarks"] is False  # heatmaps are absolute targets
    assert provenance["landmarks"]["backend"] == "fan" and provenance["landmarks"]["flip_input"] is True
    assert table.counts().get("done") == FRAMES
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["provenance"]["settings"]["landmark_form"] == "heatmaps"
    # the job record holds the request: `resume` runs the heatmap form again, from the frames left
    # pending (the driving crops read from that window on), to the same latents bit for bit
    (job,) = json.loads(cli("status", cache, "--json", check=True).stdout)["jobs"]
    assert job["state"] == "finished"
    latents = table.read("latents")
    table.table.reset([2, 3])
    out.unlink()
    resumed = cli("resume", job["job"], "--cache", cache, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    np.testing.assert_array_equal(table.read("latents"), latents)
    assert probe(out).frame_count == FRAMES


@pytest.mark.parametrize("args, fragments", [
    (["--landmark-form", "heatmaps"], ["--landmark-form heatmaps needs --landmarks fan"]),
    (["--landmark-form", "heatmaps", "--landmarks", "faceapi"], ["needs --landmarks fan"]),
    (["--fan-flip"], ["--fan-flip", "setting of --landmarks fan"]),
])
def test_refused_landmark_settings_are_one_line(inputs, cli, tmp_path, args, fragments):
    clip, weights, env = inputs
    out, cache = tmp_path / "out.mp4", tmp_path / "cache"
    proc = cli("run", "--source", reenact_data.source(), "--driving", clip, "--weights", weights,
               "-o", out, "--cache", cache, *args, *CLI_OPTIONS, env=env)
    assert_user_error(proc, *fragments, code=2)
    assert not cache.exists() and not out.exists()


def test_unknown_landmark_form_is_a_usage_error(inputs, cli, tmp_path):
    clip, weights, env = inputs
    proc = cli("run", "--source", reenact_data.source(), "--driving", clip, "--weights", weights,
               "-o", tmp_path / "out.mp4", "--landmark-form", "pixels", *CLI_OPTIONS, env=env)
    assert proc.returncode == 2 and "invalid choice: 'pixels'" in proc.stderr


def test_request_checks_the_landmark_settings():
    def request(**settings) -> ReenactRequest:
        return ReenactRequest("a.jpg", "b.mp4", "c.mp4", settings=settings)

    request(landmark_form="heatmaps", landmark_input="minmax", fan_flip=False).check_landmarks("fan")
    for settings, fragment in [({"landmark_form": "pixels"}, "unknown landmark form 'pixels'"),
                               ({"landmark_input": "zscore"}, "unknown landmark input 'zscore'"),
                               ({"fan_flip": "yes"}, "fan_flip must be true or false"),
                               ({"landmark_form": "heatmaps", "relative_landmarks": True},
                                "relative_landmarks must be off")]:
        with pytest.raises(InputError, match=fragment):
            request(**settings)
    with pytest.raises(InputError, match="needs --landmarks fan"):
        request(landmark_form="heatmaps").check_landmarks("faceapi")
    # the record round trip keeps them (`facereenact resume`)
    again = ReenactRequest.from_record(request(landmark_form="heatmaps", fan_flip=True).to_record())
    assert again.settings == {"landmark_form": "heatmaps", "fan_flip": True}


def test_driving_crops_are_read_per_window_at_the_generator_resolution(tmp_path):
    from stages.prepare import crop_fields
    from stages.reenact import driving_images_of
    from storage.cache import Field
    from storage.errors import CacheError

    ws = Workspace(tmp_path / "cache")

    def crops_table(resolution: int):
        fields = {"crop": crop_fields(resolution)["crop"], "n": Field((), "uint8")}
        table = ws.table("clip", "crops", {"resolution": resolution}, 3, fields)
        crops = np.arange(3 * resolution * resolution * 3, dtype=np.uint32).astype(np.uint8)
        table.write([0, 1, 2], crop=crops.reshape(3, resolution, resolution, 3), n=np.zeros(3, np.uint8))
        return table, crops.reshape(3, resolution, resolution, 3)

    table, crops = crops_table(32)
    np.testing.assert_array_equal(driving_images_of(table, 1, 3, 32), crops[1:3])
    with pytest.raises(CacheError, match=r"needs uint8 \(2, 64, 64, 3\)"):  # made for another generator
        driving_images_of(table, 1, 3, 64)
    with pytest.raises(ValueError, match="driving crops table"):
        driving_images_of(None, 0, 1, 32)
