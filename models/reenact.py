"""Reenactment end to end over the cache: project every driving frame into a ReenactCache (resumable),
then render the cached latents into a video. Plain torch + storage; no Prefect (tasks/reenact.py
wraps these functions, flows/reenact.py composes them).

    source = SourceFace(crop, landmarks, latent)              # the source's crop, crop landmarks, W+
    projector = make_projector(G, projection_config("identity", steps_first=300), source)
    table = ReenactCache.require(ws, driving_key, projection_provenance(projector, ...), T, ...)
    project_to_cache(projector, table, driving_points, interpolated)   # resumes at table.resume_frame()
    render_video(G, table, source.crop, driving_path, driving_crops, "out.mp4", layout="side-by-side")

    # mode "mapping" (seed 003): w_i = w_src + Δw, one generator pass per frame; K refinement steps
    net, sha = load_mapping("mapping.pt", G)                  # checked against G (CheckpointError)
    map_to_cache(G, net, table, source, driving_points, landmarks=backend, projector=None)  # or
    # projector=make_projector(G, refine_config("identity", K), source): K steps from the net's output

Frames without a face in the driving clip: the prepare stage fills their landmarks by interpolating
between the neighbouring frames and flags them (`interpolated`); they are projected like any other
frame toward those interpolated landmarks and keep the flag in the reenact table, the sidecar and the
artifact table. A frame whose landmarks are still not finite fails alone (Projector's rule: NaN row,
reason stored, the chain goes on from the last good frame); the video then holds the last good frame
there, so the output keeps every frame, its timing and its audio sync, and the run reports the held
frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.alignment import AlignTransform, paste_back
from models.metrics import identity_similarity_to_source, landmark_jitter, landmark_nme
from models.projection import STATE_FORMAT, ProjectionConfig, Projector, interpolate_subframes
from models.stylegan2 import Generator
from storage.cache import FrameTable
from storage.errors import CacheError, CheckpointError, InputError
from storage.reenact import ReenactCache
from storage.render import LAYOUTS, preview_grid, side_by_side, to_uint8

__all__ = ["MODES", "VARIANTS", "MappingSettings", "SourceFace", "load_mapping", "make_projector",
           "map_to_cache", "mapping_inputs", "mapping_provenance", "mapping_settings", "project_to_cache",
           "projection_config", "projection_provenance", "refine_config", "render_video", "synthesize"]

MODES = ("projection", "mapping")  # flows/reenact.py dispatches on these (REENACTORS)
VARIANTS = ("identity", "free")


@dataclass
class SourceFace:
    """The source face as the reenactment uses it: its aligned crop at G's resolution (R, R, 3)
    uint8, the crop's 68 landmarks (crop pixels) and its W+ inversion (num_ws, w_dim) or None."""

    crop: np.ndarray
    landmarks: np.ndarray
    latent: np.ndarray | None = None


def projection_config(variant: str = "identity", **options: Any) -> ProjectionConfig:
    """The ProjectionConfig of a variant ("identity": keep the source's look; "free": seed 000's
    identity-free variant) with `options` (ProjectionConfig fields) over its defaults. Unknown or
    bad options are an InputError naming them."""
    if variant not in VARIANTS:
        raise InputError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    make = ProjectionConfig.identity_free if variant == "free" else ProjectionConfig
    if "group_weights" in options:
        options["group_weights"] = tuple(options["group_weights"])
    if "adam_betas" in options:
        options["adam_betas"] = tuple(options["adam_betas"])
    try:
        return make(**options)
    except TypeError as err:
        raise InputError(f"unknown projection option ({err})") from None
    except ValueError as err:
        raise InputError(f"bad projection settings: {err}") from None


def make_projector(G: Generator, config: ProjectionConfig, source: SourceFace, landmarks=None,
                   perceptual=None) -> Projector:
    """A Projector for `source` (its crop is the look, its inversion the start of frame 0)."""
    return Projector(G, config, look=source.crop, source_landmarks=source.landmarks,
                     init_latent=source.latent, landmark_resolution=G.img_resolution, landmarks=landmarks,
                     perceptual=perceptual)


