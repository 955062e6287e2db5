"""Requests (flows/job_requests.py): one per job kind, validated once, its defaults the config dataclasses'.

A default that diverged between the CLI, the flows and the configs, or a path that skipped the
request's checks (the CLI, a batch manifest, a resumed job record), fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import sys

import pytest

from flows.job_requests import (
    ENCODER_INVERSION,
    INVERSION,
    MAPPING_TRAINING,
    PROJECTION,
    InvertRequest,
    ReenactRequest,
    TrainMappingRequest,
    config_defaults,
)
from storage.errors import CacheError, InputError
from tests import reenact_data
from tests.helpers import REPO_ROOT, assert_user_error


def _config_class(config: tuple[str, str]):
    import importlib

    return getattr(importlib.import_module(config[0]), config[1])


@pytest.mark.parametrize("config", [INVERSION, PROJECTION, ENCODER_INVERSION])
def test_defaults_read_from_the_source_are_the_dataclasses(config):
    cls = _config_class(config)
    read = config_defaults(*config)
    actual = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    assert read and all(actual[name] == value for name, value in read.items()), (read, actual)
    assert {"steps", "seed", "perceptual"} <= set(read) if config == INVERSION else \
        {"steps"} <= set(read) if config == ENCODER_INVERSION else \
        {"steps_first", "steps_next", "perceptual"} <= set(read)


def test_training_defaults_are_the_tasks_and_the_trainers():
    from models.mapping.training import MappingTrainConfig
    from tasks.train_mapping import DEFAULT_SETTINGS

    assert dict(config_defaults(*MAPPING_TRAINING)) == DEFAULT_SETTINGS
    request = TrainMappingRequest("m.pt")
    assert request.settings() == DEFAULT_SETTINGS
    trainer = MappingTrainConfig()
    assert (request.learning_rate, request.batch_size, request.seed, request.image_loss) == \
        (trainer.learning_rate, trainer.batch_size, trainer.seed, trainer.lambda_image)


def test_train_encoder_defaults_are_the_stages():
    """`facereenact train-encoder` shows and uses stages/train_encoder.py DEFAULT_SETTINGS (read from
    its source, so the parser loads no torch)."""
    from flows.job_requests import ENCODER_TRAINING, PERCEPTUAL
    from stages.train_encoder import DEFAULT_SETTINGS

    assert dict(config_defaults(*ENCODER_TRAINING)) == DEFAULT_SETTINGS
    options, _ = _options("train-encoder")
    for name in ("batch_size", "learning_rate", "seed"):
        assert options[name].default == DEFAULT_SETTINGS[name], name
        assert f"(default {DEFAULT_SETTINGS[name]})" in options[name].help, name
    assert {**PERCEPTUAL, "none": "none"}[options["perceptual"].default] == DEFAULT_SETTINGS["perceptual"]


def _options(command: str) -> dict:
    from flows.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest: a for a in sub._actions}, sub


def test_cli_and_flow_defaults_are_the_configs():
    """Each default once: the CLI's defaults, the numbers its help shows and the flows' keyword
    defaults are the config dataclasses'."""
    from flows.cli.demo import REAL
    from flows.invert import invert_dataset
    from flows.job_requests import PERCEPTUAL
    from flows.train_mapping import train_mapping
    from models.inversion import InversionConfig
    from models.projection import ProjectionConfig
    from stages.encoder_init import EncoderInversionConfig

    inversion, projection = InversionConfig(), ProjectionConfig()
    from_encoder = EncoderInversionConfig.steps  # the refinement's default steps (--init encoder)
    assert from_encoder != inversion.steps
    invert, invert_parser = _options("invert")
    # --steps has no parser default: the request resolves it by the start (each default once)
    assert invert["steps"].default is None and invert["seed"].default == inversion.seed
    assert InvertRequest("x").steps == inversion.steps
    assert InvertRequest("x", init="encoder", encoder="e.pt").steps == from_encoder
    assert PERCEPTUAL[invert["perceptual"].default] == inversion.perceptual
    assert f"(default {inversion.steps};" in invert["steps"].help
    assert f"default {from_encoder}," in " ".join(invert["steps"].help.split())
    help_text = invert_parser.format_help()
    weights = ", ".join(str(getattr(inversion, n)) for n in ("lambda_mse", "lambda_lpips", "lambda_id",
                                                             "lambda_dreg"))
    assert f"default: {weights} for MSE" in " ".join(help_text.split())
    flow = inspect.signature(invert_dataset.fn).parameters
    assert (flow["steps"].default, flow["seed"].default, flow["perceptual"].default) == \
        (None, inversion.seed, inversion.perceptual)
    assert flow["batch_size"].default == invert["batch_size"].default

    run, _ = _options("run")
    assert f"(default {inversion.steps}; {from_encoder} with --init encoder, the first " \
        f"{100 * EncoderInversionConfig.pixel_warmup:g} %% on the pixel terms" in run["invert_steps"].help
    assert f"(default {projection.steps_first})" in run["steps_first"].help
    assert f"(default {projection.steps_next})" in run["steps_next"].help
    assert PERCEPTUAL[run["perceptual"].default] == projection.perceptual
    assert ReenactRequest("s", "d", "o").invert_steps == inversion.steps
    assert ReenactRequest("s", "d", "o", settings={"invert_encoder": "e.pt"}).invert_steps == from_encoder
    assert (REAL["invert_steps"], REAL["steps_first"], REAL["steps_next"]) == \
        (inversion.steps, projection.steps_first, projection.steps_next)

    training, _ = _options("train-mapping")
    request = TrainMappingRequest("m.pt")
    for name in ("steps", "checkpoint_every", "representation", "batch_size", "learning_rate", "image_loss",
                 "held_out", "split", "seed"):
        assert training[name].default == getattr(request, name), name
    flow = inspect.signature(train_mapping.fn).parameters
    assert (flow["steps"].default, flow["checkpoint_every"].default) == \
        (request.steps, request.checkpoint_every)


