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


MODE_ARGS: dict[str, Callable[[Path, Path], list[str]]] = {
    # enough steps that a frame takes a noticeable time (a kill lands mid-run), still seconds in all
    "projection": lambda root, weights: ["--steps-first", "6", "--steps-next", "6"],
    "mapping": _mapping,
}
