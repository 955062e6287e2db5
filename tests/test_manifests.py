"""Dataset specs and batch manifests: what is accepted, and every refusal names line and field."""

from __future__ import annotations

import json

import pytest

from storage.errors import InputError
from storage.manifests import collect_videos, load_batch


@pytest.fixture
def data(tmp_path):
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    for name in ("videos/a.mp4", "videos/sub/b.MOV", "videos/notes.txt", "face.jpg", "clip.mp4"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_folder_glob_and_manifests(data):
    assert [p.name for p in collect_videos(data / "videos")] == ["a.mp4", "b.MOV"]
    assert [p.name for p in collect_videos(str(data / "videos" / "**" / "*.mp4"))] == ["a.mp4"]
    (data / "m.csv").write_text("path,person\nvideos/sub/b.MOV,p1\nvideos/a.mp4,p2\nvideos/a.mp4,p2\n")
    assert [p.name for p in collect_videos(data / "m.csv")] == ["b.MOV", "a.mp4"]  # order kept, dedup
    (data / "m.jsonl").write_text(json.dumps({"video": "clip.mp4"}) + "\n\n# comment\n")
    assert [p.name for p in collect_videos(data / "m.jsonl")] == ["clip.mp4"]


@pytest.mark.parametrize("content, message", [
    ("path\n../outside.mp4\n", "escapes the manifest's directory"),
    ("path\nmissing.mp4\n", "file not found"),
    ("name\nclip.mp4\n", "no 'path'"),
    ("", "empty"),
])
def test_bad_csv_manifests(data, content, message):
    (data / "outside.mp4").write_bytes(b"x")
    sub = data / "inner"
    sub.mkdir()
    (sub / "clip.mp4").write_bytes(b"x")
    (sub / "m.csv").write_text(content)
    with pytest.raises(InputError, match=message):
        collect_videos(sub / "m.csv")


def test_bad_jsonl_and_empty_specs(data):
    (data / "bad.jsonl").write_text('{"path": "clip.mp4"}\n{not json\n')
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        collect_videos(data / "bad.jsonl")
    (data / "empty").mkdir()
    with pytest.raises(InputError, match="no videos found"):
        collect_videos(data / "empty")
    with pytest.raises(InputError, match="no such file"):
        collect_videos(data / "nope")


def _batch(path, jobs):
    path.write_text("\n".join(json.dumps(j) for j in jobs) + "\n")
    return path


def test_batch_manifest_yaml_and_jsonl(data):
    (data / "b.yaml").write_text(
        "jobs:\n  - source: face.jpg\n    driving: clip.mp4\n    output: out/one.mp4\n"
        "    options: {steps_next: 5}\n  - {source: face.jpg, driving: videos/a.mp4, output: two.mp4,"
        " mode: mapping}\n")
    jobs = load_batch(data / "b.yaml", output_dir=data / "results")
    assert [(j.name, j.mode, j.output) for j in jobs] == [
        ("one", "projection", data / "results" / "out" / "one.mp4"),
        ("two", "mapping", data / "results" / "two.mp4"),
    ]
    assert jobs[0].options == {"steps_next": 5}
    assert jobs[0].job_id == load_batch(data / "b.yaml", output_dir=data / "results")[0].job_id
    jl = _batch(data / "b.jsonl", [{"source": "face.jpg", "driving": "clip.mp4", "output": "x.mp4"}])
    assert load_batch(jl)[0].output == data / "x.mp4"


@pytest.mark.parametrize("job, message", [
    ({"source": "face.jpg", "driving": "clip.mp4", "output": "../../evil.mp4"}, "escapes the output"),
    ({"source": "face.jpg", "driving": "clip.mp4", "output": "/tmp/evil.mp4"}, "must be relative"),
    ({"source": "../face.jpg", "driving": "clip.mp4", "output": "a.mp4"}, "escapes the manifest"),
    ({"source": "face.jpg", "driving": "clip.mp4", "output": "a.avi"}, "must end in .mp4"),
    ({"source": "face.jpg", "driving": "clip.mp4", "output": "a.mp4", "mode": 5}, "mode: expected a name"),
    ({"source": "face.jpg", "driving": "clip.mp4", "output": "a.mp4", "extra": 1}, "unknown field"),
    ({"source": "face.jpg", "output": "a.mp4"}, "missing field 'driving'"),
    ({"source": "face.jpg", "driving": "clip.mp4", "output": "a.mp4", "options": [1]}, "options"),
    ({"source": "face.jpg", "driving": "clip.mp4", "output": "a.mp4", "name": "a/b"}, "name"),
])
def test_bad_batch_jobs(data, job, message):
    inner = data / "inner"
    inner.mkdir(exist_ok=True)
    for name in ("face.jpg", "clip.mp4"):
        (inner / name).write_bytes(b"x")
    with pytest.raises(InputError, match=message):
        load_batch(_batch(inner / "b.jsonl", [job]))


def test_duplicate_outputs_and_bad_yaml(data):
    job = {"source": "face.jpg", "driving": "clip.mp4", "output": "a.mp4"}
    with pytest.raises(InputError, match="same output as job 1"):
        load_batch(_batch(data / "d.jsonl", [job, {**job, "name": "other"}]))
    (data / "bad.yaml").write_text("jobs: [ {source: a\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_batch(data / "bad.yaml")
    (data / "empty.yaml").write_text("")
    with pytest.raises(InputError, match="no jobs"):
        load_batch(data / "empty.yaml")
