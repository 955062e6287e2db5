"""Provenance: what made a cached artifact, and the key that keeps different settings apart.

Every cached artifact records a provenance dict (model sha256, loss weights, steps, code version, ...).
`provenance_key` hashes it canonically; the cache stores results under that key, so a result made
with other settings is never picked up silently, and settings that match find their results again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE_VERSION = "0.1.0"
# Bump when a stage's numerical output changes for the same settings; it is part of every provenance
# key, so results of an older algorithm are not mixed with new ones.
CACHE_FORMAT = 1

_HASH_CHUNK = 1 << 20


def _canonical(value: Any) -> Any:
    """JSON-ready, order-independent form of a provenance value."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return repr(value)
        return float(repr(value))  # stable text for floats
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _canonical(value.item())
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"provenance values must be JSON-like, got {type(value).__name__}: {value!r}")


def canonical_json(provenance: dict[str, Any]) -> str:
    return json.dumps(_canonical(provenance), sort_keys=True, separators=(",", ":"))


def provenance_key(provenance: dict[str, Any], length: int = 16) -> str:
    """Short, stable hex key of a provenance dict (order of keys does not matter)."""
    return hashlib.sha256(canonical_json(provenance).encode()).hexdigest()[:length]


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's content, memoised on (path, size, mtime) so big weights hash once."""
    st = os.stat(path)
    return _sha256_file_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256_file_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout (`0.1.0+g1a2b3c4`)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{PACKAGE_VERSION}+g{commit}" if commit else PACKAGE_VERSION


def base_provenance(stage: str) -> dict[str, Any]:
    """The fields every stage's provenance starts with.

    The code version is recorded but not part of keys by itself: `CACHE_FORMAT` is, so that a commit
    that changes no numbers does not invalidate hours of cached inversion.
    """
    return {"stage": stage, "cache_format": CACHE_FORMAT}
