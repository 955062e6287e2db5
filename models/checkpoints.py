"""Loading StyleGAN2 checkpoints into `models.stylegan2.Generator`, without running code from the file.

Formats, detected from the file's first bytes (never from its name):

- NVIDIA network pickles (stylegan2-ada-pytorch, and the stylegan3 repo's StyleGAN2 networks): a dict
  with `G_ema`, pickled by `torch_utils.persistence`, which embeds each class's module source. A plain
  `pickle.load` would execute that source and any `__reduce__` in the file. We read them with a
  restricted unpickler (`_NetworkUnpickler`) that resolves only the globals in `_ALLOWED_GLOBALS`, each
  to a checked replacement: persistent objects become inert `_PersistentObject(class_name, state)`
  records (the module source is dropped unread), storages are read by `torch.load(weights_only=True)`,
  `EasyDict` becomes `dict`. Anything else is refused with a one-line `CheckpointError`.
- rosinality stylegan2-pytorch `.pt` files (`g_ema` state dict + `latent_avg`), read with
  `torch.load(weights_only=True)`; their names and layouts are mapped onto ours (`rosinality_pairs`).
- The native format: safetensors holding our state_dict, with the generator config as JSON in the
  header metadata (no code, no pickle). `convert_checkpoint` writes it.
- StyleGAN3: NVIDIA's stylegan3 pickles (numeric numpy arrays allowed, see `_SafeArray`) and native
  files with `architecture: stylegan3` load into `models.stylegan3.Generator` (`_read_nvidia_sg3`,
  `build_sg3`: config range-checked and tensors checked against `state_shapes` before building).

Every format ends in the same `Generator`; config values are range-checked before anything is built,
tensors are checked for names, shapes and finite values before they are loaded.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import io
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.device import resolve_device
from models.stylegan2 import Generator, make_resample_filter, mean_w
from storage.atomic import atomic_output
from storage.errors import CheckpointError, InputError
from storage.files import require_regular_file

NATIVE_FORMAT = "facereenact.stylegan2"
NATIVE_FORMAT_VERSION = "1"
CHECKPOINT_SUFFIXES = (".pkl", ".pt", ".pth", ".safetensors", ".ckpt")

_TORCH_LEGACY_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")  # pickled magic of old torch.save
_ZIP_MAGIC = b"PK\x03\x04"

# Class names (bare, as torch_utils.persistence records them) that may appear in an official pickle.
# They only label inert records; nothing is looked up or instantiated by these names.
_NETWORK_CLASSES = frozenset({
    # stylegan2-ada-pytorch training/networks.py == stylegan3 training/networks_stylegan2.py
    "Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer", "ToRGBLayer",
    "FullyConnectedLayer", "Conv2dLayer", "Discriminator", "DiscriminatorBlock", "DiscriminatorEpilogue",
    "MinibatchStdLayer",
    # stylegan3 training/networks_stylegan3.py (read into models.stylegan3; its other classes share
    # the names above)
    "SynthesisInput",
    # training/augment.py, stored beside the networks in training snapshots
    "AugmentPipe",
})


# ---------------------------------------------------------------------------------------------------
# Name resolution


def resolve_weights(path_or_name: str | os.PathLike[str]) -> Path:
    """An existing checkpoint file, or the file of a registered weight name (storage.weights)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    if path.exists():
        require_regular_file(path, "a checkpoint file")  # a directory, a FIFO, a device, a socket
        raise InputError("not a checkpoint file", path=path)
    text = str(path_or_name)
    if os.sep in text or "/" in text or text.lower().endswith(CHECKPOINT_SUFFIXES):
        raise InputError("checkpoint file not found", path=path)
    from storage.weights import require

    return require(text)


def load_generator(path_or_name: str | os.PathLike[str], device: str | torch.device = "cpu") -> Generator:
    """Load a StyleGAN2 generator from a file (any supported format) or a registered weight name.

    Returns G in eval mode with requires_grad off (inversion optimises latents, not weights), on
    `device` ("cpu", "cuda", "auto"). G.source_path / G.source_sha256 / G.source_format record the file.
    """
    from storage.provenance import sha256_file

    path = resolve_weights(path_or_name)
    G = read_checkpoint(path)
    G.source_path = str(path.resolve())
    G.source_sha256 = sha256_file(path)
    return G.eval().requires_grad_(False).to(resolve_device(device))


