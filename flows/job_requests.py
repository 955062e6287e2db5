"""What a user asks a job for: one frozen request per job kind, validated once, in this module.

    ReenactRequest        `facereenact run`, each job of a batch manifest, the reenact flow
    InvertRequest         `facereenact invert`, the dataset inversion flow
    TrainMappingRequest   `facereenact train-mapping`, the mapping training flow

A request is built by the CLI (from its arguments), by a batch manifest (storage/manifests.py parses
the manifest, flows/batch.py makes each job a ReenactRequest), by a flow (from its keyword arguments,
so a deployment or a task that calls the flow is held to the same rules) and by `facereenact resume`
(from the job record, which stores the request's JSON: `to_record()` / `from_record()`). Constructing
one checks everything that needs no model (choices, types, numeric ranges, which settings go with
which mode) and raises a one-line InputError; `check_settings()` then checks the settings against
the config dataclasses themselves (ProjectionConfig, InversionConfig, the mapping settings), which
needs the models (it imports torch), so callers do it once the cheap checks and their files passed.

Defaults exist once. Those of the config dataclasses (InversionConfig.steps, its seed and
perceptual loss; ProjectionConfig's steps_first / steps_next; the mapping training's settings) are
read here from the dataclasses' source text (`config_defaults`), not copied and not imported: this
module, like the CLI's parser that uses it, must not load torch (`--help` and argument errors come
back in well under two seconds). The reenact modes are read the same way, as the keys of
flows/reenact.py REENACTORS, so a new mode is one row there. tests/test_job_requests.py checks the text
reading against the imported dataclasses and registry, and the CLI's help against both.

This module imports neither torch nor Prefect (at import time, nor in the constructors). It is not
called `requests`: Prefect loads a deployment's flow file as a script with flows/ on sys.path, where a
flows/requests.py would shadow the `requests` package (tests/test_deployment.py fails then).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from storage.errors import InputError
from storage.limits import MAX_STEPS

__all__ = ["DEFAULT_WEIGHTS", "ENCODER_INVERSION", "ENCODER_TRAINING", "INIT_CHOICES", "INVERSION",
           "MAPPING_TRAINING", "MODES", "PROJECTION", "REQUEST_FORMAT",
           "check_mode",
           "InvertRequest", "ReenactRequest", "TrainMappingRequest", "check_numbers", "config_defaults",
           "inversion_steps", "start_encoder"]

# Version of the JSON a job record stores under "request" (records without it are read the old way).
REQUEST_FORMAT = 1
DEFAULT_WEIGHTS = "ffhq-1024"  # the generator every command uses without --weights


# ------------------------------------------------------------------------------------------------------
# Defaults read from the config dataclasses' source


@functools.cache
def _module_tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {module}")
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def _assigned(tree: ast.Module, name: str) -> ast.expr | None:
    """The value a module assigns to `name` at its top level, or None."""
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else \
            node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return node.value
    return None


def _imported_from(tree: ast.Module, name: str) -> str | None:
    """The module `name` is imported from (`from models.x import name`), when the module does so."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level and \
                any((alias.asname or alias.name) == name and alias.name == name for alias in node.names):
            return node.module
    return None


@functools.cache
def config_defaults(module: str, name: str) -> Mapping[str, Any]:
    """The literal defaults of class `name` of `module` ({field: default}), or of a module-level dict
    constant `name`, read from the source without importing it (fields whose default is not a literal,
    e.g. a named constant, are left out; a name the module imports from another is followed there). A
    missing class is an ImportError: a renamed config must fail loudly here, not fall back to a copy."""
    tree = _module_tree(module)
    origin = _imported_from(tree, name)
    if origin is not None:
        return config_defaults(origin, name)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            defaults = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value:
                    try:
                        defaults[item.target.id] = ast.literal_eval(item.value)
                    except ValueError:
                        continue
            return defaults
    value = _assigned(tree, name)
    if value is None:
        raise ImportError(f"{module} defines no {name}")
    return ast.literal_eval(value)


