"""The reenact flow: a source face performs the motion of a driving clip (the README's main job).

    driving clip --prepare_video--> landmarks, aligned crops             (cached, resumable)
    source photo --prepare_image--> its crop --open-latents + invert-batches--> w_src   (cached)
    mode "projection" --project--> one W+ latent per driving frame       (cached per frame, resumable)
    --render--> mp4 (driving fps, x2 with sub-frames, driving audio) + preview PNG + out.mp4.json
    --report--> Prefect artifacts (per-frame table, output and preview)

    reenact("face.jpg", "clip.mp4", "out.mp4", cache="cache/", weights="ffhq-1024")

Rerunning the same call does no work: every stage reads what is done from the zarr status, and the
render is skipped when the output and its sidecar were made from the same finished table. A run
killed mid-way resumes at the frame where it stopped (docs/reenact.md). `mode` picks how the latents
are made; each mode is one function in `REENACTORS` that fills a reenact table (storage/reenact.py)
which the render reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow, get_run_logger

from flows.conventions import flow_run_name, one_line_failure
from flows.job_requests import DEFAULT_DETECTOR, ReenactRequest
from flows.prepare import prepare_image, prepare_video
from models.inversion import InversionConfig
from models.reenact import load_mapping, mapping_settings, projection_config
from stages.encoder_init import encoder_config
from stages.reenact_directions import directions_settings, load_directions
from storage.cache import Workspace
from storage.errors import InputError, JobFailedError
from storage.latents import LatentCache
from tasks import resources
from tasks.invert import invert_batches, open_latents, settings_of
from tasks.reenact import (
    ReenactTable,
    direct_driving,
    map_driving,
    project_driving,
    render_output,
    report_run,
)

__all__ = ["REENACTORS", "check_not_inputs", "output_files", "reenact"]

class Mode(NamedTuple):
    """One way of making the latents: `check(variant, options)` refuses bad settings before any work
    (InputError); `run(cache, weights, source, driving, variant, options, device, landmarks, progress)`
    fills a reenact table (storage/reenact.py) and returns its task summary; `check_model(G, options,
    landmarks)`, when given, refuses models that do not fit the generator (or the landmark backend),
    also before any work."""

    check: Callable[[str, dict[str, Any]], Any]
    run: Callable[..., ReenactTable]
    check_model: Callable[[Any, dict[str, Any], str], Any] | None = None


def _project(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any], variant: str,
             options: dict[str, Any], device: str, landmarks: str, progress: bool) -> ReenactTable:
    """mode="projection": landmark projection (Uzolas 2021); `options` are ProjectionConfig fields."""
    return project_driving(cache, weights, source, driving, variant, options, device=device,
                           landmarks=landmarks, progress=progress)


def _map(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any], variant: str,
         options: dict[str, Any], device: str, landmarks: str, progress: bool) -> ReenactTable:
    """mode="mapping": the landmark-to-latent network (Choe 2023), w = w_src + Δw, one generator pass per
    frame; options `mapping` (checkpoint), `refine_steps` (projection steps per frame from there),
    `mapping_batch`, and ProjectionConfig fields for the refinement."""
    return map_driving(cache, weights, source, driving, variant, options, device=device, landmarks=landmarks,
                       progress=progress)


def _check_mapping_model(G, options: dict[str, Any], landmarks: str = "faceapi") -> None:
    load_mapping(mapping_settings("identity", options).checkpoint, G)


def _direct(cache: str, weights: str, source: dict[str, Any], driving: dict[str, Any], variant: str,
            options: dict[str, Any], device: str, landmarks: str, progress: bool) -> ReenactTable:
    """mode="directions": learned latent directions (Bounareli et al. 2022), w = w_src + A (p - p_0);
    options `directions` (file from train-directions), `directions_batch`."""
    return direct_driving(cache, weights, source, driving, variant, options, device=device,
                          landmarks=landmarks, progress=progress)


def _check_directions_model(G, options: dict[str, Any], landmarks: str = "faceapi") -> None:
    backend = resources.landmark_backend(landmarks, str(G.w_avg.device))
    load_directions(directions_settings("identity", options).path, G, backend.provenance())


# mode -> how it checks its settings and fills the reenact table: the one place a new mode is added.
REENACTORS: dict[str, Mode] = {
    "projection": Mode(lambda variant, options: projection_config(variant, **options), _project),
    "mapping": Mode(mapping_settings, _map, _check_mapping_model),
    "directions": Mode(directions_settings, _direct, _check_directions_model),  # Bounareli et al.
}


def output_files(output: str | Path, preview: str | Path | None = None) -> list[tuple[str, Path]]:
    """The files one reenactment writes: the video, its preview PNG (default OUTPUT.preview.png) and
    its JSON sidecar, as (what, path) pairs."""
    from storage.reenact import sidecar_path

    output = Path(output)
    return [("output", output), ("preview", Path(preview or output.with_suffix(".preview.png"))),
            ("sidecar", sidecar_path(output))]


def check_not_inputs(source: str | Path, driving: str | Path, output: str | Path, weights: str | Path,
                     preview: str | Path | None = None, mapping: str | Path | None = None) -> None:
    """Refuse, before any work, an output, preview or sidecar that is one of the run's input files."""
    from storage.overwrite import check_outputs_not_inputs

    check_outputs_not_inputs(output_files(output, preview),
                             [("source", source), ("driving video", driving), ("weights", weights),
                              ("mapping network", mapping)])


