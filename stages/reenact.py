"""The reenact stage: fill a driving clip's reenact table (storage/reenact.py) frame by frame, resuming
at the first pending frame, then render the finished table into the output video. No Prefect
(tasks/reenact.py opens the inputs and calls one function here); the models (models/projection.py,
models/mapping/, models/reenact.py) compute, this module reads what is done and writes the frames.

    source = SourceFace(crop, landmarks, latent)              # models.reenact
    projector = make_projector(G, projection_config("identity", steps_first=300), source)
    table = ReenactCache.require(ws, driving_key, projection_provenance(projector, ...), T, ...)
    run = project(projector, table, driving_points, interpolated)    # resumes where the table stops
    video = render(G, table, source.crop, driving_path, driving_crops, fps, "out.mp4")

    # mode "mapping" (Choe 2023): w_i = w_src + Δw, one generator pass
    # per frame, or K refinement steps from there with projector=make_projector(G, refine_config(...))
    run = map_frames(G, net, table, source, driving_points, landmarks=backend, projector=None)

Resumption: the table's status is read once, when the run starts (`resume`); from there the loop
walks the windows of `ProjectionConfig.windows` and stores each window as soon as it is projected
(frames that were done already are recomputed inside their window, never rewritten). A frame without
a face in the driving clip is projected toward the interpolated landmarks prepare gave it and keeps
the flag; a frame whose landmarks are still not finite fails alone, and the video holds the last
good frame there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.alignment import AlignTransform, paste_back
from models.metrics import identity_similarity_to_source, landmark_jitter, landmark_nme
from models.projection import STATE_FORMAT, ProjectionResult, Projector, interpolate_subframes
from models.reenact import (
    MAPPING_BATCH,
    NO_FACE,
    SourceFace,
    load_mapping,
    make_projector,
    mapping_inputs,
    mapping_provenance,
    mapping_settings,
    projection_config,
    projection_provenance,
    refine_config,
    synthesize,
)
from models.stylegan2 import Generator
from stages.progress import FrameBar
from storage.cache import DONE, PENDING, FrameTable, Workspace
from storage.errors import CacheError, InputError
from storage.latents import LatentCache
from storage.leases import table_lease
from storage.provenance import code_version, provenance_key, sha256_file
from storage.reenact import ReenactCache, read_sidecar, sidecar_path, write_sidecar
from storage.render import LAYOUTS, preview_grid, side_by_side, to_uint8

__all__ = ["FramesRun", "ReenactTable", "RenderedVideo", "driving_images_of", "driving_points_of",
           "fill_latents", "interpolated_flags", "map_driving", "map_frames", "mapping_metrics", "project",
           "project_driving", "render", "render_output", "resume", "source_face"]


@dataclass(frozen=True)
class FramesRun:
    """What one run of a stage loop did: the frame it started at (the frames before were done), how
    many frames it computed, the frames that failed in it ({frame: reason}) and its wall time."""

    start: int
    computed: int
    failed: dict[int, str]
    seconds: float


def driving_points_of(driving_points: np.ndarray, T: int) -> np.ndarray:
    """The driving clip's crop landmarks as float32 (T, 68, 2); ValueError for another shape."""
    points = np.asarray(driving_points, dtype=np.float32)
    if points.shape != (T, 68, 2):
        raise ValueError(f"driving_points: expected ({T}, 68, 2), got {points.shape}")
    return points


def interpolated_flags(interpolated: np.ndarray | None, T: int) -> np.ndarray:
    """Per-frame uint8 flags of interpolated driving landmarks (none given: all 0)."""
    return np.zeros(T, np.uint8) if interpolated is None else np.asarray(interpolated, np.uint8)


# ---------------------------------------------------------------------------------------------------
# Projection into the cache


