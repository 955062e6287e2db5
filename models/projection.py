"""Landmark projection reenactment (Uzolas 2021): per driving frame, a W+ latent whose rendering has
the source's look and the driving frame's landmarks.

    config = ProjectionConfig()                                   # Uzolas code's weights, our schedule
    projector = Projector(G, config, look=source_crop,            # (R, R, 3) uint8 or (1, 3, R, R) [-1, 1]
                          source_landmarks=source_crop_landmarks, # (68, 2) crop pixels
                          init_latent=w_src, init_noise=noise_src)  # the source's inversion (or None: w_avg)
    result = projector.project_frames(0, driving_points)          # (T, 68, 2) driving crop landmarks
    result.latents                                                # (T, num_ws, w_dim)
    frames = projector.render(result.latents)                     # (T, 3, R, R) with the frozen noise
    ws = interpolate_subframes(result.latents)                    # (2T - 1, ...) latent midpoints

Objective for driving frame i (docs/projection.md has the sources):

    lambda_lpips    * LPIPS(G(w_i), look)                          (0 in the identity-free variant)
  + lambda_landmark * L_landmark(G(w_i), target_i; group weights)
  + lambda_smooth   * |w_i - w_{i-1}|                              (not on frame 0)
  + lambda_fidelity * |w_i - w_avg|
  + noise_regularize_weight * noise_regularization(noise maps)     (frame 0 only)

|.| is `latent_norm`: the Uzolas code's sum over W+ coordinates of sqrt(d^2 + 1e-6) ("charbonnier", a
smooth L1) or the write-up's Euclidean norm ("l2"). L_landmark works on landmark coordinates (any
differentiable backend; the faceapi default) or on FAN's heatmaps (Uzolas 2021's form). Targets are the
driving frames' landmarks or, with `relative_landmarks`, the driving motion retargeted onto the source
face: target_i = source + (driving_i - driving_0).

Schedule: frame 0 starts from `init_latent` (or w_avg) and optimises the noise maps too: from w_avg the
long schedule (`steps_first` steps), from a given start (`warm_first_frame`) the warm one of later
frames; every later frame starts from w_{i-1} (or extrapolates the chain's velocity,
`start_extrapolation`), gets at most `steps_next` steps, and the noise maps stay frozen at frame 0's
values. Later frames go in windows of `batch_frames` (a chain: the smoothness term links each frame to
its predecessor in the window, the first to the fixed w of the frame before), and a window stops early
when its landmark term has stopped improving.

Resumption: everything a later frame depends on is `state_dict()` (the last frame's index and latent,
the latent before it, the frozen noise maps, the driving reference for relative targets); random
numbers come from per-frame seeds. A fresh Projector given that state continues exactly where the
first stopped (bitwise on the CPU), provided it resumes at a window boundary: windows are aligned to
absolute frame indices (`window_start`; `windows` is the one rule a run goes by). Plain torch; no
Prefect, no cache.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models import schedules
from models.inversion import _frozen_generator, _w_stats
from models.landmarks.base import (
    IBUG_GROUPS,
    NUM_LANDMARKS,
    LandmarkBackend,
    group_weights,
    load_landmark_backend,
)
from models.losses import (
    PERCEPTUAL_CHOICES,
    PerceptualLoss,
    landmark_coordinate_loss,
    landmark_heatmap_loss,
    noise_regularization,
    normalize_noise_,
)
from models.stylegan2 import Generator

LANDMARK_FORMS = ("coordinates", "heatmaps")
# How an image enters the landmark net: "unit" maps G's [-1, 1] to [0, 1] by (x + 1) / 2; "minmax" (the
# Uzolas code's get_heat_map) stretches each image to [0, 1] by its own minimum and maximum.
LANDMARK_INPUTS = ("unit", "minmax")
LATENT_NORMS = ("charbonnier", "l2")
CHARBONNIER_EPS = 1e-6  # the Uzolas code's sqrt(d^2 + 1e-6)
# Coordinate loss unit: 1/64 of the crop side, the pixel of FAN's 64 x 64 heatmaps, so that one
# `lambda_landmark` means about the same in both forms and at every resolution.
COORDINATE_UNITS_PER_CROP = 64
# The Uzolas code's group weights, in IBUG_GROUPS order: jaw, brows L/R, nose bridge, lower nose, eyes L/R,
# outer lip, inner lip (lukasuz/stylegan2-landmark-projection, --landmark_weights).
SEED_GROUP_WEIGHTS = (0.05, 1.0, 1.0, 0.1, 1.0, 1.0, 1.0, 5.0, 5.0)
STATE_FORMAT = 2  # 2: + "latent_before" (the velocity of start_extrapolation)
TERMS = ("lpips", "landmark", "smooth", "fidelity", "noise_reg")


@dataclass(frozen=True)
class ProjectionConfig:
    """Settings of a projection run; `provenance()` is what a cached result records.

    The defaults are the Uzolas code's loss weights and step counts (as caps) with our speed-ups on:
    a lower learning rate and no latent noise on warm-started frames (every later frame, and frame 0
    from the source's inversion), early stopping on the landmark term, LPIPS on every 4th step of
    warm-started frames (docs/projection.md has the measurements).
    `ProjectionConfig.published()` is Uzolas 2021's schedule exactly; `identity_free()` the variant
    without the look term.
    """

    # objective: the Uzolas code's defaults (lpips 1.0, landmark 0.1, fidelity 0.05, smoothness 0.05)
    lambda_lpips: float = 1.0           # LPIPS to the look (source) image; 0 = identity-free variant
    lambda_landmark: float = 0.1        # landmark loss to the frame's target
    lambda_smooth: float = 0.05         # |w_i - w_{i-1}|
    lambda_fidelity: float = 0.05       # |w_i - w_avg| (the Uzolas code applies it in both variants)
    latent_norm: str = "charbonnier"    # "charbonnier": sum sqrt(d^2 + 1e-6) (Uzolas code); "l2": |d|_2
    group_weights: tuple[float, ...] = SEED_GROUP_WEIGHTS  # per IBUG_GROUPS group, in its order
    landmark_form: str = "coordinates"  # "coordinates" (any differentiable backend) | "heatmaps" (FAN)
    landmark_input: str = "unit"        # images into the landmark net: "unit" (x + 1) / 2 | "minmax"
                                        #   (x - min) / (max - min) per image (the Uzolas code)
    fan_flip: bool = False              # FAN backend: also run the mirrored image and average (face-
                                        #   alignment's flip_input); ~1.5x a step's cost (docs/projection.md)
    landmark_backend: str = "faceapi"   # models.landmarks backend name (when the Projector loads it)
    relative_landmarks: bool = True     # target_i = source + (driving_i - driving_0) (coordinates only)
    perceptual: str = "lpips-vgg"       # models.losses.PERCEPTUAL_CHOICES key ("uncalibrated": opt-in)
    noise_regularize_weight: float = 1e5  # noise-map regulariser on frame 0 (NVIDIA's projector)
    optimize_noise: bool = True         # optimise noise maps on frame 0, then freeze (Uzolas 2021)
    # schedule: frame 0, then the later frames (NVIDIA's projector's lr and w-noise ramps per frame)
    steps_first: int = 300              # Adam steps on frame 0 (Uzolas 2021)
    steps_next: int = 50                # at most this many steps on each later frame (Uzolas 2021)
    learning_rate: float = 0.1          # frame 0's peak lr (Uzolas code)
    learning_rate_next: float = 0.01    # later frames' peak lr (Uzolas code: 0.1; warm starts want less)
    initial_noise_factor: float = 0.05  # frame 0's w-noise std at step 0, in units of the spread of w
    initial_noise_factor_next: float = 0.0  # later frames' (Uzolas code: 0.05)
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    noise_ramp_length: float = 0.75
    adam_betas: tuple[float, float] = (0.9, 0.999)
    # speed-ups (the published schedule has them off)
    batch_frames: int = 1               # later frames optimised together per window (a chain); more
                                        #   pays on a GPU only (docs/projection.md)
    early_stop_patience: int = 3        # stop a window once its landmark term has not improved by
    early_stop_tolerance: float = 0.01  #   this fraction for this many steps; patience 0 = off
    early_stop_min_steps: int = 5       # never stop a warm-started window before this many steps
    early_stop_min_steps_first: int = 100  # the long schedule (frame 0 from w_avg, or with
                                        #   warm_first_frame off): early stopping after this many steps
                                        #   (>= steps_first: never)
    lpips_every: int = 4                # warm-started frames: LPIPS on every k-th step only (1 = every
                                        #   step; step 0 always)
    warm_first_frame: bool = True       # frame 0 from a given init_latent (the source's inversion) is a
                                        #   warm start: the later frames' lr, w noise and early-stop
                                        #   minimum (its target is the source's own landmarks when
                                        #   relative); from w_avg it keeps the long schedule
    start_extrapolation: float = 0.0    # later frames start at w_{i-1} + a (w_{i-1} - w_{i-2}) (velocity
                                        #   of the last two good frames; a window's k-th frame at
                                        #   w_{i-1} + k a (w_{i-1} - w_{i-2})); 0 = at w_{i-1}
    early_stop_target: float = 0.0      # also stop a window once every frame's landmark term, as a
                                        #   weighted mean point distance in 1/64 of the crop side (the
                                        #   heatmap pixel), is below this; 0 = off (coordinate form only)
    w_avg_samples: int = 10_000         # z samples for w_avg and the spread of w
    w_avg_seed: int = 123
    seed: int = 303                     # frame i's random numbers come from seed + i

    def __post_init__(self) -> None:
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise ValueError(f"perceptual must be one of {', '.join(PERCEPTUAL_CHOICES)}, "
                             f"got {self.perceptual!r}")
        if self.latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {self.latent_norm!r}")
        if self.landmark_form not in LANDMARK_FORMS:
            raise ValueError(f"landmark_form must be one of {LANDMARK_FORMS}, got {self.landmark_form!r}")
        if self.landmark_input not in LANDMARK_INPUTS:
            raise ValueError(f"landmark_input must be one of {LANDMARK_INPUTS}, got {self.landmark_input!r}")
        if not isinstance(self.fan_flip, bool):
            raise ValueError(f"fan_flip must be true or false, got {self.fan_flip!r}")
        if self.landmark_form == "heatmaps" and self.relative_landmarks:
            raise ValueError("relative_landmarks retargets landmark coordinates: use landmark_form "
                             "'coordinates', or relative_landmarks=False for the heatmap form")
        if len(self.group_weights) != len(IBUG_GROUPS):
            raise ValueError(f"group_weights needs {len(IBUG_GROUPS)} values ({', '.join(IBUG_GROUPS)}), "
                             f"got {len(self.group_weights)}")
        for name in ("lambda_lpips", "lambda_landmark", "lambda_smooth", "lambda_fidelity",
                     "noise_regularize_weight", "learning_rate", "learning_rate_next",
                     "initial_noise_factor", "initial_noise_factor_next", "early_stop_tolerance",
                     "start_extrapolation", "early_stop_target",
                     *(f"group_weights[{i}]" for i in range(len(self.group_weights)))):
            value = (self.group_weights[int(name[14:-1])] if name.startswith("group_weights[")
                     else getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("steps_first", "steps_next", "early_stop_patience", "early_stop_min_steps",
                     "early_stop_min_steps_first"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_frames", "lpips_every", "w_avg_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_rampup", "lr_rampdown", "noise_ramp_length"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.early_stop_target > 0 and self.landmark_form != "coordinates":
            raise ValueError("early_stop_target is a distance in landmark coordinates: use landmark_form "
                             "'coordinates', or early_stop_target=0")

    @classmethod
    def published(cls, **changes) -> ProjectionConfig:
        """Uzolas 2021's schedule exactly: 300 then 50 steps, one frame at a time, every later frame
        with the same lr (0.1) and w-noise ramps as the first, no early stopping."""
        base = dict(learning_rate_next=0.1, initial_noise_factor_next=0.05, batch_frames=1,
                    early_stop_patience=0, lpips_every=1, warm_first_frame=False, start_extrapolation=0.0,
                    early_stop_target=0.0)
        return cls(**{**base, **changes})

    @classmethod
    def identity_free(cls, **changes) -> ProjectionConfig:
        """Uzolas 2021's second variant: no look term (LPIPS dropped), the fidelity term to w_avg kept;
        absolute targets (there is no source face to retarget onto)."""
        return cls(**{"lambda_lpips": 0.0, "relative_landmarks": False, **changes})

    def replace(self, **changes) -> ProjectionConfig:
        return dataclasses.replace(self, **changes)

    @property
    def calibrated(self) -> bool:
        """False when the look term runs on the uncalibrated (random) LPIPS backbone."""
        return self.lambda_lpips == 0 or PERCEPTUAL_CHOICES[self.perceptual][2]

    def group_weight_dict(self) -> dict[str, float]:
        return dict(zip(IBUG_GROUPS, (float(w) for w in self.group_weights), strict=True))

    def window_start(self, frame: int) -> int:
        """The first frame of the window holding `frame`: frame 0 is alone, later frames go in windows
        1..B, B+1..2B, ... of `batch_frames`. A resumed run must start at a window start."""
        if frame < 1:
            return 0
        return 1 + (frame - 1) // self.batch_frames * self.batch_frames

    def windows(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The windows [first, end) that frames start .. stop - 1 go in, in order: the one windowing
        rule (frame 0 alone, then `batch_frames` at a time, aligned to absolute frame indices; a
        `start` inside a window gives that window's tail first)."""
        out = []
        frame = int(start)
        while frame < stop:
            end = min(int(stop), self.window_start(frame) + (1 if frame == 0 else self.batch_frames))
            out.append((frame, end))
            frame = end
        return out

    def learning_rate_at(self, step: int, steps: int, first: bool) -> float:
        """NVIDIA's projector's lr ramps (models.schedules) over a frame's steps."""
        peak = self.learning_rate if first else self.learning_rate_next
        return schedules.learning_rate_at(peak, step, steps, self.lr_rampup, self.lr_rampdown)

    def w_noise_factor_at(self, step: int, steps: int, first: bool) -> float:
        """NVIDIA's projector's w-noise ramp (models.schedules) over a frame's steps."""
        initial = self.initial_noise_factor if first else self.initial_noise_factor_next
        return schedules.w_noise_factor_at(initial, step, steps, self.noise_ramp_length)

    def provenance(self) -> dict:
        from storage.provenance import base_provenance

        record = base_provenance("projection")
        record["settings"] = dataclasses.asdict(self)
        record["calibrated"] = self.calibrated
        return record


# ---------------------------------------------------------------------------------------------------
# Small pure functions (the flow and the metrics use them too)


def rescale_points(points: torch.Tensor | np.ndarray, from_resolution: int, to_resolution: int):
    """Landmarks in pixels of a crop of `from_resolution` -> pixels of the same crop at
    `to_resolution` (pixel centres at integers: the crop spans -0.5 .. R - 0.5)."""
    if from_resolution == to_resolution:
        return points
    factor = to_resolution / from_resolution
    return (points + 0.5) * factor - 0.5


def retarget_landmarks(driving: torch.Tensor, driving_reference: torch.Tensor, source: torch.Tensor
                       ) -> torch.Tensor:
    """Relative landmarks: the driving motion moved onto the source face, in aligned crop
    coordinates: source + (driving_i - driving_reference). (T, 68, 2), (68, 2), (68, 2) -> (T, 68, 2).
    When the source is the driving clip's own frame 0 this is the driving landmarks themselves."""
    return source[None] + (driving - driving_reference[None])


def interpolate_subframes(ws: torch.Tensor, repeat_last: bool = False) -> torch.Tensor:
    """Uzolas 2021's sub-frames: between consecutive latents their midpoint, (w_i + w_{i+1}) / 2.
    (T, ...) -> (2T - 1, ...): w_0, m_01, w_1, m_12, ..., w_{T-1}; `repeat_last` appends w_{T-1}
    once more so that a clip at twice the frame rate keeps its duration (2T rows)."""
    if ws.shape[0] < 1:
        raise ValueError("interpolate_subframes: no latents")
    out = torch.empty((2 * ws.shape[0] - 1, *ws.shape[1:]), dtype=ws.dtype, device=ws.device)
    out[0::2] = ws
    out[1::2] = (ws[:-1] + ws[1:]) / 2
    if repeat_last:
        out = torch.cat([out, ws[-1:]])
    return out


def latent_distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """(N, num_ws, w_dim) differences -> (N,): the Uzolas code's sum of sqrt(d^2 + 1e-6) over all W+
    coordinates ("charbonnier"), or the Euclidean norm over them ("l2")."""
    if norm == "charbonnier":
        return torch.sqrt(delta.square() + CHARBONNIER_EPS).sum(dim=(1, 2))
    if norm == "l2":
        return torch.linalg.vector_norm(delta.flatten(1), dim=1)
    raise ValueError(f"latent norm must be one of {LATENT_NORMS}, got {norm!r}")


def landmark_net_input(images: torch.Tensor, mode: str, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """(N, 3, H, W) images with values nominally in [low, high] -> the landmark net's [0, 1] input:
    "unit" maps [low, high] linearly onto [0, 1] (G's images: (x + 1) / 2); "minmax" stretches each
    image by its own extremes, (x - min) / (max - min) (the Uzolas code's get_heat_map, on the
    generated and the driving image). The two agree on an image spanning [low, high] exactly."""
    if mode == "unit":
        return (images - low) / (high - low)
    if mode == "minmax":
        flat = images.flatten(1)
        lo = flat.amin(dim=1)[:, None, None, None]
        span = (flat.amax(dim=1)[:, None, None, None] - lo).clamp_min(1e-8)
        return (images - lo) / span
    raise ValueError(f"landmark_input must be one of {LANDMARK_INPUTS}, got {mode!r}")


# ---------------------------------------------------------------------------------------------------


@dataclass
class ProjectionStep:
    """What `callback(step)` sees after each optimisation step of a window."""

    frames: list[int]                   # absolute frame indices of the window
    step: int                           # 0-based step just taken
    max_steps: int
    losses: dict[str, torch.Tensor]     # per-frame terms and "total", (n,), detached


@dataclass
class ProjectionResult:
    """Per-frame outputs of `Projector.project_frames`, on the CPU. Failed frames are NaN rows."""

    frames: list[int]                   # absolute frame indices, in order
    latents: torch.Tensor               # (n, num_ws, w_dim) float32
    images: torch.Tensor                # (n, 3, R, R) renders of the latents with the frozen noise
    points: torch.Tensor                # (n, 68, 2) landmarks of the renders (G-resolution pixels)
    targets: torch.Tensor | None        # (n, 68, 2) coordinate targets (after retargeting), or None
    losses: dict[str, torch.Tensor]     # "total" and every term with a weight > 0, (n,), at the end
    steps: torch.Tensor                 # (n,) Adam steps each frame got
    failed: list[str | None] = field(default_factory=list)  # per frame: None or why it failed
    seconds: float = 0.0                # wall time of the call

    @property
    def ok(self) -> torch.Tensor:
        return torch.tensor([reason is None for reason in self.failed])

    @staticmethod
    def concat(results: Sequence[ProjectionResult]) -> ProjectionResult:
        """One result from consecutive ones (e.g. a run and its resumption)."""
        if not results:
            raise ValueError("no results to concatenate")
        targets = ([r.targets for r in results] if all(r.targets is not None for r in results) else None)
        keys = set.union(*(set(r.losses) for r in results))

        def column(r: ProjectionResult, k: str) -> torch.Tensor:
            return r.losses[k] if k in r.losses else torch.full((len(r.frames),), float("nan"))

        return ProjectionResult(
            frames=[f for r in results for f in r.frames],
            latents=torch.cat([r.latents for r in results]), images=torch.cat([r.images for r in results]),
            points=torch.cat([r.points for r in results]),
            targets=torch.cat(targets) if targets is not None else None,
            losses={k: torch.cat([column(r, k) for r in results]) for k in sorted(keys)},
            steps=torch.cat([r.steps for r in results]), failed=[f for r in results for f in r.failed],
            seconds=sum(r.seconds for r in results))


class Projector:
    """Holds the generator, the landmark net, the losses and the state between frames.

    G:                 the generator (its device is where everything runs).
    config:            ProjectionConfig.
    look:              the source crop whose look the frames keep: (R, R, 3) uint8, or (1, 3, R, R) /
                       (3, R, R) float in [-1, 1]; required when lambda_lpips > 0.
    source_landmarks:  (68, 2) landmarks of the source crop (the cache's crop_landmarks), for relative
                       targets; None: the landmark net's points on `look`.
    init_latent:       (num_ws, w_dim) frame 0's start: the source's inversion; None: w_avg.
    init_noise:        frame 0's initial noise maps (one (r, r) / (1, 1, r, r) per
                       G.synthesis.noise_layers()), e.g. the source inversion's; None: N(0, 1) from
                       the seed.
    landmark_resolution: the crop size in which every given landmark array is expressed (default:
                       G's resolution); they are rescaled to G's.
    landmarks, perceptual: prebuilt nets to share between projectors (default: built here).
    """

    def __init__(
        self,
        G: Generator,
        config: ProjectionConfig | None = None,
        *,
        look: torch.Tensor | np.ndarray | None = None,
        source_landmarks: torch.Tensor | np.ndarray | None = None,
        init_latent: torch.Tensor | np.ndarray | None = None,
        init_noise: Sequence[torch.Tensor | np.ndarray] | None = None,
        landmark_resolution: int | None = None,
        landmarks: LandmarkBackend | None = None,
        perceptual: PerceptualLoss | None = None,
    ) -> None:
        self.G = G
        self.config = config = config if config is not None else ProjectionConfig()
        self.device = G.w_avg.device
        self.resolution = G.img_resolution
        self.landmark_resolution = int(landmark_resolution or self.resolution)
        dev = self.device

        self.landmarks = (landmarks if landmarks is not None
                          else load_landmark_backend(config.landmark_backend, device=dev))
        if config.fan_flip != getattr(self.landmarks, "flip_input", config.fan_flip):
            self.landmarks = self.landmarks.with_flip(config.fan_flip)  # FAN: the same net, flip as set
        self.landmarks.eval().requires_grad_(False)
        if config.landmark_form == "coordinates" and not self.landmarks.differentiable:
            raise ValueError(f"landmark backend {self.landmarks.name!r} gives no gradients for its points: "
                             f"use landmark_form 'heatmaps' or a differentiable backend")
        self.point_weights = group_weights(config.group_weight_dict()).to(dev)  # (68,)

        self.look: torch.Tensor | None = None
        self.perceptual: PerceptualLoss | None = None
        self.look_features: list[torch.Tensor] | None = None
        if look is not None:
            self.look = self._image_tensor(look, "look")
        if config.lambda_lpips > 0:
            if self.look is None:
                raise ValueError("lambda_lpips > 0 needs the look (source) image; use "
                                 "ProjectionConfig.identity_free() to project without one")
            self.perceptual = (perceptual if perceptual is not None
                               else PerceptualLoss.from_choice(config.perceptual).to(dev))
            with torch.no_grad():
                self.look_features = self.perceptual.features(self.look)

        self.source_landmarks: torch.Tensor | None = None
        if source_landmarks is not None:
            self.source_landmarks = self._points(source_landmarks, "source_landmarks", single=True)
        elif config.relative_landmarks and self.look is not None:
            with torch.no_grad():
                self.source_landmarks = self.landmarks(self._net_input(self.look)).points[0].float()

        self.w_avg, self.w_spread = _w_stats(G, config)  # same fields as InversionConfig's
        self.init_latent = (self._latent(init_latent, "init_latent") if init_latent is not None
                            else self.w_avg.expand(G.num_ws, G.w_dim).clone())
        self.init_given = init_latent is not None  # frame 0 starts near its optimum (warm_first_frame)
        self.noise_layers = G.synthesis.noise_layers() if config.optimize_noise else []
        self.init_noise = self._noise(init_noise, "init_noise") if init_noise is not None else None

        # State between frames (what `state_dict` carries).
        self.last_frame = -1                            # index of the last projected frame
        self.last_latent: torch.Tensor | None = None    # its latent (num_ws, w_dim)
        self.latent_before: torch.Tensor | None = None  # the good frame's before it (start_extrapolation)
        self.noise: list[torch.Tensor] | None = None    # frozen noise maps, (1, 1, r, r) each
        self.driving_reference: torch.Tensor | None = None  # driving frame 0's landmarks (relative)

    # -----------------------------------------------------------------------------------------------
    # inputs

    def _image_tensor(self, image, name: str) -> torch.Tensor:
        r = self.resolution
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.shape != (r, r, 3):
                raise ValueError(f"{name}: expected a ({r}, {r}, 3) uint8 crop, got {image.dtype} "
                                 f"{image.shape}")
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1
        image = torch.as_tensor(image)
        if image.ndim == 3:
            image = image[None]
        if tuple(image.shape) != (1, 3, r, r) or not image.is_floating_point():
            raise ValueError(f"{name}: expected (1, 3, {r}, {r}) float in [-1, 1], got "
                             f"{tuple(image.shape)} {image.dtype}")
        if not bool(torch.isfinite(image).all()):
            raise ValueError(f"{name}: non-finite pixels")
        return image.to(self.device, torch.float32)

    def _points(self, points, name: str, single: bool = False) -> torch.Tensor:
        points = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points)
        if points.ndim != (2 if single else 3) or tuple(points.shape[-2:]) != (NUM_LANDMARKS, 2):
            raise ValueError(f"{name}: expected {'(68, 2)' if single else '(n, 68, 2)'} landmarks, got "
                             f"{tuple(points.shape)}")
        points = rescale_points(points.to(self.device, torch.float32), self.landmark_resolution,
                                self.resolution)
        if single and not bool(torch.isfinite(points).all()):
            raise ValueError(f"{name}: non-finite landmarks")
        return points

    def _latent(self, latent, name: str) -> torch.Tensor:
        latent = torch.as_tensor(latent).to(self.device, torch.float32)
        if latent.ndim == 3 and latent.shape[0] == 1:
            latent = latent[0]
        if tuple(latent.shape) != (self.G.num_ws, self.G.w_dim):
            raise ValueError(f"{name}: expected ({self.G.num_ws}, {self.G.w_dim}), got {tuple(latent.shape)}")
        if not bool(torch.isfinite(latent).all()):
            raise ValueError(f"{name}: non-finite values")
        return latent.clone()

    def _noise(self, maps, name: str) -> list[torch.Tensor]:
        if len(maps) != len(self.noise_layers):
            raise ValueError(f"{name}: {len(maps)} maps for {len(self.noise_layers)} noise layers")
        out = []
        for m, (layer_name, layer) in zip(maps, self.noise_layers, strict=True):
            m = torch.as_tensor(m).to(self.device, torch.float32)
            r = layer.resolution
            if m.numel() != r * r or tuple(m.shape[-2:]) != (r, r):
                raise ValueError(f"{name}: the map for {layer_name} must be {r}x{r}, got {tuple(m.shape)}")
            m = m.reshape(1, 1, r, r)
            out.append(m.clone())
        return out

    # -----------------------------------------------------------------------------------------------
    # state

    def state_dict(self) -> dict:
        """What a later frame depends on, as numpy arrays and ints (small: one latent, the frozen noise
        maps, 68 points), plus the provenance key of this projector's settings."""
        return {
            "format": STATE_FORMAT,
            "provenance_key": self.provenance_key(),
            "frame": self.last_frame,
            "latent": None if self.last_latent is None else self.last_latent.cpu().numpy().copy(),
            "latent_before": (None if self.latent_before is None else
                              self.latent_before.cpu().numpy().copy()),
            "noise": None if self.noise is None else [m[0, 0].cpu().numpy().copy() for m in self.noise],
            "driving_reference": (None if self.driving_reference is None else
                                  self.driving_reference.cpu().numpy().copy()),
        }

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Continue from a saved state: the next frame to project is state["frame"] + 1. With
        `strict`, a state saved under other settings or inputs is refused (ValueError)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"projection state format {state.get('format')!r}, expected {STATE_FORMAT}")
        if strict and state.get("provenance_key") != self.provenance_key():
            raise ValueError("projection state was saved under other settings or inputs "
                             f"({state.get('provenance_key')} != {self.provenance_key()})")
        frame = int(state["frame"])
        if state["latent"] is not None and self.noise_layers and state["noise"] is None:
            raise ValueError(f"projection state at frame {frame} has a latent but no noise maps")
        self.last_frame = frame
        self.last_latent = None if state["latent"] is None else self._latent(state["latent"], "state latent")
        before = state["latent_before"]
        self.latent_before = None if before is None else self._latent(before, "state latent_before")
        self.noise = None if state["noise"] is None else self._noise(state["noise"], "state noise")
        ref = state.get("driving_reference")
        self.driving_reference = (None if ref is None else
                                  torch.as_tensor(np.asarray(ref), dtype=torch.float32, device=self.device))

    def set_driving_reference(self, points: torch.Tensor | np.ndarray) -> None:
        """The driving clip's frame-0 landmarks (landmark_resolution pixels), for relative targets
        when a run starts after frame 0 without a saved state."""
        self.driving_reference = self._points(points, "driving_reference", single=True)

    # -----------------------------------------------------------------------------------------------
    # provenance

    def provenance(self) -> dict:
        """Settings, generator fingerprint, loss nets, and a digest of the inputs (look, source
        landmarks, initial latent and noise): everything the latents depend on besides the targets."""
        import hashlib

        record = self.config.provenance()
        record["generator"] = self.G.fingerprint()
        if not self.G.synthesis.noise_layers():  # StyleGAN3: no noise maps to optimise or freeze
            record["noise_maps"] = "none: the generator has no noise inputs"
        record["landmarks"] = self.landmarks.provenance()
        if self.perceptual is not None:
            record["perceptual"] = self.perceptual.provenance()
        digest = hashlib.sha256()
        for t in (self.look, self.source_landmarks, self.init_latent, *(self.init_noise or [])):
            digest.update(b"-" if t is None else t.detach().cpu().contiguous().numpy().tobytes())
        record["inputs_sha256"] = digest.hexdigest()
        record["landmark_resolution"] = self.landmark_resolution
        return record

    def provenance_key(self) -> str:
        from storage.provenance import provenance_key

        if getattr(self, "_key", None) is None:
            self._key = provenance_key(self.provenance())
        return self._key

    # -----------------------------------------------------------------------------------------------
    # rendering

    def _noise_for(self, n: int, noise: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        if not self.noise_layers:
            return None
        return [m.expand(n, -1, -1, -1) for m in noise]

    @torch.no_grad()
    def render(self, latents: torch.Tensor, batch: int = 8) -> torch.Tensor:
        """(n, 3, R, R) images in [-1, 1]-ish of latents (n, num_ws, w_dim) with the frozen noise maps
        (G's own noise_const when noise is not optimised). Needs frame 0 projected (or a loaded state)."""
        if self.noise_layers and self.noise is None:
            raise ValueError("render: no frozen noise maps yet (project frame 0 or load a state first)")
        out = []
        for start in range(0, latents.shape[0], batch):
            ws = latents[start:start + batch].to(self.device, torch.float32)
            out.append(self.G.synthesis(ws, noise=self._noise_for(ws.shape[0], self.noise)).cpu())
        return torch.cat(out)

    # -----------------------------------------------------------------------------------------------
    # projection

    def project_frame(self, frame: int, driving_points=None, driving_image=None, **kwargs
                      ) -> ProjectionResult:
        """One frame (`frame` must be the next one); see `project_frames`."""
        return self.project_frames(
            frame, None if driving_points is None else torch.as_tensor(np.asarray(driving_points))[None],
            None if driving_image is None else np.asarray(driving_image)[None], **kwargs)

    def project_frames(
        self,
        start: int,
        driving_points: torch.Tensor | np.ndarray | None = None,   # (n, 68, 2) crop landmarks
        driving_images: torch.Tensor | np.ndarray | None = None,   # (n, R, R, 3) uint8 crops (heatmaps)
        callback: Callable[[ProjectionStep], None] | None = None,
        init_latents: torch.Tensor | np.ndarray | None = None,     # (n, num_ws, w_dim): per-frame starts
    ) -> ProjectionResult:
        """Project driving frames start .. start + n - 1. `start` must follow the last projected frame
        (0 on a fresh projector; state["frame"] + 1 after `load_state_dict`).

        Coordinate form: `driving_points`, the frames' crop landmarks (landmark_resolution pixels;
        with relative_landmarks they are retargeted onto the source). Heatmap form: `driving_images`,
        the frames' aligned crops at G's resolution; their heatmaps are computed once per frame.
        A frame whose targets are not finite fails alone (NaN rows, the reason in `failed`) and the
        chain goes on from the last good frame; a window whose loss becomes non-finite fails whole.

        `init_latents`: each frame's optimisation starts at its row instead of at w_{i-1} (frame 0:
        instead of `init_latent`), e.g. a mapping network's output to refine (the smoothness term
        still links it to the frame before; with `warm_first_frame` frame 0 then gets the warm
        schedule too). Rows of frames that fail may be NaN.

        The frames go window by window (`ProjectionConfig.windows`); `project_window` is one of them.
        """
        began = time.perf_counter()
        if start != self.last_frame + 1:
            raise ValueError(f"project_frames: the next frame is {self.last_frame + 1}, got start={start} "
                             f"(load the state of frame {start - 1} to resume there)")
        points, images, n = self._targets(start, driving_points, driving_images)
        init_latents = self._init_latents(init_latents, n)
        chunks = [self._project_window(list(range(first, end)), points, images, start, callback, init_latents)
                  for first, end in self.config.windows(start, start + n)]
        result = ProjectionResult.concat(chunks)
        result.seconds = time.perf_counter() - began
        return result

    def project_window(
        self,
        start: int,
        driving_points: torch.Tensor | np.ndarray | None = None,
        driving_images: torch.Tensor | np.ndarray | None = None,
        callback: Callable[[ProjectionStep], None] | None = None,
        init_latents: torch.Tensor | np.ndarray | None = None,
    ) -> ProjectionResult:
        """One step of a projection run: the frames start .. start + n - 1 of one window of
        `ProjectionConfig.windows` (a ValueError otherwise), arguments as `project_frames`. The
        projector's state then stands after the window's last frame."""
        given = driving_images if driving_images is not None else driving_points
        n = 0 if given is None else len(given)
        windows = self.config.windows(start, start + n)
        if len(windows) != 1:
            raise ValueError(f"project_window: frames {start}..{start + n - 1} are not one window "
                             f"({windows})")
        return self.project_frames(start, driving_points, driving_images, callback, init_latents)

    def _init_latents(self, init_latents, n: int) -> torch.Tensor | None:
        if init_latents is None:
            return None
        if not isinstance(init_latents, torch.Tensor):
            init_latents = torch.from_numpy(np.asarray(init_latents))
        init_latents = init_latents.to(self.device, torch.float32)
        if tuple(init_latents.shape) != (n, self.G.num_ws, self.G.w_dim):
            raise ValueError(f"init_latents: expected ({n}, {self.G.num_ws}, {self.G.w_dim}), got "
                             f"{tuple(init_latents.shape)}")
        return init_latents

    def _targets(self, start: int, driving_points, driving_images):
        c = self.config
        if c.landmark_form == "coordinates":
            if driving_points is None:
                raise ValueError("project_frames: the coordinate form needs driving_points (n, 68, 2)")
            points = self._points(driving_points, "driving_points")
            if c.relative_landmarks:
                if self.source_landmarks is None:
                    raise ValueError("relative_landmarks needs the source's landmarks (source_landmarks or "
                                     "look)")
                if self.driving_reference is None:
                    if start != 0:
                        raise ValueError("relative_landmarks: a run that starts after frame 0 needs the "
                                         "driving frame-0 landmarks (load_state_dict or "
                                         "set_driving_reference)")
                    if not bool(torch.isfinite(points[0]).all()):
                        raise ValueError("relative_landmarks: driving frame 0 has no landmarks to "
                                         "measure the motion from")
                    self.driving_reference = points[0].clone()
                points = retarget_landmarks(points, self.driving_reference, self.source_landmarks)
            return points, None, points.shape[0]
        if driving_images is None:
            raise ValueError("project_frames: the heatmap form needs driving_images (n, R, R, 3) uint8")
        images = torch.as_tensor(np.asarray(driving_images))
        r = self.resolution
        if images.ndim != 4 or tuple(images.shape[1:]) != (r, r, 3) or images.dtype != torch.uint8:
            raise ValueError(f"driving_images: expected (n, {r}, {r}, 3) uint8 crops, got "
                             f"{tuple(images.shape)} {images.dtype}")
        points = None
        if driving_points is not None:  # only reported beside the heatmap targets
            points = self._points(driving_points, "driving_points")
        return points, images, images.shape[0]

    def _net_input(self, images: torch.Tensor) -> torch.Tensor:
        """G's images ([-1, 1]) as the landmark net takes them (`landmark_input`)."""
        return landmark_net_input(images, self.config.landmark_input)

    def _target_heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """FAN heatmaps of driving crops, once per frame (they do not change during the steps); the
        crops enter as the generated images do (`landmark_input`: / 255, or min-max per crop)."""
        x = landmark_net_input(images.to(self.device).permute(0, 3, 1, 2).float(), self.config.landmark_input,
                               0.0, 255.0)
        with torch.no_grad():
            heatmaps = self.landmarks(x).heatmaps
        if heatmaps is None:
            raise ValueError(f"landmark backend {self.landmarks.name!r} has no heatmaps: use "
                             f"landmark_form 'coordinates'")
        return heatmaps

    def _objective(self, ws: torch.Tensor, latents: torch.Tensor, prev: torch.Tensor | None,
                   noise: list[torch.Tensor] | None, target, with_lpips: bool, noise_reg: bool,
                   final: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Per-frame terms of a window: images, landmark points, {"term": (n,), "total": (n,)}."""
        c = self.config
        n = ws.shape[0]
        images = self.G.synthesis(ws, noise=self._noise_for(n, noise))
        terms: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        if c.lambda_lpips > 0 and with_lpips:
            terms["lpips"] = self.perceptual.distance(images, self.look_features)
            weights["lpips"] = c.lambda_lpips
        marks = self.landmarks(self._net_input(images)) if (c.lambda_landmark > 0 or final) else None
        if c.lambda_landmark > 0:
            if c.landmark_form == "coordinates":
                unit = self.resolution / COORDINATE_UNITS_PER_CROP
                terms["landmark"] = landmark_coordinate_loss(marks.points, target, self.point_weights, unit)
            else:
                terms["landmark"] = landmark_heatmap_loss(marks.heatmaps, target, self.point_weights)
            weights["landmark"] = c.lambda_landmark
        if c.lambda_smooth > 0 and (prev is not None or n > 1):
            # the chain: each frame against its predecessor (the fixed previous frame for the first,
            # nothing for frame 0)
            before = (torch.cat([prev[None], latents[:-1]]) if prev is not None
                      else torch.cat([latents[:1].detach(), latents[:-1]]))
            terms["smooth"] = latent_distance(latents - before, c.latent_norm)
            weights["smooth"] = c.lambda_smooth
        if c.lambda_fidelity > 0:
            terms["fidelity"] = latent_distance(latents - self.w_avg, c.latent_norm)
            weights["fidelity"] = c.lambda_fidelity
        if noise_reg and c.noise_regularize_weight > 0:
            terms["noise_reg"] = noise_regularization(noise).expand(n)
            weights["noise_reg"] = c.noise_regularize_weight
        total = torch.zeros(n, device=images.device)
        for name, value in terms.items():
            total = total + weights[name] * value
        terms["total"] = total
        return images, None if marks is None else marks.points, terms

    # -----------------------------------------------------------------------------------------------
    # one window, top to bottom: targets, start latents, noise, optimisation, evaluation, state

    def _project_window(self, window: list[int], all_points, all_images, offset: int,
                        callback, init_latents: torch.Tensor | None = None) -> ProjectionResult:
        began = time.perf_counter()
        w = self._window_targets(window, all_points, all_images, offset)
        # the one warm-start rule: later frames start at (or next to) their predecessor's optimum; frame
        # 0 too with warm_first_frame when its start is given (the source's inversion, init_latents)
        w.warm = not w.first or (self.config.warm_first_frame and
                                 (self.init_given or init_latents is not None))
        latents = self._start_latents(w, init_latents)
        noise, optimise_noise = self._window_noise(w)
        latents, noise, steps_taken, error = self._optimise(w, latents, noise, optimise_noise, callback)
        if error is not None:  # a loss that became non-finite fails the whole window
            for j in w.good:
                w.failed[j] = error
            w.good = []
        result = self._evaluate(w, latents, noise, optimise_noise, steps_taken, all_points)
        self._advance(w, latents, noise, optimise_noise)
        result.seconds = time.perf_counter() - began
        return result

    def _window_targets(self, window: list[int], all_points, all_images, offset: int) -> _Window:
        """1. Targets: which frames of the window can be projected (finite driving landmarks), and the
        landmark targets (coordinates) or heatmaps of those."""
        c = self.config
        rows = [f - offset for f in window]
        # "first": frame 0, or the first window after frame 0 failed (no latent to start from yet): the
        # long schedule, and the noise maps optimised (then frozen)
        first = window[0] == 0 or self.last_latent is None
        failed: list[str | None] = [None] * len(window)
        if all_points is not None and c.landmark_form == "coordinates":
            for j, r in enumerate(rows):
                if not bool(torch.isfinite(all_points[r]).all()):
                    failed[j] = "driving landmarks are not finite (no face in this frame)"
        good = [j for j in range(len(window)) if failed[j] is None]
        if c.landmark_form == "coordinates":
            target = all_points[[rows[j] for j in good]] if good else None
        else:
            target = self._target_heatmaps(all_images[[rows[j] for j in good]]) if good else None
        return _Window(frames=list(window), rows=rows, first=first, failed=failed, good=good, target=target,
                       prev=None if first else self.last_latent,
                       streams=[torch.Generator().manual_seed(c.seed + window[j]) for j in good])

    def _start_latents(self, w: _Window, init_latents: torch.Tensor | None) -> torch.Tensor:
        """2. Where each good frame's optimisation starts: its `init_latents` row, else the chain's
        w_{i-1} (frame 0: `init_latent`)."""
        if init_latents is not None:
            latents = init_latents[[w.rows[j] for j in w.good]].clone()
            if not bool(torch.isfinite(latents).all()):
                raise ValueError(f"init_latents: non-finite rows for frames {w.frames} with driving "
                                 "landmarks")
            return latents
        if w.prev is None:
            return self.init_latent.expand(len(w.good), -1, -1).clone()
        a = self.config.start_extrapolation
        if a > 0 and self.latent_before is not None:
            # velocity extrapolation: the window's k-th good frame (k = 1, 2, ...) at
            # w_{i-1} + k a (w_{i-1} - w_{i-2})
            velocity = w.prev - self.latent_before
            return torch.stack([w.prev + (k * a) * velocity for k in range(1, len(w.good) + 1)])
        return w.prev.expand(len(w.good), -1, -1).clone()

    def _window_noise(self, w: _Window) -> tuple[list[torch.Tensor] | None, bool]:
        """3. Noise setup: the first window draws (or takes `init_noise`) the noise maps and optimises
        them; later windows use the maps frozen after it. Returns (maps, whether they are optimised)."""
        c = self.config
        optimise_noise = w.first and bool(self.noise_layers) and self.noise is None
        if w.first and self.noise is None:
            def stream() -> torch.Generator:  # frame 0's stream; without a good frame, a fresh one per map
                return w.streams[0] if w.streams else torch.Generator().manual_seed(c.seed)

            noise = (self.init_noise if self.init_noise is not None else
                     [torch.randn(1, 1, layer.resolution, layer.resolution, generator=stream())
                      .to(self.device)
                      for _, layer in self.noise_layers])
            noise = [m.clone() for m in noise] if self.noise_layers else None
        else:
            noise = self.noise
        if self.noise_layers and noise is None:
            raise ValueError("project_frames: no frozen noise maps (state lacks them)")
        return noise, optimise_noise

    def _optimise(self, w: _Window, latents: torch.Tensor, noise: list[torch.Tensor] | None,
                  optimise_noise: bool, callback) -> tuple[torch.Tensor, list[torch.Tensor] | None, int,
                                                           str | None]:
        """4. Optimisation with early stop: Adam on the good frames' latents (and the noise maps on the
        first window), NVIDIA's lr and w-noise ramps, stopping when the landmark term has stopped
        improving. Returns (latents, noise, steps taken, why the window failed or None)."""
        c, G = self.config, self.G
        long = not w.warm  # the long schedule (frame 0 from far away); else the warm-start one
        max_steps = c.steps_first if long else c.steps_next
        steps_taken = 0
        if not w.good or max_steps == 0:
            return latents, noise, steps_taken, None
        latents.requires_grad_(True)
        params = [latents]
        if optimise_noise:
            for m in noise:
                m.requires_grad_(True)
            params += noise
        optimizer = torch.optim.Adam(params, lr=c.learning_rate if long else c.learning_rate_next,
                                     betas=c.adam_betas)
        stop = _EarlyStop(len(w.good), c.early_stop_patience, c.early_stop_tolerance,
                          c.early_stop_min_steps_first if long else c.early_stop_min_steps,
                          # the landmark term is sum_p w_p |p - q| in heatmap pixels: the weighted
                          # mean distance below early_stop_target is the term below target * sum_p w_p
                          target=(c.early_stop_target * float(self.point_weights.sum())
                                  if c.lambda_landmark > 0 else 0.0))
        error = None
        with _frozen_generator(G):
            for step in range(max_steps):
                lr = c.learning_rate_at(step, max_steps, long)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                ws = latents
                std = c.w_noise_factor_at(step, max_steps, long) * self.w_spread
                if std > 0:
                    draw = torch.stack([torch.randn(G.num_ws, G.w_dim, generator=g) for g in w.streams])
                    ws = latents + draw.to(self.device) * std
                with_lpips = long or step % c.lpips_every == 0
                _, _, terms = self._objective(ws, latents, w.prev, noise, w.target, with_lpips,
                                              noise_reg=optimise_noise)
                total = terms["total"]
                if not bool(torch.isfinite(total).all()):
                    bad = [k for k, v in terms.items() if k != "total" and not bool(torch.isfinite(v).all())]
                    error = f"loss became non-finite at step {step} (terms: {', '.join(bad) or 'total'})"
                    break
                optimizer.zero_grad(set_to_none=True)
                total.sum().backward()
                optimizer.step()
                steps_taken = step + 1
                if optimise_noise:
                    normalize_noise_(noise)
                if callback is not None:
                    callback(ProjectionStep([w.frames[j] for j in w.good], step, max_steps,
                                            {k: v.detach() for k, v in terms.items()}))
                if stop.enabled and stop.update(terms.get("landmark", total).detach().cpu(), steps_taken):
                    break
        latents = latents.detach()
        if noise is not None:
            noise = [m.detach() for m in noise]
        return latents, noise, steps_taken, error

    def _evaluate(self, w: _Window, latents: torch.Tensor, noise: list[torch.Tensor] | None,
                  optimise_noise: bool, steps_taken: int, all_points) -> ProjectionResult:
        """5. Final evaluation (no w noise, every term) at the latents the good frames keep; NaN rows
        for the failed ones."""
        G, R, n = self.G, self.resolution, len(w.frames)
        out_latents = torch.full((n, G.num_ws, G.w_dim), float("nan"))
        out_images = torch.full((n, 3, R, R), float("nan"))
        out_points = torch.full((n, NUM_LANDMARKS, 2), float("nan"))
        losses: dict[str, torch.Tensor] = {}
        if w.good:
            with torch.no_grad():
                images, marks, terms = self._objective(latents, latents, w.prev, noise, w.target, True,
                                                       noise_reg=optimise_noise, final=True)
            idx = torch.tensor(w.good)
            out_latents[idx] = latents.cpu()
            out_images[idx] = images.cpu()
            out_points[idx] = marks.float().cpu()
            for k, v in terms.items():
                losses[k] = torch.full((n,), float("nan"))
                losses[k][idx] = v.float().cpu()
        else:
            losses["total"] = torch.full((n,), float("nan"))
        targets = None if all_points is None else all_points[w.rows].float().cpu()
        return ProjectionResult(
            frames=list(w.frames), latents=out_latents, images=out_images, points=out_points, targets=targets,
            losses=losses, steps=torch.tensor([steps_taken if w.failed[j] is None else 0 for j in range(n)]),
            failed=w.failed)

    def _advance(self, w: _Window, latents: torch.Tensor, noise: list[torch.Tensor] | None,
                 optimise_noise: bool) -> None:
        """6. State advance: the chain goes on from the window's last good frame; the noise maps are
        frozen from the first window on."""
        if w.good:
            self.latent_before = latents[-2].clone() if len(w.good) > 1 else self.last_latent
            self.last_latent = latents[-1].clone()
            if optimise_noise:
                self.noise = noise
        self.last_frame = w.frames[-1]


@dataclass
class _Window:
    """One window as the steps of `Projector._project_window` see it."""

    frames: list[int]                   # absolute frame indices
    rows: list[int]                     # their rows in the call's inputs
    first: bool                         # the long schedule (frame 0, or no latent to start from yet)
    failed: list[str | None]            # per frame: why it cannot be projected, or None
    good: list[int]                     # indices (into frames) of the frames projected
    target: torch.Tensor | None         # their coordinate targets or heatmaps
    prev: torch.Tensor | None           # the fixed latent before the window (None on the first)
    streams: list[torch.Generator]      # per good frame, its random numbers: seed + frame
    warm: bool = False                  # warm-started: the later frames' schedule (lr, w noise, steps)


class _EarlyStop:
    """Stop a window once its watched term (per frame) has not improved by `tolerance` (a fraction)
    for `patience` steps on every frame, after at least `min_steps`; patience 0 never stops on that.
    With `target` > 0 also once the term is below `target` on every frame (any step: the target is
    reached)."""

    def __init__(self, n: int, patience: int, tolerance: float, min_steps: int, target: float = 0.0
                 ) -> None:
        self.patience, self.tolerance, self.min_steps, self.target = patience, tolerance, min_steps, target
        self.enabled = patience > 0 or target > 0
        self.best = torch.full((n,), float("inf"))
        self.stale = torch.zeros(n, dtype=torch.long)

    def update(self, watch: torch.Tensor, steps_taken: int) -> bool:
        improved = watch < self.best * (1 - self.tolerance)
        self.best = torch.minimum(self.best, watch)
        self.stale = torch.where(improved, torch.zeros_like(self.stale), self.stale + 1)
        if self.target > 0 and bool((watch < self.target).all()):
            return True
        return (self.patience > 0 and steps_taken >= self.min_steps
                and bool((self.stale >= self.patience).all()))
