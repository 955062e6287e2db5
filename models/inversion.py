"""Optimisation-based GAN inversion into W+ (Choe 2023, section 3.2, with NVIDIA's projector's schedule).

    config = InversionConfig()                               # Choe 2023's weights, 1000 steps
    result = invert(G, targets, config, seeds=frame_ids)     # targets (N, 3, R, R) in [-1, 1]
    result.latents        # (N, num_ws, w_dim)  W+ latents
    result.losses         # {"total": (N,), "mse": (N,), "lpips": (N,), "id": (N,), "dreg": (N,), ...}
    result.failed         # per frame: None, or the reason it failed (its outputs are NaN)

Objective, per frame (docs/inversion.md has the sources):
    lambda_mse * MSE(G(w), I) + lambda_lpips * LPIPS(G(w), I) + lambda_id * (1 - cos(R(G(w)), R(I)))
    + lambda_dreg * sum_i |w_i - w_0|^2 + noise_weight * noise_regularization(noise maps)
with G(w) rendered from w plus a decaying Gaussian "w noise" and from per-frame noise maps that are
optimised too (NVIDIA's projector); W+ starts at the mean w (10,000 mapped z, RandomState(123)) or at
`init` (e.g. the previous frame's latent). Adam, lr 0.1 with a 5 % linear warm-up and a 25 % cosine
ramp-down.

Frames batched together are independent: the loss is a sum over frames and Adam is elementwise, so a
frame's gradient and update involve only its own latent and noise maps; its random numbers (noise-map
init, w noise) come from a torch.Generator seeded with its own seed. A frame's result is the same
whichever frames share its batch, up to float rounding of batched kernels. A frame whose loss becomes
NaN or infinite is frozen and reported failed; the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from models import schedules
from models.losses import (
    PERCEPTUAL_CHOICES,
    IdentityLoss,
    PerceptualLoss,
    delta_regularization,
    noise_regularization,
    normalize_noise_,
)
from models.stylegan2 import Generator, mapped_w_stats

LOSS_TERMS = ("mse", "lpips", "id", "dreg", "noise_reg")
# The terms that measure how well G(w) reproduces the frame (the rest regularise w and the noise maps):
# what the inversion's quality gate (`--max-loss`) judges.
RECONSTRUCTION_TERMS = ("mse", "lpips", "id")


def reconstruction_loss(losses: dict[str, torch.Tensor], config: InversionConfig) -> torch.Tensor:
    """(N,) weighted sum of the reconstruction terms (MSE, LPIPS, identity) of an inversion's final
    `losses`: the total without the delta and noise-map regularisers (the noise regulariser, weighted
    1e5, is most of the total and says nothing about the likeness)."""
    weights = {"mse": config.lambda_mse, "lpips": config.lambda_lpips, "id": config.lambda_id}
    total = torch.zeros_like(losses["total"])
    for name in RECONSTRUCTION_TERMS:
        if name in losses and weights[name] > 0:
            total = total + weights[name] * losses[name]
    return total


@dataclass(frozen=True)
class InversionConfig:
    """Settings of one inversion; `provenance()` is what a cached latent records."""

    steps: int = 1000                   # Adam steps (Choe 2023 and NVIDIA's projector: 1000)
    # loss weights: Choe 2023, eq. 3.5
    lambda_mse: float = 0.1             # pixel MSE, images in [-1, 1]
    lambda_lpips: float = 1.5           # LPIPS
    lambda_id: float = 0.05             # 1 - cosine of identity descriptors
    lambda_dreg: float = 0.002          # delta-regularisation (spread of the W+ layers about w_0)
    perceptual: str = "lpips-vgg"       # a models.losses.PERCEPTUAL_CHOICES key; "uncalibrated" is the
                                        # explicit opt-in to run without the LPIPS backbone weights
    # optimiser and schedule: NVIDIA's projector (stylegan2-ada-pytorch projector.py)
    learning_rate: float = 0.1          # peak Adam learning rate
    lr_rampup: float = 0.05             # fraction of the steps over which lr rises linearly from 0
                                        # (0: no warm-up, the peak from step 0; for a start that is
                                        # close already, e.g. the encoder's prediction)
    lr_rampdown: float = 0.25           # fraction of the steps over which lr falls to 0 (half cosine)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    initial_noise_factor: float = 0.05  # w noise std at step 0, in units of the spread of mapped w
    noise_ramp_length: float = 0.75     # w noise decays quadratically to 0 at this fraction of the steps
    noise_regularize_weight: float = 1e5  # weight of the noise-map regulariser
    optimize_noise: bool = True         # optimise one set of noise maps per frame (else G's noise_const)
    noise_start: str = "random"         # the optimised maps' start: "random" (N(0, 1) from the frame's
                                        # seed, NVIDIA's projector) or "const" (G's noise_const, the
                                        # maps an encoder's training samples were rendered with);
                                        # provenance records it when not "random"
    network_terms_every: int = 1        # evaluate the LPIPS and identity terms (the two networks, most
                                        # of a step on CPU) every k-th step only; the steps between
                                        # reuse their image gradient from the last evaluation (a
                                        # first-order stand-in: MSE and regularisers stay exact). 1 = every
                                        # step (the plain objective); provenance records it when not 1
    plateau_patience: int = 0           # stop the batch once no frame's reconstruction loss (MSE + LPIPS
                                        # + identity, weighted) has improved on its best by more than
                                        # plateau_tolerance (relative) for this many steps; 0 = off (then
                                        # left out of provenance, with plateau_tolerance)
    plateau_tolerance: float = 1e-3     # relative improvement that counts for plateau_patience
    pixel_warmup: float = 0.0           # fraction of `steps` (rounded down; in [0, 1), so the last step
                                        # is always a full one) at the start that skip the LPIPS and
                                        # identity terms: MSE and the regularisers only, a cheap phase
                                        # before the full objective; the schedule stays the one over all
                                        # `steps`, the final losses the full objective's. 0 = off (then
                                        # left out of provenance)
    w_avg_samples: int = 10_000         # z samples for the mean w (the start) and the spread of w
    w_avg_seed: int = 123               # numpy RandomState seed of those samples
    seed: int = 303                     # a frame's random seed when `invert` gets no `seeds`

    def __post_init__(self) -> None:
        if self.perceptual not in PERCEPTUAL_CHOICES:
            raise ValueError(f"perceptual must be one of {', '.join(PERCEPTUAL_CHOICES)}, "
                             f"got {self.perceptual!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        for name in ("lambda_mse", "lambda_lpips", "lambda_id", "lambda_dreg", "noise_regularize_weight",
                     "learning_rate", "initial_noise_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name in ("lr_rampdown", "noise_ramp_length"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0 <= self.lr_rampup <= 1:
            raise ValueError(f"lr_rampup must be in [0, 1], got {self.lr_rampup}")
        for name, least in (("network_terms_every", 1), ("plateau_patience", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if isinstance(self.pixel_warmup, bool) or not isinstance(self.pixel_warmup, (int, float)) \
                or not (math.isfinite(self.pixel_warmup) and 0 <= self.pixel_warmup < 1):
            raise ValueError(f"pixel_warmup must be a fraction in [0, 1), got {self.pixel_warmup!r}")
        if not (math.isfinite(self.plateau_tolerance) and 0 <= self.plateau_tolerance < 1):
            raise ValueError(f"plateau_tolerance must be in [0, 1), got {self.plateau_tolerance}")
        if self.noise_start not in ("random", "const"):
            raise ValueError(f"noise_start must be 'random' or 'const', got {self.noise_start!r}")
        if self.w_avg_samples < 1:
            raise ValueError(f"w_avg_samples must be >= 1, got {self.w_avg_samples}")

    @property
    def calibrated(self) -> bool:
        """False when the perceptual term runs on the uncalibrated (random) LPIPS backbone."""
        return PERCEPTUAL_CHOICES[self.perceptual][2]

    def replace(self, **changes) -> InversionConfig:
        return dataclasses.replace(self, **changes)

    def learning_rate_at(self, step: int) -> float:
        """Adam's learning rate at `step` (0-based): NVIDIA's projector's ramps (models.schedules;
        lr_rampup 0: none up)."""
        return schedules.learning_rate_at(self.learning_rate, step, self.steps, self.lr_rampup,
                                          self.lr_rampdown)

    def w_noise_factor_at(self, step: int) -> float:
        """Std of the w noise at `step`, in units of the spread of mapped w (models.schedules)."""
        return schedules.w_noise_factor_at(self.initial_noise_factor, step, self.steps,
                                           self.noise_ramp_length)

    @property
    def pixel_warmup_steps(self) -> int:
        """The steps of the cheap first phase: `pixel_warmup` of `steps`, rounded down."""
        return math.floor(self.pixel_warmup * self.steps)

    def provenance(self) -> dict:
        """The settings (all of them: each changes the latents) and whether LPIPS was calibrated."""
        from storage.provenance import base_provenance

        record = base_provenance("inversion")
        record["settings"] = dataclasses.asdict(self)
        # options at their plain values are left out: the keys of caches made before they existed hold
        for name, plain in (("network_terms_every", 1), ("noise_start", "random"), ("plateau_patience", 0),
                            ("pixel_warmup", 0)):
            if getattr(self, name) == plain:
                del record["settings"][name]
        if self.plateau_patience == 0:
            del record["settings"]["plateau_tolerance"]
        record["calibrated"] = self.calibrated
        return record


@dataclass
class InversionStep:
    """What `callback(state)` sees after each step. `latents` and `noise` are the live tensors being
    optimised (rows = frames); a callback may read them, or change them under torch.no_grad()."""

    step: int                           # 0-based index of the step just taken
    steps: int                          # total steps
    learning_rate: float
    latents: torch.Tensor               # (N, num_ws, w_dim)
    noise: list[torch.Tensor]           # (N, 1, r, r) per noise layer; empty when not optimised
    losses: dict[str, torch.Tensor]     # this step's per-frame terms and "total", (N,), detached
    active: torch.Tensor                # (N,) bool: frames still being optimised


@dataclass
class InversionResult:
    """Per-frame outputs of `invert`, on the CPU. Failed frames are NaN in every tensor."""

    latents: torch.Tensor                       # (N, num_ws, w_dim) float32
    reconstructions: torch.Tensor               # (N, 3, R, R): G(latents) with the frame's noise maps
    losses: dict[str, torch.Tensor]             # "total" and each term with a weight > 0, (N,), at the end
    failed: list[str | None]                    # per frame: None, or why it failed
    noise: list[torch.Tensor] = field(default_factory=list)  # optimised (N, 1, r, r) maps, or []
    steps: int = 0

    @property
    def ok(self) -> torch.Tensor:
        """(N,) bool: frames that finished."""
        return torch.tensor([reason is None for reason in self.failed])

    def frame_losses(self, i: int) -> dict[str, float]:
        return {name: float(values[i]) for name, values in self.losses.items()}


# ---------------------------------------------------------------------------------------------------


class InversionLosses:
    """The loss networks one config needs, on one device (built once, reused across calls)."""

    def __init__(self, config: InversionConfig, device: str | torch.device = "cpu") -> None:
        self.perceptual = (PerceptualLoss.from_choice(config.perceptual).to(device)
                           if config.lambda_lpips > 0 else None)
        self.identity = IdentityLoss().to(device) if config.lambda_id > 0 else None
        self.perceptual_choice = config.perceptual

    def provenance(self) -> dict:
        record = {}
        if self.perceptual is not None:
            record["perceptual"] = self.perceptual.provenance()
        if self.identity is not None:
            record["identity"] = self.identity.provenance()
        return record


_LOSSES_CACHE: dict[tuple, InversionLosses] = {}


def inversion_losses(config: InversionConfig, device: str | torch.device = "cpu") -> InversionLosses:
    """InversionLosses for `config` on `device`, memoised (the nets are frozen, so sharing is safe)."""
    key = (config.perceptual if config.lambda_lpips > 0 else None, config.lambda_id > 0, str(device))
    if key not in _LOSSES_CACHE:
        _LOSSES_CACHE[key] = InversionLosses(config, device)
    return _LOSSES_CACHE[key]


def inversion_provenance(G: Generator, config: InversionConfig, losses: InversionLosses | None = None
                         ) -> dict:
    """Everything a cached latent depends on: settings, the generator's fingerprint, the loss nets."""
    losses = losses if losses is not None else inversion_losses(config, G.w_avg.device)
    record = config.provenance()
    record["generator"] = G.fingerprint()
    if not G.synthesis.noise_layers():  # StyleGAN3: optimize_noise and the noise regulariser do nothing
        record["noise_maps"] = "none: the generator has no noise inputs"
    record["losses"] = losses.provenance()
    return record