def resume(projector: Projector, table: ReenactCache, status: np.ndarray) -> tuple[int, np.ndarray]:
    """Where a projection run starts, from the table's status read once (`status`): the window start
    of the first pending frame, with the projector's state loaded for it. When the state beside the
    table is gone (or was made by another projector) the chain cannot go on from the middle: every
    frame is pending again and the run starts at 0 (the same frames come out again). Returns (start,
    the status the run goes by)."""
    T = table.num_frames
    pending = np.flatnonzero(status == PENDING)
    first = int(pending[0]) if pending.size else T
    if first == 0 or first >= T:
        return first, status
    state = table.load_state()
    if state is None or state["projector_key"] != projector.provenance_key():
        table.reset_all()
        return 0, np.full(T, PENDING, np.uint8)
    start = projector.config.window_start(first)  # windows are aligned to absolute frame indices
    # the chain's predecessor and the good frame before it (its velocity): failed frames are skipped
    done = [int(f) for f in np.flatnonzero(status[:start] == DONE)[-2:]]
    latents = table.read("latents", done) if done else None
    projector.load_state_dict({
        "format": STATE_FORMAT, "provenance_key": projector.provenance_key(), "frame": start - 1,
        "latent": None if not done else latents[-1],
        "latent_before": None if len(done) < 2 else latents[0],
        "noise": state["noise"], "driving_reference": state["driving_reference"]})
    return start, status


def driving_images_of(driving_crops: FrameTable | None, first: int, stop: int, resolution: int) -> np.ndarray:
    """The aligned driving crops of frames first .. stop - 1 from the prepare stage's crops table, as
    the heatmap form takes them: (n, R, R, 3) uint8 at G's resolution R; a CacheError otherwise (a
    table made at another resolution is not this run's)."""
    if driving_crops is None:
        raise ValueError("the heatmap form needs the driving crops table (driving_crops)")
    crops = driving_crops.read("crop", list(range(first, stop)))
    expected = (stop - first, resolution, resolution, 3)
    if crops.shape != expected or crops.dtype != np.uint8:
        raise CacheError(f"driving crops are {crops.dtype} {crops.shape}, the heatmap form needs uint8 "
                         f"{expected} (crops at the generator's resolution)", path=driving_crops.location)
    return crops


def project(projector: Projector, table: ReenactCache, driving_points: np.ndarray,
            interpolated: np.ndarray | None = None, *, init_latents: np.ndarray | None = None,
            status: np.ndarray | None = None, progress: FrameBar | None = None,
            driving_crops: FrameTable | None = None) -> FramesRun:
    """Project every pending frame of `table` in order, storing each window as soon as it is done.

    driving_points: (T, 68, 2) the driving crops' landmarks (crop pixels at G's resolution);
    driving_crops:  the prepare stage's crops table of the driving clip: the heatmap form's targets
                    are its aligned crops, read window by window (the coordinate form needs none);
    interpolated:   (T,) 1 where the driving frame had no face (prepare's flag), kept per frame;
    init_latents:   (T, num_ws, w_dim) where each frame's optimisation starts (mapping mode's
                    refinement: the mapping network's output), else the chain's w_{i-1};
    status:         the table's status when the caller has read it already (read here otherwise);
    progress:       started at the resume frame, advanced per stored window.
    """
    began = time.perf_counter()
    T = table.num_frames
    points = driving_points_of(driving_points, T)
    flags = interpolated_flags(interpolated, T)
    start, status = resume(projector, table, table.table.status() if status is None else status)
    if progress is not None:
        progress.start(start, T)
    state_saved = start > 0
    failed: dict[int, str] = {}
    computed = 0
    heatmaps = projector.config.landmark_form == "heatmaps"
    for first, stop in projector.config.windows(start, T):
        images = driving_images_of(driving_crops, first, stop, projector.resolution) if heatmaps else None
        starts = None if init_latents is None else init_latents[first:stop]
        result = projector.project_window(first, points[first:stop], images, init_latents=starts)
        if not state_saved:  # before any frame is marked done: a done frame always has its state on disk
            state_saved = _save_state(projector, table)
        failed.update(_store_window(table, result, points, flags, status))
        computed += len(result.frames)
        if progress is not None:
            progress.update(stop - first)
    return FramesRun(start, computed, failed, time.perf_counter() - began)


def _save_state(projector: Projector, table: ReenactCache) -> bool:
    """The frozen noise maps and driving reference beside the table, once frame 0 froze them."""
    if projector.noise is None and projector.noise_layers:
        return False
    state = projector.state_dict()
    table.save_state(state["noise"], state["driving_reference"], projector.provenance_key())
    return True


