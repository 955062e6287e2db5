"""What each reenact mode of flows/reenact.py's mode table (REENACTORS) needs on the command line
beyond the shared options, made offline, for the mode contract suite (tests/test_reenact_modes.py).

`MODE_ARGS[mode](root, weights)` -> the mode's own `facereenact run` arguments (its steps per frame,
its model); it may make files in `root` (the mapping mode's checkpoint, trained here by the real
train-mapping flow on synthetic latents).
A new mode adds its entry here; the contract suite fails for a mode of the table without one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _mapping(root: Path, weights: Path) -> list[str]:
    from models import load_generator
    from tests.mapping_cache import train_checkpoint

    checkpoint = train_checkpoint(root, "mapping", 4, load_generator(str(weights)).fingerprint())
    # a few projection steps per frame from the network's output: frames take long enough to be killed
    return ["--mapping", checkpoint, "--refine-steps", "6"]


def _directions(root: Path, weights: Path) -> list[str]:
    from models import load_generator
    from models.landmarks import load_landmark_backend
    from stages.train_directions import DirectionsConfig, train_to

    out = root / "directions.pt"
    if not out.exists():  # one step: the file, not its quality (tests/test_directions_train.py)
        config = DirectionsConfig(fit_samples=12, batch_size=2, expression_dims=2, lambda_id=0.0,
                                  perceptual="uncalibrated-alex", delta_scale=0.2)
        train_to(out, load_generator(str(weights)), load_landmark_backend("faceapi"), config, steps=1,
                 log=lambda line: None)
    return ["--directions", str(out)]


MODE_ARGS: dict[str, Callable[[Path, Path], list[str]]] = {
    # enough steps that a frame takes a noticeable time (a kill lands mid-run), still seconds in all
    "projection": lambda root, weights: ["--steps-first", "6", "--steps-next", "6"],
    "mapping": _mapping,
    "directions": _directions,
}

# Modes whose latents cost no generator pass (a batch of frames is one small matrix product): a whole
# short clip is done within one poll of the kill test, so a kill cannot land between two frames of the
# table. Their kill and resume are tested in their own module (directions:
# tests/test_reenact_directions.py, a kill at a random point of the whole run).
TOO_FAST_TO_KILL_MID_TABLE = {"directions"}
