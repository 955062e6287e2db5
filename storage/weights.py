"""Named official weights: where they come from, where they live on disk, how to get them.

This module is the one place that knows weight files: the registry (name -> URL, size, sha256), the
user's weights directory, and the error for a missing weight. Fetching (resumable, verified, atomic)
lives here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from storage.errors import WeightsMissingError


@dataclass(frozen=True)
class WeightSpec:
    """One named weight file.

    name:     registry name (`facereenact weights fetch NAME`)
    filename: file name on disk under the weights directory
    url:      official download address
    size:     exact size in bytes, or None where not established
    sha256:   full hex digest, or None where not established
    kind:     what loads it ("stylegan2", "fan", "lpips-backbone", ...)
    note:     provenance of the entry (where the numbers come from)
    """

    name: str
    filename: str
    url: str
    size: int | None
    sha256: str | None
    kind: str
    note: str = ""


REGISTRY: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in [
        WeightSpec(
            name="ffhq-1024",
            filename="stylegan2-ada-pytorch-ffhq.pkl",
            url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl",
            size=381_624_121,
            sha256="a205a346e86a9ddaae702e118097d014b7b8bd719491396a162cca438f2f524c",
            kind="stylegan2",
            note="stylegan2-ada-pytorch ffhq.pkl, 1024 px (size and sha256 from the design card)",
        ),
    ]
}


def weights_dir() -> Path:
    """Where named weights live: $FACEREENACT_HOME/weights, default ~/.cache/facereenact/weights."""
    home = os.environ.get("FACEREENACT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "facereenact")
    return Path(home) / "weights"


def require(name: str) -> Path:
    """Path of the named weight, or a one-line WeightsMissingError saying where we looked and how to
    fetch it."""
    spec = REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(REGISTRY))
        raise WeightsMissingError(f"unknown weight name {name!r} (known: {known}; or give a file path)")
    path = weights_dir() / spec.filename
    if not path.is_file():
        raise WeightsMissingError(
            f"weight {spec.filename!r} ({name}) not found in {path.parent}; "
            f"fetch it with: facereenact weights fetch {name}")
    return path