def projection_provenance(projector: Projector, driving_crops_key: str, source_key: str,
                          source_latents_key: str | None) -> dict[str, Any]:
    """What the reenacted latents depend on: the projector's provenance (settings, generator
    fingerprint, landmark and LPIPS nets, a digest of the look / source landmarks / start latent),
    the driving crops (their table key hashes tracking, smoothing and resolution; the table lives
    under the driving clip's content key) and the source (content key and inversion table)."""
    return {**projector.provenance(), "mode": "projection", "driving_crops": driving_crops_key,
            "source": source_key, "source_latents": source_latents_key}


# ---------------------------------------------------------------------------------------------------
# Projection into the cache


def _resume(projector: Projector, table: ReenactCache) -> int:
    """Load the projector's state for the first pending frame; returns the frame to start at."""
    start = table.resume_frame()
    if start == 0 or start >= table.num_frames:
        return start
    state = table.load_state()
    if state is None or state["projector_key"] != projector.provenance_key():
        # The state beside the table is gone (or was made by another projector): the chain cannot go
        # on from the middle, so it starts again at frame 0 (the same frames come out again).
        table.reset_all()
        return 0
    start = projector.config.window_start(start)  # windows are aligned to absolute frame indices
    prev = table.last_done_before(start)
    projector.load_state_dict({
        "format": STATE_FORMAT, "provenance_key": projector.provenance_key(), "frame": start - 1,
        "latent": None if prev is None else table.read("latents", [prev])[0],
        "noise": state["noise"], "driving_reference": state["driving_reference"]})
    return start


def project_to_cache(projector: Projector, table: ReenactCache, driving_points: np.ndarray,
                     interpolated: np.ndarray | None = None,
                     on_frames: Callable[[int], None] | None = None,
                     init_latents: np.ndarray | None = None) -> dict[str, Any]:
    """Project every pending frame of `table` in order, storing each window as soon as it is done.

    driving_points: (T, 68, 2) the driving crops' landmarks (crop pixels at G's resolution);
    interpolated:   (T,) 1 where the driving frame had no face (prepare's flag), kept per frame;
    on_frames(n):   called after each stored window with its frame count (progress bars);
    init_latents:   (T, num_ws, w_dim) where each frame's optimisation starts (mapping mode's
                    refinement: the mapping network's output), else the chain's w_{i-1}.
    Returns {"start", "computed", "failed": {frame: reason}, "seconds"}.
    """
    began = time.perf_counter()
    T = table.num_frames
    points = np.asarray(driving_points, dtype=np.float32)
    if points.shape != (T, 68, 2):
        raise ValueError(f"driving_points: expected ({T}, 68, 2), got {points.shape}")
    flags = np.zeros(T, np.uint8) if interpolated is None else np.asarray(interpolated, np.uint8)
    start = _resume(projector, table)
    summary: dict[str, Any] = {"start": start, "computed": 0, "failed": {}, "seconds": 0.0}
    state_saved = start > 0
    config = projector.config
    frame = start
    while frame < T:
        stop = min(T, config.window_start(frame) + (1 if frame == 0 else config.batch_frames))
        result = projector.project_frames(frame, points[frame:stop], init_latents=None if init_latents is None
                                          else init_latents[frame:stop])
        if not state_saved and (projector.noise is not None or not projector.noise_layers):
            # before any frame is marked done: a done frame always has its state on disk
            state = projector.state_dict()
            table.save_state(state["noise"], state["driving_reference"], projector.provenance_key())
            state_saved = True
        pending = set(np.flatnonzero(table.table.status(np.arange(frame, stop)) == 0) + frame)
        good = [j for j, f in enumerate(result.frames) if result.failed[j] is None and f in pending]
        for j, f in enumerate(result.frames):
            if result.failed[j] is not None and f in pending:
                table.fail(f, result.failed[j])
                summary["failed"][f] = result.failed[j]
        if good:
            rows = torch.tensor(good)
            targets = result.targets[rows] if result.targets is not None else None
            nme = landmark_nme(result.points[rows], points[[result.frames[j] for j in good]]).float().numpy()
            nme_target = (landmark_nme(result.points[rows], targets).float().numpy() if targets is not None
                          else np.full(len(good), np.nan, np.float32))
            frames = [result.frames[j] for j in good]
            table.write(frames, latents=result.latents[rows].numpy(),
                        loss=result.losses["total"][rows].numpy(), points=result.points[rows].numpy(),
                        nme=nme, nme_target=nme_target, steps=result.steps[rows].numpy().astype(np.int32),
                        seconds=np.full(len(good), result.seconds / len(result.frames), np.float32),
                        interpolated=flags[frames])
        summary["computed"] += len(result.frames)
        if on_frames is not None:
            on_frames(stop - frame)
        frame = stop
    summary["seconds"] = time.perf_counter() - began
    return summary