def detect_format(path: Path) -> str:
    """"nvidia-pickle", "torch" (rosinality) or "native", from the file's first bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint: {err.strerror or err}", path=path) from None
    if size == 0:
        raise CheckpointError("empty file, not a checkpoint", path=path)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch"
    if head[:1] == b"\x80":
        return "nvidia-pickle"
    if len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "native"
    raise CheckpointError("unrecognised checkpoint format (expected an NVIDIA .pkl, a rosinality .pt or "
                          "a facereenact .safetensors file)", path=path)


def read_checkpoint(path: Path) -> Generator:
    """Parse a checkpoint file into a float32 CPU Generator (no provenance attributes set)."""
    fmt = detect_format(path)
    if fmt == "nvidia-pickle":
        G = _read_nvidia_pickle(path)
    elif fmt == "torch":
        G = _read_rosinality(path)
    else:
        G = _read_native(path)
    G.source_format = fmt
    return G


# ---------------------------------------------------------------------------------------------------
# Config checks (shared by every format)

_CONFIG_LIMITS: dict[str, tuple[float, float]] = {
    "img_resolution": (4, 4096), "z_dim": (1, 4096), "w_dim": (1, 4096), "img_channels": (1, 4),
    "mapping_layers": (1, 32), "mapping_layer_features": (1, 4096), "channel_base": (1, 1 << 20),
    "channel_max": (1, 4096), "num_fp16_res": (0, 16),
}


def _checked_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Config values in range before anything is allocated (a file cannot ask for a 2**30 px image)."""
    allowed = set(inspect.signature(Generator.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise CheckpointError(f"unsupported generator option(s) {unknown}", path=path)
    if "img_resolution" not in config:
        raise CheckpointError("generator config has no img_resolution", path=path)
    for key, (lo, hi) in _CONFIG_LIMITS.items():
        value = config.get(key)
        if value is None and key == "mapping_layer_features":
            continue
        if key not in config:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
            raise CheckpointError(f"generator option {key}={value!r} out of range [{lo}, {hi}]", path=path)
    res = int(config["img_resolution"])
    if res & (res - 1):
        raise CheckpointError(f"img_resolution {res} is not a power of two", path=path)
    for key in ("mapping_lr_multiplier", "w_avg_beta", "conv_clamp"):
        value = config.get(key)
        if value is None and key != "mapping_lr_multiplier":
            continue
        if key not in config:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) \
                or not math.isfinite(float(value)) or float(value) <= 0:
            raise CheckpointError(f"generator option {key}={value!r} is not a positive number", path=path)
    if "use_noise" in config and not isinstance(config["use_noise"], bool):
        raise CheckpointError(f"generator option use_noise={config['use_noise']!r} is not a bool", path=path)
    plain = {}
    for key, value in config.items():  # numpy scalars -> Python (the config goes into JSON)
        plain[key] = value.item() if isinstance(value, np.generic) else value
    return plain


def _template(config: dict[str, Any], path: Path) -> Generator:
    """Generator(config) on torch's "meta" device: every tensor's name and shape, no memory. A small
    file's config can ask for a generator of many GB; it is held against the file's tensors with this
    template before the real one is built, so that only a config its tensors fill is ever allocated."""
    with torch.device("meta"):
        return Generator(**_checked_config(config, path))


def _check_tensors(tensors: dict[str, Any], expected: dict[str, tuple[int, ...]], what: str,
                   path: Path) -> None:
    """`tensors` are exactly the `expected` names, each a finite floating-point tensor of its shape:
    checked before any generator is built, so a file cannot make us allocate what it does not hold."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s) e.g. {unexpected[:3]}")
        raise CheckpointError(f"weights do not fit {what}: {'; '.join(parts)}", path=path)
    for name, shape in expected.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CheckpointError(f"tensor {name} is not a floating-point tensor", path=path)
        if tuple(t.shape) != shape:
            raise CheckpointError(f"tensor {name} has shape {tuple(t.shape)}, the config needs {shape}",
                                  path=path)
        if not torch.isfinite(t).all():
            raise CheckpointError(f"tensor {name} contains NaN or inf", path=path)


def _build_and_load(config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> Generator:
    """Generator(config) with `tensors` as its complete state_dict, after checking names and shapes
    (on a meta-device template, so that nothing is allocated for a config its tensors do not fill)."""
    expected = {name: tuple(ref.shape) for name, ref in _template(config, path).state_dict().items()}
    _check_tensors(tensors, expected, "the generator config", path)
    G = Generator(**_checked_config(config, path))
    G.load_state_dict({name: t.detach().to(torch.float32) for name, t in tensors.items()})
    return G


# ---------------------------------------------------------------------------------------------------
# NVIDIA network pickles


class _PersistentObject:
    """Inert stand-in for a torch_utils.persistence object: its class name and pickled state only."""

    __slots__ = ("class_name", "state")

    def __init__(self, class_name: str, state: dict[str, Any]) -> None:
        self.class_name = class_name
        self.state = state

    def __repr__(self) -> str:
        return f"<persistent {self.class_name}>"


class _RefusedError(Exception):
    """Raised inside the unpickler; turned into a CheckpointError naming the file."""


def _persistent_object(meta: Any) -> _PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise _RefusedError("malformed persistent object record")
    class_name = meta.get("class_name")
    if class_name not in _NETWORK_CLASSES:
        raise _RefusedError(f"persistent object of unknown class {class_name!r}")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise _RefusedError(f"persistent {class_name} without a state dict")
    return _PersistentObject(class_name, state)  # meta["module_src"] is dropped, never read


def _load_storage(data: Any) -> torch.storage.TypedStorage:
    if not isinstance(data, bytes):
        raise _RefusedError("tensor storage is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation notice
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise _RefusedError(f"tensor storage decoded to {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _RefusedError("tensor without a storage")
    if backward_hooks:
        raise _RefusedError("tensor with backward hooks")
    size, stride = tuple(size), tuple(stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, *size, *stride)) \
            or len(size) != len(stride):
        raise _RefusedError("malformed tensor shape")
    # torch would silently grow the storage to fit (a file could ask for terabytes): check first.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        available = storage.size()
        last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
        if 0 not in size and last >= available:
            raise _RefusedError(f"tensor of shape {size} reaches outside its storage of {available} elements")
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
                                               collections.OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise _RefusedError("malformed parameter")
    return data


_NUMPY_KINDS = "biufc"  # bool, ints, floats, complex: never object, void or strings


def _numpy_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(obj, str):
        raise _RefusedError("numpy dtype from a non-string")
    dtype = np.dtype(obj)
    if dtype.kind not in _NUMPY_KINDS or dtype.fields is not None:
        raise _RefusedError(f"numpy dtype {obj!r}")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in _NUMPY_KINDS \
            or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _RefusedError("numpy scalar of a disallowed type")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


class _SafeArray(np.ndarray):
    """A numpy array rebuilt from a pickle: only plain numeric dtypes and raw bytes of the exact size
    (StyleGAN3 pickles keep small arrays such as layer sizes in their module state)."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise _RefusedError("malformed numpy array state")
        _version, shape, dtype, _fortran, raw = state
        if not isinstance(shape, tuple) or len(shape) > 8 or not all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 31 for n in shape):
            raise _RefusedError("numpy array of a malformed shape")
        if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in _NUMPY_KINDS \
                or dtype.fields is not None:
            raise _RefusedError("numpy array of a disallowed dtype (object arrays are refused)")
        if not isinstance(raw, bytes) or len(raw) != math.prod(shape) * dtype.itemsize:
            raise _RefusedError("numpy array whose data is not raw bytes of its size")
        super().__setstate__(state)