def _store_window(table: ReenactCache, result: ProjectionResult, points: np.ndarray, flags: np.ndarray,
                  status: np.ndarray) -> dict[int, str]:
    """Write a projected window's frames that were pending when the run started (done ones are only
    recomputed, for the chain): the good ones done with their metrics, the others failed with their
    reason. Returns {frame: reason} of those failed."""
    pending = [status[f] == PENDING for f in result.frames]
    failed = {f: result.failed[j] for j, f in enumerate(result.frames)
              if result.failed[j] is not None and pending[j]}
    for f, reason in failed.items():
        table.fail(f, reason)
    good = [j for j, f in enumerate(result.frames) if result.failed[j] is None and pending[j]]
    if good:
        rows = torch.tensor(good)
        frames = [result.frames[j] for j in good]
        targets = result.targets[rows] if result.targets is not None else None
        nme = landmark_nme(result.points[rows], points[frames]).float().numpy()
        nme_target = (landmark_nme(result.points[rows], targets).float().numpy() if targets is not None
                      else np.full(len(good), np.nan, np.float32))
        table.write(frames, latents=result.latents[rows].numpy(), loss=result.losses["total"][rows].numpy(),
                    points=result.points[rows].numpy(), nme=nme, nme_target=nme_target,
                    steps=result.steps[rows].numpy().astype(np.int32),
                    seconds=np.full(len(good), result.seconds / len(result.frames), np.float32),
                    interpolated=flags[frames])
    return failed


# ---------------------------------------------------------------------------------------------------
# Mapping mode (Choe 2023): w_i = w_src + Δw(source landmarks, driving
# landmarks_i), one generator pass per frame; optionally K projection steps per frame from there
# (`project` with init_latents: one code path).


def map_frames(G: Generator, net, table: ReenactCache, source: SourceFace, driving_points: np.ndarray,
               interpolated: np.ndarray | None = None, *, relative: bool = True,
               batch_size: int = MAPPING_BATCH, projector: Projector | None = None,
               progress: FrameBar | None = None, driving_crops: FrameTable | None = None) -> FramesRun:
    """Mapping-mode latents of every pending frame of `table`, stored per batch as soon as done.

    Without `projector`: frames are independent; per batch of `batch_size` pending frames one mapping
    pass (`reenact_with_mapping`, latents only); the generator pass is the render's (one per output
    frame), which measures the render's landmarks and their NMEs (`mapping_metrics`), so they are NaN
    here. A frame without finite driving landmarks fails alone. The table gets an empty state first
    (G's constant noise), which is what the render reads.
    With `projector` (refinement, `refine_config`): the network's latents of all frames are where the
    projection of each frame starts (`project(..., init_latents=)`: its resume and state, unchanged).
    """
    from models.mapping.inference import reenact_with_mapping

    began = time.perf_counter()
    T = table.num_frames
    points = driving_points_of(driving_points, T)
    if source.latent is None:
        raise ValueError("mapping mode needs the source's latent (its inversion)")
    flags = interpolated_flags(interpolated, T)
    inputs, reference = mapping_inputs(source.landmarks, points, relative)
    finite = np.isfinite(inputs).all(axis=(1, 2))
    w_src = torch.as_tensor(np.asarray(source.latent, np.float32))
    src = torch.as_tensor(np.asarray(source.landmarks, np.float32))
    status = table.table.status()  # read once: what is done

    if projector is not None:
        init = np.full((T, G.num_ws, G.w_dim), np.nan, np.float32)
        if finite.any() and (status == PENDING).any():  # latents only: no generator pass
            init[finite] = reenact_with_mapping(G, net, w_src, src, torch.from_numpy(inputs[finite]),
                                                batch_size, crop_resolution=G.img_resolution).numpy()
        relative_targets = projector.config.relative_landmarks
        if reference is not None and projector.driving_reference is None and relative_targets:
            projector.set_driving_reference(reference)
        run = project(projector, table, points, flags, init_latents=init, status=status, progress=progress,
                      driving_crops=driving_crops)
        return replace(run, seconds=time.perf_counter() - began)

    def latents_of(frames: np.ndarray) -> np.ndarray:
        return reenact_with_mapping(G, net, w_src, src, torch.from_numpy(inputs[frames]), len(frames),
                                    crop_resolution=G.img_resolution).numpy()

    return fill_latents(table, status, finite, flags, reference, batch_size, latents_of, progress, began)