def invert_source(prepared: dict[str, Any], cache: str, weights: str, steps: int, perceptual: str,
                  device: str, encoder: str | None = None) -> dict[str, Any]:
    """The source's W+ inversion through the dataset inversion's tasks (one frame, cached); from the
    prediction of `encoder` (an encoder checkpoint) when given."""
    try:
        config = InversionConfig(steps=steps, perceptual=perceptual)
    except ValueError as err:
        raise InputError(f"bad source inversion settings: {err}") from None
    config = encoder_config(config, encoder, resources.generator(weights, device), steps=steps)
    settings = settings_of(config)
    plan = open_latents(prepared, cache, weights, settings, batch_size=1, device=device)
    if plan.todo:
        invert_batches(cache, plan.table, plan.crops_table, plan.media, Path(prepared["path"]).name,
                       weights, settings, plan.batches, device=device)
    latents = LatentCache.at(Workspace(cache), plan.table)
    if not latents.is_complete():
        reason = next(iter(latents.errors().values()), "not inverted")
        raise JobFailedError(f"the source could not be inverted: {reason}", path=prepared["path"])
    return {"key": prepared["key"], "path": prepared["path"], "crops": prepared["crops"]["table"],
            "latents": plan.table, "latents_key": plan.key, "computed": plan.todo}