@functools.cache
def registry_names(module: str, name: str) -> tuple[str, ...]:
    """The literal keys of the module-level dict `name` of `module` (a registry such as REENACTORS), in
    order, read from the source without importing it."""
    value = _assigned(_module_tree(module), name)
    if not isinstance(value, ast.Dict):
        raise ImportError(f"{module} defines no dict {name}")
    return tuple(ast.literal_eval(key) for key in value.keys if key is not None)


# The config dataclasses (and the mapping training's settings) whose defaults the requests and the
# CLI use. A class that moves: change its module here (tests/test_job_requests.py fails until then).
INVERSION = ("models.inversion", "InversionConfig")
ENCODER_INVERSION = ("stages.encoder_init", "EncoderInversionConfig")  # its own steps (the refinement's)
PROJECTION = ("models.projection", "ProjectionConfig")
MAPPING_TRAINING = ("tasks.train_mapping", "DEFAULT_SETTINGS")
ENCODER_TRAINING = ("stages.train_encoder", "DEFAULT_SETTINGS")  # `facereenact train-encoder`'s defaults


def default_of(config: tuple[str, str], name: str) -> Any:
    """One default of a config dataclass (see `config_defaults`)."""
    return config_defaults(*config)[name]


def inversion_steps(encoder: str | None) -> int:
    """The default steps of an inversion: InversionConfig's from the mean w, EncoderInversionConfig's
    (the refinement's) from an encoder's prediction."""
    return int(default_of(ENCODER_INVERSION if encoder else INVERSION, "steps"))


# ------------------------------------------------------------------------------------------------------
# Checks shared by every request


MODES = registry_names("flows.reenact", "REENACTORS")  # a new mode is a row there, nothing here
INIT_CHOICES = ("w_avg", "encoder")  # where an inversion starts: the mean w, an encoder's prediction
VARIANTS = ("identity", "free")    # models/reenact.py VARIANTS
LAYOUTS = ("result", "side-by-side")  # storage/render.py LAYOUTS
LANDMARKS = ("faceapi", "fan")     # models/landmarks backends
LANDMARK_FORMS = ("coordinates", "heatmaps")  # models/projection.py LANDMARK_FORMS
LANDMARK_INPUTS = ("unit", "minmax")          # models/projection.py LANDMARK_INPUTS
DETECTORS = ("ssd", "haar")        # models/detection.py DETECTORS
DEFAULT_DETECTOR = "ssd"           # models/detection.py DEFAULT_DETECTOR
# The LPIPS choices of the command line and the config value each stands for.
PERCEPTUAL = {"lpips": "lpips-vgg", "lpips-alex": "lpips-alex", "uncalibrated": "uncalibrated",
              "uncalibrated-alex": "uncalibrated-alex"}


def _choice(value: Any, known: tuple[str, ...], what: str) -> None:
    if value not in known:
        raise InputError(f"unknown {what} {value!r} (known: {', '.join(known)})")


def check_mode(mode: Any) -> None:
    """A reenactment mode this installation has (MODES), else an InputError."""
    _choice(mode, MODES, "mode")