# ---------------------------------------------------------------------------------------------------


def invert(
    G: Generator,
    targets: torch.Tensor,                          # (N, 3, R, R) in [-1, 1], R = G.img_resolution
    config: InversionConfig | None = None,
    init: torch.Tensor | None = None,               # (N, num_ws, w_dim) start latents; None = mean w
    landmarks: torch.Tensor | None = None,          # (N, 68, 2) targets' landmarks (crop pixels), for
                                                    # the identity chips; None = FFHQ mean face
    seeds: Sequence[int] | None = None,             # per-frame seeds; None = config.seed for every frame
    callback: Callable[[InversionStep], None] | None = None,  # called after every step
    losses: InversionLosses | None = None,          # prebuilt loss nets (default: memoised per device)
) -> InversionResult:
    """Invert a batch of aligned face crops into W+ on G's device. See the module docstring.

    Reads top to bottom in four steps: (1) inputs checked, frames with unusable inputs marked failed;
    (2) start latents and per-frame noise maps; (3) Adam under NVIDIA's ramps, freezing frames whose
    loss becomes non-finite and stopping early when none is left; (4) the final evaluation.
    """
    config = config if config is not None else InversionConfig()
    device = G.w_avg.device
    n = _check_inputs(G, targets, init, landmarks, seeds)
    seeds = [config.seed] * n if seeds is None else [int(s) for s in seeds]
    losses = losses if losses is not None else inversion_losses(config, device)

    # 1. Inputs. Frames with unusable inputs fail now; they stay in the batch (rows = frames) with
    #    stand-in inputs and frozen parameters, so that every tensor keeps the caller's frame order.
    failed: list[str | None] = [None] * n
    targets, landmarks = _usable_targets(targets, landmarks, failed, device)
    w_avg, w_spread = _w_stats(G, config)
    start = _start_latents(G, w_avg, init, failed, device)

    # 2. Parameters: the start latents and, per frame, noise maps drawn from the frame's own stream
    #    (on the CPU: the same numbers on every device and batch size).
    streams = [torch.Generator().manual_seed(s) for s in seeds]
    latents = start.requires_grad_(True)
    noise = _initial_noise(G, config, streams, device)

    objective = _Objective(G, config, losses, targets, landmarks)
    with _frozen_generator(G):
        # 3. Optimisation, with early stop once every frame has failed.
        _optimize(G, config, objective, latents, noise, streams, w_spread, failed, callback)
        # 4. Evaluation: the final reconstructions and loss terms, without w noise.
        with torch.no_grad():
            images, terms = objective(latents, latents, noise)
    return _result(config, latents, noise, images, terms, failed)


