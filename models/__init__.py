"""Torch models: generator and checkpoint loading, landmarks, identity, losses, inversion, reenactment.

No Prefect import anywhere under models/. Names here import their module on first use, so that
`import models` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.checkpoints import load_generator

__all__ = ["load_generator"]


def __getattr__(name: str) -> Any:
    if name == "load_generator":
        from models.checkpoints import load_generator

        return load_generator
    raise AttributeError(f"module 'models' has no attribute {name!r}")
