"""Hostile inputs: resource bombs refused before they allocate, files that are not files refused
before anything opens them, NaN/inf and absurd numbers refused by the parser, refusals that suggest
nothing unsafe. Each through the command a user runs: one `facereenact: error:` line naming the file,
the documented exit code, no traceback, nothing written.

In-process (`cli`) except where the process matters: the peak memory of the bombs (a subprocess,
measured with getrusage) and the full disk (RLIMIT_FSIZE must bind the process, not pytest).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, assert_user_error
from tests.reliability import hostile
from tests.reliability.inputs import Inputs
from tests.support.folders import readonly_folder

# Any of these in a refusal would invite the user to undo it.
UNSAFE_ADVICE = ("add_safe_globals", "safe_globals", "allowlist", "weights_only=false", "allow_pickle",
                 "pickle.load", "if you trust")


def _generate(weights: Path, out: Path, *extra: str) -> list:
    return ["generate", "--weights", weights, "--seeds", "0", "--out", out, "--device", "cpu", *extra]


def _wplus(d: Inputs, codes: Path, out: Path) -> list:
    return ["generate", "--weights", d.weights, "--wplus", codes, "--out", out, "--device", "cpu"]


# ------------------------------------------------------------------------------------------ bombs
# name -> (build(folder, inputs) -> argv, fragments of the error line, exit code)
BOMBS: dict[str, tuple[Callable[[Path, Inputs], list], tuple[str, ...], int]] = {
    "native_config": (lambda t, d: _generate(hostile.native_config_bomb(t, d.weights), t / "out"),
                      ("bomb.safetensors", "do not fit the generator config"), 3),
    "rosinality_config": (lambda t, d: _generate(hostile.rosinality_config_bomb(t), t / "out"),
                          ("bomb.pt", "style.1.bias"), 3),
    "nvidia_config": (lambda t, d: _generate(hostile.nvidia_config_bomb(t), t / "out"),
                      ("bomb.pkl", "do not fit the generator config"), 3),
    "torch_zip": (lambda t, d: _generate(hostile.torch_zip_bomb(t), t / "out"),
                  ("zipbomb.pt", "decompression bomb"), 3),
    "wplus_npy_shape": (lambda t, d: _wplus(d, hostile.npy_header_only(t / "w.npy", (10**12, 8, 64)),
                                            t / "out"),
                        ("w.npy", "(1000000000000, 8, 64)", "above the limit"), 2),
    "wplus_npz": (lambda t, d: _wplus(d, hostile.npz_bomb(t / "w.npz"), t / "out"),
                  ("w.npz", "declares", "above the limit"), 2),
    "yaml_billion_laughs": (lambda t, d: ["batch", hostile.billion_laughs(t / "laughs.yaml"), "--cache",
                                          t / "cache", "--weights", d.weights, "--device", "cpu"],
                            ("laughs.yaml", "alias bomb"), 2),
    "seed_range": (lambda t, d: ["generate", "--weights", d.weights, "--seeds", "0-4000000000", "--out",
                                 t / "out", "--device", "cpu"], ("--seeds", "more than 100000 seeds"), 2),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_is_refused(name, data, cli, tmp_path):
    build, fragments, code = BOMBS[name]
    proc = cli(*build(tmp_path, data))
    assert_user_error(proc, *fragments, code=code)
    assert not (tmp_path / "out").exists()


# The child runs every bomb through flows.cli.main in one process and reports its peak RSS.
_CHILD = """
import io, json, resource, sys
from contextlib import redirect_stderr
from flows.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(argv)
    results.append([code, err.getvalue()])