@flow(name="reenact", flow_run_name=flow_run_name("reenact"))
@one_line_failure
def reenact(source: str, driving: str, output: str, cache: str, weights: str,
            mode: str = ReenactRequest.mode, variant: str = ReenactRequest.variant,
            layout: str = ReenactRequest.layout, paste_back: bool = False, subframes: bool = False,
            device: str = "auto", landmarks: str = "faceapi", progress: bool = False,
            detector: str = DEFAULT_DETECTOR, face_index: int = 0, source_face_index: int = 0,
            **options: Any) -> dict[str, Any]:
    """Reenact the face of `source` (a photo) with the motion of `driving` (a video) into `output`.

    mode:      how the latents are made ("projection": Uzolas 2021); unknown modes are an InputError
    variant:   "identity" (keep the source's look) or "free" (Uzolas 2021's identity-free variant)
    layout:    "result" or "side-by-side" (look | driving | result); `paste_back` puts the result
               into the original driving frames; `subframes` doubles the frame rate (latent midpoints)
    detector:  face detector of both inputs ("ssd" default, "haar"; models/detection.py)
    face_index, source_face_index: which face of the driving clip / the source photo, when they show
               several: 0 = the largest (default), 1 = the next, ...
    options:   the mode's settings (projection: ProjectionConfig fields, e.g. steps_first,
               steps_next, perceptual, landmark_form, landmark_input, fan_flip), `invert_steps` (the
               source inversion's steps, default InversionConfig's; it uses the same `perceptual`),
               `invert_encoder` (an encoder checkpoint: the source inversion refines its prediction,
               default steps EncoderInversionConfig's), `preview` (PNG path; default
               OUTPUT.preview.png). All of it is a ReenactRequest (flows/job_requests.py), checked there.
    Returns the run's summary: output, frames, fps, seconds, metric means, tables used.
    """
    logger = get_run_logger()
    began = time.monotonic()
    keywords = {"variant": variant, "layout": layout, "paste_back": paste_back, "subframes": subframes,
                "detector": detector, "face_index": face_index, "source_face_index": source_face_index}
    request = ReenactRequest.from_options(source, driving, output, mode, {**options, **keywords})
    request.check_landmarks(landmarks)  # e.g. the heatmap form without FAN
    options = request.mode_settings()
    preview = request.preview or str(Path(output).with_suffix(".preview.png"))
    check_not_inputs(source, driving, output, weights, preview, options.get("mapping"))  # never overwrite one
    request.check_settings()  # bad settings: fail before any work
    G = resources.generator(weights, device)  # missing or broken weights: fail before any work
    request.check_models(G, landmarks)  # e.g. a mapping network made for another generator
    weights_path = str(G.source_path or weights)
    resolution = G.img_resolution

    prep = {"resolution": resolution, "landmarks": landmarks, "device": device, "progress": progress,
            "detector": detector}
    driving_prepared = prepare_video(driving, cache, face_index=face_index, **prep)
    source_prepared = prepare_image(source, cache, face_index=source_face_index, **prep)
    source_face = invert_source(source_prepared, cache, weights_path, request.invert_steps,
                                request.perceptual, device, request.invert_encoder)
    driving_info = {"key": driving_prepared["key"], "path": driving_prepared["path"],
                    "fps": driving_prepared["fps"], "crops": driving_prepared["crops"]["table"]}
    projected = REENACTORS[mode].run(cache, weights_path, source_face, driving_info, variant, options, device,
                                 landmarks, progress)
    if projected.done == 0:
        reason = next(iter(projected.failed_now.values()), "")
        raise JobFailedError(f"no frame could be reenacted: {reason}", path=driving)
    rendered = render_output(cache, weights_path, projected, source_face, driving_info, str(output),
                             layout=layout, paste_back=paste_back, subframes=subframes, preview=preview,
                             device=device, progress=progress, landmarks=landmarks)
    report_run(rendered)
    summary = {
        "output": rendered["output"], "preview": rendered["preview"], "sidecar": rendered["sidecar"],
        "frames": rendered["frames"], "fps": rendered["fps"], "size": rendered["size"],
        "seconds": round(time.monotonic() - began, 2), "metrics": rendered["metrics"],
        "failed_frames": projected.failed, "held_frames": rendered["held_frames"],
        "interpolated_frames": int(sum(rendered["per_frame"]["interpolated"])),
        "computed": {"source_inverted": source_face["computed"], "projected": projected.computed,
                     "resumed_from": projected.resumed_from, "rendered": rendered["rendered"]},
        "tables": {"driving_crops": driving_info["crops"], "source_crops": source_face["crops"],
                   "source_latents": source_face["latents"], "reenact": projected.table},
        "mode": mode, "variant": variant,
    }
    logger.info(f"reenacted {summary['frames']} frames into {summary['output']} in {summary['seconds']} s "
                f"(projected {projected.computed} frames in this run)")
    return summary