def fill_latents(table: ReenactCache, status: np.ndarray, finite: np.ndarray, flags: np.ndarray,
                 reference: np.ndarray | None, batch_size: int,
                 latents_of: Callable[[np.ndarray], np.ndarray], progress: FrameBar | None,
                 began: float) -> FramesRun:
    """The loop of the modes whose frames are independent and cost no generator pass here (mapping,
    directions): the table's pending frames (`status`, read once) in batches of `batch_size`, each
    batch's latents `latents_of(frames)` stored as soon as computed. Latents only: the render's
    generator pass is the one pass per frame, and it measures the landmarks (render's on_images =
    mapping_metrics), so points and NMEs are NaN until then. A frame without finite driving landmarks
    (`finite` False) fails alone. The table gets an empty state first (G's constant noise and the
    driving `reference`), which is what the render reads."""
    T = table.num_frames
    todo = np.flatnonzero(status == PENDING)
    start = int(todo[0]) if todo.size else T
    if progress is not None:
        progress.start(T - todo.size, T)
    if todo.size == 0:
        return FramesRun(start, 0, {}, time.perf_counter() - began)
    table.save_state(None, reference, table.key)  # before any frame is done: the render finds a state
    failed: dict[int, str] = {}
    for f in todo[~finite[todo]]:
        table.fail(int(f), NO_FACE)
        failed[int(f)] = NO_FACE
    computed = len(failed)
    good = todo[finite[todo]]
    for first in range(0, good.size, batch_size):
        frames = good[first:first + batch_size]
        t0 = time.perf_counter()
        ws = latents_of(frames)
        n = len(frames)
        nan = np.full(n, np.nan, np.float32)
        table.write(frames, latents=ws, loss=nan, points=np.full((n, 68, 2), np.nan, np.float32),
                    nme=nan, nme_target=nan, steps=np.zeros(n, np.int32),
                    seconds=np.full(n, (time.perf_counter() - t0) / n, np.float32),
                    interpolated=flags[frames])
        computed += n
        if progress is not None:
            progress.update(n)
    return FramesRun(start, computed, failed, time.perf_counter() - began)


def mapping_metrics(table: ReenactCache, landmarks, source_landmarks: np.ndarray, driving_points: np.ndarray
                    ) -> Callable[[list[int], torch.Tensor], None] | None:
    """`render`'s `on_images` for a mapping-mode table: the landmarks of each rendered done frame
    whose metrics are not measured yet, their NME to the driving frame and to the network's input
    landmarks, stored into the table (its data only: the frames stay done). None when every done
    frame has them (a second render, or a projection table)."""
    done = np.flatnonzero(table.table.status() == DONE)
    if done.size == 0 or table.table.provenance.get("mode") != "mapping":
        return None
    missing = np.zeros(table.num_frames, dtype=bool)
    missing[done] = ~np.isfinite(table.read("points", done).reshape(done.size, -1)).all(axis=1)
    if not missing.any():
        return None
    points = np.asarray(driving_points, np.float32)
    relative = bool(table.table.provenance.get("relative_landmarks"))
    inputs, _ = mapping_inputs(source_landmarks, points, relative)

    def measure(frames: list[int], images: torch.Tensor) -> None:
        rows = [k for k, f in enumerate(frames) if missing[f]]
        if not rows:
            return
        todo = np.asarray([frames[k] for k in rows])
        with torch.no_grad():
            marks = landmarks((images[rows] + 1) / 2).points.float().cpu()
        table.table.update(todo, points=marks.numpy(), nme=landmark_nme(marks, points[todo]).float().numpy(),
                           nme_target=landmark_nme(marks, inputs[todo]).float().numpy())
        missing[todo] = False

    return measure


# ---------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class RenderedVideo:
    """What `render` wrote: output frames (sub-frames included), key frames (the driving clip's), the
    output fps (a fraction as text), frame size (width, height), the frames holding another frame's
    latent, the identity similarity to the source over the key frames with a face (None without
    any), how many key frames had none, the landmark jitter of the done frames, and the render time."""

    frames: int
    key_frames: int
    fps: str
    size: tuple[int, int] | None
    held: tuple[int, ...]
    identity_similarity: float | None
    no_face_frames: int
    landmark_jitter: float | None
    seconds: float


def _driving_frames(path: str, paste: bool):
    """The driving clip's original frames, one per key frame, when pasting back (else Nones)."""
    if not paste:
        while True:
            yield None
    from storage.media import open_medium

    yield from open_medium(path).frames()