def test_choices_mirror_the_models():
    from flows import job_requests as requests
    from flows.reenact import REENACTORS
    from models.detection import DEFAULT_DETECTOR, DETECTORS
    from models.reenact import VARIANTS
    from storage.render import LAYOUTS

    assert tuple(REENACTORS) == requests.MODES
    assert requests.VARIANTS == VARIANTS and requests.LAYOUTS == LAYOUTS
    assert set(requests.DETECTORS) == set(DETECTORS) and requests.DEFAULT_DETECTOR == DEFAULT_DETECTOR
    from models.projection import LANDMARK_FORMS, LANDMARK_INPUTS

    assert requests.LANDMARK_FORMS == LANDMARK_FORMS and requests.LANDMARK_INPUTS == LANDMARK_INPUTS


def test_requests_and_the_parser_load_neither_torch_nor_prefect():
    code = ("import sys\nfrom flows.cli import build_parser\nimport flows.job_requests as r\nbuild_parser()\n"
            "r.ReenactRequest('s', 'd', 'o'); r.InvertRequest('x'); r.TrainMappingRequest('m')\n"
            "print([m for m in ('torch', 'prefect') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("make, says", [
    (lambda: ReenactRequest("s", "d", "o", mode="magic"), "unknown mode 'magic'"),
    (lambda: ReenactRequest("s", "d", "o", variant="wild"), "unknown variant"),
    (lambda: ReenactRequest("s", "d", "o", face_index=-1), "face_index must be an integer >= 0"),
    (lambda: ReenactRequest("s", "d", "o", paste_back=1), "paste_back must be a bool"),
    (lambda: ReenactRequest("s", "d", "o", settings={"refine_steps": 2}), "settings of --mode mapping"),
    (lambda: ReenactRequest("s", "d", "o", settings={"invert_steps": -1}), "invert_steps"),
    (lambda: ReenactRequest("s", "d", "o", settings={"steps_first": 10**12}), "whole number of steps"),
    (lambda: ReenactRequest("s", "d", "o", settings={"learning_rate": float("nan")}), "finite"),
    (lambda: ReenactRequest.from_options("s", "d", "o", options={"layout": "grid"}), "unknown layout"),
    (lambda: InvertRequest("x", steps=0), "--steps must be >= 1, got 0"),
    (lambda: InvertRequest("x", batch_size=0), "--batch-size must be >= 1"),
    (lambda: InvertRequest("x", max_loss=-1.0), "--max-loss must be a number >= 0"),
    (lambda: InvertRequest("x", loss_weights={"lambda_typo": 1.0}), "unknown loss weight"),
    (lambda: InvertRequest("x", loss_weights={"lambda_mse": float("inf")}), "finite"),
    (lambda: InvertRequest("x", init="encoder"), "--init encoder needs --encoder PATH"),
    (lambda: InvertRequest("x", encoder="e.pt"), "--encoder is used with --init encoder only"),
    (lambda: InvertRequest("x", init="e4e", encoder="e.pt"), "unknown --init 'e4e'"),
    (lambda: InvertRequest("x", init="encoder", encoder="e.pt", steps=-1), "--steps must be >= 0, got -1"),
    (lambda: ReenactRequest("s", "d", "o", settings={"invert_encoder": ""}), "invert_encoder: expected an"),
    (lambda: TrainMappingRequest("m.pt", held_out=1.0), "--held-out must be in [0, 1)"),
    (lambda: TrainMappingRequest("m.pt", image_loss=1.0), "--image-loss needs --weights"),
    (lambda: TrainMappingRequest("m.pt", checkpoint_every=0), "--checkpoint-every must be >= 1"),
])
def test_bad_requests_are_refused(make, says):
    with pytest.raises(InputError, match=__import__("re").escape(says)):
        make()


