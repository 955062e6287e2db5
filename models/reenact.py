"""Reenactment's model pieces: the source face, the settings of each mode checked into their configs,
what a reenacted table's latents depend on (provenance), the mapping network loaded against G, and
the generator pass of cached latents. Torch only; the loops over a table's frames (project, map,
render) are stages/reenact.py's, tasks/reenact.py wraps them, flows/reenact.py composes them.

    source = SourceFace(crop, landmarks, latent)              # the source's crop, crop landmarks, W+
    projector = make_projector(G, projection_config("identity", steps_first=300), source)
    projection_provenance(projector, driving_crops_key, source_key, source_latents_key)

    # mode "mapping" (Mapping-based landmark-driven reenactment): w_i = w_src + Δw, one generator
    # pass per frame; K refinement steps from the network's output with refine_config(variant, K)
    net, sha = load_mapping("mapping.pt", G)                  # checked against G (CheckpointError)
    inputs, reference = mapping_inputs(source.landmarks, driving_points, relative=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.projection import ProjectionConfig, Projector
from models.stylegan2 import Generator
from storage.errors import CheckpointError, InputError

__all__ = ["MAPPING_BATCH", "MODES", "NO_FACE", "VARIANTS", "MappingSettings", "SourceFace", "load_mapping",
           "make_projector", "mapping_inputs", "mapping_provenance", "mapping_settings", "projection_config",
           "projection_provenance", "refine_config", "synthesize"]

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
    """The ProjectionConfig of a variant ("identity": keep the source's look; "free": Uzolas 2021's
    identity-free variant) with `options` (ProjectionConfig fields) over its defaults; the heatmap
    form (absolute targets: the driving crops' heatmaps) turns relative_landmarks off unless set.
    Unknown or bad options are an InputError naming them."""
    if variant not in VARIANTS:
        raise InputError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    make = ProjectionConfig.identity_free if variant == "free" else ProjectionConfig
    if "group_weights" in options:
        options["group_weights"] = tuple(options["group_weights"])
    if "adam_betas" in options:
        options["adam_betas"] = tuple(options["adam_betas"])
    if options.get("landmark_form") == "heatmaps":  # heatmaps are absolute targets: no retargeting
        options.setdefault("relative_landmarks", False)
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
# Rendering: the generator pass of cached latents


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


# ---------------------------------------------------------------------------------------------------
# Mapping mode (Choe 2023): w_i = w_src + Δw(source landmarks, driving landmarks_i), one generator pass
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
    (variant "free", Choe 2023's form): the driving landmarks as they are."""
    points = np.asarray(driving_points, np.float32)
    finite = np.flatnonzero(np.isfinite(points).all(axis=(1, 2)))
    reference = points[finite[0]] if finite.size else None
    if not relative or reference is None:
        return points, reference
    return np.asarray(source_landmarks, np.float32)[None] + (points - reference[None]), reference


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
