"""Checks a command makes before torch or Prefect load: input files, output, and every weight file it
will need, all missing weights named in one message with the one command that fetches them.

Nothing here imports torch, Prefect or a network: a typo in a path or a missing weight is reported in
about a second (tests/benchmarks/bench_startup.py), not after 10-25 s of imports and server start.
The checks that need the networks (a checkpoint that is malformed, a mapping network made for another
generator) still run later, before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from storage.errors import InputError, WeightsMissingError
from storage.files import require_regular_file

# --perceptual choice -> the LPIPS backbone's registry name, and whether it is calibrated
# (models.losses.PERCEPTUAL_CHOICES has the same table with the torch side; tests/test_cli.py checks
# that they agree).
BACKBONES: dict[str, tuple[str, bool]] = {
    "lpips-vgg": ("lpips-vgg16", True), "lpips-alex": ("lpips-alexnet", True),
    "uncalibrated": ("lpips-vgg16", False), "uncalibrated-alex": ("lpips-alexnet", False),
}
# The 2D-FAN weights: the registry's file name and face-alignment's older TorchScript name
# (models.landmarks.fan.FAN_WEIGHT_FILES; checked against it in tests/test_cli.py).
FAN_NAME = "fan-2d"
FAN_FILES = ("2DFAN4-11f355bf06.pth.tar", "2DFAN4-cd938726ad.zip")
CHECKPOINT_SUFFIXES = (".pkl", ".pt", ".pth", ".safetensors", ".ckpt")  # models.checkpoints' (tested)


@dataclass
class Missing:
    """Registered weights that are not on disk, gathered to be reported together."""

    names: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def add(self, name: str, path: Path) -> None:
        if name not in self.names:
            self.names.append(name)
            self.where.append(f"{path.name} ({name}) not in {path.parent}")

    def error(self, hint: str = "") -> WeightsMissingError:
        return WeightsMissingError(f"missing weights: {'; '.join(self.where)}; fetch them with: "
                                   f"facereenact weights fetch {' '.join(self.names)}"
                                   + "".join(f"; {h}" for h in self.hints) + hint)


def registered_path(name: str) -> Path:
    from storage.weights import default_dir, get_spec

    spec = get_spec(name)
    return default_dir(spec) / spec.filename


def generator_file(weights: str, missing: Missing) -> Path | None:
    """The generator's file: an existing path, or a registered name's file (None and noted in
    `missing` when it is not on disk). A path that does not exist is an InputError."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise InputError("not a checkpoint file (a directory?)", path=path)
    if os.sep in weights or "/" in weights or weights.lower().endswith(CHECKPOINT_SUFFIXES):
        raise InputError("checkpoint file not found", path=path)
    file = registered_path(weights)  # an unknown name: WeightsMissingError listing the known ones
    if not file.is_file():
        missing.add(weights, file)
        return None
    return file


def backbone_file(perceptual: str, missing: Missing) -> Path | None:
    """The LPIPS backbone file a --perceptual choice needs (None when uncalibrated or missing)."""
    name, calibrated = BACKBONES[perceptual]
    if not calibrated:
        return None
    file = registered_path(name)
    if not file.is_file():
        missing.add(name, file)
        missing.hints.append("or pass --perceptual uncalibrated (LPIPS with a random backbone)")
        return None
    return file


def landmark_files(landmarks: str, missing: Missing) -> None:
    """face-api's weights ship with the package; 2D-FAN's are fetched (torch hub or weights dir)."""
    if landmarks != "fan":
        return
    from storage.weights import torch_hub_checkpoints_dir, weights_dir

    dirs = [torch_hub_checkpoints_dir(), weights_dir()]
    if not any((d / f).is_file() for d in dirs for f in FAN_FILES):
        missing.add(FAN_NAME, registered_path(FAN_NAME))


def require_weights(generator: str | None = None, perceptual: str | None = None,
                    landmarks: str | None = None) -> None:
    """Every weight a command needs is on disk, or one WeightsMissingError naming all that are not
    (a generator path that does not exist is an InputError)."""
    missing = Missing()
    if generator is not None:
        generator_file(generator, missing)
    if perceptual is not None:
        backbone_file(perceptual, missing)
    if landmarks is not None:
        landmark_files(landmarks, missing)
    if missing.names:
        raise missing.error()


def existing_file(path: str, what: str) -> Path:
    """`path` as a Path when it is a regular file; a one-line InputError otherwise (missing, a folder,
    a FIFO, device or socket: storage.files.require_regular_file)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} not found", path=p)
    return require_regular_file(p, what)


def writable_output(output: str, suffixes: tuple[str, ...]) -> Path:
    """The output's extension is one of `suffixes` and its folder can be written."""
    p = Path(output).expanduser()
    if p.suffix.lower() not in suffixes:
        raise InputError(f"unsupported output extension (use {', '.join(suffixes)})", path=p)
    from storage.atomic import check_writable

    check_writable(p)
    return p