print(json.dumps({"results": results, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
PEAK_LIMIT_MB = 2048  # the interpreter with torch and a tiny generator: ~0.7-0.9 GB here


def test_bombs_stay_small_in_memory(data, tmp_path, prefect_api_env):
    """Every bomb above, one after the other in one process, never takes it past PEAK_LIMIT_MB of
    resident memory (before the checks, the checkpoint bombs alone took 8-10 GB each)."""
    argvs = []
    for name, (build, _, _) in sorted(BOMBS.items()):
        folder = tmp_path / name
        folder.mkdir()
        argvs.append([str(a) for a in build(folder, data)])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
           **prefect_api_env}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argvs)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for (code, stderr), (name, (_, fragments, expected)) in zip(report["results"], sorted(BOMBS.items()),
                                                               strict=True):
        assert code == expected and "Traceback" not in stderr and fragments[0] in stderr, (name, stderr)
    peak_mb = report["peak_kb"] / 1024
    print(f"peak RSS over {len(argvs)} bombs: {peak_mb:.0f} MB")
    assert peak_mb < PEAK_LIMIT_MB, peak_mb


# ------------------------------------------------------------------------- malformed checkpoints
def _rosinality(t: Path, **tensors) -> Path:
    import torch

    sd = {"style.1.weight": torch.zeros(64, 64), "input.input": torch.zeros(1, 8, 4, 4),
          "to_rgb1.conv.weight": torch.zeros(1, 3, 8, 1, 1)}
    sd.update(tensors)
    torch.save({"g_ema": sd}, t / "G.pt")
    return t / "G.pt"


def _malformed(t: Path, d: Inputs, case: str) -> Path:
    import torch

    if case == "style_1d":
        return _rosinality(t, **{"style.1.weight": torch.zeros(64)})
    if case == "input_1d":
        return _rosinality(t, **{"input.input": torch.zeros(3)})
    if case == "conv_2d":
        return _rosinality(t, **{"to_rgbs.0.conv.weight": torch.zeros(1),
                                 "convs.0.conv.weight": torch.zeros(8, 8)})
    if case == "kernel_not_a_tensor":
        return _rosinality(t, **{"convs.0.conv.blur.kernel": [1, 3, 3, 1]})
    if case == "deeply_nested_modules":
        return hostile.nvidia_pickle(t / "G.pkl", {"_init_kwargs": {}}, nest=3000)
    if case == "deeply_nested_lists":
        n = 200_000
        (t / "G.pkl").write_bytes(b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")
        return t / "G.pkl"
    raise AssertionError(case)


@pytest.mark.parametrize("case, fragment", [
    ("style_1d", "style.1.weight has shape (64,)"), ("input_1d", "input.input has shape (3,)"),
    ("conv_2d", "convs.0.conv.weight has shape (8, 8)"), ("kernel_not_a_tensor", "[1,3,3,1] filter"),
    ("deeply_nested_modules", "nested more than"), ("deeply_nested_lists", "no 'G_ema'"),
])
def test_malformed_checkpoint(case, fragment, data, cli, tmp_path):
    weights = _malformed(tmp_path, data, case)
    assert_user_error(cli(*_generate(weights, tmp_path / "out")), weights.name, fragment, code=3)


def test_refusals_suggest_nothing_unsafe(data, cli, tmp_path):
    """torch's own refusal text advises allowlisting the global (add_safe_globals) and numpy's
    allow_pickle=True: a hostile file's author wants exactly that. Ours name the thing and stop."""
    import torch

    torch.save({"g_ema": np.zeros(3)}, tmp_path / "numpy.pt")  # names numpy's _reconstruct
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for argv, fragments, code in [
        (_generate(tmp_path / "numpy.pt", tmp_path / "out"), ("numpy.pt", "multiarray._reconstruct"), 3),
        (_wplus(data, tmp_path / "objects.npy", tmp_path / "out"), ("objects.npy", "python objects"), 2),
    ]:
        proc = cli(*argv)
        assert_user_error(proc, *fragments, code=code)
        assert not any(advice in proc.stderr.lower() for advice in UNSAFE_ADVICE), proc.stderr


# --------------------------------------------------------------------------- numeric options
@pytest.mark.parametrize("argv, fragment", [
    (["generate", "--weights", "G.pkl", "--seeds", "0", "--psi", "nan", "--out", "out"], "--psi"),
    (["generate", "--weights", "G.pkl", "--seeds", "0", "--psi", "-inf", "--out", "out"], "--psi"),
    (["generate", "--weights", "G.pkl", "--seeds", "0", "--batch", "99999999999", "--out", "o"], "--batch"),
    (["prepare", "clip.mp4", "--min-cutoff", "nan"], "--min-cutoff"),
    (["invert", "clip.mp4", "--max-loss", "inf"], "--max-loss"),
    (["invert", "clip.mp4", "--steps", "10000000000000000000000"], "--steps"),
    (["invert", "clip.mp4", "--seed", "-1"], "--seed"),
    (["train-mapping", "--learning-rate", "NaN"], "--learning-rate"),
    (["run", "--source", "a.png", "--driving", "b.mp4", "-o", "c.mp4", "--steps-next", "-2"], "--steps-next"),
    (["demo", "--frames", "100000000000"], "--frames"),
])
def test_absurd_numbers_refused_by_the_parser(argv, fragment, cli, tmp_path):
    """Every int/float option of every command, held by the parser: finite, in range (before the
    command looks at any file: none of these exist)."""
    proc = cli(*argv)
    assert_user_error(proc, fragment, code=2)


@pytest.mark.parametrize("options, fragment", [
    ('{"steps_first": 1000000000000}', "steps_first must be a whole number of steps"),
    ('{"learning_rate": NaN}', "learning_rate must be a finite number"),
    ('{"group_weights": [1, Infinity]}', "group_weights must be a finite number"),
])
def test_absurd_numbers_in_batch_job_options(options, fragment, data, cli, tmp_path):
    """JSON (and YAML) spell NaN and infinity too: a job's options are held like the CLI's."""
    shutil.copy(data.clip, tmp_path / "clip.mp4")
    shutil.copy(data.face, tmp_path / "face.png")
    (tmp_path / "jobs.jsonl").write_text(
        f'{{"source": "face.png", "driving": "clip.mp4", "output": "a.mp4", "options": {options}}}\n')
    proc = cli("batch", tmp_path / "jobs.jsonl", "--cache", tmp_path / "cache", "--weights", data.weights)
    assert_user_error(proc, "jobs.jsonl: job 1 (line 1), options", fragment, code=2)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "a.mp4").exists()


def test_every_numeric_option_is_checked():
    """No command has an int or float option the parser does not check (a new option gets the
    checks by being declared type=int / type=float)."""
    from flows.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    numeric = [(name, action.dest) for name, sub in commands.items() for action in sub._actions
               if getattr(action.type, "__name__", "") == action.dest]
    assert len(numeric) >= 25
    unchecked = [(name, action.dest) for name, sub in commands.items() for action in sub._actions
                 if action.type in (int, float)]
    assert not unchecked


# -------------------------------------------------------------------- files that are not files
def _special(t: Path, kind: str, name: str) -> Path:
    if kind == "fifo":
        return hostile.fifo(t / name)
    if kind == "socket":
        path = t / name
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()  # the socket file stays
        return path
    return Path(kind)  # a device: /dev/zero, /dev/urandom


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind, role", [
    ("fifo", "video"), ("fifo", "image"), ("fifo", "checkpoint"), ("fifo", "batch manifest"),
    ("fifo", "dataset manifest"), ("fifo", "wplus"), ("/dev/zero", "video"), ("/dev/urandom", "image"),
    ("/dev/zero", "checkpoint"), ("/dev/zero", "wplus"), ("socket", "video"),
])
def test_not_a_regular_file_is_refused_at_once(kind, role, data, cli, tmp_path):
    """open() on a FIFO blocks until a writer comes; /dev/zero never ends: refused before opening."""
    suffix = {"video": ".mp4", "image": ".png", "checkpoint": ".pkl", "batch manifest": ".yaml",
              "dataset manifest": ".jsonl", "wplus": ".npy"}[role]
    bad = _special(tmp_path, kind, f"input{suffix}")
    argv = {
        "video": ["prepare", bad, "--cache", tmp_path / "cache", "--resolution", "32", "--device", "cpu",
                  "--quiet"],
        "image": ["run", "--source", bad, "--driving", data.clip, "-o", tmp_path / "out" / "a.mp4", "--cache",
                  tmp_path / "cache", "--weights", data.weights, "--device", "cpu", "--quiet"],
        "checkpoint": _generate(bad, tmp_path / "out"),
        "batch manifest": ["batch", bad, "--cache", tmp_path / "cache", "--weights", data.weights],
        "dataset manifest": ["invert", bad, "--cache", tmp_path / "cache", "--weights", data.weights],
        "wplus": _wplus(data, bad, tmp_path / "out"),
    }[role]
    what = {"fifo": "FIFO", "socket": "socket"}.get(kind, "character device")
    assert_user_error(cli(*argv), str(bad), what, "not a regular file", code=2)
    assert not (tmp_path / "out").exists()