def _usable_targets(
    targets: torch.Tensor,                  # (N, 3, R, R) in [-1, 1]
    landmarks: torch.Tensor | None,         # (N, 68, 2) or None
    failed: list[str | None],               # per frame; frames with non-finite inputs get a reason
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets and landmarks on `device` as float32, non-finite rows replaced by zeros (their frames
    marked failed). ValueError for targets outside [-1, 1] by far ([0, 255] given by mistake)."""
    targets = targets.detach().to(device, torch.float32)
    for i in torch.nonzero(~_finite_rows(targets)).flatten().tolist():
        failed[i] = "target has non-finite pixels"
    targets = torch.where(_finite_rows(targets)[:, None, None, None], targets, torch.zeros_like(targets))
    if float(targets.abs().max()) > 64:  # a common slip: [0, 255] instead of [-1, 1]
        raise ValueError(f"invert: targets must be in [-1, 1], got values up to "
                         f"{float(targets.abs().max()):g}")
    if landmarks is not None:
        landmarks = landmarks.detach().to(device, torch.float32)
        bad = ~_finite_rows(landmarks)
        for i in torch.nonzero(bad).flatten().tolist():
            failed[i] = failed[i] or "landmarks have non-finite values"
        landmarks = torch.where(bad[:, None, None], landmarks.nan_to_num(0.0), landmarks)
    return targets, landmarks


def _start_latents(G: Generator, w_avg: torch.Tensor, init: torch.Tensor | None, failed: list[str | None],
                   device: torch.device) -> torch.Tensor:
    """(N, num_ws, w_dim): `init`'s rows where finite (others fail), else the mean w."""
    start = w_avg.expand(len(failed), G.num_ws, G.w_dim).clone()
    if init is not None:
        init = init.detach().to(device, torch.float32)
        for i in torch.nonzero(~_finite_rows(init)).flatten().tolist():
            failed[i] = failed[i] or "initial latent has non-finite values"
        start = torch.where(_finite_rows(init)[:, None, None], init, start)
    return start


def _initial_noise(G: Generator, config: InversionConfig, streams: list[torch.Generator],
                   device: torch.device) -> list[torch.Tensor]:
    """One (N, 1, r, r) N(0, 1) map per noise layer, row i from frame i's stream (noise_start "const":
    G's noise_const for every row), requiring grad; [] when the noise maps are not optimised (or G has
    none)."""
    noise_layers = G.synthesis.noise_layers() if config.optimize_noise else []
    if config.noise_start == "const":
        return [layer.noise_const.detach().to(device, torch.float32).expand(len(streams), 1, -1, -1).clone()
                .requires_grad_(True) for _, layer in noise_layers]
    return [torch.stack([torch.randn(1, layer.resolution, layer.resolution, generator=g) for g in streams])
            .to(device).requires_grad_(True) for _, layer in noise_layers]


def _optimize(
    G: Generator,
    config: InversionConfig,
    objective: _Objective,
    latents: torch.Tensor,                  # (N, num_ws, w_dim), optimised in place
    noise: list[torch.Tensor],              # (N, 1, r, r) per noise layer, optimised in place
    streams: list[torch.Generator],         # per frame: its w-noise draws
    w_spread: float,                        # spread of mapped w: the unit of the w noise
    failed: list[str | None],               # per frame; a frame whose loss turns non-finite gets a reason
    callback: Callable[[InversionStep], None] | None,
) -> None:
    """`config.steps` Adam steps on the latents and noise maps. A frame whose loss becomes non-finite
    is frozen at its last values (its gradient zeroed, its parameters restored after each step); the
    loop stops early once no frame is left."""
    device = latents.device
    active = torch.tensor([reason is None for reason in failed], device=device)
    params = [latents, *noise]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, betas=config.adam_betas)
    frozen = [param.detach().clone() for param in params]  # last values of frames that failed
    best = torch.full(active.shape, math.inf, device=device)  # plateau_patience: each frame's best loss
    stale = torch.zeros(active.shape, dtype=torch.long, device=device)  # steps since it improved
    for step in range(config.steps if bool(active.any()) else 0):
        # learning rate and w noise: NVIDIA's ramps (models.schedules)
        lr = config.learning_rate_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ws = latents
        noise_std = config.w_noise_factor_at(step) * w_spread
        if noise_std > 0:
            w_noise = torch.stack([torch.randn(G.num_ws, G.w_dim, generator=g) for g in streams])
            ws = latents + w_noise.to(device) * noise_std
        if step < config.pixel_warmup_steps:  # the cheap phase: MSE and the regularisers only
            _, terms = objective(ws, latents, noise, networks=False)
        elif config.network_terms_every > 1:
            terms = objective.lagged(ws, latents, noise, refresh=step % config.network_terms_every == 0)
        else:
            _, terms = objective(ws, latents, noise)
        total = terms["total"]

        # frames whose loss is no longer finite fail here and are frozen from now on
        finite = torch.isfinite(total)
        if not bool(finite[active].all()):
            for i in torch.nonzero(active & ~finite).flatten().tolist():
                bad_terms = [k for k, v in terms.items()
                             if k != "total" and not math.isfinite(float(v[i].detach()))]
                failed[i] = (f"loss became {float(total[i].detach())} at step {step} "
                             f"(terms: {', '.join(bad_terms) or 'total'})")
            active = active & finite

        # the Adam step on the active frames; the frozen ones keep their last values
        optimizer.zero_grad(set_to_none=True)
        torch.where(active, total, torch.zeros_like(total)).sum().backward()
        with torch.no_grad():
            for param, keep in zip(params, frozen, strict=True):
                if param.grad is not None:
                    param.grad[~active] = 0
                keep[active] = param[active]
        optimizer.step()
        with torch.no_grad():
            if noise:
                normalize_noise_(noise)
            for param, keep in zip(params, frozen, strict=True):  # failed frames stay as they were
                param[~active] = keep[~active]

        if callback is not None:
            callback(InversionStep(step, config.steps, lr, latents, noise,
                                   {k: v.detach() for k, v in terms.items()}, active.clone()))
        if not bool(active.any()):  # early stop: every frame has failed
            break
        # early stop: no frame improves any more (counted from the full objective's first step)
        if config.plateau_patience > 0 and step >= config.pixel_warmup_steps:
            with torch.no_grad():
                loss = reconstruction_loss({k: v.detach() for k, v in terms.items()}, config)
                improved = loss < best * (1 - config.plateau_tolerance)
                best = torch.where(improved, loss, best)
                stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
            if bool((stale[active] >= config.plateau_patience).all()):
                break