class _NdarrayMarker:
    """What the global numpy.ndarray resolves to: accepted only as `_reconstruct`'s first argument."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _RefusedError("numpy.ndarray called directly")


_NDARRAY = _NdarrayMarker()


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> _SafeArray:
    """numpy's array-unpickling entry point: an empty array whose BUILD step (`_SafeArray.__setstate__`)
    checks the real dtype and data before numpy fills it."""
    if subtype is not _NDARRAY or not isinstance(dtype, bytes) or not isinstance(shape, tuple):
        raise _RefusedError("numpy array of an unexpected class")
    return np.ndarray.__new__(_SafeArray, (0,), np.uint8)


# (module, name) -> what the file gets instead. The ONLY globals an official pickle may use.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
    ("dnnlib.util", "EasyDict"): dict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,   # pickles written with numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
    # numeric arrays (StyleGAN3 pickles): checked by _SafeArray, never object arrays
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class _NetworkUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`; no persistent_load, so persistent ids are refused too."""

    def find_class(self, module: str, name: str) -> Any:
        replacement = _ALLOWED_GLOBALS.get((module, name))
        if replacement is None:
            raise _RefusedError(f"refused global {module}.{name} (not one a StyleGAN2 network pickle uses)")
        return replacement


def unpickle_network(path: Path) -> Any:
    """The object tree of an NVIDIA network pickle, with nothing from the file executed."""
    try:
        with open(path, "rb") as f:
            return _NetworkUnpickler(f).load()
    except _RefusedError as err:
        raise CheckpointError(f"{err}; refused, nothing from the file was executed", path=path) from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint: {err.strerror or err}", path=path) from None
    except Exception as err:  # any parse failure of an untrusted file is the file's problem
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"truncated or corrupt pickle ({type(err).__name__}: {reason})",
                              path=path) from None


_MAX_MODULE_DEPTH = 16


def _walk(obj: _PersistentObject, prefix: str, tensors: dict[str, torch.Tensor],
          modules: dict[str, _PersistentObject], path: Path) -> None:
    """Collect parameters and persistent buffers (official names) and sub-module records."""
    if prefix.count(".") > _MAX_MODULE_DEPTH:  # NVIDIA's networks nest 4 deep (synthesis.b4.conv1.affine)
        raise CheckpointError(f"sub-modules nested more than {_MAX_MODULE_DEPTH} deep "
                              f"({prefix[:80]}...); not a StyleGAN2 network", path=path)
    modules[prefix.rstrip(".")] = obj
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for key in ("_parameters", "_buffers"):
        entries = state.get(key) or {}
        if not isinstance(entries, dict):
            raise CheckpointError(f"{prefix or 'G_ema.'}{key} is not a dict", path=path)
        for name, value in entries.items():
            if value is None or name in skip:
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name} is not a tensor", path=path)
            tensors[prefix + str(name)] = value
    children = state.get("_modules") or {}
    if not isinstance(children, dict):
        raise CheckpointError(f"{prefix or 'G_ema.'}_modules is not a dict", path=path)
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(child, _PersistentObject):
            raise CheckpointError(f"sub-module {prefix}{name} is not a network object", path=path)
        _walk(child, f"{prefix}{name}.", tensors, modules, path)