# ---------------------------------------------------------------------------------------------------
# Rendering


@torch.no_grad()
def synthesize(G: Generator, latents: torch.Tensor, noise: list[np.ndarray] | None) -> torch.Tensor:
    """(n, 3, R, R) renders of (n, num_ws, w_dim) latents with the noise maps frozen by the
    projection (one (r, r) map per G.synthesis.noise_layers()), or G's own constant noise when None:
    what `Projector.render` draws, without building a Projector."""
    device = G.w_avg.device
    ws = latents.to(device, torch.float32)
    maps = None
    if noise is not None:
        n = ws.shape[0]
        maps = [torch.as_tensor(np.asarray(m), dtype=torch.float32, device=device)
                .reshape(1, 1, *m.shape[-2:]).expand(n, -1, -1, -1) for m in noise]
    return G.synthesis(ws, noise=maps).float().cpu()


def _driving_frames(path: str, paste: bool):
    """The driving clip's original frames, one per key frame, when pasting back (else Nones)."""
    if not paste:
        while True:
            yield None
    from storage.media import open_medium

    yield from open_medium(path).frames()


def render_video(G: Generator, table: ReenactCache, source_crop: np.ndarray, driving_path: str,
                 driving_crops: FrameTable, fps: Fraction, output: str | Path, *, layout: str = "result",
                 paste: bool = False, subframes: bool = False, preview: str | Path | None = None,
                 batch: int = 8, identity=None, on_frames: Callable[[int], None] | None = None,
                 detector=None,
                 on_images: Callable[[list[int], torch.Tensor], None] | None = None) -> dict[str, Any]:
    """Render the cached latents of a finished table into `output` (H.264 at the driving fps, twice it
    with `subframes`, the driving clip's audio kept) and, when given, a preview PNG (look | driving |
    result of the first, middle and last frames). The video appears only when complete (VideoWriter
    writes a temporary file and renames it).

    layout "result": the generated frame; "side-by-side": look | driving | result. `paste`: the
    generated crop pasted into the original driving frame (models.alignment.paste_back with the
    crop's stored transform), which then stands for "driving" and "result" at the frame's size.
    Sub-frames (latent midpoints) show the driving frame before them. `on_images(frames, images)` gets
    each batch's key frames ((n, 3, R, R) in [-1, 1], CPU) as rendered: what mapping mode measures its
    landmarks on (`mapping_metrics`), before the jitter is read. Returns the frame count, fps,
    frame size, the mean identity similarity to the source of the key frames in which `detector`
    (default: Haar, as `facereenact evaluate`) finds a face (None when it finds none: a similarity of
    noise to a face still scores 0.8-0.9, so it is not reported), how many key frames had no face,
    and the render time.
    """
    from storage.images import save_image
    from storage.video import VideoWriter

    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    began = time.perf_counter()
    state = table.load_state()
    if state is None:
        raise CacheError("the projector state (noise maps) is missing; delete the table and run again",
                         path=table.location)
    latents, held = table.held_latents()
    T, R = table.num_frames, G.img_resolution
    ws = torch.from_numpy(latents)
    if subframes:
        ws = interpolate_subframes(ws, repeat_last=True)  # 2T: the clip keeps its duration
    step = 2 if subframes else 1
    key_frames = {0, T // 2, T - 1}
    if identity is None:
        from models.losses import IdentityLoss

        identity = IdentityLoss()
    if detector is None:
        from models.detection import make_detector

        detector = make_detector("haar")
    similarities: list[float] = []
    no_face = 0
    rows: list[list[np.ndarray]] = []
    originals = _driving_frames(driving_path, paste)
    frame_size = None
    with VideoWriter(output, Fraction(fps) * step, audio_from=driving_path) as writer:
        current = None  # the driving frame (original) of the key frame being written
        for first in range(0, ws.shape[0], batch):
            images = synthesize(G, ws[first:first + batch], state["noise"])
            crops = to_uint8(images)
            indices = [(first + k) // step for k in range(images.shape[0])]
            keys = [k for k in range(images.shape[0]) if (first + k) % step == 0]
            faces = [k for k in keys if detector.detect(crops[k])]
            no_face += len(keys) - len(faces)
            if faces:
                sims = identity_similarity_to_source(images[faces], source_crop, identity=identity)
                similarities.extend(float(s) for s in sims)
            if on_images is not None and keys:
                on_images([indices[k] for k in keys], images[keys])
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
            if on_frames is not None:
                on_frames(images.shape[0])
    if preview is not None:
        save_image(preview, preview_grid(rows, height=max(256, R if not paste else 256)))
    done = np.flatnonzero(table.table.status() == 1)
    points = table.read("points", done) if done.size >= 3 else None
    return {"frames": int(ws.shape[0]), "key_frames": T, "fps": str(Fraction(fps) * step),
            "size": list(frame_size) if frame_size else None, "held": [int(i) for i in held],
            "identity_similarity": float(np.mean(similarities)) if similarities else None,
            "no_face_frames": no_face,
            "landmark_jitter": None if points is None else landmark_jitter(points),
            "seconds": time.perf_counter() - began}


# ---------------------------------------------------------------------------------------------------
# Mapping mode (seed 003): w_i = w_src + Δw(source landmarks, driving landmarks_i), one generator pass
# per frame; optionally K projection steps per frame starting there (the Projector, one code path).

MAPPING_BATCH = 8  # frames per mapping + generator pass
NO_FACE = "driving landmarks are not finite (no face in this frame)"


@dataclass(frozen=True)
class MappingSettings:
    """mode="mapping"'s options: the checkpoint, refinement steps (0: the network's output as it is),
    frames per pass, and the ProjectionConfig fields the refinement uses."""

    checkpoint: str
    refine_steps: int = 0
    batch: int = MAPPING_BATCH
    projection: dict[str, Any] | None = None


def mapping_settings(variant: str, options: dict[str, Any]) -> MappingSettings:
    """Check mode="mapping"'s options (InputError naming the problem): `mapping` (checkpoint path,
    required), `refine_steps` (>= 0), `mapping_batch` (>= 1), and the refinement's ProjectionConfig
    fields (not steps_first / steps_next: `refine_steps` sets both)."""
    options = dict(options)
    path = options.pop("mapping", None)
    if not path or not isinstance(path, (str, Path)):
        raise InputError("mode 'mapping' needs a mapping-network checkpoint (--mapping PATH, option "
                         "'mapping'; made by facereenact train-mapping)")
    values = {}
    for name, default, least in (("refine_steps", 0, 0), ("mapping_batch", MAPPING_BATCH, 1)):
        value = options.pop(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise InputError(f"{name} must be an integer >= {least}, got {value!r}")
        values[name] = int(value)
    clash = sorted({"steps_first", "steps_next"} & set(options))
    if clash:
        raise InputError(f"{', '.join(clash)} are projection-mode settings; mapping mode refines each frame "
                         "with refine_steps (--refine-steps K)")
    refine_config(variant, values["refine_steps"], options)  # the refinement's settings, checked now
    return MappingSettings(str(path), values["refine_steps"], values["mapping_batch"], options)


def refine_config(variant: str, refine_steps: int, options: dict[str, Any] | None = None) -> ProjectionConfig:
    """The projection settings of the refinement: the variant's ProjectionConfig with `options`,
    `refine_steps` steps on every frame (frame 0 included: it starts at the network's output too) at
    the warm-start learning rate without w noise, and G's constant noise maps (the mapping output is
    rendered with them; none are optimised)."""
    base = projection_config(variant, **dict(options or {}))
    return base.replace(steps_first=refine_steps, steps_next=refine_steps,
                        learning_rate=base.learning_rate_next,
                        initial_noise_factor=base.initial_noise_factor_next, optimize_noise=False,
                        early_stop_min_steps_first=base.early_stop_min_steps)


def load_mapping(path: str | Path, G: Generator, device: str | torch.device | None = None):
    """The mapping network of a checkpoint, checked against G before any work: missing or unreadable
    (CheckpointError), made for another generator (its provenance's weights sha256: the error names
    both), another W+ shape or another crop resolution. Returns (network, checkpoint sha256)."""
    from models.mapping.checkpoint import load_mapping_network, read_mapping_checkpoint
    from storage.provenance import sha256_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError("mapping-network checkpoint not found", path=path)
    ckpt = read_mapping_checkpoint(path)
    recorded = ckpt["provenance"].get("generator")
    recorded = recorded if isinstance(recorded, dict) else {}
    config = ckpt["model_config"]
    want, have = recorded.get("weights_sha256"), G.weights_sha256()
    weights = G.source_path or "the generator"
    if want and want != have:
        raise CheckpointError(f"mapping network was trained for the generator with weights sha256 "
                              f"{want[:16]}..., not for {weights} (sha256 {have[:16]}...)", path=path)
    if (config.get("num_ws"), config.get("w_dim")) != (G.num_ws, G.w_dim):
        raise CheckpointError(f"mapping network is for W+ ({config.get('num_ws')}, {config.get('w_dim')}), "
                              f"{weights} has ({G.num_ws}, {G.w_dim})", path=path)
    resolution = recorded.get("img_resolution")
    if resolution is not None and int(resolution) != G.img_resolution:
        raise CheckpointError(f"mapping network was trained on {resolution} px crops, {weights} makes "
                              f"{G.img_resolution} px", path=path)
    net = load_mapping_network(path, device=device or G.w_avg.device, generator=G)
    return net, sha256_file(path)


def mapping_inputs(source_landmarks: np.ndarray, driving_points: np.ndarray, relative: bool
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """The driving landmarks the network sees, and the driving reference frame's landmarks. Relative
    (variant "identity"): source + (driving_i - reference), the driving motion on the source's face,
    the reference being the first frame with landmarks (as projection's relative targets); absolute
    (variant "free", seed 003's form): the driving landmarks as they are."""
    points = np.asarray(driving_points, np.float32)
    finite = np.flatnonzero(np.isfinite(points).all(axis=(1, 2)))
    reference = points[finite[0]] if finite.size else None
    if not relative or reference is None:
        return points, reference
    return np.asarray(source_landmarks, np.float32)[None] + (points - reference[None]), reference


def mapping_metrics(table: ReenactCache, landmarks, source_landmarks: np.ndarray, driving_points: np.ndarray
                    ) -> Callable[[list[int], torch.Tensor], None] | None:
    """`render_video`'s `on_images` for a mapping-mode table: the landmarks of each rendered done frame
    whose metrics are not measured yet, their NME to the driving frame and to the network's input
    landmarks, stored into the table (its data only: the frames stay done). None when every done
    frame has them (a second render, or a projection table)."""
    status = table.table.status()
    done = np.flatnonzero(status == 1)
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


def mapping_provenance(G: Generator, net, checkpoint_sha256: str, landmarks, relative: bool,
                       refine_steps: int, projector: Projector | None, driving_crops_key: str,
                       source_key: str, source_latents_key: str | None) -> dict[str, Any]:
    """What mapping-mode latents depend on: the checkpoint (sha256 and model config), the generator, the
    landmark net (it measures the render's points), relative or absolute inputs, the refinement (its
    steps and, with K > 0, the projector's whole provenance), the driving crops and the source."""
    from storage.provenance import base_provenance

    return {**base_provenance("reenact"), "mode": "mapping",
            "mapping": {"checkpoint_sha256": checkpoint_sha256, "model": net.config},
            "generator": G.fingerprint(), "landmarks": landmarks.provenance(), "relative_landmarks": relative,
            "refine_steps": int(refine_steps),
            "refine": None if projector is None else projector.provenance(),
            "calibrated": True if projector is None else projector.config.calibrated,
            "driving_crops": driving_crops_key, "source": source_key, "source_latents": source_latents_key}


def map_to_cache(G: Generator, net, table: ReenactCache, source: SourceFace, driving_points: np.ndarray,
                 interpolated: np.ndarray | None = None, *, landmarks, relative: bool = True,
                 batch_size: int = MAPPING_BATCH, projector: Projector | None = None,
                 on_frames: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Mapping-mode latents of every pending frame of `table`, stored per batch as soon as done.

    Without `projector`: frames are independent; per batch of `batch_size` pending frames one mapping
    pass (`reenact_with_mapping`, latents only); the generator pass is the render's (one per output
    frame), which measures the render's landmarks and their NME to the driving frame and to the
    network's input landmarks (`mapping_metrics`), so they are NaN here. A frame without finite
    driving landmarks fails alone. The table gets an empty state first (G's constant noise), which is what the
    render reads.
    With `projector` (refinement, `refine_config`): the network's latents of all frames are where the
    projection of each frame starts (`project_to_cache(..., init_latents=)`: the projection loop, its
    resume and its state, unchanged).
    Returns {"start", "computed", "failed": {frame: reason}, "seconds"}.
    """
    from models.mapping.inference import reenact_with_mapping

    began = time.perf_counter()
    T = table.num_frames
    points = np.asarray(driving_points, dtype=np.float32)
    if points.shape != (T, 68, 2):
        raise ValueError(f"driving_points: expected ({T}, 68, 2), got {points.shape}")
    if source.latent is None:
        raise ValueError("mapping mode needs the source's latent (its inversion)")
    flags = np.zeros(T, np.uint8) if interpolated is None else np.asarray(interpolated, np.uint8)
    inputs, reference = mapping_inputs(source.landmarks, points, relative)
    finite = np.isfinite(inputs).all(axis=(1, 2))
    w_src = torch.as_tensor(np.asarray(source.latent, np.float32))
    src = torch.as_tensor(np.asarray(source.landmarks, np.float32))

    if projector is not None:
        init = np.full((T, G.num_ws, G.w_dim), np.nan, np.float32)
        if finite.any() and not table.is_finished():  # latents only: no generator pass
            init[finite] = reenact_with_mapping(G, net, w_src, src, torch.from_numpy(inputs[finite]),
                                                batch_size, crop_resolution=G.img_resolution).numpy()
        relative_targets = projector.config.relative_landmarks
        if reference is not None and projector.driving_reference is None and relative_targets:
            projector.set_driving_reference(reference)
        summary = project_to_cache(projector, table, points, flags, on_frames, init_latents=init)
        summary["seconds"] = time.perf_counter() - began
        return summary

    todo = table.table.todo_frames()
    summary: dict[str, Any] = {"start": int(todo[0]) if todo.size else T, "computed": 0, "failed": {},
                               "seconds": 0.0}
    if todo.size == 0:
        return summary
    table.save_state(None, reference, table.key)  # before any frame is done: the render finds a state
    for f in todo[~finite[todo]]:
        table.fail(int(f), NO_FACE)
        summary["failed"][int(f)] = NO_FACE
        summary["computed"] += 1
    good = todo[finite[todo]]
    for first in range(0, good.size, batch_size):
        frames = good[first:first + batch_size]
        t0 = time.perf_counter()
        # latents only: the render's generator pass is the one pass per frame, and it measures the
        # landmarks (render_video's on_images = mapping_metrics), so points and NMEs are NaN until then
        ws = reenact_with_mapping(G, net, w_src, src, torch.from_numpy(inputs[frames]), len(frames),
                                  crop_resolution=G.img_resolution)
        n = len(frames)
        nan = np.full(n, np.nan, np.float32)
        table.write(frames, latents=ws.numpy(), loss=nan, points=np.full((n, 68, 2), np.nan, np.float32),
                    nme=nan, nme_target=nan,
                    steps=np.zeros(n, np.int32),
                    seconds=np.full(n, (time.perf_counter() - t0) / n, np.float32),
                    interpolated=flags[frames])
        summary["computed"] += n
        if on_frames is not None:
            on_frames(n)
    summary["seconds"] = time.perf_counter() - began
    return summary
