"""Training data of the mapping network, read from the cache the dataset inversion filled.

    data = training_videos(Workspace(cache))            # CacheError when there is nothing to train on
    data.generator["weights_sha256"]                     # the one generator every latent came from
    for video in data.videos:
        video.frames                                     # usable frames: latents and crops done, a face
        video.landmarks                                  # (T, 68, 2) crop px, NaN where not usable
        video.latents[i]                                 # (num_ws, w_dim), read on demand or in memory
    held = split_held_out(data, fraction=0.1, by="video")

Where the pieces are: a latent table `media/<key>/latents-<pkey>` records in its provenance the key of
the crops table it inverted (`crops_table`), so its landmarks are the `crop_landmarks` of
`media/<key>/crops-<crops_table>` (stages/invert.py makes that link). A frame is usable when its latent
and its crop are done and its landmarks were detected, not interpolated over a gap (the prepare stage
fills frames without a face from their neighbours: the crop is real, the landmarks a guess).

Rules that keep a run honest:
- Every latent table used must come from one generator (`generator.weights_sha256` of its
  provenance); several are a CacheError naming them. A Δw between latents of two generators is
  meaningless, and a network trained on one generator's W+ is only valid for it.
- A video with latent tables of several inversion settings (or crops) is ambiguous: CacheError, unless
  `inversion=KEY` picks the settings (`inversion_key`: the latents' provenance without its crops
  table, the same for every video of one job).
- `data.provenance()` names the tables and hashes the frames used, so a checkpoint trained on them
  records exactly what it saw, and a cache that changed since is never silently resumed on.

Plain numpy + zarr (no torch, no Prefect).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storage.cache import FrameTable, Workspace
from storage.errors import CacheError
from storage.latents import LatentCache
from storage.provenance import provenance_key

__all__ = ["IN_MEMORY_BYTES", "SPLITS", "TrainingData", "TrainingVideo", "inversion_key", "split_held_out",
           "training_videos"]

SPLITS = ("video", "frame")
# Latents are loaded into memory when all usable ones fit in this many bytes; otherwise each frame is
# read from the cache when a pair needs it (one chunk per frame: a few hundred microseconds locally).
IN_MEMORY_BYTES = 1 << 30


def inversion_key(provenance: Mapping[str, Any]) -> str:
    """The key of a latent table's inversion settings: its provenance without the crops table (which
    differs per video), so every video of one inversion job shares it."""
    return provenance_key({k: v for k, v in provenance.items() if k != "crops_table"}, 12)


class LatentFrames:
    """A latent table's `latents` array, indexable by frame (read on demand; what PairSampler needs)."""

    def __init__(self, cache: LatentCache) -> None:
        self.array = cache.table.group["latents"]

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, frame: int) -> np.ndarray:
        return np.asarray(self.array[int(frame)])


@dataclass
class TrainingVideo:
    """One video's usable frames for training."""

    media_key: str
    name: str                       # the source file's name (for messages and summaries)
    latents_table: str              # locations in the workspace
    crops_table: str
    crop_resolution: int
    landmarks: np.ndarray           # (T, 68, 2) float32 crop pixels; NaN where not usable
    latents: Any                    # (T, num_ws, w_dim): numpy array or LatentFrames
    frames: np.ndarray              # usable frame indices, ascending
    counts: dict[str, int] = field(default_factory=dict)  # frames, latents done, crops done, interpolated

    @property
    def num_frames(self) -> int:
        return int(self.landmarks.shape[0])


