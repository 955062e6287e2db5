"""`facereenact run` and `facereenact demo` as a user runs them: one-line errors with their exit codes,
and the demo command end to end. A run killed with SIGKILL and resumed, and the rerun that does no
work, are in the mode contract (test_reenact_modes.py), for every mode."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from storage.video import probe
from tests import reenact_data
from tests.helpers import assert_user_error
from tests.reenact_data import CLI_OPTIONS

FRAMES = 8


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reenact-cli")
    clip = reenact_data.driving_clip(root / "drive.mp4", FRAMES)
    return root, reenact_data.tiny_weights(root), clip


def test_user_errors(inputs, tmp_path, capsys, monkeypatch, prefect_harness):
    from flows.cli import main

    root, weights, clip = inputs
    src = str(reenact_data.source())
    out = tmp_path / "out.mp4"

    def run(*args) -> subprocess.CompletedProcess:
        """The CLI's entry point in this process (the checks before any work need no subprocess)."""
        code = main(["run", *map(str, args), "-o", str(out), "--cache", str(tmp_path / "cache"),
                     *CLI_OPTIONS])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    assert_user_error(run("--source", tmp_path / "nope.jpg", "--driving", clip, "--weights", weights),
                      "nope.jpg", code=2)
    assert_user_error(run("--source", src, "--driving", src, "--weights", weights),
                      "astronaut.jpg", "must be a video", code=2)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    assert_user_error(run("--source", src, "--driving", corrupt, "--weights", weights), "corrupt.mp4", code=2)
    assert_user_error(run("--source", src, "--driving", clip, "--weights", "ffhq-1024"),
                      "facereenact weights fetch ffhq-1024", code=4)
    with pytest.raises(SystemExit) as exit_:  # the parser's choices: before anything else runs
        run("--source", src, "--driving", clip, "--weights", weights, "--mode", "nope")
    assert exit_.value.code == 2
    assert_user_error(subprocess.CompletedProcess([], 2, "", capsys.readouterr().err),
                      "--mode: invalid choice: 'nope'", code=2)
    assert not (tmp_path / "cache").exists() and not out.exists()  # nothing done before these checks
    # A source without a face is found by the prepare stage: as a user runs it, one line, exit 2.
    from storage.images import save_image

    blank = save_image(tmp_path / "wall.png", np.full((128, 128, 3), 118, np.uint8))
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")  # as the CLI sets it
    proc = run("--source", blank, "--driving", clip, "--weights", weights)
    assert_user_error(proc, "wall.png", "no face", code=2)
    assert not out.exists()


def test_demo_command(tmp_path, cli, prefect_harness):
    out = tmp_path / "demo"
    proc = cli("demo", "--out", out, "--frames", "3", "--steps", "4", "--resolution", "32", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Offline (tests have no weights): the random generator, said plainly; LPIPS uncalibrated, said too.
    assert "NOT the quality of real weights" in proc.stderr and "LPIPS runs uncalibrated" in proc.stderr
    info = probe(out / "reenacted.mp4")
    assert info.frame_count == 3 and info.width == 3 * 32  # look | driving | result
    assert (out / "preview.png").is_file() and (out / "reenacted.mp4.json").is_file()
    assert "reenacted 3 frames" in proc.stdout