def _result(config: InversionConfig, latents: torch.Tensor, noise: list[torch.Tensor], images: torch.Tensor,
            terms: dict[str, torch.Tensor], failed: list[str | None]) -> InversionResult:
    """The outputs on the CPU; a frame whose final loss is not finite fails too, and failed frames are
    NaN in every tensor."""
    for i in torch.nonzero(~torch.isfinite(terms["total"])).flatten().tolist():
        failed[i] = failed[i] or f"final loss is {float(terms['total'][i])}"
    bad = torch.tensor([reason is not None for reason in failed])

    def out(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to("cpu", torch.float32).clone()
        t[bad] = float("nan")
        return t

    return InversionResult(
        latents=out(latents), reconstructions=out(images),
        losses={name: out(values) for name, values in terms.items()},
        failed=failed, noise=[out(v) for v in noise], steps=config.steps)


class _Objective:
    """The per-frame loss terms for fixed targets (their LPIPS features and identity descriptors are
    computed once)."""

    def __init__(self, G: Generator, config: InversionConfig, losses: InversionLosses,
                 targets: torch.Tensor, landmarks: torch.Tensor | None) -> None:
        self.G, self.config, self.losses = G, config, losses
        self.targets, self.landmarks = targets, landmarks
        self.network_grad: torch.Tensor | None = None   # lagged(): d(weighted network terms)/d(image)
        self.network_values: dict[str, torch.Tensor] = {}  # lagged(): their values at that evaluation
        with torch.no_grad():
            self.target_features = (losses.perceptual.features(targets)
                                    if config.lambda_lpips > 0 else None)
            self.target_identity = (losses.identity.embed(targets, landmarks)
                                    if config.lambda_id > 0 else None)

    def __call__(self, ws: torch.Tensor, latents: torch.Tensor, noise: list[torch.Tensor],
                 networks: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(G(ws), the terms and their weighted "total"); `networks` False leaves out the LPIPS and
        identity terms (the pixel_warmup phase)."""
        images = self.G.synthesis(ws, noise=noise or None)
        return images, self._weighted(images, latents, noise, None if networks else {})

    def lagged(self, ws: torch.Tensor, latents: torch.Tensor, noise: list[torch.Tensor], refresh: bool
               ) -> dict[str, torch.Tensor]:
        """The terms for `network_terms_every` > 1. With `refresh` the LPIPS and identity terms are
        evaluated on G(ws) (detached) and their weighted image gradient kept; otherwise the last
        values and gradient stand in. "total" has the value MSE + regularisers + the network terms'
        (last) values, and the gradient of MSE + regularisers + <kept image gradient, G(ws)>; on a
        refresh step that is the full objective's gradient (summed in another order)."""
        images = self.G.synthesis(ws, noise=noise or None)
        if refresh or self.network_grad is None:
            probe = images.detach().requires_grad_(True)
            values = self._network_terms(probe)
            weighted = torch.zeros(images.shape[0], device=images.device)
            for name, value in values.items():
                weighted = weighted + self._weight(name) * value
            grad = (torch.autograd.grad(weighted.sum(), probe)[0] if weighted.requires_grad
                    else torch.zeros_like(probe))
            self.network_grad = grad.detach()
            self.network_values = {k: v.detach() for k, v in values.items()}
        terms = self._weighted(images, latents, noise, self.network_values)
        linear = (self.network_grad * images).sum(dim=(1, 2, 3))
        terms["total"] = terms["total"] + (linear - linear.detach())
        return terms

    def _network_terms(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms computed by a network (most of a step's cost): LPIPS and identity, where weighted."""
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        if c.lambda_lpips > 0:
            terms["lpips"] = self.losses.perceptual.distance(images, self.target_features)
        if c.lambda_id > 0:
            terms["id"] = self.losses.identity(images, self.target_identity, self.landmarks)
        return terms

    def _weight(self, name: str) -> float:
        c = self.config
        return {"mse": c.lambda_mse, "lpips": c.lambda_lpips, "id": c.lambda_id, "dreg": c.lambda_dreg,
                "noise_reg": c.noise_regularize_weight}[name]

    def _weighted(self, images: torch.Tensor, latents: torch.Tensor, noise: list[torch.Tensor],
                  network_terms: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Every term and their weighted "total", summed in term order; the network terms as given, or
        (None) evaluated on `images` here, after MSE: the order the terms enter the graph is the order
        backward accumulates their gradients in, which the w_avg path keeps bitwise."""
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        if c.lambda_mse > 0:
            terms["mse"] = (images - self.targets).square().mean(dim=(1, 2, 3))
        terms.update(self._network_terms(images) if network_terms is None else network_terms)
        if c.lambda_dreg > 0:
            terms["dreg"] = delta_regularization(latents)
        if noise and c.noise_regularize_weight > 0:
            terms["noise_reg"] = noise_regularization(noise)
        total = torch.zeros(images.shape[0], device=images.device)
        for name, value in terms.items():
            total = total + self._weight(name) * value
        terms["total"] = total
        return terms


_W_STATS_CACHE: dict[tuple, tuple[torch.Tensor, float]] = {}


def _w_stats(G: Generator, config: InversionConfig) -> tuple[torch.Tensor, float]:
    """mapped_w_stats for the config's samples, memoised per generator weights and device (a batch job
    calls invert once per batch; 10,000 mapping passes each time would be waste)."""
    key = (G.weights_sha256(), str(G.w_avg.device), config.w_avg_samples, config.w_avg_seed)
    if key not in _W_STATS_CACHE:
        if len(_W_STATS_CACHE) >= 8:
            _W_STATS_CACHE.clear()
        _W_STATS_CACHE[key] = mapped_w_stats(G, config.w_avg_samples, config.w_avg_seed)
    return _W_STATS_CACHE[key]


@contextlib.contextmanager
def _frozen_generator(G: Generator) -> Iterator[None]:
    """Gradients go to the latents only: G's parameters are switched off for the call and restored."""
    flags = [p.requires_grad for p in G.parameters()]
    G.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(G.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t).flatten(1).all(dim=1)


def _check_inputs(G: Generator, targets: torch.Tensor, init: torch.Tensor | None,
                  landmarks: torch.Tensor | None, seeds: Sequence[int] | None) -> int:
    r = G.img_resolution
    if targets.ndim != 4 or tuple(targets.shape[1:]) != (G.img_channels, r, r) or targets.shape[0] < 1:
        raise ValueError(f"invert: targets must be (N, {G.img_channels}, {r}, {r}) in [-1, 1], got "
                         f"{tuple(targets.shape)}")
    if not targets.is_floating_point():
        raise ValueError(f"invert: targets must be float in [-1, 1], got {targets.dtype}")
    n = targets.shape[0]
    if init is not None and tuple(init.shape) != (n, G.num_ws, G.w_dim):
        raise ValueError(f"invert: init must be ({n}, {G.num_ws}, {G.w_dim}), got {tuple(init.shape)}")
    if landmarks is not None and tuple(landmarks.shape) != (n, 68, 2):
        raise ValueError(f"invert: landmarks must be ({n}, 68, 2), got {tuple(landmarks.shape)}")
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"invert: {len(seeds)} seeds for {n} frames")
    return n
