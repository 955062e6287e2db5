"""Never overwrite an input: an output path (a run's video, preview or sidecar, the demo folder's files,
a batch job's outputs, generated images, a converted checkpoint) that is an input of the same run or
batch, by its path, through a symlink or as a hard link, is refused before any work: one line, exit 2,
the input byte for byte as it was, nothing made (no cache, no output).

The commands run in this process (`cli` fixture): every refusal comes before any work.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.samples import sample_path
from tests.helpers import assert_user_error
from tests.reliability.inputs import Inputs

RUN = ["--steps-first", "1", "--steps-next", "1", "--invert-steps", "1", "--perceptual",
       "uncalibrated-alex", "--device", "cpu", "--quiet"]


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _inputs(t: Path, d: Inputs) -> tuple[Path, Path, Path]:
    """Copies of the clip, the photo and the weights in the case's folder (links are made to them)."""
    return (Path(shutil.copy(d.clip, t / "clip.mp4")), Path(shutil.copy(d.face, t / "face.png")),
            Path(shutil.copy(d.weights, t / "tiny-G.safetensors")))


def _run(t: Path, d: Inputs, output: Path, weights: Path | None = None) -> list:
    clip, face, w = t / "clip.mp4", t / "face.png", t / "tiny-G.safetensors"
    return ["run", "--source", face, "--driving", clip, "--weights", weights or w, "-o", output,
            "--cache", t / "cache", *RUN]


def run_output_is_the_driving_video(t: Path, d: Inputs):
    clip, _, _ = _inputs(t, d)
    return _run(t, d, clip), ["clip.mp4", "output is the driving video"], [clip]


def _linked_output(case: str, link: str, name: str, which: int, *problem: str) -> Callable:
    """A case: `run` whose output `name` (or its preview, or sidecar) is made a `link` ("symlink" or
    "hardlink") of input `which` (0 the driving clip, 1 the source photo, 2 the weights)."""
    def make(t: Path, d: Inputs):
        target = _inputs(t, d)[which]
        if link == "symlink":
            (t / name).symlink_to(target)
        else:
            os.link(target, t / name)
        return _run(t, d, t / "out.mp4"), [name, *problem], [target]

    make.__name__ = case
    return make


run_output_is_a_symlink_to_the_driving_video = _linked_output(
    "run_output_is_a_symlink_to_the_driving_video", "symlink", "out.mp4", 0, "same file as", "driving video")
run_output_is_a_hard_link_of_the_driving_video = _linked_output(
    "run_output_is_a_hard_link_of_the_driving_video", "hardlink", "out.mp4", 0, "same file as",
    "driving video")


def run_output_through_a_linked_folder(t: Path, d: Inputs):
    clip, _, _ = _inputs(t, d)
    (t / "elsewhere").symlink_to(t, target_is_directory=True)
    return _run(t, d, t / "elsewhere" / "clip.mp4"), ["same file as", "driving video"], [clip]


run_preview_is_a_hard_link_of_the_source = _linked_output(
    "run_preview_is_a_hard_link_of_the_source", "hardlink", "out.preview.png", 1, "preview", "source")
run_sidecar_is_a_symlink_to_the_weights = _linked_output(
    "run_sidecar_is_a_symlink_to_the_weights", "symlink", "out.mp4.json", 2, "sidecar", "weights")


def demo_video_is_a_symlink_to_the_bundled_photo(t: Path, d: Inputs):
    (t / "demo").mkdir()
    (t / "demo" / "reenacted.mp4").symlink_to(sample_path("astronaut.jpg"))
    return ["demo", "--out", t / "demo", "--frames", "2", "--steps", "1", "--resolution", "32", "--quiet"], \
        ["reenacted.mp4", "source"], [sample_path("astronaut.jpg")]


def _manifest(t: Path, d: Inputs, jobs: list[dict]) -> Path:
    import yaml

    _inputs(t, d)
    (t / "jobs.yaml").write_text(yaml.safe_dump({"jobs": jobs}, sort_keys=False))
    return t / "jobs.yaml"


def _job(name: str, output: str, driving: str = "clip.mp4") -> dict:
    return {"name": name, "source": "face.png", "driving": driving, "output": output,
            "options": {"steps_first": 1, "steps_next": 1, "invert_steps": 1,
                        "perceptual": "uncalibrated-alex"}}


def batch_output_of_a_later_job_is_an_earlier_jobs_driving(t: Path, d: Inputs):
    shutil.copy(d.clip, t / "other.mp4")
    manifest = _manifest(t, d, [_job("first", "first.mp4", driving="other.mp4"), _job("second", "a.mp4"),
                                _job("third", "other.mp4")])
    return ["batch", manifest, "--cache", t / "cache", "--weights", t / "tiny-G.safetensors", "--device",
            "cpu"], ["other.mp4", "job 3", "job 1", "driving"], [t / "other.mp4", t / "clip.mp4"]


def batch_sidecar_is_a_hard_link_of_a_source(t: Path, d: Inputs):
    manifest = _manifest(t, d, [_job("one", "one.mp4"), _job("two", "two.mp4")])
    os.link(t / "face.png", t / "two.mp4.json")
    return ["batch", manifest, "--cache", t / "cache", "--weights", t / "tiny-G.safetensors", "--device",
            "cpu"], ["two.mp4.json", "sidecar", "source"], [t / "face.png"]


def generate_image_is_a_hard_link_of_the_weights(t: Path, d: Inputs):
    _, _, weights = _inputs(t, d)
    (t / "images").mkdir()
    os.link(weights, t / "images" / "seed0007.png")
    return ["generate", "--weights", weights, "--seeds", "7", "--out", t / "images", "--device", "cpu"], \
        ["seed0007.png", "weights"], [weights]


def convert_destination_is_a_symlink_to_the_source(t: Path, d: Inputs):
    _, _, weights = _inputs(t, d)
    (t / "converted.safetensors").symlink_to(weights)
    return ["weights", "convert", weights, t / "converted.safetensors"], \
        ["converted.safetensors", "checkpoint to convert"], [weights]


CASES: dict[str, Callable] = {f.__name__: f for f in [
    run_output_is_the_driving_video, run_output_is_a_symlink_to_the_driving_video,
    run_output_is_a_hard_link_of_the_driving_video, run_output_through_a_linked_folder,
    run_preview_is_a_hard_link_of_the_source, run_sidecar_is_a_symlink_to_the_weights,
    demo_video_is_a_symlink_to_the_bundled_photo, batch_output_of_a_later_job_is_an_earlier_jobs_driving,
    batch_sidecar_is_a_hard_link_of_a_source,
    generate_image_is_a_hard_link_of_the_weights, convert_destination_is_a_symlink_to_the_source]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_output_that_is_an_input_is_refused(case, data, tmp_path, cli):
    argv, fragments, kept = CASES[case](tmp_path, data)
    before = {p: digest(p) for p in kept}
    proc = cli(*argv)
    assert_user_error(proc, *fragments, code=2)
    assert {p: digest(p) for p in kept} == before  # every input as it was
    assert not (tmp_path / "cache").exists()  # refused before any work
    assert not list(tmp_path.rglob(".*partial*"))