def test_settings_are_checked_against_the_configs():
    ReenactRequest("s", "d", "o", settings={"steps_first": 3}).check_settings()
    with pytest.raises(InputError, match="unknown projection option"):
        ReenactRequest("s", "d", "o", settings={"stepz_first": 3}).check_settings()
    with pytest.raises(InputError, match="projection-mode settings"):
        ReenactRequest("s", "d", "o", mode="mapping",
                       settings={"mapping": "m.pt", "steps_first": 3}).check_settings()
    with pytest.raises(InputError, match="bad inversion settings"):
        InvertRequest("x", loss_weights={"lambda_mse": -1.0}).config()


def test_records_round_trip_and_old_records_still_load():
    from flows.reenact_job import request_of_record, run_job_id

    request = ReenactRequest("/a/s.jpg", "/a/d.mp4", "/a/o.mp4", variant="free", face_index=1,
                             settings={"steps_first": 3, "invert_steps": 7, "perceptual": "lpips-vgg"})
    record = json.loads(json.dumps(request.to_record()))  # as the job record stores it
    assert ReenactRequest.from_record(record) == request
    assert InvertRequest.from_record(json.loads(json.dumps(InvertRequest("v/", seed=5).to_record()))) == \
        InvertRequest("v/", seed=5)
    # a record from before records held the request: the flat options of `run` as it wrote them
    old_options = {"variant": "free", "layout": "result", "paste_back": False, "subframes": False,
                   "detector": "ssd", "face_index": 1, "source_face_index": 0, "perceptual": "lpips-vgg",
                   "steps_first": 3, "invert_steps": 7}
    old = {"kind": "reenact", "source": "/a/s.jpg", "driving": "/a/d.mp4", "output": "/a/o.mp4",
           "mode": "projection", "options": old_options, "args": {"weights": "G.pkl"}}
    assert request_of_record("j", old) == request
    # the same job id as before requests: resuming an old record updates the same record
    assert run_job_id(request.source, request.driving, request.output, request.mode, request.options()) == \
        run_job_id(old["source"], old["driving"], old["output"], old["mode"], old_options)
    with pytest.raises(CacheError, match="lacks 'mode'"):
        request_of_record("j", {k: v for k, v in old.items() if k != "mode"})
    with pytest.raises(CacheError, match="request format 99"):
        request_of_record("j", {**old, "request": {**record, "format": 99}})
    old_invert = {"dataset": "v/",
                  "args": {"steps": 5, "batch_size": 2, "perceptual": "lpips-vgg", "seed": 1}}
    assert InvertRequest.from_old_record(old_invert) == \
        InvertRequest("v/", steps=5, batch_size=2, seed=1, detector="haar")  # before --detector: haar


