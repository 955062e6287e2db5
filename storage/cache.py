"""The workspace cache: one zarr v3 store holding every stage's per-frame results.

Layout (see README, "Cache"):

    <workspace>/                         root group; attrs["facereenact"] = {"layout": LAYOUT_VERSION}
      media/<media_key>/                 one video or image, keyed by the sha256 of its content;
                                         attrs: source path, size, probe info
        <stage>-<provenance_key>/        a FrameTable: one stage's results under one provenance
          <field>                        (T, *shape) arrays, chunked one frame per chunk
          status                         (T,) uint8: 0 pending, 1 done, 2 failed
          error                          (T,) str: why a frame failed ("" otherwise)
      jobs/<job_id>/                     attrs: what a job asked for and which tables it filled

Why it is shaped this way:
- One chunk per frame, so independent workers write disjoint chunks without locks, and a crash can only
  ever lose the frames in flight. zarr's LocalStore writes each chunk atomically (temp file + rename).
- The status of a frame is written after its data: a crash between the two leaves the frame pending,
  and it is recomputed. Readers only see frames whose status is done.
- Results live under a key derived from their provenance (model sha256, loss weights, steps, ...), so
  results made with other settings are never reused silently: other settings make a new table beside
  the old one, and `facereenact status` shows both. The full provenance is stored on the table and
  checked when it is opened, so a key collision or a tampered table is an error, not a silent mix.
- No sharding: arrays written concurrently must not share a shard (partial shard writes lose data).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.storage import FsspecStore, LocalStore

from storage.errors import CacheError
from storage.provenance import canonical_json, code_version, provenance_key
from storage.remote import is_remote, is_store_error, remote_problem

LAYOUT_VERSION = 1

PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}

_RESERVED_FIELDS = {"status", "error"}
# Open groups as what they are (zarr v3, not consolidated): otherwise zarr probes for v2 and
# consolidated metadata first, a round trip each on an object store.
_V3: dict[str, Any] = {"zarr_format": 3, "use_consolidated": False}
# errnos of a write refused for want of room: disk full, quota, file-size limit (RLIMIT_FSIZE)
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@dataclass(frozen=True)
class Field:
    """One per-frame array of a FrameTable: each frame holds an array of `shape` and `dtype`.

    Float fields fill with NaN (an unwritten frame can never pass for a real zero); integer fields
    fill with `fill_value` (0 unless given). NaN in a done frame is damage and refused on read, unless
    the field declares `nan_ok` (e.g. raw landmarks of a frame where no face was found).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    fill_value: float | int | None = None
    nan_ok: bool = False

    def resolved_fill(self) -> float | int:
        if self.fill_value is not None:
            return self.fill_value
        return float("nan") if np.dtype(self.dtype).kind == "f" else 0

    def describe(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": str(np.dtype(self.dtype)), "nan_ok": self.nan_ok}


def open_store(url: str | Path) -> LocalStore | FsspecStore:
    """A zarr store for a local directory, a file:// URL, or any fsspec URL (memory://, s3://, ...;
    storage/remote.py: checked on first contact, one-line CacheError when unusable)."""
    text = str(url)
    if "://" not in text or text.startswith("file://"):
        path = Path(text.removeprefix("file://")).expanduser()
        if path.exists() and not path.is_dir():
            raise CacheError("is a file, not a cache directory", path=path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CacheError(f"cannot create the cache directory ({err.strerror})", path=path) from None
        if not (path / "zarr.json").exists() and any(path.iterdir()):
            # Another tool's files (a zarr v2 store, a dataset folder): never adopt them as a cache.
            v2 = (path / ".zgroup").exists() or (path / ".zarray").exists()
            raise CacheError(("a zarr v2 store" if v2 else "a directory with other files") + ", not a "
                             "facereenact cache; choose a new or empty directory", path=path)
        return LocalStore(path)
    from storage.remote import open_remote_store

    return open_remote_store(text)


class FrameTable:
    """One stage's per-frame results for one medium under one provenance.

    Use `Workspace.table(...)` to get one. Writers call `write(frames, field=values, ...)` (data, then
    status) or `fail(frames, reason)`; readers call `read(field, frames)`, which refuses frames that
    are not done, or `done_frames()` first.
    """

    def __init__(self, group: zarr.Group, location: str) -> None:
        self.group = group
        self.location = location  # "media/<key>/<stage>-<pkey>", for messages
        self._arrays: dict[str, zarr.Array] = {}
        attrs = dict(group.attrs)
        try:
            self.stage: str = attrs["stage"]
            self.provenance: dict[str, Any] = attrs["provenance"]
            self.key: str = attrs["provenance_key"]
            self.num_frames: int = int(attrs["num_frames"])
            self.fields: dict[str, Field] = {
                name: Field(tuple(spec["shape"]), spec["dtype"], nan_ok=bool(spec.get("nan_ok", False)))
                for name, spec in attrs["fields"].items()
            }
        except (KeyError, TypeError, ValueError) as err:
            raise CacheError(f"table metadata is incomplete ({err})", path=location) from None
        if provenance_key(self.provenance) != self.key:
            raise CacheError(
                "table provenance does not match its key (tampered or corrupt); delete this table",
                path=location,
            )

    def _array(self, name: str) -> zarr.Array:
        """A field's (or status / error) array, opened once: each lookup through the group reads
        its metadata from the store again (about 0.5 ms locally, a round trip on object stores),
        and an array's metadata never changes after the table is made."""
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = self.group[name]
        return array

    def __repr__(self) -> str:
        c = self.counts()
        return (f"FrameTable({self.location!r}, frames={self.num_frames}, done={c['done']}, "
                f"failed={c['failed']}, pending={c['pending']})")

    # -- status -----------------------------------------------------------------------------------
    def status(self, frames: int | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(T,) uint8 status of every frame (PENDING / DONE / FAILED), or of `frames` only (one chunk
        per frame: a task working on a few frames of a long video reads only theirs)."""
        try:
            array = self._array("status")
            if frames is None:
                return np.asarray(array[:], dtype=np.uint8)
            return np.asarray(_take(array, self._frames(frames)), dtype=np.uint8)
        except (IndexError, ValueError):
            raise
        except Exception as err:  # a chunk that cannot be decoded: refuse to guess
            raise CacheError(f"status array is unreadable ({type(err).__name__}: {err})",
                             path=self.location) from None

    def counts(self) -> dict[str, int]:
        s = self.status()
        return {name: int((s == code).sum()) for code, name in STATUS_NAMES.items()}

    def done_frames(self) -> np.ndarray:
        return np.flatnonzero(self.status() == DONE)

    def failed_frames(self) -> np.ndarray:
        return np.flatnonzero(self.status() == FAILED)

    def todo_frames(self, retry_failed: bool = False) -> np.ndarray:
        """Frames still to compute: pending ones, plus failed ones when `retry_failed`."""
        s = self.status()
        mask = s == PENDING
        if retry_failed:
            mask |= s == FAILED
        return np.flatnonzero(mask)

    def first_not_done(self) -> int:
        """The first frame that is not done (`num_frames` when every frame is): where a sequential
        stage such as tracking resumes."""
        not_done = np.flatnonzero(self.status() != DONE)
        return int(not_done[0]) if not_done.size else self.num_frames

    def is_complete(self) -> bool:
        return bool((self.status() == DONE).all())

    def errors(self) -> dict[int, str]:
        """Failure reason of every failed frame."""
        failed = self.failed_frames()
        if failed.size == 0:
            return {}
        texts = self._array("error")
        return {int(i): str(texts[int(i)]) for i in failed}

    # -- writing ----------------------------------------------------------------------------------
    def _frames(self, frames: int | Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.atleast_1d(np.asarray(frames, dtype=np.int64))
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= self.num_frames)):
            raise IndexError(f"frame indices {idx.tolist()} out of range 0..{self.num_frames - 1}")
        return idx

    def write(self, frames: int | Sequence[int] | np.ndarray, **values: np.ndarray) -> None:
        """Store results for `frames` and mark them done.

        Every declared field must be given, shaped (len(frames), *field.shape). Data is written first,
        then the status, so a crash in between leaves the frames pending (recomputed on resume).
        """
        idx = self._frames(frames)
        missing = set(self.fields) - set(values)
        unknown = set(values) - set(self.fields)
        if missing or unknown:
            raise ValueError(f"{self.location}: write needs fields {sorted(self.fields)}; "
                             f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        arrays = self._shaped(idx, values)
        with self._writing(idx):
            for name, arr in arrays.items():
                _put(self._array(name), idx, arr)
            _put(self._array("error"), idx, np.full(idx.size, "", dtype=object))
            _put(self._array("status"), idx, np.full(idx.size, DONE, dtype=np.uint8))

    @contextlib.contextmanager
    def _writing(self, idx: np.ndarray) -> Iterator[None]:
        """A full disk (or quota, or file-size limit) during a write is the user's to fix: a one-line
        CacheError naming the table. Each chunk is written whole or not at all and the status last,
        so the frames being written stay pending (or as they were) and a rerun redoes them."""
        try:
            yield
        except Exception as err:
            if isinstance(self.group.store, FsspecStore) and is_store_error(err):
                # An object store that fails mid-run (endpoint gone, credentials expired, throttled
                # past the retries): one line, and the frames stay pending as after a crash.
                raise CacheError(f"cannot write frames {_short_list(idx)} to the object store "
                                 f"({remote_problem(err)}); run the same command to resume",
                                 path=self.location) from None
            if not isinstance(err, OSError) or err.errno not in _DISK_FULL:
                raise
            root = getattr(self.group.store, "root", None)
            where = f"{root}/{self.location}" if root is not None else self.location
            raise CacheError(f"no space left to write frames {_short_list(idx)} "
                             f"({os.strerror(err.errno)}); free some space and run the same command "
                             "to resume", path=where) from None

    def write_stream(self, records: Iterable[tuple[int, Mapping[str, np.ndarray]]]) -> int:
        """Write `(frame, {field: value})` records as they come, each frame marked done as soon as it
        is written, so a crash loses at most the frame in flight. Values are shaped like the fields
        (no frame axis). Returns how many frames were written."""
        count = 0
        for frame, values in records:
            self.write([frame], **{name: np.asarray(v)[None] for name, v in values.items()})
            count += 1
        return count

    def update(self, frames: int | Sequence[int] | np.ndarray, **values: np.ndarray) -> None:
        """Rewrite some fields of done frames (measurements made later, e.g. the render's landmarks);
        their status stays done. Each value is shaped (len(frames), *field.shape)."""
        idx = self._frames(frames)
        if (self.status(idx) != DONE).any():
            raise ValueError(f"{self.location}: update only rewrites done frames")
        for name, arr in self._shaped(idx, values).items():
            with self._writing(idx):
                _put(self._array(name), idx, arr)

    def _shaped(self, idx: np.ndarray, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Each value as its field's dtype, checked to be shaped (len(idx), *field.shape)."""
        arrays = {}
        for name, value in values.items():
            spec = self.fields[name]
            arr = np.asarray(value, dtype=spec.dtype)
            if arr.shape != (idx.size, *spec.shape):
                raise ValueError(f"{self.location}: field {name!r} expects shape "
                                 f"{(idx.size, *spec.shape)}, got {arr.shape}")
            arrays[name] = arr
        return arrays

    def fail(self, frames: int | Sequence[int] | np.ndarray, reason: str) -> None:
        """Mark `frames` failed with a one-line reason; their data stays NaN/unused."""
        reason = " ".join(str(reason).split())[:500] or "failed"
        idx = self._frames(frames)
        with self._writing(idx):
            errors = self._array("error")
            status = self._array("status")
            for i in idx:
                errors[int(i)] = reason
                status[int(i)] = FAILED

    def reset(self, frames: int | Sequence[int] | np.ndarray) -> None:
        """Mark `frames` pending again (their old data is overwritten when recomputed)."""
        status = self._array("status")
        for i in self._frames(frames):
            status[int(i)] = PENDING

    # -- reading ----------------------------------------------------------------------------------
    def read(self, field: str, frames: int | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Values of `field` for `frames` (all frames when None); every one of them must be done.

        A done frame whose float data is not finite means the cache was damaged after the fact (an
        interrupted copy, a hand edit): that is a CacheError naming the frames, never NaN passed on.
        """
        if field not in self.fields:
            raise KeyError(f"{self.location} has no field {field!r} (has {sorted(self.fields)})")
        idx = np.arange(self.num_frames) if frames is None else self._frames(frames)
        status = self.status(idx)
        if (status != DONE).any():
            not_done = idx[status != DONE]
            raise CacheError(
                f"frames {_short_list(not_done)} are not done ({self.counts()}); run the job again to "
                "compute them", path=self.location)
        out = _take(self._array(field), idx)
        if out.dtype.kind == "f" and not self.fields[field].nan_ok and not np.isfinite(out).all():
            bad = idx[~np.isfinite(out.reshape(idx.size, -1)).all(axis=1)]
            raise CacheError(
                f"field {field!r} holds NaN/inf in frames {_short_list(bad)} marked done; the cache "
                "is damaged: run the job with --retry-failed after `facereenact status --repair`",
                path=self.location)
        return out

    def read_frame(self, field: str, frame: int) -> np.ndarray:
        return self.read(field, [frame])[0]

    def check_finite(self) -> np.ndarray:
        """Done frames whose float fields hold NaN/inf (damage found after the fact)."""
        done = self.done_frames()
        bad: set[int] = set()
        for name, spec in self.fields.items():
            if np.dtype(spec.dtype).kind != "f" or spec.nan_ok:
                continue
            arr = self._array(name)
            for i in done:
                if not np.isfinite(np.asarray(arr[int(i)])).all():
                    bad.add(int(i))
        return np.asarray(sorted(bad), dtype=np.int64)

    def damaged_frames(self) -> np.ndarray:
        """Done frames whose data is damaged: a float field's chunk missing (it reads as its NaN
        fill), unreadable (a truncated or garbled chunk) or not finite. Fields that may hold NaN
        (`nan_ok`) and integer fields are not read: their fill is a legal value, so a missing chunk
        cannot be told from a written one, and reading them (the crops) would cost far more than the
        check is worth. One bulk read per checked field; per-frame reads only when the bulk read
        fails, to name the unreadable frames. Cheap enough to run whenever a job opens the table
        (tests/benchmarks/bench_integrity.py measures it per 1000 frames)."""
        done = self.done_frames()
        checked = [name for name, spec in self.fields.items()
                   if np.dtype(spec.dtype).kind == "f" and not spec.nan_ok]
        if done.size == 0 or not checked:
            return np.empty(0, dtype=np.int64)
        bad = np.zeros(self.num_frames, dtype=bool)
        lo, hi = int(done[0]), int(done[-1]) + 1
        for name in checked:
            array = self._array(name)
            try:
                values = np.asarray(array[lo:hi])
                finite = np.isfinite(values.reshape(hi - lo, -1)).all(axis=1)
                bad[lo:hi] |= ~finite
            except Exception:  # some chunk cannot be decoded: find which, frame by frame
                for i in done:
                    try:
                        if not np.isfinite(np.asarray(array[int(i)])).all():
                            bad[int(i)] = True
                    except Exception:
                        bad[int(i)] = True
        found = np.flatnonzero(bad)  # pending frames in the range read as NaN too: keep done ones
        return found[np.isin(found, done)].astype(np.int64)

    def reset_damaged(self) -> np.ndarray:
        """Mark damaged done frames (damaged_frames) pending again, so the job computes them anew;
        returns them."""
        damaged = self.damaged_frames()
        if damaged.size:
            self.reset(damaged)
        return damaged

    @property
    def attrs(self) -> Mapping[str, Any]:
        return self.group.attrs


def _take(array: zarr.Array, idx: np.ndarray) -> np.ndarray:
    """array[idx] along the frame axis; a run of frames is one slice (its chunks fetched together)."""
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return np.asarray(array[int(idx[0]):int(idx[0]) + idx.size])
    if idx.size:
        return np.stack([np.asarray(array[int(i)]) for i in idx])
    return np.empty((0, *array.shape[1:]), dtype=array.dtype)


def _put(array: zarr.Array, idx: np.ndarray, values: np.ndarray) -> None:
    """array[idx] = values along the frame axis. A run of frames is one slice assignment: zarr writes
    its chunks (one per frame, each whole) concurrently, one round trip of latency for the run on an
    object store instead of one per frame. Every chunk of the run is written before this returns."""
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        array[int(idx[0]):int(idx[0]) + idx.size] = values
        return
    for row, i in enumerate(idx):
        array[int(i)] = values[row]


def _short_list(idx: np.ndarray, limit: int = 8) -> str:
    items = [str(int(i)) for i in idx[:limit]]
    return ", ".join(items) + (f", ... ({idx.size} in all)" if idx.size > limit else "")


class Workspace:
    """The cache of one workspace: a local directory (default) or any fsspec URL.

    >>> ws = Workspace("cache/")
    >>> media = ws.media("3f2a...", {"source": "clip.mp4"})
    >>> table = ws.table("3f2a...", "invert", provenance, num_frames=120,
    ...                  fields={"latents": Field((18, 512))})
    """

    # How long to wait for a table another process is creating before taking it as half-made.
    creation_timeout: float = 10.0

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        self.store = open_store(url)
        self.root = self._fixed_group("", self._open_root)
        meta = self.root.attrs.get("facereenact")
        if meta is None:
            raise CacheError("this zarr store is not a facereenact cache (no facereenact attribute)",
                             path=self.url)
        if not isinstance(meta, dict) or meta.get("layout") != LAYOUT_VERSION:
            raise CacheError(f"cache layout {meta!r} is not the supported {LAYOUT_VERSION}", path=self.url)

    def _open_root(self) -> zarr.Group:
        # The root is created with its attributes in one write, so no process ever sees a root group
        # without them; two processes creating it at once: the loser opens the winner's.
        attributes = {"facereenact": {"layout": LAYOUT_VERSION, "created_by": code_version()}}
        for attempt in range(2):
            try:
                return zarr.open_group(self.store, mode="a" if attempt == 0 else "r+", zarr_format=3,
                                       attributes=attributes)
            except zarr.errors.ContainsGroupError:
                continue
            except (zarr.errors.ContainsArrayError, ValueError, KeyError) as err:
                raise CacheError(f"not a zarr v3 group ({err})", path=self.url) from None
            except Exception as err:
                raise CacheError(f"cannot open the cache ({type(err).__name__}: {err})",
                                 path=self.url) from None
        raise CacheError("cannot open the cache (created concurrently and still unreadable)", path=self.url)

    def __repr__(self) -> str:
        return f"Workspace({self.url!r})"

    # -- groups -----------------------------------------------------------------------------------
    def _fixed_group(self, path: str, open_: Callable[[], zarr.Group]) -> zarr.Group:
        """A group whose metadata never changes once made (the root, media/<key>): on an object store
        it is opened once per process (a round trip or more each time, and every task opens them)."""
        if not is_remote(self.url):
            return open_()
        key = (self.url, path)
        group = _FIXED_GROUPS.get(key)
        if group is None:
            group = _FIXED_GROUPS[key] = open_()
        return group

    def _require_group(self, path: str, attrs: Mapping[str, Any] | None = None) -> zarr.Group:
        """Open or create a group; concurrent creators race safely (the loser opens it)."""
        with contextlib.suppress(KeyError, FileNotFoundError):
            node = self.root[path]
            if isinstance(node, zarr.Group):
                return node
            raise CacheError("expected a group, found an array", path=f"{self.url}/{path}")
        try:
            group = self.root.create_group(path, attributes=dict(attrs or {}))
        except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError, FileExistsError):
            group = self.root[path]
        return group

    def media(self, media_key: str, info: Mapping[str, Any] | None = None) -> zarr.Group:
        """The group of one video or image (created with `info` as attributes on first use)."""
        path = f"media/{media_key}"
        return self._fixed_group(path, lambda: self._require_group(path, attrs=info))

    def media_keys(self) -> list[str]:
        if "media" not in self.root:
            return []
        return sorted(self.root["media"].group_keys())

    def table(
        self,
        media_key: str,
        stage: str,
        provenance: Mapping[str, Any],
        num_frames: int,
        fields: Mapping[str, Field],
    ) -> FrameTable:
        """Open the table of `stage` results for `media_key` under `provenance`, creating it if new.

        Other provenance -> another table (never the same one). An existing table is checked against
        the requested frame count and fields; a mismatch is a CacheError rather than a silent mix.
        """
        if not fields or _RESERVED_FIELDS & set(fields):
            raise ValueError(f"fields must be non-empty and avoid {_RESERVED_FIELDS}")
        provenance = dict(provenance)
        pkey = provenance_key(provenance)
        name = f"{stage}-{pkey}"
        location = f"media/{media_key}/{name}"
        made = self._open_made(location)  # the common case (every task opens its table): one read
        if made is not None:
            table = FrameTable(made, location)
            self._check_existing(table, provenance, num_frames, fields)
            table.reset_damaged()  # done frames with missing / unreadable / NaN data: redo them
            return table
        parent = self.media(media_key)
        try:
            group = parent.create_group(name)
        except (zarr.errors.ContainsGroupError, FileExistsError):
            if self._wait_until_made(parent[name]):
                group = zarr.open_group(self.store, path=f"{location}", mode="r+", **_V3)
                table = FrameTable(group, location)
                self._check_existing(table, provenance, num_frames, fields)
                table.reset_damaged()  # done frames with missing / unreadable / NaN data: redo them
                return table
            # Half-made by a writer that crashed during creation: no frame of it can be done (writers
            # need the metadata), so completing it loses nothing. Arrays already there are kept, so
            # two processes completing it at once cannot wipe each other's frames.
            group = zarr.open_group(self.store, path=f"{location}", mode="r+", **_V3)
        attrs = {
            "stage": stage,
            "provenance": _json_roundtrip(provenance),
            "provenance_key": pkey,
            "num_frames": int(num_frames),
            "fields": {n: f.describe() for n, f in fields.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "code_version": code_version(),
        }
        # Arrays first, the group's attributes last: a table without "provenance_key" is half-made.
        t = max(int(num_frames), 1)
        specs: dict[str, dict[str, Any]] = {
            fname: {"shape": (t, *spec.shape), "chunks": (1, *spec.shape), "dtype": spec.dtype,
                    "fill_value": spec.resolved_fill()}
            for fname, spec in fields.items()
        }
        specs["status"] = {"shape": (t,), "chunks": (1,), "dtype": "uint8", "fill_value": PENDING}
        specs["error"] = {"shape": (t,), "chunks": (1,), "dtype": str}
        for fname, spec in specs.items():
            with contextlib.suppress(zarr.errors.ContainsArrayError, FileExistsError):
                group.create_array(fname, **spec)
        group = group.update_attributes(attrs)  # one write: the table appears whole or not at all
        return FrameTable(group, location)

    def _open_made(self, location: str) -> zarr.Group | None:
        """The group at `location` if it is a made table (metadata complete), else None."""
        try:
            group = zarr.open_group(self.store, path=location, mode="r+", **_V3)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError,
                zarr.errors.NodeTypeValidationError):
            return None
        return group if "provenance_key" in group.attrs else None

    def open_table(self, location: str) -> FrameTable:
        """An existing table by its location ("media/<key>/<stage>-<pkey>", `FrameTable.location`):
        how a later stage finds the table an earlier one filled."""
        try:
            group = zarr.open_group(self.store, path=location, mode="r+", **_V3)
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            raise CacheError("no such table in the cache", path=f"{self.url}/{location}") from None
        if "provenance_key" not in group.attrs:
            raise CacheError("table is half-made (its creation was interrupted)",
                             path=f"{self.url}/{location}")
        return FrameTable(group, location)

    def _wait_until_made(self, group: zarr.Group) -> bool:
        """True once the table's metadata is written (another process may be creating it right now)."""
        deadline = time.monotonic() + self.creation_timeout
        while True:
            if "provenance_key" in _fresh_attrs(group):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    @staticmethod
    def _check_existing(table: FrameTable, provenance: Mapping[str, Any], num_frames: int,
                        fields: Mapping[str, Field]) -> None:
        if canonical_json(table.provenance) != canonical_json(dict(provenance)):
            raise CacheError("stored provenance differs from the requested one under the same key",
                             path=table.location)
        if table.num_frames != int(num_frames) and not (num_frames == 0 and table.num_frames == 1):
            raise CacheError(f"cached table has {table.num_frames} frames, the input has {num_frames}; "
                             "the input changed since it was cached", path=table.location)
        want = {n: f.describe() for n, f in fields.items()}
        have = {n: f.describe() for n, f in table.fields.items()}
        if want != have:
            raise CacheError(f"cached table fields {have} differ from the requested {want}",
                             path=table.location)

    def tables(self, media_key: str | None = None, stage: str | None = None) -> Iterator[FrameTable]:
        """Every table in the workspace (or of one medium / stage); half-made tables are skipped."""
        keys = [media_key] if media_key is not None else self.media_keys()
        for key in keys:
            if f"media/{key}" not in self.root:
                continue
            group = self.root[f"media/{key}"]
            for name in sorted(group.group_keys()):
                if stage is not None and not name.startswith(f"{stage}-"):
                    continue
                sub = group[name]
                if "provenance_key" not in sub.attrs:
                    continue
                yield FrameTable(sub, f"media/{key}/{name}")

    # -- jobs -------------------------------------------------------------------------------------
    def record_job(self, job_id: str, info: Mapping[str, Any]) -> zarr.Group:
        """Create or update the record of a job (what it asked for, which tables it fills)."""
        group = self._require_group(f"jobs/{job_id}")
        merged = {**_fresh_attrs(group), **_json_roundtrip(dict(info))}
        return group.update_attributes(merged)  # one write (attrs.update writes once per key)

    def jobs(self) -> dict[str, dict[str, Any]]:
        if "jobs" not in self.root:
            return {}
        jobs = self.root["jobs"]
        return {name: dict(jobs[name].attrs) for name in sorted(jobs.group_keys())}


# Groups opened once per process on object stores (Workspace._fixed_group), by (URL, path).
_FIXED_GROUPS: dict[tuple[str, str], zarr.Group] = {}


def _fresh_attrs(group: zarr.Group) -> dict[str, Any]:
    """Attributes as stored now (a Group object caches the metadata it was opened with)."""
    return dict(zarr.open_group(group.store, path=group.path, mode="r", **_V3).attrs)


def _json_roundtrip(value: Any) -> Any:
    import json

    return json.loads(canonical_json(value))
