"""The latent cache: per-video W+ latents of the dataset inversion, one frame per chunk.

    cache = LatentCache.require(ws, media_key, provenance, num_frames=120, num_ws=18, w_dim=512)
    cache.todo_frames()                          # frames still to invert (pending; + failed on retry)
    cache.write(frames, latents, losses, seeds)  # (n, num_ws, w_dim), (n,), (n,): data first, status last
    cache.fail(frame, "final loss 0.61 above --max-loss 0.5")
    cache.read()                                 # (T, num_ws, w_dim): every frame must be done
    frames, latents = cache.read_done()          # only the done frames, whatever the others are

A LatentCache is a FrameTable (storage/cache.py) of stage "latents" under `media/<media key>/`, so it
inherits the cache's rules: one chunk per frame (workers write disjoint chunks without locks), NaN
fill (an unwritten latent can never pass for a real one), status written after the data, readers see
only done frames, and a table keyed by its provenance: latents made with another generator, other
settings, other crops or another seed rule land in another table beside this one, never mixed in.

The provenance is the caller's `inversion_provenance(G, config)` (settings, generator fingerprint,
loss nets, calibrated or not) plus the key of the crops table that was inverted and the rule that
derives each frame's seed (`latents_provenance`); the table also records the code version that made
it. Per-frame values stored beside the latent: the final loss and the seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from storage.cache import FAILED, PENDING, Field, FrameTable, Workspace
from storage.errors import CacheError

__all__ = ["LATENT_STAGE", "SEED_RULE", "LatentCache", "LatentTable", "fixed_batches", "frame_seed",
           "latent_fields", "latents_provenance"]

LATENT_STAGE = "latents"
# How a frame's random seed (noise-map init, w noise) is derived; part of the provenance, so a change
# of rule can never mix latents made under two rules.
SEED_RULE = "int.from_bytes(sha256(f'{media_key}:{frame}:{base_seed}')[:8], 'big') >> 1"


def frame_seed(media_key: str, frame: int, base_seed: int) -> int:
    """The seed of one frame: a function of the video's content key, the frame index and the base seed
    alone, so a frame gets the same random numbers in any batch, run, worker or resumed job."""
    digest = hashlib.sha256(f"{media_key}:{int(frame)}:{int(base_seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: fits int64 and torch's manual_seed


def fixed_batches(num_frames: int, batch_size: int, frames: Sequence[int] | np.ndarray
                  ) -> list[tuple[int, int]]:
    """The batches [k*B, min((k+1)*B, T)) that hold at least one of `frames`, in order.

    Boundaries depend on the frame index alone, never on what is left to do: a resumed job runs a
    half-finished batch with the same frames as the uninterrupted job would, so its results are the
    same bits (on a CPU; batched kernels round differently for other batch compositions)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = sorted({int(i) // batch_size * batch_size for i in np.asarray(frames, dtype=np.int64).ravel()})
    return [(s, min(s + batch_size, int(num_frames))) for s in starts if s < num_frames]


def latent_fields(num_ws: int, w_dim: int) -> dict[str, Field]:
    return {
        "latents": Field((int(num_ws), int(w_dim)), "float32"),  # W+; NaN until the frame is done
        "loss": Field((), "float32"),                            # final total loss of the inversion
        "seed": Field((), "int64", fill_value=-1),               # the frame's seed (frame_seed)
    }


def latents_provenance(inversion: Mapping[str, Any], crops_key: str) -> dict[str, Any]:
    """What a cached latent depends on: the inversion's provenance (`inversion_provenance(G, config)`),
    the crops it inverted (their table's key hashes the landmarks, smoothing and resolution) and the
    per-frame seed rule."""
    return {**dict(inversion), "crops_table": str(crops_key), "frame_seeds": SEED_RULE}


class LatentTable:
    """A typed view of one FrameTable whose frames hold W+ latents (field "latents"), of stage STAGE:
    the latents of the dataset inversion (LatentCache) and of a reenactment (storage.reenact's
    ReenactCache) open, check and name their table the same way, here."""

    STAGE: ClassVar[str]

    def __init__(self, table: FrameTable) -> None:
        if table.stage != self.STAGE or "latents" not in table.fields:
            raise CacheError(f"not a {self.STAGE} table (stage {table.stage!r})", path=table.location)
        self.table = table
        self.num_ws, self.w_dim = table.fields["latents"].shape

    @staticmethod
    def table_fields(num_ws: int, w_dim: int) -> dict[str, Field]:
        raise NotImplementedError

    @classmethod
    def require(cls, ws: Workspace, media_key: str, provenance: Mapping[str, Any], num_frames: int,
                num_ws: int, w_dim: int) -> Self:
        """The table of `media_key` under `provenance`, created (all pending) if new."""
        return cls(ws.table(media_key, cls.STAGE, provenance, num_frames, cls.table_fields(num_ws, w_dim)))

    @classmethod
    def at(cls, ws: Workspace, location: str) -> Self:
        """An existing table by its location ("media/<key>/<stage>-<pkey>")."""
        return cls(ws.open_table(location))

    @classmethod
    def all(cls, ws: Workspace, media_key: str | None = None) -> Iterator[Self]:
        """Every table of this stage (of one video, or of the whole workspace), whatever its provenance."""
        for table in ws.tables(media_key, cls.STAGE):
            yield cls(table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.table!r})"

    # -- what it is -------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return self.table.location

    @property
    def key(self) -> str:
        return self.table.key

    @property
    def provenance(self) -> dict[str, Any]:
        return self.table.provenance

    @property
    def num_frames(self) -> int:
        return self.table.num_frames

    @property
    def code_version(self) -> str | None:
        """The code version that created the table (recorded, not part of the key: docs/cache.md)."""
        return self.table.attrs.get("code_version")

    def counts(self) -> dict[str, int]:
        return self.table.counts()

    def errors(self) -> dict[int, str]:
        """Why each failed frame failed."""
        return self.table.errors()

    def fail(self, frames: int | Sequence[int] | np.ndarray, reason: str) -> None:
        """Mark frames failed with a one-line reason (a rerun with retry redoes them)."""
        self.table.fail(frames, reason)


class LatentCache(LatentTable):
    """W+ latents of one video under one provenance (a FrameTable of stage "latents")."""

    STAGE = LATENT_STAGE
    table_fields = staticmethod(latent_fields)

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> np.ndarray:
        return self.table.status()

    def todo_frames(self, retry_failed: bool = False, frames: Sequence[int] | np.ndarray | None = None
                    ) -> np.ndarray:
        """Frames still to invert (pending; failed too when `retry_failed`), among `frames` when given
        (only their status is read: a batch of a long video reads its own frames' chunks)."""
        if frames is None:
            return self.table.todo_frames(retry_failed)
        idx = np.atleast_1d(np.asarray(frames, dtype=np.int64))
        status = self.table.status(idx)
        return idx[(status == PENDING) | ((status == FAILED) & retry_failed)]

    def done_frames(self) -> np.ndarray:
        return self.table.done_frames()

    def failed_frames(self) -> np.ndarray:
        return self.table.failed_frames()

    def is_complete(self) -> bool:
        return self.table.is_complete()

    # -- writing ----------------------------------------------------------------------------------
    def write(self, frames: Sequence[int] | np.ndarray, latents: np.ndarray, losses: np.ndarray,
              seeds: Sequence[int] | np.ndarray) -> None:
        """Store finished frames and mark them done (data first, status last). A non-finite latent or
        loss is refused: such a frame failed and must be `fail`ed, never stored as done."""
        latents = np.asarray(latents, dtype=np.float32)
        losses = np.asarray(losses, dtype=np.float32)
        if not (np.isfinite(latents).all() and np.isfinite(losses).all()):
            raise ValueError(f"{self.location}: non-finite latents or losses cannot be stored as done")
        self.table.write(frames, latents=latents, loss=losses, seed=np.asarray(seeds, dtype=np.int64))

    # -- reading ----------------------------------------------------------------------------------
    def read(self, frames: int | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(n, num_ws, w_dim) latents of `frames` (all when None); a frame not done is a CacheError."""
        return self.table.read("latents", frames)

    def read_losses(self, frames: int | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        return self.table.read("loss", frames)

    def read_seeds(self, frames: int | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        return self.table.read("seed", frames)

    def read_done(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame indices, latents) of the done frames only: what a consumer such as the mapping
        network's training may use while a job is still running or after frames failed."""
        done = self.done_frames()
        if done.size == 0:
            return done, np.empty((0, self.num_ws, self.w_dim), np.float32)
        return done, self.read(done)