def test_an_encoder_request_round_trips_through_a_job_record(tmp_path, monkeypatch):
    """`invert --init encoder --encoder E` and `run`'s `invert_encoder`: the encoder (made absolute, so
    a resume from another folder finds it) and the start's resolved steps are in the record, and the
    request rebuilt from it (what `facereenact resume` runs) is the same."""
    from flows.reenact_job import request_of_record
    from stages.encoder_init import EncoderInversionConfig
    from storage.cache import Workspace

    monkeypatch.chdir(tmp_path)
    request = InvertRequest("v/", init="encoder", encoder="enc.pt", seed=5)
    assert request.encoder == str(tmp_path / "enc.pt") and request.steps == EncoderInversionConfig.steps
    ws = Workspace(tmp_path / "cache")
    ws.record_job("invert-x", {"kind": "invert", "dataset": "v/", "args": {"weights": "G.pkl"},
                               "request": request.to_record()})
    ws.record_job("reenact-x", {"kind": "reenact", "source": "/a/s.jpg", "driving": "/a/d.mp4",
                                "output": "/a/o.mp4", "mode": "projection", "args": {"weights": "G.pkl"},
                                "request": ReenactRequest("/a/s.jpg", "/a/d.mp4", "/a/o.mp4", settings={
                                    "invert_encoder": "enc.pt", "invert_steps": 3}).to_record()})
    monkeypatch.chdir(tmp_path / "cache")  # resumed from elsewhere: the paths are the recorded ones
    jobs = Workspace(tmp_path / "cache").jobs()
    again = InvertRequest.from_record(jobs["invert-x"]["request"], "job record invert-x")
    assert again == request and again.flow_options()["encoder"] == str(tmp_path / "enc.pt")
    assert (again.init, again.steps) == ("encoder", request.steps)
    rerun = request_of_record("reenact-x", jobs["reenact-x"], str(tmp_path / "cache"))
    assert rerun.invert_encoder == str(tmp_path / "enc.pt") and rerun.invert_steps == 3
    assert "invert_encoder" not in rerun.mode_settings()
    # a record of the encoder branch before requests (args.encoder) still loads as an encoder start
    old = {"dataset": "v/", "args": {"steps": 40, "batch_size": 2, "perceptual": "lpips-vgg", "seed": 1,
                                     "encoder": str(tmp_path / "enc.pt")}}
    assert InvertRequest.from_old_record(old) == InvertRequest("v/", steps=40, batch_size=2, seed=1,
                                                               detector="haar", init="encoder",
                                                               encoder=str(tmp_path / "enc.pt"))