def test_ffmpeg_runs_and_reads_are_bounded(data, cli, tmp_path):
    """Every ffmpeg run has a time limit (FACEREENACT_FFMPEG_TIMEOUT) and so does every read from a
    decoding ffmpeg: past it, one line, not a hang."""
    from storage.errors import InputError
    from storage.video import FrameStream

    clip = tmp_path / "fresh.mp4"  # not probed yet in this session (probes are cached by path)
    shutil.copy(data.clip, clip)
    proc = cli("prepare", clip, "--cache", tmp_path / "cache", "--resolution", "32", "--device", "cpu",
               "--quiet", env={"FACEREENACT_FFMPEG_TIMEOUT": "0.001"})
    assert_user_error(proc, "fresh.mp4", "ffmpeg took more than", code=2)
    # A decoder that stalls (a process that writes nothing): the read gives up after the limit.
    os.environ["FACEREENACT_FFMPEG_TIMEOUT"] = "0.5"
    try:
        stream = FrameStream(data.clip, ["sleep", "30"], 8, 8, 0)
    finally:
        del os.environ["FACEREENACT_FFMPEG_TIMEOUT"]
    with pytest.raises(InputError, match="decoding stalled at frame 0"):
        next(stream)


# -------------------------------------------------------------------------------- a full disk
def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


