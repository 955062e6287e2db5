"""Bulat's FAN (2D, 4 stacked hourglasses) through the face-alignment package, as a landmark backend.

The network class is face-alignment's own (`face_alignment.models.FAN`); this module does what its
`FaceAlignment` API does around it, differentiably, and never lets it download or compile anything:
- the region: the face box's centre moved up by 0.12 of the box height, a square of side
  200 * (w + h) / 195 (face-alignment's rule for its SFD detector boxes); None: the whole image;
- the crop resampled to 256 x 256, RGB in [0, 1] (no mean subtraction), by `crop_square` (a whole
  256 x 256 image without a box is its own crop: `square_crops`);
- heatmaps (N, 68, 64, 64) of the last hourglass; with `flip_input` (face-alignment's default) the
  mirrored crop is run too and its mirrored heatmaps averaged in;
- coordinates, by `coordinates=`:
  "argmax":      face-alignment's rule: the peak pixel, moved 0.25 px toward the larger neighbour
                 on each axis; not differentiable;
  "soft-argmax": the peak's 7 x 7 neighbourhood, positions weighted by the clamped-positive
                 heatmap values; differentiable, sub-pixel (the default).

Weights: the file face-alignment downloads into the torch hub cache ($TORCH_HOME/hub/checkpoints/):
face-alignment 1.5.0 (and <= 1.2) loads `2DFAN4-11f355bf06.pth.tar`, a plain state dict of
`FAN(4)` (old torch.save format, loaded here with weights_only=True); face-alignment 1.3-1.4 used a
TorchScript archive, `2DFAN4-cd938726ad.zip`. Either is accepted, also from the weights directory
(`facereenact weights fetch fan-2d`) or a path given as `weights`.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Literal

import torch

from models.face_shape import MIRROR_68
from models.landmarks.base import NUM_LANDMARKS, LandmarkBackend, LandmarkResult, crop_to_image_points
from storage.errors import CheckpointError, WeightsMissingError
from storage.provenance import sha256_file

FAN_REGISTRY_NAME = "fan-2d"
# File names face-alignment gives the 2D FAN-4 weights in the hub cache, newest first.
FAN_STATE_DICT_FILE = "2DFAN4-11f355bf06.pth.tar"  # face-alignment 1.5.0 (and <= 1.2): state dict
FAN_TORCHSCRIPT_FILE = "2DFAN4-cd938726ad.zip"  # face-alignment 1.3-1.4: TorchScript archive
FAN_WEIGHT_FILES = (FAN_STATE_DICT_FILE, FAN_TORCHSCRIPT_FILE)

INPUT_SIZE = 256
HEATMAP_SIZE = 64
# face-alignment's framing of a detector box (its REFERENCE_SCALE, SCALE_FACTOR, CENTER_Y_OFFSET).
REFERENCE_SCALE = 195.0
SCALE_FACTOR = 200.0
CENTER_Y_OFFSET = 0.12
SOFT_ARGMAX_RADIUS = 3

Coordinates = Literal["argmax", "soft-argmax"]


def fan_search_dirs() -> list[Path]:
    """Where FAN weights are looked for: the torch hub cache (where face-alignment and
    `facereenact weights fetch fan-2d` put them), then the facereenact weights dir."""
    from storage.weights import torch_hub_checkpoints_dir, weights_dir

    return [torch_hub_checkpoints_dir(), weights_dir()]


def _candidate_names() -> list[str]:
    from storage.weights import REGISTRY

    names = list(FAN_WEIGHT_FILES)
    spec = REGISTRY.get(FAN_REGISTRY_NAME)
    if spec is not None and spec.filename not in names:
        names.insert(0, spec.filename)
    return names


def find_fan_weights() -> Path:
    """The FAN weight file on disk, or a one-line WeightsMissingError saying where we looked."""
    dirs = fan_search_dirs()
    for directory in dirs:
        for name in _candidate_names():
            if (directory / name).is_file():
                return directory / name
    raise WeightsMissingError(
        f"FAN weights {FAN_STATE_DICT_FILE!r} (or {FAN_TORCHSCRIPT_FILE!r}) not found in "
        f"{' or '.join(str(d) for d in dirs)}; "
        f"fetch them with: facereenact weights fetch {FAN_REGISTRY_NAME}")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def load_fan_network(path: str | Path) -> torch.nn.Module:
    """FAN from a state-dict file (any number of stacked hourglasses, read off its keys) or a
    TorchScript archive. Malformed files give a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMissingError("FAN weight file not found", path=path)
    from models.checkpoints import load_torch_weights_only

    try:
        if _is_torchscript(path):
            return torch.jit.load(str(path), map_location="cpu").eval()
        state = load_torch_weights_only(path)  # its refusals name no unsafe way round them
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot read FAN weights ({type(err).__name__}: {first[:160]})",
                              path=path) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("not a FAN state dict (expected parameter names -> tensors)", path=path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    num_modules = sum(1 for k in state if k.startswith("l") and k[1:].split(".")[0].isdigit()
                      and k.endswith(".weight"))
    if num_modules == 0:
        raise CheckpointError("not a FAN state dict (no heatmap layers l0, l1, ...)", path=path)
    from face_alignment.models import FAN

    net = FAN(num_modules)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"FAN state dict does not fit FAN({num_modules}): "
                              f"{str(err).splitlines()[0][:160]}", path=path) from None
    return net.eval()


