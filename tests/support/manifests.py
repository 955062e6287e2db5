"""Batch manifests of reenactment jobs for the `facereenact batch` tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.reenact_data import OPTIONS

# The reenact options of every job (steps, the uncalibrated LPIPS: no weights in tests).
JOB_OPTIONS: dict[str, Any] = dict(OPTIONS)


def batch_jobs(bad: str = "broken.mp4") -> list[dict]:
    """Three jobs on face.jpg / drive.mp4: a projection job, a "free" variant with sub-frames side by
    side, and one whose driving clip is `bad` (the one that fails)."""
    return [
        {"name": "plain", "source": "face.jpg", "driving": "drive.mp4", "output": "out/plain.mp4",
         "mode": "projection", "options": JOB_OPTIONS},
        {"name": "free", "source": "face.jpg", "driving": "drive.mp4", "output": "out/free.mp4",
         "options": {**JOB_OPTIONS, "variant": "free", "subframes": True, "layout": "side-by-side"}},
        {"name": "broken", "source": "face.jpg", "driving": bad, "output": "out/broken.mp4",
         "options": JOB_OPTIONS},
    ]


def yaml_manifest(path: Path, rows: list[dict]) -> str:
    import yaml

    path.write_text(yaml.safe_dump({"jobs": rows}, sort_keys=False))
    return str(path)


def jsonl_manifest(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