_G_INIT_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                "synthesis_kwargs")
# Official options that must have these values for our architecture; others map to our config.
_FIXED_OPTIONS = {"architecture": "skip", "activation": "lrelu", "resample_filter": [1, 3, 3, 1],
                  "kernel_size": 3}
_IGNORED_OPTIONS = {"fp16_channels_last", "fused_modconv_default", "embed_features"}


def _nvidia_config(g: _PersistentObject, modules: dict[str, _PersistentObject], path: Path) -> dict:
    state = g.state
    kwargs = dict(state.get("_init_kwargs") or {})
    for name, value in zip(_G_INIT_ARGS, state.get("_init_args") or (), strict=False):
        kwargs.setdefault(name, value)
    mapping_kwargs = dict(kwargs.pop("mapping_kwargs", None) or {})
    synthesis_kwargs = dict(kwargs.pop("synthesis_kwargs", None) or {})
    top = {k: kwargs.pop(k) for k in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
           if k in kwargs}
    synthesis_kwargs.update(kwargs)  # the stylegan3 repo passes synthesis options flat
    if top.get("c_dim", 0):
        raise CheckpointError(f"conditional generator (c_dim={top['c_dim']}) is not supported", path=path)
    if "synthesis.input" in modules:
        raise CheckpointError("StyleGAN3 (alias-free) generator; only StyleGAN2 is supported", path=path)

    def option(options: dict, key: str, default: Any) -> Any:
        value = options.pop(key, default)
        return value.item() if isinstance(value, np.generic) else value

    for options in (mapping_kwargs, synthesis_kwargs):
        for key, required in _FIXED_OPTIONS.items():
            value = option(options, key, required)
            if (list(value) if isinstance(value, tuple) else value) != required:
                raise CheckpointError(f"unsupported generator option {key}={value!r} "
                                      f"(only {required!r})", path=path)
        for key in _IGNORED_OPTIONS:
            options.pop(key, None)

    # Values whose defaults differ between NVIDIA's repos are read from the modules as they were built.
    def module_attr(name: str, attr: str, default: Any) -> Any:
        obj = modules.get(name)
        value = obj.state.get(attr, default) if obj is not None else default
        return value.item() if isinstance(value, np.generic) else value

    resolutions = [r for r in (2 ** i for i in range(2, 13)) if f"synthesis.b{r}" in modules]
    config = dict(
        img_resolution=top.get("img_resolution"),
        z_dim=top.get("z_dim"),
        w_dim=top.get("w_dim"),
        img_channels=top.get("img_channels", 3),
        mapping_layers=option(mapping_kwargs, "num_layers", 8),
        mapping_layer_features=option(mapping_kwargs, "layer_features", None),
        mapping_lr_multiplier=module_attr("mapping.fc0", "bias_gain",
                                          option(mapping_kwargs, "lr_multiplier", 0.01)),
        w_avg_beta=module_attr("mapping", "w_avg_beta", option(mapping_kwargs, "w_avg_beta", 0.995)),
        channel_base=option(synthesis_kwargs, "channel_base", 32768),
        channel_max=option(synthesis_kwargs, "channel_max", 512),
        num_fp16_res=sum(bool(module_attr(f"synthesis.b{r}", "use_fp16", False)) for r in resolutions),
        conv_clamp=module_attr("synthesis.b4.conv1", "conv_clamp",
                               option(synthesis_kwargs, "conv_clamp", None)),
        use_noise=bool(option(synthesis_kwargs, "use_noise", True)),
    )
    for key in ("lr_multiplier", "w_avg_beta", "num_fp16_res", "conv_clamp"):
        mapping_kwargs.pop(key, None)
        synthesis_kwargs.pop(key, None)
    leftover = sorted(set(mapping_kwargs) | set(synthesis_kwargs))
    if leftover:
        raise CheckpointError(f"unsupported generator option(s) {leftover}", path=path)
    if any(config[k] is None for k in ("img_resolution", "z_dim", "w_dim")):
        raise CheckpointError("G_ema records no z_dim / w_dim / img_resolution", path=path)
    return config


def _read_nvidia_pickle(path: Path) -> Generator:
    data = unpickle_network(path)
    if not isinstance(data, dict) or "G_ema" not in data:
        raise CheckpointError("no 'G_ema' in this pickle (not a StyleGAN2 network pickle)", path=path)
    g = data["G_ema"]
    if not isinstance(g, _PersistentObject) or g.class_name != "Generator":
        what = g.class_name if isinstance(g, _PersistentObject) else type(g).__name__
        raise CheckpointError(f"G_ema is a {what}, not a Generator", path=path)
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, _PersistentObject] = {}
    _walk(g, "", tensors, modules, path)
    if "synthesis.input" in modules:  # training/networks_stylegan3.py
        return _read_nvidia_sg3(g, tensors, modules, path)
    config = _nvidia_config(g, modules, path)
    reference_filter = make_resample_filter()
    for name in [n for n in tensors if n.endswith("resample_filter")]:
        f = tensors.pop(name)
        if tuple(f.shape) != tuple(reference_filter.shape) or not torch.allclose(f.float(), reference_filter):
            raise CheckpointError(f"{name} is not the [1,3,3,1] filter", path=path)
    return _build_and_load(config, tensors, path)