@dataclass
class TrainingData:
    videos: list[TrainingVideo]     # videos with at least one usable frame, sorted by media key
    skipped: list[str]              # latent tables with no usable frame
    generator: dict[str, Any]       # the generator fingerprint every latent table records
    inversion: str                  # inversion_key of the tables
    num_ws: int
    w_dim: int
    crop_resolution: int

    @property
    def num_frames(self) -> int:
        return sum(int(v.frames.size) for v in self.videos)

    def provenance(self) -> dict[str, Any]:
        """What a network trained on this data depends on: the generator, the inversion settings, and
        per table its location and a hash of the usable frames (more frames done since: another hash)."""
        return {"generator": self.generator, "inversion": self.inversion,
                "tables": [{"latents": v.latents_table, "crops": v.crops_table, "frames": int(v.frames.size),
                            "frames_sha256": _frames_hash(v.frames)} for v in self.videos],
                "usable": "latents and crops done, landmarks detected (not interpolated)"}


def _frames_hash(frames: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(frames, dtype="<i8").tobytes()).hexdigest()[:16]


def _source_name(ws: Workspace, media_key: str) -> str:
    source = ws.media(media_key).attrs.get("source")
    return Path(str(source)).name if source else media_key[:12]


def training_videos(ws: Workspace, inversion: str | None = None,
                    in_memory_bytes: int = IN_MEMORY_BYTES) -> TrainingData:
    """The usable frames of every latent table in `ws` (those of inversion settings `inversion` when
    given). CacheError (one line) when there are no latent tables, none with a usable frame, tables
    of several generators, or a video with tables of several settings."""
    tables = list(LatentCache.all(ws))
    if not tables:
        raise CacheError("no latents in this cache; run `facereenact invert DATASET --cache ...` first",
                         path=ws.url)
    if inversion is not None:
        keys = sorted({inversion_key(t.provenance) for t in tables})
        tables = [t for t in tables if inversion_key(t.provenance) == inversion]
        if not tables:
            raise CacheError(f"no latent tables of inversion settings {inversion!r} (this cache has "
                             f"{', '.join(keys)})", path=ws.url)
    _check_one_generator(ws, tables)
    by_video: dict[str, list[LatentCache]] = {}
    for t in tables:
        by_video.setdefault(t.location.split("/")[1], []).append(t)
    ambiguous = {k: v for k, v in by_video.items() if len(v) > 1}
    if ambiguous:
        key, several = next(iter(ambiguous.items()))
        options = ", ".join(sorted({inversion_key(t.provenance) for t in tables}))
        raise CacheError(f"{len(ambiguous)} video(s) have latent tables of several inversion settings or "
                         f"crops (e.g. {_source_name(ws, key)}: {len(several)} tables); choose one with "
                         f"--inversion KEY ({options})", path=ws.url)

    videos, skipped, total_done = [], [], 0
    for media_key in sorted(by_video):
        cache = by_video[media_key][0]
        video = _video(ws, media_key, cache)
        total_done += video.counts["latents_done"]
        if video.frames.size:
            videos.append(video)
        else:
            skipped.append(cache.location)
    first = tables[0]
    if not videos:
        frames = sum(t.num_frames for t in tables)
        raise CacheError(f"no usable frames: {total_done} of {frames} latent frames in {len(tables)} "
                         "table(s) are done (with a done crop and a detected face); run or finish "
                         "`facereenact invert` first", path=ws.url)
    resolutions = sorted({v.crop_resolution for v in videos})
    if len(resolutions) > 1:
        raise CacheError(f"crops of several resolutions {resolutions} (one generator has one)", path=ws.url)
    data = TrainingData(videos, skipped, dict(first.provenance["generator"]),
                        inversion_key(first.provenance), first.num_ws, first.w_dim, resolutions[0])
    if data.num_frames * data.num_ws * data.w_dim * 4 <= in_memory_bytes:
        for v in videos:
            latents = np.full((v.num_frames, data.num_ws, data.w_dim), np.nan, np.float32)
            latents[v.frames] = LatentCache.at(ws, v.latents_table).read(v.frames)
            v.latents = latents
    return data