def test_a_manifest_jobs_encoder_is_found_beside_the_manifest(tmp_path, monkeypatch):
    """A batch job's `invert_encoder` is a path option: resolved against the manifest's folder (not
    the working directory), and a missing one fails the manifest in one line."""
    from flows.batch import load_jobs

    (tmp_path / "m").mkdir()
    clip = reenact_data.driving_clip(tmp_path / "m" / "drive.mp4", 2)
    shutil.copy(reenact_data.source(), tmp_path / "m" / "face.jpg")
    (tmp_path / "m" / "enc.pt").write_bytes(b"checked against the generator later")
    job = {"source": "face.jpg", "driving": clip.name, "output": "a.mp4",
           "options": {"invert_encoder": "enc.pt"}}
    (tmp_path / "m" / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    monkeypatch.chdir(tmp_path)
    (loaded,) = load_jobs(tmp_path / "m" / "jobs.jsonl")
    assert loaded.options["invert_encoder"] == str((tmp_path / "m" / "enc.pt").resolve())
    (tmp_path / "m" / "enc.pt").unlink()
    with pytest.raises(InputError, match="invert_encoder"):
        load_jobs(tmp_path / "m" / "jobs.jsonl")


def test_a_bad_request_is_refused_alike_from_cli_manifest_and_resume(cli, tmp_path):
    """--refine-steps without --mode mapping: the same one-line reason from the command line, from a
    batch manifest's job options, and from a job record that resume rebuilds."""
    from flows.batch import load_jobs
    from flows.reenact_job import request_of_record

    says = "--mapping and --refine-steps are settings of --mode mapping"
    clip = reenact_data.driving_clip(tmp_path / "drive.mp4", 2)
    shutil.copy(reenact_data.source(), tmp_path / "face.jpg")
    proc = cli("run", "--source", tmp_path / "face.jpg", "--driving", clip, "-o", tmp_path / "o.mp4",
               "--refine-steps", "2")
    assert_user_error(proc, says, code=2)
    job = {"source": "face.jpg", "driving": "drive.mp4", "output": "a.mp4", "options": {"refine_steps": 2}}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(job) + "\n")
    with pytest.raises(InputError, match=says) as raised:
        load_jobs(tmp_path / "jobs.jsonl")
    assert "job 1 (line 1), options" in str(raised.value)
    with pytest.raises(InputError, match="job 1 .*mode: unknown mode 'magic'"):
        (tmp_path / "m.jsonl").write_text(json.dumps({"source": "face.jpg", "driving": "drive.mp4",
                                                      "output": "a.mp4", "mode": "magic"}) + "\n")
        load_jobs(tmp_path / "m.jsonl")
    record = {"kind": "reenact", "source": str(tmp_path / "face.jpg"), "driving": str(clip),
              "output": str(tmp_path / "o.mp4"), "mode": "projection", "options": {"refine_steps": 2},
              "args": {"weights": "G.pkl"}}
    with pytest.raises(CacheError, match=says):
        request_of_record("reenact-x", record)
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "a.mp4").exists()


def test_resume_refuses_a_bad_or_newer_record_in_one_line(cli, tmp_path):
    """`facereenact resume` rebuilds the request from the record: a record holding a request this
    version refuses is a cache error naming the job (exit 5), before any work."""
    from storage.cache import Workspace

    ws = Workspace(tmp_path / "cache")
    request = ReenactRequest(str(tmp_path / "s.jpg"), str(tmp_path / "d.mp4"), str(tmp_path / "o.mp4"))
    base = {"kind": "reenact", "source": request.source, "driving": request.driving, "output": request.output,
            "mode": "projection", "args": {"weights": "G.pkl"}, "state": "failed"}
    ws.record_job("reenact-old", {**base, "options": {"refine_steps": 2}})
    ws.record_job("reenact-new", {**base, "options": {}, "request": {**request.to_record(), "format": 99}})
    assert_user_error(cli("resume", "reenact-old", "--cache", tmp_path / "cache"), "job record reenact-old",
                      "settings of --mode mapping", "rerun its command", code=5)
    assert_user_error(cli("resume", "reenact-new", "--cache", tmp_path / "cache"), "request format 99",
                      code=5)
    assert not (tmp_path / "o.mp4").exists()


def test_defaults_follow_a_config_moved_to_another_module(tmp_path, monkeypatch):
    """A config re-exported from the module the requests name (`from x import Config`, as a split of
    models/ may leave it) is read where it is defined."""
    from flows import job_requests as requests

    (tmp_path / "cfg_pkg").mkdir()
    (tmp_path / "cfg_pkg" / "__init__.py").write_text("")
    (tmp_path / "cfg_pkg" / "old.py").write_text("from cfg_pkg.new import Config, SETTINGS\n")
    (tmp_path / "cfg_pkg" / "new.py").write_text(
        "import dataclasses\n@dataclasses.dataclass\nclass Config:\n    steps: int = 7\n"
        "    weights: tuple = NAMED\nSETTINGS = {'a': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert dict(requests.config_defaults("cfg_pkg.old", "Config")) == {"steps": 7}
    assert dict(requests.config_defaults("cfg_pkg.old", "SETTINGS")) == {"a": 1}
    with pytest.raises(ImportError, match="defines no Missing"):
        requests.config_defaults("cfg_pkg.new", "Missing")
