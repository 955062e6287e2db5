"""The command line as a whole (issue 13): one set of option forms, `--version`, examples in every
`--help`, argument and input errors before torch or Prefect load, CPU threads, `run` offline with
--allow-random-weights and a no-op rerun that never reaches Prefect, and honest numbers in summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import SUBCOMMANDS, build_parser
from tests import reenact_data
from tests.helpers import REPO_ROOT, assert_user_error

COMMANDS = list(SUBCOMMANDS)


def help_text(*argv: str) -> str:
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    return exit_.value.code


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_examples_threads_and_the_users_words(command, capsys):
    help_text(command)
    text = capsys.readouterr().out
    assert "examples:" in text and f"facereenact {command}" in text.split("examples:")[1]
    assert "--threads N" in text
    assert "seed 00" not in text.lower()  # papers by name, not the project's seed numbers


def test_version_and_top_level_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"facereenact {version('facereenact')}"
    help_text()
    assert "examples:" in capsys.readouterr().out


def test_same_option_forms_across_commands():
    parser = build_parser()
    # --cache everywhere, status also positionally (its older form)
    for argv in (["status", "--cache", "c"], ["status", "c"], ["invert", "d", "--cache", "c"],
                 ["resume", "j", "--cache", "c"], ["batch", "m.yaml", "--cache", "c"]):
        args = parser.parse_args(argv)
        from flows.cli.common import cache_of

        assert cache_of(args) == "c", argv
    # one output option: -o / --out / --output wherever a command writes one
    for argv, dest in ((["run", "--source", "a", "--driving", "b"], "output"), (["demo"], "out"),
                       (["generate", "--weights", "w", "--seeds", "0"], "out"),
                       (["train-mapping"], "out")):
        for form in ("-o", "--out", "--output"):
            assert str(getattr(parser.parse_args([*argv, form, "x.mp4"]), dest)) == "x.mp4", (argv, form)
    generate = ["generate", "--weights", "w", "--seeds", "0", "-o", "d", "--batch-size", "2"]
    assert parser.parse_args(generate).batch == 2


def test_parser_validates_choices_with_one_line_errors():
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--source", "a.jpg", "--driving",
                           "b.mp4", "-o", "o.mp4", "--mode", "foo"], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    assert_user_error(proc, "run: argument --mode: invalid choice: 'foo'", code=2)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--threads", "0"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert_user_error(proc, "--threads", "at least 1", code=2)


def _in_fresh_process(argv: list[str], env: dict[str, str]) -> tuple[int, str, list[str], float]:
    """main(argv) in a new interpreter: exit code, stderr, which of torch / prefect got imported, wall s."""
    code = ("import sys, json\nfrom flows.cli import main\n"
            f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
            "print(json.dumps([rc, [m for m in ('torch', 'prefect') if m in sys.modules]]))")
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True)
    wall = time.monotonic() - began
    rc, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    return rc, proc.stderr, heavy, wall


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return reenact_data.driving_clip(tmp_path_factory.mktemp("cli") / "drive.mp4", 4)


def test_input_and_weight_errors_come_before_torch_and_prefect(clip, tmp_path):
    env = {**os.environ, "FACEREENACT_HOME": str(tmp_path / "home"), "TORCH_HOME": str(tmp_path / "torch")}
    src = str(reenact_data.source())
    out = str(tmp_path / "out.mp4")
    cases = [
        (["run", "--source", str(tmp_path / "nope.jpg"), "--driving", str(clip), "-o", out], 2, ["nope.jpg"]),
        (["run", "--source", src, "--driving", src, "-o", out], 2, ["must be a video"]),
        (["run", "--source", src, "--driving", str(clip), "-o", str(tmp_path / "out.gif")], 2, ["extension"]),
        # every missing weight in one line, with the one command that fetches them all
        (["run", "--source", src, "--driving", str(clip), "-o", out, "--landmarks", "fan"], 4,
         ["ffhq-1024", "lpips-vgg16", "fan-2d", "facereenact weights fetch ffhq-1024 lpips-vgg16 fan-2d",
          "--allow-random-weights"]),
        (["run", "--source", src, "--driving", str(clip), "-o", out, "--weights", str(tmp_path / "G.pkl")], 2,
         ["G.pkl", "not found"]),
        (["status", "--cache", str(tmp_path / "none")], 5, ["no cache here"]),
    ]
    for argv, code, fragments in cases:
        rc, err, heavy, wall = _in_fresh_process(argv, env)
        assert_user_error(subprocess.CompletedProcess(argv, rc, "", err), *fragments, code=code)
        assert heavy == [], (argv, heavy)  # neither torch nor Prefect was imported
        print(f"{argv[0]} -> exit {rc} in {wall:.2f} s")
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "home").exists()


def test_constants_of_the_torch_free_checks_match_the_models():
    from flows.cli import preflight, run
    from flows.reenact import REENACTORS
    from models.checkpoints import CHECKPOINT_SUFFIXES
    from models.landmarks.fan import FAN_WEIGHT_FILES
    from models.losses import PERCEPTUAL_CHOICES

    assert {k: (v[1], v[2]) for k, v in PERCEPTUAL_CHOICES.items()} == preflight.BACKBONES
    assert tuple(FAN_WEIGHT_FILES) == preflight.FAN_FILES
    assert tuple(CHECKPOINT_SUFFIXES) == preflight.CHECKPOINT_SUFFIXES
    assert tuple(REENACTORS) == run.MODES


def test_threads(monkeypatch):
    from flows.cli.options import THREAD_VARIABLES, apply_threads, default_threads, thread_count

    assert [default_threads(c) for c in (1, 2, 4, 16, 64)] == [1, 1, 1, 4, 8]
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert thread_count(None) == (default_threads(), "default")
    assert thread_count(3) == (3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert thread_count(None) == (None, "OMP_NUM_THREADS")  # the user's variable is kept
    import torch

    before = torch.get_num_threads()
    try:
        assert apply_threads(2) == 2 and torch.get_num_threads() == 2 and os.environ["MKL_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)
    proc = subprocess.run([sys.executable, "-c", "from flows.cli import main; import sys\n"
                           "main(['status', '--cache', 'nowhere', '--threads', '3'])\n"
                           "import os; print(os.environ['OMP_NUM_THREADS'])"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "3"


def test_improvement_factors_say_better_or_worse():
    from flows.train_mapping import versus_baseline

    assert versus_baseline(0.5, 1.0) == "2x lower than the zero-Δw baseline: better"
    worse = versus_baseline(2.3137, 1.0)  # the case issue 13 saw printed as "0.4322x lower"
    assert worse == "2.31x higher than the zero-Δw baseline: WORSE" and "lower" not in worse
    assert "no better" in versus_baseline(1.0, 1.0)


def test_identity_is_no_face_when_no_output_frame_has_one():
    from flows.cli.run import identity_text

    assert identity_text({"identity_similarity": None, "no_face_frames": 8}) == "no face in the output"
    assert identity_text({"identity_similarity": 0.61234, "no_face_frames": 0}) == "0.612"
    assert "2 without" in identity_text({"identity_similarity": 0.6, "no_face_frames": 2})


def test_run_offline_with_random_weights_then_a_noop_rerun(clip, tmp_path, prefect_api_env, monkeypatch):
    """A cold `run` of the bundled photo with a generated clip, no weights anywhere, as the README
    says; then the same command again: answered from the sidecar without Prefect (its API URL points
    nowhere), and a changed setting is not answered from it."""
    env = {**os.environ, **prefect_api_env, "FACEREENACT_HOME": str(tmp_path / "home"),
           "TORCH_HOME": str(tmp_path / "torch")}
    out = tmp_path / "out.mp4"
    argv = [sys.executable, "-m", "flows.cli", "run", "--source", str(reenact_data.source()), "--driving",
            str(clip), "-o", str(out), "--cache", str(tmp_path / "cache"), "--device", "cpu", "--quiet",
            "--steps-first", "4", "--steps-next", "2", "--invert-steps", "3"]
    refused = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert_user_error(refused, "weights fetch ffhq-1024 lpips-vgg16", "--allow-random-weights", code=4)

    made = subprocess.run([*argv, "--allow-random-weights"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True)
    assert made.returncode == 0, made.stderr[-2000:]
    assert "random generator" in made.stderr and "NOT real quality" in made.stderr
    assert "RANDOM generator" in made.stdout
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["request"]["random_weights"] is True
    assert sidecar["request"]["missing_official_weights"] == ["ffhq-1024", "lpips-vgg16"]
    assert sidecar["request"]["perceptual"] == "uncalibrated-alex"
    assert "random-generator-64px" in sidecar["request"]["generator"]
    assert sidecar["provenance"]["reenact_table"]  # the tables' own provenance is there too
    # pure noise: no face found, so no identity similarity is claimed
    assert sidecar["metrics"]["identity_similarity"] is None and sidecar["metrics"]["no_face_frames"] == 4
    assert "identity similarity no face in the output" in made.stdout

    nowhere = {**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # any Prefect call would fail
    began = time.monotonic()
    again = subprocess.run([*argv, "--allow-random-weights"], cwd=REPO_ROOT, env=nowhere, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stdout
    print(f"no-op rerun: {time.monotonic() - began:.2f} s")
    # Any other setting, input or weight file is another request: not answered from the sidecar.
    from flows.cli import run

    monkeypatch.setenv("FACEREENACT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    parser = build_parser()
    for extra in ([], ["--layout", "side-by-side"], ["--steps-next", "3"], ["--variant", "free"]):
        args = parser.parse_args([str(a) for a in argv[3:]] + ["--allow-random-weights", *extra])
        options = run.run_options(args)
        plan = run.preflight(args, options)
        assert (run.finished_run(args, options, plan) is not None) == (extra == []), extra