_ENCODE = """
import sys
import numpy as np
from storage.errors import FacereenactError
from storage.video import VideoWriter
try:
    with VideoWriter(sys.argv[1], 25) as w:
        for i in range(20):
            w.write(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8))
except FacereenactError as err:
    print(f"facereenact: error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)
"""


def test_full_disk_is_one_line_for_every_output(data, tmp_path):
    """Outputs written by Python (PNGs, checkpoints: storage.atomic) and by the encoder (ffmpeg, in
    its own process) under a file-size limit, as a full disk refuses them: one line naming the file,
    exit 2, nothing left at the final path."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    runs = [
        ([sys.executable, "-m", "flows.cli", *map(str, _generate(data.weights, tmp_path / "png"))],
         tmp_path / "png" / "seed0000.png"),
        ([sys.executable, "-m", "flows.cli", "weights", "convert", str(data.weights),
          str(tmp_path / "G.safetensors")], tmp_path / "G.safetensors"),
        ([sys.executable, "-c", _ENCODE, str(tmp_path / "v.mp4")], tmp_path / "v.mp4"),
    ]
    for command, target in runs:
        proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
                              preexec_fn=_file_size_limit(2000))
        assert_user_error(proc, str(target), "no space left", code=2)
        assert not target.exists()
        assert not list(target.parent.glob(".*partial*"))


def test_unwritable_folders_are_one_line(data, cli, tmp_path):
    """Output, demo and weights-cache folders that cannot be written: one line, exit 2."""
    folder = readonly_folder(tmp_path)
    assert_user_error(cli(*_generate(data.weights, folder / "out")), str(folder), code=2)
    assert_user_error(cli("demo", "--out", folder / "demo"), str(folder), code=2)
    proc = cli("weights", "fetch", "lpips-vgg16", env={"TORCH_HOME": folder / "torch",
                                                       "XDG_CACHE_HOME": folder / "xdg",
                                                       "FACEREENACT_HOME": folder / "home"})
    assert_user_error(proc, str(folder), code=2)