def _check_one_generator(ws: Workspace, tables: list[LatentCache]) -> None:
    by_sha: dict[str, list[str]] = {}
    for t in tables:
        record = t.provenance.get("generator")
        sha = record.get("weights_sha256") if isinstance(record, dict) else None
        if not sha:
            raise CacheError("latent table records no generator sha256 (not made by `facereenact invert`)",
                             path=f"{ws.url}/{t.location}")
        by_sha.setdefault(sha, []).append(t.location)
    if len(by_sha) > 1:
        parts = [f"{sha[:12]}... in {len(locs)} table(s), e.g. {locs[0]}"
                 for sha, locs in sorted(by_sha.items())]
        raise CacheError(f"latent tables come from {len(by_sha)} generators ({'; '.join(parts)}); train from "
                         "one: pass --inversion KEY or use a cache per generator", path=ws.url)


def _video(ws: Workspace, media_key: str, cache: LatentCache) -> TrainingVideo:
    crops_key = cache.provenance.get("crops_table")
    location = f"media/{media_key}/crops-{crops_key}"
    if not crops_key:
        raise CacheError("latent table does not name its crops table", path=f"{ws.url}/{cache.location}")
    try:
        crops: FrameTable = ws.open_table(location)
    except CacheError:
        raise CacheError(f"the crops table its latents were inverted from is missing ({location}); the "
                         "cache is incomplete", path=f"{ws.url}/{cache.location}") from None
    if crops.num_frames != cache.num_frames:
        raise CacheError(f"latents have {cache.num_frames} frames, their crops {crops.num_frames}",
                         path=f"{ws.url}/{cache.location}")
    t = cache.num_frames
    latents_done = cache.done_frames()
    crops_done = crops.done_frames()
    both = np.intersect1d(latents_done, crops_done)
    landmarks = np.full((t, 68, 2), np.nan, np.float32)
    interpolated = np.zeros(0, np.int64)
    if both.size:
        landmarks[both] = crops.read("crop_landmarks", both)
        interpolated = both[crops.read("interpolated", both).astype(bool)]
        landmarks[interpolated] = np.nan
    frames = np.setdiff1d(both, interpolated)
    frames = frames[np.isfinite(landmarks[frames]).all(axis=(1, 2))]
    resolution = int(crops.fields["crop"].shape[0]) if "crop" in crops.fields else int(
        crops.provenance.get("resolution", 0))
    return TrainingVideo(media_key, _source_name(ws, media_key), cache.location, location, resolution,
                         landmarks, LatentFrames(cache), frames,
                         {"frames": t, "latents_done": int(latents_done.size),
                          "crops_done": int(crops_done.size), "interpolated": int(interpolated.size),
                          "usable": int(frames.size)})


def split_held_out(data: TrainingData, fraction: float, by: str = "video") -> dict[str, int]:
    """The held-out part as {latents table: first held-out frame}: the frames from there on (among the
    usable ones) are held out, the rest train. Deterministic in the data alone.

    - by "video": round(fraction x videos) whole videos (at least 1, at most all but 1) are held out,
      chosen by the sha256 of their media key (first held-out frame 0). Held-out faces and motions are
      then unseen, as for a new user's clip; it needs at least 2 videos.
    - by "frame": the last ceil(fraction x usable frames) usable frames of each video (a contiguous
      tail, not a random sample: neighbouring frames are near copies, so random frames would measure
      memorisation, not generalisation). Each video keeps at least one training frame.
    fraction 0: {} (nothing held out).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    if by not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {by!r}")
    if fraction == 0:
        return {}
    if by == "video":
        if len(data.videos) < 2:
            raise ValueError(f"a split by video needs at least 2 videos with usable frames, this cache has "
                             f"{len(data.videos)}")
        count = min(max(1, round(fraction * len(data.videos))), len(data.videos) - 1)
        order = sorted(data.videos, key=lambda v: hashlib.sha256(v.media_key.encode()).hexdigest())
        return {v.latents_table: 0 for v in order[:count]}
    held: dict[str, int] = {}
    for v in data.videos:
        count = min(math.ceil(fraction * v.frames.size), v.frames.size - 1)
        if count > 0:
            held[v.latents_table] = int(v.frames[v.frames.size - count])
    return held