# ---------------------------------------------------------------------------------------------------
# StyleGAN3 (models.stylegan3): NVIDIA pickles and native files

_SG3_INT_LIMITS: dict[str, tuple[int, int]] = {
    "img_resolution": (4, 4096), "z_dim": (1, 4096), "w_dim": (1, 4096), "img_channels": (1, 4),
    "mapping_layers": (1, 32), "channel_base": (1, 1 << 20), "channel_max": (1, 4096),
    "num_layers": (2, 64), "num_critical": (0, 63), "margin_size": (0, 256), "num_fp16_res": (0, 16),
    "conv_kernel": (1, 7), "filter_size": (1, 32), "lrelu_upsampling": (1, 8),
}
_SG3_FLOAT_KEYS = ("mapping_lr_multiplier", "w_avg_beta", "first_cutoff", "first_stopband",
                   "last_stopband_rel", "output_scale", "conv_clamp", "magnitude_ema_beta")
# NVIDIA option name -> ours (mapping_kwargs / synthesis options)
_SG3_MAPPING_OPTIONS = {"num_layers": "mapping_layers", "lr_multiplier": "mapping_lr_multiplier",
                        "w_avg_beta": "w_avg_beta"}
_SG3_IGNORED_OPTIONS = {"freeze_layers", "freeze_embed"}  # training only