def heatmap_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """face-alignment's coordinates: (N, P, 2) x, y in heatmap pixel coordinates (pixel centres at
    integers): the peak, moved 0.25 toward the larger neighbour on each axis (interior peaks only)."""
    n, p, h, w = heatmaps.shape
    hm = heatmaps.detach()
    idx = hm.flatten(2).argmax(dim=2)
    px, py = idx % w, idx // w
    xy = torch.stack([px, py], dim=-1).to(hm.dtype)
    inside = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)
    cx, cy = px.clamp(1, w - 2), py.clamp(1, h - 2)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return hm.flatten(2).gather(2, (yy * w + xx)[..., None]).squeeze(-1)

    dx = at(cy, cx + 1) - at(cy, cx - 1)
    dy = at(cy + 1, cx) - at(cy - 1, cx)
    shift = torch.stack([dx.sign(), dy.sign()], dim=-1) * 0.25
    return xy + shift * inside[..., None]


def heatmap_soft_argmax(heatmaps: torch.Tensor, radius: int = SOFT_ARGMAX_RADIUS) -> torch.Tensor:
    """Differentiable coordinates: the mean position in the (2 radius + 1)^2 window about each peak,
    weighted by the heatmap clamped at zero (the peak pixel itself where the window is all <= 0)."""
    n, p, h, w = heatmaps.shape
    idx = heatmaps.detach().flatten(2).argmax(dim=2)
    px, py = idx % w, idx // w
    offsets = torch.arange(-radius, radius + 1, device=heatmaps.device)
    wx = px[..., None] + offsets  # (N, P, K)
    wy = py[..., None] + offsets
    valid = ((wx >= 0) & (wx < w))[..., None, :] & ((wy >= 0) & (wy < h))[..., :, None]  # (N, P, K, K)
    flat = (wy.clamp(0, h - 1)[..., :, None] * w + wx.clamp(0, w - 1)[..., None, :]).flatten(2)
    values = heatmaps.flatten(2).gather(2, flat).view_as(valid)
    weights = values.clamp(min=0) * valid
    total = weights.sum(dim=(2, 3))
    x = (weights.sum(dim=2) * wx.to(weights.dtype)).sum(dim=2)
    y = (weights.sum(dim=3) * wy.to(weights.dtype)).sum(dim=2)
    peak = torch.stack([px, py], dim=-1).to(heatmaps.dtype)
    ok = total > 0
    safe = torch.where(ok, total, torch.ones_like(total))
    soft = torch.stack([x / safe, y / safe], dim=-1)
    return torch.where(ok[..., None], soft, peak)


def fan_regions(boxes: torch.Tensor) -> torch.Tensor:
    """face-alignment's crop square for (N, 4) detector boxes: centre raised by 0.12 of the box
    height, side 200 * (w + h) / 195."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - CENTER_Y_OFFSET * h
    half = SCALE_FACTOR * (w + h) / REFERENCE_SCALE / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)


class FanLandmarks(LandmarkBackend):
    """FAN behind the backend interface (see the module docstring for the conventions)."""

    name = "fan"

    def __init__(self, net: torch.nn.Module, weights_sha256: str, weights_path: str,
                 coordinates: Coordinates = "soft-argmax", flip_input: bool = True) -> None:
        super().__init__()
        if coordinates not in ("argmax", "soft-argmax"):
            raise ValueError(f"coordinates must be 'argmax' or 'soft-argmax', got {coordinates!r}")
        self.net = net
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path
        self.coordinates = coordinates
        self.flip_input = flip_input
        self.differentiable = coordinates == "soft-argmax"
        self.register_buffer("mirror", torch.from_numpy(MIRROR_68.copy()), persistent=False)

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, coordinates: Coordinates = "soft-argmax",
                     flip_input: bool = True) -> FanLandmarks:
        """FAN from `weights`, or from the hub cache / weights dir (WeightsMissingError if absent)."""
        path = Path(weights) if weights is not None else find_fan_weights()
        net = load_fan_network(path)
        return cls(net, sha256_file(path), str(path), coordinates=coordinates, flip_input=flip_input)

    def with_flip(self, flip_input: bool) -> FanLandmarks:
        """This backend with `flip_input` set as given: the same network (shared, not copied)."""
        if flip_input == self.flip_input:
            return self
        other = FanLandmarks(self.net, self.weights_sha256, self.weights_path, coordinates=self.coordinates,
                             flip_input=flip_input)
        return other.to(self.mirror.device)

    def extra_repr(self) -> str:
        return f"coordinates={self.coordinates!r}, flip_input={self.flip_input}"

    def _heatmaps(self, crops: torch.Tensor) -> torch.Tensor:
        out = self.net(crops)
        if isinstance(out, (list, tuple)):
            out = out[-1]
        if out.ndim != 4 or out.shape[1] != NUM_LANDMARKS:
            raise ValueError(f"FAN returned {tuple(out.shape)}, expected (N, 68, h, w) heatmaps")
        return out

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> LandmarkResult:
        regions, crops = self.square_crops(images, boxes, INPUT_SIZE, frame=fan_regions)
        heatmaps = self._heatmaps(crops)
        if self.flip_input:
            flipped = self._heatmaps(crops.flip(-1)).flip(-1)[:, self.mirror]
            heatmaps = (heatmaps + flipped) / 2
        decode = heatmap_argmax if self.coordinates == "argmax" else heatmap_soft_argmax
        coords = decode(heatmaps)
        points = crop_to_image_points(coords, regions, heatmaps.shape[-1])
        return LandmarkResult(points=points, heatmaps=heatmaps, crops=regions)

    def provenance(self) -> dict:
        return {"backend": self.name, "weights_sha256": self.weights_sha256,
                "coordinates": self.coordinates, "flip_input": self.flip_input, "input_size": INPUT_SIZE}

