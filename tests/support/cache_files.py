"""What a cache holds on disk, read directly from its files (for "nothing done was rewritten")."""

from __future__ import annotations

from pathlib import Path


def chunk_mtimes(cache: Path) -> dict[str, int]:
    """Modification times of every chunk file (the per-frame data and status) of a local cache."""
    return {str(p): p.stat().st_mtime_ns for p in (cache / "media").rglob("*")
            if p.is_file() and "/c/" in str(p)}
