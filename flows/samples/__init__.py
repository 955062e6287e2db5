"""Sample inputs shipped with the package (see README.md here): `sample_path("astronaut.jpg")`."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent


def sample_path(name: str) -> Path:
    """Path of a bundled sample file; FileNotFoundError when the package was installed without it."""
    path = SAMPLES_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"sample {name!r} is not in {SAMPLES_DIR}")
    return path
