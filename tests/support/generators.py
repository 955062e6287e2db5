"""The official-format generator fixtures (../shared/fixtures/stylegan2, stylegan3: NVIDIA pickles with
tiny random weights and NAME_ref.npz of NVIDIA's outputs), as the parity tests read them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def reference_case(directory: Path, name: str,
                   load: Callable[[str], Any]) -> tuple[str, Any, dict[str, np.ndarray], dict[str, Any]]:
    """(name, the generator loaded by `load`, NVIDIA's reference arrays, the fixture's facts)."""
    ref = dict(np.load(directory / f"{name}_ref.npz"))
    facts = json.loads((directory / f"{name}.json").read_text())
    return name, load(str(directory / f"{name}.pkl")), ref, facts


def max_abs(a: torch.Tensor, b: np.ndarray) -> float:
    """Largest absolute difference of a tensor (any device) and a reference array of the same shape."""
    assert tuple(a.shape) == b.shape
    return float(np.abs(a.detach().cpu().numpy() - b).max())


def assert_mapping_matches(G: Any, ref: dict[str, np.ndarray], tolerance: float) -> None:
    """G.mapping of the reference z at psi 1 and 0.7 is NVIDIA's (ws_psi1, ws_psi07) within `tolerance`."""
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        assert max_abs(G.mapping(z, truncation_psi=1.0), ref["ws_psi1"]) <= tolerance
        assert max_abs(G.mapping(z, truncation_psi=0.7), ref["ws_psi07"]) <= tolerance
