"""The reenactment cache: per driving frame, the latent the reenactment made, one frame per chunk,
plus the projector's state between frames; and the JSON sidecar beside an output video.

    table = ReenactCache.require(ws, driving_key, provenance, num_frames, num_ws, w_dim)
    table.table.status()                    # PENDING / DONE / FAILED per frame (stages/reenact.py resumes)
    table.save_state(noise, reference, key) # once, when frame 0 froze them (before frame 0 is marked done)
    table.write(frames, latents=..., loss=..., ...)   # data first, status last (FrameTable)
    table.load_state()                      # {"noise": [...], "driving_reference": ..., ...} or None

A ReenactCache is a FrameTable (storage/cache.py) of stage "reenact" under the *driving* clip's
`media/<key>/`; its provenance holds the source (content key, its crops and inversion), the driving
crops, the mode and every setting including the generator's sha256, so another source, other weights
or other settings land in another table beside it.

Resumption. A later frame needs what `models.projection.Projector.state_dict()` holds: the last
frame's latent (in the table already), the noise maps frozen after frame 0 and the driving clip's
frame-0 landmarks (relative targets). Those two are written once, into a "projector_state" group
inside the table's group, arrays first and the attribute that marks them complete last, and before
the first frame that froze them is marked done; so a frame marked done always has its state on disk
(a kill in between leaves the frame pending, and it is recomputed with the same bits).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from storage.atomic import atomic_output
from storage.cache import DONE, FAILED, PENDING, Field
from storage.errors import CacheError
from storage.latents import LatentTable

__all__ = ["REENACT_STAGE", "ReenactCache", "read_sidecar", "reenact_fields", "sidecar_path", "write_sidecar"]

REENACT_STAGE = "reenact"
STATE_GROUP = "projector_state"


def reenact_fields(num_ws: int, w_dim: int) -> dict[str, Field]:
    return {
        "latents": Field((int(num_ws), int(w_dim)), "float32"),  # W+ of the output frame
        "loss": Field((), "float32", nan_ok=True),               # final total objective (NaN: none)
        "points": Field((68, 2), "float32", nan_ok=True),        # landmarks of the render (G pixels)
        "nme": Field((), "float32", nan_ok=True),                # landmark NME to the driving frame
        "nme_target": Field((), "float32", nan_ok=True),         # landmark NME to the target (retargeted)
        "steps": Field((), "int32"),                             # optimiser steps the frame got
        "seconds": Field((), "float32"),                         # wall time of the frame's projection
        "interpolated": Field((), "uint8"),                      # 1: no face in the driving frame
    }


class ReenactCache(LatentTable):
    """Reenacted latents of one driving clip under one provenance (a FrameTable of stage "reenact")."""

    STAGE = REENACT_STAGE
    table_fields = staticmethod(reenact_fields)

    # -- progress ---------------------------------------------------------------------------------
    def reset_all(self) -> None:
        """Every frame pending again (the state was lost: the chain restarts at frame 0)."""
        self.table.reset(np.arange(self.num_frames))

    # -- state beside the table ---------------------------------------------------------------------
    def save_state(self, noise: Sequence[np.ndarray] | None, driving_reference: np.ndarray | None,
                   projector_key: str) -> None:
        """Store the frozen noise maps and the driving reference (arrays first, the completing
        attribute last). Called once per table; a second call with a stored state is a no-op."""
        if self.load_state() is not None:
            return
        group = self.table.group.require_group(STATE_GROUP)
        arrays = list(noise or [])
        for i, m in enumerate(arrays):
            m = np.asarray(m, dtype=np.float32)
            arr = group.create_array(f"noise_{i}", shape=m.shape, chunks=m.shape, dtype="float32",
                                     overwrite=True)
            arr[...] = m
        group.update_attributes({
            "complete": True,
            "projector_key": projector_key,
            "noise_maps": None if noise is None else len(arrays),
            "driving_reference": None if driving_reference is None else
            np.asarray(driving_reference, dtype=np.float32).tolist(),
        })

    def load_state(self) -> dict[str, Any] | None:
        """{"projector_key", "noise" (list of (r, r) float32, or None), "driving_reference"} or None
        when no complete state is stored."""
        try:
            group = zarr.open_group(self.table.group.store, path=f"{self.table.group.path}/{STATE_GROUP}",
                                    mode="r")
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            return None
        attrs = dict(group.attrs)
        if not attrs.get("complete"):
            return None
        count = attrs.get("noise_maps")
        noise = None if count is None else [np.asarray(group[f"noise_{i}"][...]) for i in range(count)]
        ref = attrs.get("driving_reference")
        return {"projector_key": attrs.get("projector_key"), "noise": noise,
                "driving_reference": None if ref is None else np.asarray(ref, dtype=np.float32)}

    # -- data -------------------------------------------------------------------------------------
    def write(self, frames: Sequence[int] | np.ndarray, **fields: np.ndarray) -> None:
        """Store finished frames (data, then status). A non-finite latent is refused: such a frame
        failed and must be `fail`ed."""
        if not np.isfinite(np.asarray(fields["latents"])).all():
            raise ValueError(f"{self.location}: non-finite latents cannot be stored as done")
        self.table.write(frames, **fields)

    def read(self, field: str, frames: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        return self.table.read(field, frames)

    def per_frame(self) -> dict[str, np.ndarray]:
        """Every frame's status and small fields (NaN / 0 on frames not done), for metrics and
        reports."""
        status = self.table.status()
        done = np.flatnonzero(status == DONE)
        out: dict[str, np.ndarray] = {"status": status}
        for name in ("loss", "nme", "nme_target", "steps", "seconds", "interpolated"):
            spec = self.table.fields[name]
            column = np.full(self.num_frames, spec.resolved_fill(), dtype=spec.dtype)
            if done.size:
                column[done] = self.table.read(name, done)
            out[name] = column
        return out

    def held_latents(self) -> tuple[np.ndarray, np.ndarray]:
        """(T, num_ws, w_dim) latents of every frame for rendering, and the indices of the frames
        that show another frame's latent: a failed frame holds the last done frame before it (the
        first done frame after it at the start), so the output keeps every frame and its timing."""
        status = self.table.status()
        if (status == PENDING).any():
            raise CacheError(f"frames {np.flatnonzero(status == PENDING)[:8].tolist()} are not projected yet",
                             path=self.location)
        done = np.flatnonzero(status == DONE)
        if done.size == 0:
            raise CacheError("no frame could be reenacted (every frame failed)", path=self.location)
        latents = self.table.read("latents", done)
        source = np.searchsorted(done, np.arange(self.num_frames), side="right") - 1
        source = np.clip(source, 0, None)  # before the first done frame: the first done frame
        held = np.flatnonzero(status == FAILED)
        return latents[source], held


# ---------------------------------------------------------------------------------------------------
# The JSON sidecar beside an output video: what made it, its metrics, its timing.


def sidecar_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".json")


def write_sidecar(output: str | Path, record: Mapping[str, Any]) -> Path:
    """`out.mp4.json`, written atomically after the video (a video without a sidecar is re-made)."""
    path = sidecar_path(output)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=_jsonable) + "\n")
    return path


def read_sidecar(output: str | Path) -> dict[str, Any] | None:
    path = sidecar_path(output)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