def _checked_config_sg3(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """A StyleGAN3 config with every value in range (before anything is built)."""
    from models.stylegan3 import Generator as Generator3

    allowed = set(inspect.signature(Generator3.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise CheckpointError(f"unsupported StyleGAN3 generator option(s) {unknown}", path=path)
    plain = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in config.items()}
    if "img_resolution" not in plain:
        raise CheckpointError("generator config has no img_resolution", path=path)
    for key, (lo, hi) in _SG3_INT_LIMITS.items():
        if key in plain:
            value = plain[key]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise CheckpointError(f"generator option {key}={value!r} out of range [{lo}, {hi}]",
                                      path=path)
    for key in _SG3_FLOAT_KEYS:
        value = plain.get(key)
        if value is None and key in ("conv_clamp", "w_avg_beta"):
            continue
        if key not in plain:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or value <= 0:
            raise CheckpointError(f"generator option {key}={value!r} is not a positive number", path=path)
    if "use_radial_filters" in plain and not isinstance(plain["use_radial_filters"], bool):
        raise CheckpointError(f"generator option use_radial_filters={plain['use_radial_filters']!r} "
                              "is not a bool", path=path)
    if plain.get("num_critical", 2) >= plain.get("num_layers", 14):
        raise CheckpointError("generator option num_critical must be below num_layers", path=path)
    if plain.get("first_cutoff", 2) > plain["img_resolution"] / 2:
        raise CheckpointError("generator option first_cutoff is above the output's Nyquist rate", path=path)
    return plain


def build_sg3(config: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """models.stylegan3.Generator(config) with `tensors` as its complete state_dict.

    Names and shapes are checked against the config (models.stylegan3.state_shapes) before the
    generator is built; the FIR filters the file carries must be the ones the config designs."""
    from models.stylegan3 import Generator as Generator3
    from models.stylegan3 import state_shapes

    config = _checked_config_sg3(config, path)
    try:
        expected = state_shapes(config)
    except (ValueError, ZeroDivisionError, OverflowError) as err:
        raise CheckpointError(f"StyleGAN3 config is not buildable ({err})", path=path) from None
    _check_tensors(tensors, {name: tuple(shape) for name, shape in expected.items()},
                   "the StyleGAN3 config", path)
    G = Generator3(**config)
    for name, designed in G.state_dict().items():
        if name.endswith(("up_filter", "down_filter")) and \
                not torch.allclose(tensors[name].float(), designed, rtol=0, atol=1e-5):
            raise CheckpointError(f"{name} is not the low-pass filter the config designs", path=path)
    G.load_state_dict({name: t.detach().to(torch.float32) for name, t in tensors.items()})
    return G


def _read_nvidia_sg3(g: _PersistentObject, tensors: dict[str, torch.Tensor],
                     modules: dict[str, _PersistentObject], path: Path) -> torch.nn.Module:
    """An official training/networks_stylegan3.py Generator record -> models.stylegan3.Generator."""
    state = g.state
    kwargs = dict(state.get("_init_kwargs") or {})
    for name, value in zip(("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs"),
                           state.get("_init_args") or (), strict=False):
        kwargs.setdefault(name, value)
    if kwargs.pop("c_dim", 0):
        raise CheckpointError("conditional generator (c_dim > 0) is not supported", path=path)
    mapping_kwargs = kwargs.pop("mapping_kwargs", None) or {}
    if not isinstance(mapping_kwargs, dict):
        raise CheckpointError("mapping_kwargs is not a dict", path=path)
    config: dict[str, Any] = {}
    for key, value in mapping_kwargs.items():
        if key in _SG3_IGNORED_OPTIONS:
            continue
        if key not in _SG3_MAPPING_OPTIONS:
            raise CheckpointError(f"unsupported StyleGAN3 mapping option {key!r}", path=path)
        config[_SG3_MAPPING_OPTIONS[key]] = value
    config.update(kwargs)  # the synthesis and layer options are passed flat
    # Values whose defaults may differ between versions are read from the modules as built.
    fc0, mapping = modules.get("mapping.fc0"), modules.get("mapping")
    if fc0 is not None and "bias_gain" in fc0.state:
        config["mapping_lr_multiplier"] = fc0.state["bias_gain"]
    if mapping is not None and "w_avg_beta" in mapping.state:
        config["w_avg_beta"] = mapping.state["w_avg_beta"]
    for key in ("z_dim", "w_dim", "img_resolution"):
        if config.get(key) is None:
            raise CheckpointError(f"G_ema records no {key}", path=path)
    return build_sg3(config, tensors, path)


# ---------------------------------------------------------------------------------------------------
# rosinality stylegan2-pytorch


def rosinality_pairs(G: Generator) -> list[tuple[str, str, tuple[int, ...]]]:
    """(our name, rosinality name, rosinality shape) for every tensor of G, `latent_avg` aside.

    Their layouts differ from ours only by singleton dims: conv weights (1, out, in, k, k), the
    constant (1, C, 4, 4), noise buffers (1, 1, R, R), noise strengths (1,), toRGB bias (1, C, 1, 1).
    Their stored weights are unscaled like ours (the equalised-lr scale is applied at run time).
    """
    state = G.state_dict()
    pairs: list[tuple[str, str, tuple[int, ...]]] = []

    def add(ours: str, theirs: str, lead: tuple[int, ...] = ()) -> None:
        pairs.append((ours, theirs, lead + tuple(state[ours].shape)))

    for i in range(G.mapping.num_layers):
        add(f"mapping.fc{i}.weight", f"style.{i + 1}.weight")  # style.0 is their PixelNorm
        add(f"mapping.fc{i}.bias", f"style.{i + 1}.bias")

    def layer(ours: str, theirs: str, noise_index: int) -> None:
        add(f"{ours}.weight", f"{theirs}.conv.weight", (1,))
        add(f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight")
        add(f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias")
        add(f"{ours}.bias", f"{theirs}.activate.bias")
        if G.synthesis.b4.conv1.use_noise:
            add(f"{ours}.noise_strength", f"{theirs}.noise.weight", (1,))
            add(f"{ours}.noise_const", f"noises.noise_{noise_index}", (1, 1))

    def torgb(ours: str, theirs: str) -> None:
        add(f"{ours}.weight", f"{theirs}.conv.weight", (1,))
        add(f"{ours}.affine.weight", f"{theirs}.conv.modulation.weight")
        add(f"{ours}.affine.bias", f"{theirs}.conv.modulation.bias")
        pairs.append((f"{ours}.bias", f"{theirs}.bias", (1, G.img_channels, 1, 1)))

    add("synthesis.b4.const", "input.input", (1,))
    layer("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for j, res in enumerate(G.synthesis.block_resolutions[1:]):
        layer(f"synthesis.b{res}.conv0", f"convs.{2 * j}", 2 * j + 1)
        layer(f"synthesis.b{res}.conv1", f"convs.{2 * j + 1}", 2 * j + 2)
        torgb(f"synthesis.b{res}.torgb", f"to_rgbs.{j}")
    return pairs


def _rosinality_kernels(G: Generator) -> dict[str, torch.Tensor]:
    """Their resampling-filter buffers (kernel * 4 for the 2x upsampling ones)."""
    kernel = make_resample_filter() * 4
    out = {}
    for j in range(len(G.synthesis.block_resolutions) - 1):
        out[f"convs.{2 * j}.conv.blur.kernel"] = kernel.clone()
        out[f"to_rgbs.{j}.upsample.kernel"] = kernel.clone()
    return out


def to_rosinality(G: Generator) -> dict[str, Any]:
    """G as a rosinality checkpoint dict {"g_ema": state_dict, "latent_avg": w_avg} (for torch.save).

    rosinality's network has no activation clamp and no float16 blocks, and its mapping has
    z_dim == w_dim, so G must be configured that way (conv_clamp None) to be represented exactly.
    """
    if G.config["conv_clamp"] is not None:
        raise ValueError("rosinality's network has no activation clamp; export needs conv_clamp=None")
    if G.z_dim != G.w_dim or G.config["mapping_layer_features"] not in (None, G.w_dim):
        raise ValueError("rosinality's mapping has z_dim == w_dim == layer width")
    state = G.state_dict()
    g_ema = {theirs: state[ours].detach().cpu().reshape(shape).clone()
             for ours, theirs, shape in rosinality_pairs(G)}
    g_ema.update(_rosinality_kernels(G))
    return {"g_ema": g_ema, "latent_avg": G.w_avg.detach().cpu().clone()}


def _rosinality_config(sd: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    def shape(name: str, ndim: int) -> tuple[int, ...]:
        """The shape of tensor `name`, which must have `ndim` dimensions (the config is read from
        these shapes: a malformed one is the file's error, not an IndexError)."""
        t = sd.get(name)
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"rosinality checkpoint lacks {name}", path=path)
        if t.dim() != ndim:
            raise CheckpointError(f"rosinality tensor {name} has shape {tuple(t.shape)}; expected "
                                  f"{ndim} dimensions", path=path)
        return tuple(t.shape)

    if not all(isinstance(name, str) for name in sd):
        raise CheckpointError("g_ema has keys that are not tensor names", path=path)
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in sd:
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError("no mapping layers (style.N.weight) in g_ema", path=path)
    w_dim, z_dim = shape("style.1.weight", 2)
    n_rgbs = 0
    while f"to_rgbs.{n_rgbs}.conv.weight" in sd:
        n_rgbs += 1
    resolution = 2 ** (n_rgbs + 2)
    channels = {4: shape("input.input", 4)[1]}  # (1, C, 4, 4)
    for j in range(n_rgbs):
        channels[2 ** (j + 3)] = shape(f"convs.{2 * j}.conv.weight", 5)[1]  # (1, out, in, k, k)
    # Express their channel table as ours: min(channel_base // r, channel_max).
    channel_max = max(channels.values())
    channel_base = resolution * channels[resolution]
    if any(min(channel_base // r, channel_max) != c for r, c in channels.items()):
        raise CheckpointError(f"channel layout {channels} has no channel_base/channel_max form", path=path)
    kernel = make_resample_filter() * 4
    for name, t in sd.items():
        if name.endswith(".kernel") and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (4, 4)
                                         or not torch.allclose(t.float(), kernel)):
            raise CheckpointError(f"{name} is not the [1,3,3,1] filter", path=path)
    return dict(img_resolution=resolution, z_dim=z_dim, w_dim=w_dim,
                img_channels=shape("to_rgb1.conv.weight", 5)[1], mapping_layers=n_mlp,
                mapping_lr_multiplier=0.01,  # rosinality's lr_mlp default; not stored in the file
                channel_base=channel_base, channel_max=channel_max, num_fp16_res=0, conv_clamp=None,
                use_noise="conv1.noise.weight" in sd)


def _check_torch_zip(path: Path) -> None:
    """Refuse a torch zip file whose entries would decompress to more than the file holds, before
    torch reads it: torch.save stores every entry uncompressed, so a small file declaring gigabytes
    is a decompression bomb, not a checkpoint. (Legacy non-zip files hold raw bytes: nothing to bound.)"""
    try:
        size = path.stat().st_size
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return  # torch.load gives the one-line reason
    if declared > 2 * size + (1 << 20):
        raise CheckpointError(f"torch zip file of {size} bytes declares {declared} bytes of contents "
                              "(compressed entries, which torch.save never writes: a decompression "
                              "bomb?); refused before reading", path=path)


def load_torch_weights_only(path: str | os.PathLike[str], *, safe_globals: tuple = ()) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, every failure a one-line CheckpointError.

    The weights-only unpickler builds tensors, dicts, lists, tuples and plain scalars only (plus the
    classes in `safe_globals`); a file that names anything else is refused before it runs. Used for
    every torch file the project reads (rosinality generators, mapping-network checkpoints).
    """
    path = Path(path)
    _check_torch_zip(path)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message wraps the unpickler's reason in advice (re-run with weights_only=False)
        # that must not reach a user: keep the reason line only.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        named = next((line for line in lines if "global" in line.lower()
                      and "weights only" not in line.lower() and "weights_only" not in line), None)
        if named is not None:  # the file names a function or class: what a hostile file does
            # The name only: torch's own text goes on to advise allowlisting it (add_safe_globals),
            # which is what a hostile file wants a user to do.
            found = re.search(r"GLOBAL ([\w.]+)", named)
            what = f"it names the global {found.group(1)}" if found else "it names a function or class"
            raise CheckpointError(f"refused by the weights-only loader: {what}, which a weights file does "
                                  "not need (nothing from the file was executed)", path=path) from None
        reason = next((line for line in lines if line.startswith("Unsupported operand")),
                      lines[-1] if lines else type(err).__name__)
        raise CheckpointError(f"truncated or corrupt torch file (not a readable pickle: {reason[:200]})",
                              path=path) from None
    except FileNotFoundError:
        raise CheckpointError("no such file", path=path) from None
    except IsADirectoryError:
        raise CheckpointError("is a directory, not a checkpoint file", path=path) from None
    except Exception as err:
        # first sentence only: torch's zip reader appends paragraphs of speculation
        reason = " ".join(str(err).split()).split(". ")[0][:200] or type(err).__name__
        raise CheckpointError(f"truncated or corrupt torch file ({reason})", path=path) from None


def _torch_load(path: Path) -> Any:
    # argparse.Namespace: rosinality's training snapshots store their `args`; it is plain data.
    return load_torch_weights_only(path, safe_globals=(argparse.Namespace,))


def _read_rosinality(path: Path) -> Generator:
    obj = _torch_load(path)
    latent_avg = None
    if isinstance(obj, dict) and "g_ema" in obj:
        sd, latent_avg = obj["g_ema"], obj.get("latent_avg")
    elif isinstance(obj, dict) and "style.1.weight" in obj:
        sd = obj
    else:
        raise CheckpointError("torch file without a 'g_ema' generator (not a rosinality stylegan2-pytorch "
                              "checkpoint)", path=path)
    if not isinstance(sd, dict):
        raise CheckpointError("'g_ema' is not a state dict", path=path)
    config = _rosinality_config(sd, path)
    template = _template(config, path)
    tensors: dict[str, torch.Tensor] = {}
    for ours, theirs, their_shape in rosinality_pairs(template):
        t = sd.get(theirs)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != their_shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else None
            raise CheckpointError(f"rosinality tensor {theirs}: expected shape {their_shape}, got {got}",
                                  path=path)
        tensors[ours] = t.reshape(template.state_dict()[ours].shape)
    known = {theirs for _, theirs, _ in rosinality_pairs(template)} | set(_rosinality_kernels(template))
    unexpected = sorted(set(sd) - known)
    if unexpected:
        raise CheckpointError(f"unexpected tensors in g_ema e.g. {unexpected[:3]}", path=path)
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != config["w_dim"]:
            raise CheckpointError("latent_avg does not match w_dim", path=path)
        tensors["mapping.w_avg"] = latent_avg.reshape(config["w_dim"])
    else:
        tensors["mapping.w_avg"] = torch.zeros(config["w_dim"])
    G = _build_and_load(config, tensors, path)
    if latent_avg is None:  # training snapshots carry none; the mean of mapped z is what it stands for
        with torch.no_grad():
            G.mapping.w_avg.copy_(mean_w(G))
    return G


# ---------------------------------------------------------------------------------------------------
# Native format: safetensors + JSON config


def save_native(G: Generator, dst: str | os.PathLike[str]) -> Path:
    """Write G as a native checkpoint, atomically (storage.atomic: complete or absent)."""
    from safetensors.torch import save

    dst = Path(dst)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous().clone()
               for name, t in G.state_dict().items()}
    metadata = {
        "format": NATIVE_FORMAT,
        "format_version": NATIVE_FORMAT_VERSION,
        "config": json.dumps(G.config, sort_keys=True),
        "weights_sha256": G.weights_sha256(),
        "source_name": Path(G.source_path).name if G.source_path else "",
        "source_sha256": G.source_sha256 or "",
        "source_format": G.source_format or "",
    }
    if getattr(G, "architecture", "stylegan2") != "stylegan2":
        metadata["architecture"] = G.architecture
    data = save(tensors, metadata=metadata)  # bytes: save_file would create the file mode 0600
    with atomic_output(dst) as tmp:
        tmp.write_bytes(data)
    return dst


def convert_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Read any supported checkpoint (file or registered name) and write it in the native format."""
    G = load_generator(src)
    src_path = Path(G.source_path or src)
    dst = Path(dst)
    if dst.exists() and dst.resolve() == src_path.resolve():
        raise InputError("destination is the source file; choose another path", path=dst)
    return save_native(G, dst)


def _read_native(path: Path) -> Generator:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != NATIVE_FORMAT:
                raise CheckpointError(f"safetensors file without {NATIVE_FORMAT!r} metadata "
                                      "(not a facereenact generator)", path=path)
            if metadata.get("format_version") != NATIVE_FORMAT_VERSION:
                raise CheckpointError(f"native format version {metadata.get('format_version')!r} is not "
                                      f"supported (this build reads {NATIVE_FORMAT_VERSION})", path=path)
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open API)
    except CheckpointError:
        raise
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise CheckpointError(f"truncated or corrupt safetensors file ({reason})", path=path) from None
    try:
        config = json.loads(metadata.get("config", ""))
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError("native checkpoint has no readable config", path=path) from None
    if not isinstance(config, dict):
        raise CheckpointError("native checkpoint config is not an object", path=path)
    architecture = metadata.get("architecture", "stylegan2")
    if architecture == "stylegan3":
        G = build_sg3(config, tensors, path)
    elif architecture == "stylegan2":
        G = _build_and_load(config, tensors, path)
    else:
        raise CheckpointError(f"native checkpoint of unknown architecture {architecture!r}", path=path)
    recorded = metadata.get("weights_sha256")
    if recorded and recorded != G.weights_sha256():
        raise CheckpointError("weights do not match their recorded sha256 (file corrupt?)", path=path)
    if metadata.get("source_sha256"):
        G.converted_from = {"name": metadata.get("source_name", ""), "sha256": metadata["source_sha256"],
                            "format": metadata.get("source_format", "")}
    return G