@dataclass
class _Identity:
    """The identity similarity to the source of rendered key frames in which the detector finds a face."""

    identity: object
    detector: object
    source_crop: np.ndarray
    similarities: list[float]
    no_face: int = 0

    def measure(self, images: torch.Tensor, crops: np.ndarray, keys: list[int]) -> None:
        faces = [k for k in keys if self.detector.detect(crops[k])]
        self.no_face += len(keys) - len(faces)
        if faces:
            sims = identity_similarity_to_source(images[faces], self.source_crop, identity=self.identity)
            self.similarities += [float(s) for s in sims]

    def mean(self) -> float | None:
        return float(np.mean(self.similarities)) if self.similarities else None


def render(G: Generator, table: ReenactCache, source_crop: np.ndarray, driving_path: str,
           driving_crops: FrameTable, fps: Fraction, output: str | Path, *, layout: str = "result",
           paste: bool = False, subframes: bool = False, preview: str | Path | None = None, batch: int = 8,
           identity=None, detector=None, progress: FrameBar | None = None,
           on_images: Callable[[list[int], torch.Tensor], None] | None = None) -> RenderedVideo:
    """Render the cached latents of a finished table into `output` (H.264 at the driving fps, twice it
    with `subframes`, the driving clip's audio kept) and, when given, a preview PNG (look | driving |
    result of the first, middle and last frames). The video appears only when complete (VideoWriter
    writes a temporary file and renames it).

    layout "result": the generated frame; "side-by-side": look | driving | result. `paste`: the
    generated crop pasted into the original driving frame (models.alignment.paste_back with the
    crop's stored transform), which then stands for "driving" and "result" at the frame's size.
    Sub-frames (latent midpoints) show the driving frame before them. `on_images(frames, images)` gets
    each batch's key frames ((n, 3, R, R) in [-1, 1], CPU) as rendered: what mapping mode measures its
    landmarks on (`mapping_metrics`), before the jitter is read. The identity similarity is measured
    on key frames in which `detector` (default: Haar, as `facereenact evaluate`) finds a face: a
    similarity of noise to a face still scores 0.8-0.9, so it is not reported without one.
    """
    from storage.images import save_image
    from storage.video import VideoWriter

    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    began = time.perf_counter()
    # 1. inputs: the frozen noise, every frame's latent (failed frames hold a done one), sub-frames
    state = table.load_state()
    if state is None:
        raise CacheError("the projector state (noise maps) is missing; delete the table and run again",
                         path=table.location)
    latents, held = table.held_latents()
    T, R = table.num_frames, G.img_resolution
    step = 2 if subframes else 1
    ws = torch.from_numpy(latents)
    if subframes:
        ws = interpolate_subframes(ws, repeat_last=True)  # 2T: the clip keeps its duration
    measured = _Identity(identity if identity is not None else _identity_net(),
                         detector if detector is not None else _haar(), source_crop, [])
    key_frames = {0, T // 2, T - 1}
    rows: list[list[np.ndarray]] = []
    originals = _driving_frames(driving_path, paste)
    frame_size = None
    if progress is not None:
        progress.start(0, ws.shape[0])
    with VideoWriter(output, Fraction(fps) * step, audio_from=driving_path) as writer:
        current = transform = None  # the original driving frame of the key frame being written
        for first in range(0, ws.shape[0], batch):
            # 2. the generator pass of a batch, and what is measured on its key frames
            images = synthesize(G, ws[first:first + batch], state["noise"])
            crops = to_uint8(images)
            indices = [(first + k) // step for k in range(images.shape[0])]
            keys = [k for k in range(images.shape[0]) if (first + k) % step == 0]
            measured.measure(images, crops, keys)
            if on_images is not None and keys:
                on_images([indices[k] for k in keys], images[keys])
            # 3. the output frames: the layout, pasted back or not
            driving = driving_crops.read("crop", sorted(set(indices)))
            driving_of = {i: driving[n] for n, i in enumerate(sorted(set(indices)))}
            for k, i in enumerate(indices):
                is_key = (first + k) % step == 0
                result, shown = crops[k], driving_of[i]
                if paste:
                    if is_key:
                        current = next(originals)
                        transform = AlignTransform(driving_crops.read("quad", [i])[0], R)
                    result = paste_back(current, crops[k], transform)
                    shown = current
                frame = result if layout == "result" else side_by_side([source_crop, shown, result])
                writer.write(frame)
                frame_size = (frame.shape[1], frame.shape[0])
                if is_key and i in key_frames and preview is not None:
                    rows.append([source_crop, shown, result])
            if progress is not None:
                progress.update(images.shape[0])
    # 4. the preview and the summary (the jitter after on_images measured the points)
    if preview is not None:
        save_image(preview, preview_grid(rows, height=max(256, R if not paste else 256)))
    done = np.setdiff1d(np.arange(T), held)  # no frame is pending here (held_latents checked)
    points = table.read("points", done) if done.size >= 3 else None
    return RenderedVideo(frames=int(ws.shape[0]), key_frames=T, fps=str(Fraction(fps) * step),
                         size=frame_size, held=tuple(int(i) for i in held),
                         identity_similarity=measured.mean(), no_face_frames=measured.no_face,
                         landmark_jitter=None if points is None else landmark_jitter(points),
                         seconds=time.perf_counter() - began)


def _identity_net():
    from models.losses import IdentityLoss

    return IdentityLoss()


def _haar():
    from models.detection import make_detector

    return make_detector("haar")


# ---------------------------------------------------------------------------------------------------
# The stage's entry points: the tasks open the workspace and the nets, these do the rest.


@dataclass(frozen=True)
class ReenactTable:
    """A reenact table after a run filled it: where it is, its counts (all runs) and this run's part
    (the frame it resumed from, the frames it computed, those that failed in it, its time)."""

    table: str
    key: str
    frames: int
    pending: int
    done: int
    failed: int
    resumed_from: int
    computed: int
    failed_now: dict[str, str]
    seconds: float

    @classmethod
    def of(cls, table: ReenactCache, run: FramesRun) -> ReenactTable:
        counts = table.counts()
        return cls(table=table.location, key=table.key, frames=table.num_frames,
                   pending=counts.get("pending", 0), done=counts.get("done", 0),
                   failed=counts.get("failed", 0),
                   resumed_from=run.start, computed=run.computed,
                   failed_now={str(k): v for k, v in run.failed.items()}, seconds=round(run.seconds, 3))

    def line(self, what: str = "projected") -> str:
        """The run in one log line."""
        failed_now = f"; {len(self.failed_now)} failed in this run" if self.failed_now else ""
        return (f"{what} {self.computed} of {self.frames} frame(s) in {self.seconds:.1f} s (from frame "
                f"{self.resumed_from}; the frames before were done, skipped); {self.done} done, "
                f"{self.failed} failed in all{failed_now}")


def source_face(ws: Workspace, source: Mapping[str, Any]) -> SourceFace:
    """The source as the reenactment uses it, from its crops and latents tables."""
    crops = ws.open_table(source["crops"])
    return SourceFace(crops.read("crop", [0])[0], crops.read("crop_landmarks", [0])[0],
                      LatentCache.at(ws, source["latents"]).read([0])[0])


def project_driving(ws: Workspace, G: Generator, backend, source: Mapping[str, Any],
                    driving: Mapping[str, Any], variant: str, settings: Mapping[str, Any],
                    progress: FrameBar | None = None) -> ReenactTable:
    """mode "projection" (Uzolas 2021): the table of these settings (created if new),
    claimed against other jobs, every pending frame projected. `source` names the source's tables,
    `driving` the clip's crops table."""
    projector = make_projector(G, projection_config(variant, **settings), source_face(ws, source),
                               landmarks=backend)
    driving_crops = ws.open_table(driving["crops"])
    table = ReenactCache.require(
        ws, driving["key"], projection_provenance(projector, driving_crops.key, source["key"],
                                                  source["latents_key"]),
        driving_crops.num_frames, G.num_ws, G.w_dim)
    claim = table_lease(ws.root, table.location).wait()  # another job projecting it: wait, then resume
    try:
        run = project(projector, table, driving_crops.read("crop_landmarks"),
                      driving_crops.read("interpolated"), progress=progress, driving_crops=driving_crops)
    finally:
        claim.release()
    return ReenactTable.of(table, run)


def map_driving(ws: Workspace, G: Generator, backend, source: Mapping[str, Any], driving: Mapping[str, Any],
                variant: str, settings: Mapping[str, Any], progress: FrameBar | None = None) -> ReenactTable:
    """mode "mapping": the mapping network checked against G, the table keyed by its checkpoint too,
    every pending frame mapped (and refined with `refine_steps`)."""
    options = mapping_settings(variant, dict(settings))
    net, checkpoint_sha = load_mapping(options.checkpoint, G)
    face = source_face(ws, source)
    projector = None
    if options.refine_steps > 0:
        projector = make_projector(G, refine_config(variant, options.refine_steps, options.projection), face,
                                   landmarks=backend)
    relative = variant == "identity"
    driving_crops = ws.open_table(driving["crops"])
    provenance = mapping_provenance(G, net, checkpoint_sha, backend, relative, options.refine_steps,
                                    projector, driving_crops.key, source["key"], source["latents_key"])
    table = ReenactCache.require(ws, driving["key"], provenance, driving_crops.num_frames, G.num_ws, G.w_dim)
    claim = table_lease(ws.root, table.location).wait()  # another job mapping it: wait, then resume
    try:
        run = map_frames(G, net, table, face, driving_crops.read("crop_landmarks"),
                         driving_crops.read("interpolated"), relative=relative, batch_size=options.batch,
                         projector=projector, progress=progress, driving_crops=driving_crops)
    finally:
        claim.release()
    return ReenactTable.of(table, run)


def render_output(ws: Workspace, generator: Callable[[], Generator], landmarks: Callable[[], Any],
                  table_location: str, source: Mapping[str, Any], driving: Mapping[str, Any], output: str,
                  layout: str = "result", paste_back: bool = False, subframes: bool = False,
                  preview: str | None = None, progress: FrameBar | None = None) -> dict[str, Any]:
    """The finished table rendered into `output` with its preview and its sidecar (`record`), unless
    the sidecar says the output was made from this table with these settings and the file is
    unchanged. `generator()` and `landmarks()` load the nets when a render is due. Returns the
    sidecar's record with "rendered" (False when skipped)."""
    table = ReenactCache.at(ws, table_location)
    settings = {"table": table.key, "layout": layout, "paste_back": paste_back, "subframes": subframes,
                "preview": preview}
    render_key = provenance_key(settings)
    made = read_sidecar(output)
    if made is not None and made.get("render_key") == render_key and _unchanged(output, made):
        return {**made, "rendered": False}
    G = generator()
    crops = ws.open_table(source["crops"])
    driving_crops = ws.open_table(driving["crops"])
    metrics = None
    if table.table.provenance.get("mode") == "mapping":
        metrics = mapping_metrics(table, landmarks(), crops.read("crop_landmarks", [0])[0],
                                  driving_crops.read("crop_landmarks"))
    video = render(G, table, crops.read("crop", [0])[0], driving["path"], driving_crops,
                   Fraction(driving["fps"]), output, layout=layout, paste=paste_back, subframes=subframes,
                   preview=preview, progress=progress, on_images=metrics)
    record = _record(table, video, settings, output, preview)
    record["render_key"] = render_key
    write_sidecar(output, record)
    return {**record, "rendered": True}


def _unchanged(output: str, made: Mapping[str, Any]) -> bool:
    try:
        return sha256_file(output) == made.get("output_sha256")
    except OSError:
        return False


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 6) if values.size else None


def _record(table: ReenactCache, video: RenderedVideo, settings: dict[str, Any], output: str,
            preview: str | None) -> dict[str, Any]:
    """The sidecar: the output, its metrics (means and per frame), timing and provenance."""
    frames = table.per_frame()
    projection_seconds = float(np.nansum(frames["seconds"]))
    T = table.num_frames
    return {
        "output": str(output), "output_sha256": sha256_file(output), "preview": preview,
        "sidecar": str(sidecar_path(output)), "frames": video.frames, "key_frames": T, "fps": video.fps,
        "size": None if video.size is None else list(video.size), "settings": settings,
        "table": table.location,
        "metrics": {"landmark_nme": _mean(frames["nme"]), "landmark_nme_target": _mean(frames["nme_target"]),
                    "identity_similarity": video.identity_similarity,
                    "no_face_frames": video.no_face_frames,
                    "landmark_jitter": video.landmark_jitter,
                    "seconds_per_frame": round((projection_seconds + video.seconds) / T, 4),
                    "projection_seconds_per_frame": round(projection_seconds / T, 4),
                    "render_seconds": round(video.seconds, 3)},
        "per_frame": {"nme": [None if not np.isfinite(v) else round(float(v), 6) for v in frames["nme"]],
                      "seconds": [round(float(v), 4) for v in frames["seconds"]],
                      "steps": frames["steps"].tolist(), "interpolated": frames["interpolated"].tolist(),
                      "status": frames["status"].tolist()},
        "held_frames": list(video.held), "failed_frames": {str(k): v for k, v in table.errors().items()},
        "provenance": {"reenact_table": table.key, **table.table.provenance},
        "code_version": code_version(),
    }