def _encoder_path(value: Any, what: str) -> str:
    """An encoder checkpoint's path, made absolute (a resumed job finds it from any folder). Whether it
    is a usable encoder of the generator is checked with the generator (stages/encoder_init.py)."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{what}: expected an encoder checkpoint path, got {value!r}")
    return str(Path(value).expanduser().resolve())


def start_encoder(init: Any, encoder: Any) -> str | None:
    """The encoder checkpoint an inversion starts from (absolute), or None for the mean w: `init`
    (INIT_CHOICES, the CLI's --init) and `encoder` (--encoder) must go together."""
    if init not in INIT_CHOICES:
        raise InputError(f"unknown --init {init!r} (known: {', '.join(INIT_CHOICES)})")
    if init == "encoder" and not encoder:
        raise InputError("--init encoder needs --encoder PATH (facereenact train-encoder --out PATH "
                         "makes one)")
    if init != "encoder" and encoder:
        raise InputError("--encoder is used with --init encoder only")
    return None if encoder is None else _encoder_path(encoder, "--encoder")


def _integer(value: Any, name: str, least: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{name} must be an integer >= {least}, got {value!r}")


def _at_least(value: Any, option: str, least: int = 1) -> None:
    """A count with the CLI's wording (`--steps must be >= 1, got 0`)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"--{option.replace('_', '-')} must be >= {least}, got {value}")


def check_numbers(options: Mapping[str, Any], where: str = "") -> None:
    """Numbers in a settings mapping: finite (JSON and YAML both spell NaN and infinity), and any
    `...steps...` count a whole number in [0, MAX_STEPS] (10**12 steps would run for ever)."""
    prefix = f"{where}: " if where else ""

    def check(key: str, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, dict):
            for k, v in value.items():
                check(f"{key}.{k}", v)
        elif isinstance(value, list | tuple):
            for v in value:
                check(key, v)
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{prefix}{key} must be a finite number, got {value}")
        elif "steps" in key.rsplit(".", 1)[-1] and isinstance(value, int | float) and \
                (value != int(value) or not 0 <= value <= MAX_STEPS):
            raise InputError(f"{prefix}{key} must be a whole number of steps in [0, {MAX_STEPS}], "
                             f"got {value}")

    for name, value in options.items():
        if not isinstance(name, str):
            raise InputError(f"{prefix}option names must be strings, got {name!r}")
        check(name, value)


class _Request:
    """JSON in and out of a job record: `to_record()` is what the record stores under "request"."""

    KIND = ""

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.KIND, "format": REQUEST_FORMAT, **asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_record(cls, data: Mapping[str, Any], where: str = "job record"):  # noqa: ANN206
        """The request a record's "request" holds; an unknown format or field is an InputError
        (a record written by a newer facereenact), not a guess (callers add: rerun its command)."""
        if not isinstance(data, Mapping) or data.get("kind") != cls.KIND:
            raise InputError(f"{where}: not a {cls.KIND} request")
        if data.get("format") != REQUEST_FORMAT:
            raise InputError(f"{where}: request format {data.get('format')!r} is not this version's "
                             f"({REQUEST_FORMAT})")
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in data.items() if k not in ("kind", "format")}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"{where}: unknown request field(s) {unknown}")
        return cls(**values)


# ------------------------------------------------------------------------------------------------------
# Reenactment


# Keyword arguments of the reenact flow that are the job's and not its mode's, with their types.
JOB_KEYWORDS: dict[str, type] = {"variant": str, "layout": str, "paste_back": bool, "subframes": bool,
                                 "detector": str, "face_index": int, "source_face_index": int}
# Settings of a reenactment that are not the mode's: the source inversion's steps and start (an encoder
# checkpoint: the inversion refines its prediction).
SOURCE_INVERSION = ("invert_steps", "invert_encoder")
# Settings only mode "mapping" takes.
MAPPING_ONLY = ("mapping", "refine_steps")


@dataclass(frozen=True)
class ReenactRequest(_Request):
    """One reenactment: the face of `source` (a photo) performs the motion of `driving` (a video)
    into `output`.

    mode:       how the latents are made (MODES; flows/reenact.py REENACTORS)
    variant:    "identity" (keep the source's look) or "free" (landmarks only)
    layout, paste_back, subframes: how the video is drawn (storage/render.py)
    detector, face_index, source_face_index: which face of each input
    settings:   the mode's settings (ProjectionConfig fields such as steps_first; mode "mapping":
                mapping, refine_steps, mapping_batch), `invert_steps` (the source inversion's
                steps, default InversionConfig.steps; it uses the same `perceptual`) and
                `invert_encoder` (an encoder checkpoint: the source inversion refines its prediction,
                default steps EncoderInversionConfig.steps)
    preview:    the preview PNG (default OUTPUT.preview.png)
    """

    KIND = "reenact"

    source: str
    driving: str
    output: str
    mode: str = "projection"
    variant: str = "identity"
    layout: str = "result"
    paste_back: bool = False
    subframes: bool = False
    detector: str = DEFAULT_DETECTOR
    face_index: int = 0
    source_face_index: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)
    preview: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "driving", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InputError(f"{name}: expected a path, got {getattr(self, name)!r}")
        check_mode(self.mode)
        for name, kind in JOB_KEYWORDS.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise InputError(f"{name} must be a {kind.__name__}, got {value!r}")
        _choice(self.variant, VARIANTS, "variant")
        _choice(self.layout, LAYOUTS, "layout")
        _choice(self.detector, DETECTORS, "detector")
        for name in ("face_index", "source_face_index"):
            _integer(getattr(self, name), name)
        if not isinstance(self.settings, Mapping):
            raise InputError(f"settings: expected a mapping, got {type(self.settings).__name__}")
        object.__setattr__(self, "settings", dict(self.settings))
        check_numbers(self.settings)
        taken = sorted(set(self.settings) & (set(JOB_KEYWORDS) | {"preview"}))
        if taken:
            raise InputError(f"{taken[0]!r} is a field of the request, not a mode setting")
        if "invert_steps" in self.settings:
            _integer(self.settings["invert_steps"], "invert_steps")
        if "invert_encoder" in self.settings:
            self.settings["invert_encoder"] = _encoder_path(self.settings["invert_encoder"], "invert_encoder")
        if self.mode != "mapping" and set(MAPPING_ONLY) & set(self.settings):
            raise InputError("--mapping and --refine-steps are settings of --mode mapping")
        if self.mode != "directions" and "directions" in self.settings:  # the mode's own check asks for it
            raise InputError("--directions is a setting of --mode directions")
        self._check_landmark_objective()

    def _check_landmark_objective(self) -> None:
        """The projection's landmark settings: `landmark_form`, `landmark_input`, `fan_flip`."""
        form = self.settings.get("landmark_form", "coordinates")
        _choice(form, LANDMARK_FORMS, "landmark form")
        _choice(self.settings.get("landmark_input", "unit"), LANDMARK_INPUTS, "landmark input")
        if not isinstance(self.settings.get("fan_flip", False), bool):
            raise InputError(f"fan_flip must be true or false, got {self.settings['fan_flip']!r}")
        if form == "heatmaps" and self.settings.get("relative_landmarks"):
            raise InputError("--landmark-form heatmaps has absolute targets (the driving crops' heatmaps): "
                             "relative_landmarks must be off")

    def check_landmarks(self, landmarks: str) -> None:
        """The landmark settings against the landmark backend the job runs with (`--landmarks`): the
        heatmap form and the flip are FAN's."""
        if self.settings.get("landmark_form") == "heatmaps" and landmarks != "fan":
            raise InputError(f"--landmark-form heatmaps needs --landmarks fan (FAN's heatmaps; the "
                             f"{landmarks} backend has none)")
        if "fan_flip" in self.settings and landmarks != "fan":
            raise InputError(f"--fan-flip/--no-fan-flip is a setting of --landmarks fan, not {landmarks}")

    @classmethod
    def from_options(cls, source: str, driving: str, output: str, mode: str = "projection",
                     options: Mapping[str, Any] | None = None) -> ReenactRequest:
        """The request of the reenact flow's keyword arguments (`options`: the job keywords, `preview`
        and the mode's settings, flat, as `reenact(**options)`, a batch job's options and job records
        before REQUEST_FORMAT take them)."""
        options = dict(options or {})
        keywords = {name: options.pop(name) for name in (*JOB_KEYWORDS, "preview") if name in options}
        return cls(str(source), str(driving), str(output), mode, **keywords, settings=options)

    @property
    def invert_steps(self) -> int:
        """The source inversion's steps (unless set: InversionConfig.steps, or EncoderInversionConfig.steps
        with an encoder)."""
        return int(self.settings.get("invert_steps", inversion_steps(self.invert_encoder)))

    @property
    def invert_encoder(self) -> str | None:
        """The encoder checkpoint the source inversion starts from (None: the mean w)."""
        return self.settings.get("invert_encoder")

    @property
    def perceptual(self) -> str:
        """The LPIPS backbone of the projection and of the source's inversion."""
        return str(self.settings.get("perceptual", default_of(PROJECTION, "perceptual")))

    def mode_settings(self) -> dict[str, Any]:
        """The settings the mode's check and run take (without the source inversion's)."""
        return {k: v for k, v in self.settings.items() if k not in SOURCE_INVERSION}

    def options(self) -> dict[str, Any]:
        """The flat keyword arguments of the reenact flow (job keywords + settings), as job ids and
        job records before REQUEST_FORMAT hold them."""
        keywords = {name: getattr(self, name) for name in JOB_KEYWORDS}
        return {**keywords, **({"preview": self.preview} if self.preview else {}), **self.settings}

    def check_settings(self) -> None:
        """The settings against the configs themselves: the mode's (ProjectionConfig, the mapping
        settings) and the source inversion's (InversionConfig). Imports the models (torch)."""
        from flows.reenact import REENACTORS
        from models.inversion import InversionConfig

        REENACTORS[self.mode].check(self.variant, self.mode_settings())
        try:
            InversionConfig(steps=self.invert_steps, perceptual=self.perceptual)
        except ValueError as err:
            raise InputError(f"bad source inversion settings: {err}") from None

    def check_models(self, G: Any, landmarks: str = "faceapi") -> None:
        """The mode's models against the generator `G` and the landmark backend (e.g. a mapping network
        or directions file made for another one)."""
        from flows.reenact import REENACTORS

        check_model = REENACTORS[self.mode].check_model
        if check_model is not None:
            check_model(G, self.mode_settings(), landmarks)
        if self.invert_encoder is not None:  # a missing, broken or foreign encoder: one line
            from models.inversion import InversionConfig
            from stages.encoder_init import encoder_config

            encoder_config(InversionConfig(), self.invert_encoder, G)


# ------------------------------------------------------------------------------------------------------
# Dataset inversion


LOSS_WEIGHTS = ("lambda_mse", "lambda_lpips", "lambda_id", "lambda_dreg")  # InversionConfig fields


@dataclass(frozen=True)
class InvertRequest(_Request):
    """Every frame of the videos of `dataset` (folder, glob, CSV or JSONL manifest) into W+.

    steps, perceptual, loss_weights ({"lambda_mse": ..., ...}), seed: InversionConfig settings (its
    defaults; `steps` None: the start's default); init: "w_avg" (the generator's mean w) or "encoder"
    (the prediction of the encoder checkpoint `encoder`, refined by `steps`: EncoderInversionConfig,
    stages/encoder_init.py, its own defaults; 0 steps = the prediction as it is); batch_size: frames
    per fixed batch; max_loss: the quality gate (a frame whose final reconstruction loss is above it
    fails; not part of the provenance); landmarks, face_index, detector: the prepare stage's.
    """

    KIND = "invert"

    dataset: str
    steps: int | None = None  # None: inversion_steps(encoder), resolved (and recorded) on construction
    batch_size: int = 4
    perceptual: str = default_of(INVERSION, "perceptual")
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    seed: int = default_of(INVERSION, "seed")
    max_loss: float | None = None
    landmarks: str = "faceapi"
    face_index: int = 0
    detector: str = DEFAULT_DETECTOR
    init: str = "w_avg"
    encoder: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise InputError(f"dataset: expected a path, got {self.dataset!r}")
        object.__setattr__(self, "encoder", start_encoder(self.init, self.encoder))
        if self.steps is None:
            object.__setattr__(self, "steps", inversion_steps(self.encoder))
        _at_least(self.steps, "steps", 0 if self.encoder else 1)
        _at_least(self.batch_size, "batch_size")
        _integer(self.seed, "seed")
        _integer(self.face_index, "face index")
        _choice(self.perceptual, tuple(PERCEPTUAL.values()), "perceptual loss")
        _choice(self.landmarks, LANDMARKS, "landmark backend")
        _choice(self.detector, DETECTORS, "detector")
        if not isinstance(self.loss_weights, Mapping):
            raise InputError(f"loss weights: expected a mapping, got {type(self.loss_weights).__name__}")
        object.__setattr__(self, "loss_weights", dict(self.loss_weights))
        unknown = sorted(set(self.loss_weights) - set(LOSS_WEIGHTS))
        if unknown:
            raise InputError(f"bad inversion settings: unknown loss weight(s) {unknown} "
                             f"(known: {', '.join(LOSS_WEIGHTS)})")
        check_numbers(self.loss_weights, "loss weights")
        if self.max_loss is not None and (isinstance(self.max_loss, bool) or
                                          not isinstance(self.max_loss, int | float) or
                                          not self.max_loss >= 0 or not math.isfinite(self.max_loss)):
            raise InputError(f"--max-loss must be a number >= 0, got {self.max_loss}")

    def flow_options(self) -> dict[str, Any]:
        """The keyword arguments of the inversion flow (flows/invert.py invert_dataset) but `dataset`."""
        values = asdict(self)
        del values["dataset"]
        return values

    def config(self, G: Any = None):  # noqa: ANN201 (models.inversion.InversionConfig; imports torch)
        """The InversionConfig of this request (a bad value is an InputError). With an encoder and the
        generator `G`: the EncoderInversionConfig, after checking the encoder file against G (a
        missing, broken or foreign one is a one-line CheckpointError)."""
        from models.inversion import InversionConfig

        try:
            config = InversionConfig(steps=self.steps, perceptual=self.perceptual, seed=self.seed,
                                     **self.loss_weights)
        except (TypeError, ValueError) as err:
            raise InputError(f"bad inversion settings: {err}") from None
        if self.encoder is None or G is None:
            return config
        from stages.encoder_init import encoder_config

        return encoder_config(config, self.encoder, G, steps=self.steps)

    @classmethod
    def from_old_record(cls, record: Mapping[str, Any]) -> InvertRequest:
        """The request of a job record made before records stored it (its "dataset" and "args");
        jobs recorded before --detector used haar. A missing field is a KeyError."""
        a = record["args"]
        return cls(record["dataset"], steps=a["steps"], batch_size=a["batch_size"],
                   perceptual=a["perceptual"], loss_weights=a.get("loss_weights") or {}, seed=a["seed"],
                   max_loss=a.get("max_loss"),
                   landmarks=a.get("landmarks", "faceapi"), face_index=a.get("face_index", 0),
                   detector=a.get("detector", "haar"), init="encoder" if a.get("encoder") else "w_avg",
                   encoder=a.get("encoder"))


# ------------------------------------------------------------------------------------------------------
# Mapping-network training


def _training(name: str) -> Any:
    return default_of(MAPPING_TRAINING, name)


SPLITS = ("auto", "video", "frame")
REPRESENTATIONS = ("coords", "raster")  # models.mapping.encoders ENCODERS


@dataclass(frozen=True)
class TrainMappingRequest(_Request):
    """The landmark-to-latent network at `out`, trained `steps` steps on the latents of a cache,
    saved every `checkpoint_every` steps; the rest are the training settings (tasks.train_mapping
    DEFAULT_SETTINGS: representation, batch_size, image_loss, learning_rate, seed, held_out, split,
    inversion). `weights` (the generator the latents came from) is needed when image_loss > 0."""

    KIND = "train-mapping"

    out: str
    steps: int = 1000
    checkpoint_every: int = 100
    representation: str = _training("representation")
    batch_size: int = _training("batch_size")
    image_loss: float = _training("image_loss")
    learning_rate: float = _training("learning_rate")
    seed: int = _training("seed")
    held_out: float = _training("held_out")
    split: str = _training("split")
    inversion: str | None = _training("inversion")
    weights: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.out, str) or not self.out:
            raise InputError(f"out: expected a path, got {self.out!r}")
        for name in ("steps", "checkpoint_every", "batch_size"):
            _at_least(getattr(self, name), name)
        _integer(self.seed, "seed")
        check_numbers({"image_loss": self.image_loss, "learning_rate": self.learning_rate,
                       "held_out": self.held_out})
        if not self.image_loss >= 0:
            raise InputError(f"--image-loss must be a number >= 0, got {self.image_loss}")
        if not 0 <= self.held_out < 1:
            raise InputError(f"--held-out must be in [0, 1), got {self.held_out}")
        if self.image_loss > 0 and not self.weights:
            raise InputError("--image-loss needs --weights (the generator the latents were inverted with)")
        _choice(self.representation, REPRESENTATIONS, "representation")
        _choice(self.split, SPLITS, "split")

    def settings(self) -> dict[str, Any]:
        """The training settings as the tasks take them (tasks.train_mapping DEFAULT_SETTINGS' keys)."""
        return {name: getattr(self, name) for name in config_defaults(*MAPPING_TRAINING)}
