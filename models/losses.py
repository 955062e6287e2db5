"""Loss terms shared by inversion and projection: LPIPS, identity, delta-regularisation, noise
regularisation, landmark losses.

Every image loss takes images in [-1, 1] (the generator's range), (N, 3, H, W), and returns one value
per image, shape (N,): the optimisers sum them, so frames batched together stay independent.

    lpips = PerceptualLoss.from_choice("lpips-vgg")      # WeightsMissingError if the backbone is absent
    lpips(images, targets)                               # (N,)
    identity = IdentityLoss()                            # face-api recognition net (vendored weights)
    identity(images, identity.embed(targets, points), points)   # 1 - cos, (N,)
    delta_regularization(ws); noise_regularization(maps); normalize_noise_(maps)
    landmark_coordinate_loss(points, target_points); landmark_heatmap_loss(heatmaps, target_heatmaps)

LPIPS. The `lpips` package supplies the network (its VGG-16 or AlexNet feature slices, its scaling
layer, its calibrated linear heads, which ship with the package); its backbone weights are
torchvision's ImageNet files, which torchvision would download. Here they never are: the file must
already be in $TORCH_HOME/hub/checkpoints (`facereenact weights fetch lpips-vgg16`), else a one-line
WeightsMissingError. `perceptual="uncalibrated"` is the explicit opt-in to run without them: the
backbone keeps a fixed-seed random init (a deterministic, but not perceptually calibrated, feature
distance) and `provenance()` says `calibrated: False`. Images larger than 256 px are area-resized to
256 first, as NVIDIA's projector does before its VGG.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.identity import DLIB_MEAN_FACE, IdentityEncoder, identity_similarity, similarity_transform
from models.landmarks.base import NUM_LANDMARKS, group_weights
from storage.errors import CheckpointError, WeightsMissingError

# ---------------------------------------------------------------------------------------------------
# LPIPS

# choice -> (lpips net name, storage.weights registry name of the backbone, calibrated)
PERCEPTUAL_CHOICES: dict[str, tuple[str, str, bool]] = {
    "lpips-vgg": ("vgg", "lpips-vgg16", True),  # Choe 2023's baseline; NVIDIA's projector uses VGG-16
    "lpips-alex": ("alex", "lpips-alexnet", True),       # Choe 2023's full method, LPIPS's own default
    "uncalibrated": ("vgg", "lpips-vgg16", False),       # opt-in: random-init VGG-16 backbone
    "uncalibrated-alex": ("alex", "lpips-alexnet", False),
}
UNCALIBRATED_SEED = 0  # torch seed of the random backbone init in the uncalibrated opt-in
PERCEPTUAL_RESOLUTION = 256  # larger images are area-resized to this before the net (NVIDIA's projector)


class PerceptualLoss(nn.Module):
    """LPIPS distance (v0.1, linear heads) per image pair, (N,); images in [-1, 1].

    `features(targets)` once and `distance(images, target_features)` per step skips the target's
    forward pass (what an optimiser with fixed targets wants); `forward(images, targets)` does both.
    """

    def __init__(
        self,
        net: str = "vgg",                       # "vgg" (VGG-16) or "alex" (AlexNet)
        calibrated: bool = True,                # load the torchvision ImageNet backbone (must be on disk)
        resolution: int = PERCEPTUAL_RESOLUTION,  # area-resize larger inputs to this size first
    ) -> None:
        super().__init__()
        import lpips

        choice = next((c for c, (n, _, cal) in PERCEPTUAL_CHOICES.items() if n == net and cal == calibrated),
                      None)
        if choice is None:
            raise ValueError(f"unknown LPIPS net {net!r} (known: vgg, alex)")
        self.choice, self.net_name, self.calibrated, self.resolution = choice, net, calibrated, resolution
        registry_name = PERCEPTUAL_CHOICES[choice][1]
        path = _backbone_file(registry_name) if calibrated else None
        # pnet_rand=True: torchvision builds the backbone without pretrained weights (no download);
        # the heads come from the lpips package. The random init draws from torch's global generator:
        # fork it, seeded, so the uncalibrated backbone is the same every time and callers' random
        # streams are untouched.
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecated `pretrained=` argument
            torch.manual_seed(UNCALIBRATED_SEED)
            self.lpips = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        self.backbone_sha256: str | None = None
        if path is not None:
            _load_backbone(self.lpips.net, path, registry_name)
            from storage.provenance import sha256_file

            self.backbone_sha256 = sha256_file(path)
        self.lpips.eval().requires_grad_(False)

    @classmethod
    def from_choice(cls, choice: str = "lpips-vgg") -> PerceptualLoss:
        """One of PERCEPTUAL_CHOICES: "lpips-vgg", "lpips-alex", "uncalibrated", "uncalibrated-alex"."""
        if choice not in PERCEPTUAL_CHOICES:
            raise ValueError(f"unknown perceptual loss {choice!r} (known: {', '.join(PERCEPTUAL_CHOICES)})")
        net, _, calibrated = PERCEPTUAL_CHOICES[choice]
        return cls(net=net, calibrated=calibrated)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, "LPIPS")
        if images.shape[-1] > self.resolution or images.shape[-2] > self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="area")
        return self.lpips.scaling_layer(images)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised (along channels) feature maps of the backbone's five slices."""
        import lpips

        return [lpips.normalize_tensor(f) for f in self.lpips.net(self._prepare(images))]

    def distance(self, images: torch.Tensor, target_features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N,) LPIPS between `images` and the images whose `features` are given."""
        total = None
        for lin, a, b in zip(self.lpips.lins, self.features(images), target_features, strict=True):
            layer = lin((a - b).square()).mean(dim=(1, 2, 3))
            total = layer if total is None else total + layer
        return total

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.distance(images, self.features(targets))

    def provenance(self) -> dict:
        record = {"perceptual": f"lpips-{self.net_name}", "calibrated": self.calibrated,
                  "lpips_version": "0.1", "resolution": self.resolution}
        if self.calibrated:
            record["backbone_sha256"] = self.backbone_sha256
        else:
            # the random backbone is torch's init code at this seed: another torch may give another net
            record["backbone_init"] = (f"random, torch.manual_seed({UNCALIBRATED_SEED}), "
                                       f"torch {torch.__version__}")
        return record

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, calibrated={self.calibrated}, resolution={self.resolution}"


def _backbone_file(registry_name: str):
    """The torchvision backbone file in the torch hub cache, or a one-line WeightsMissingError."""
    from storage.weights import require

    try:
        return require(registry_name)
    except WeightsMissingError as err:
        raise WeightsMissingError(f"LPIPS backbone {err}; or choose perceptual 'uncalibrated' to run with "
                                  f"an uncalibrated LPIPS (recorded in provenance)") from None


def _load_backbone(net: nn.Module, path, registry_name: str) -> None:
    """Copy torchvision's `features.<i>.*` tensors into lpips' slices (whose modules keep torchvision's
    indices as names: slice2.5.weight is features.5.weight)."""
    from models.checkpoints import load_torch_weights_only

    try:
        state = load_torch_weights_only(path)  # bounded, and its refusals suggest nothing unsafe
    except CheckpointError as err:  # a truncated or foreign file: the user's to fix
        raise CheckpointError(f"not a readable torchvision state dict ({str(err).split(': ', 1)[-1][:200]}); "
                              f"fetch it again with: facereenact weights fetch {registry_name}",
                              path=path) from None
    with torch.no_grad():
        for slice_name, module in net.named_children():
            for name, param in module.named_parameters():
                key = f"features.{name}"
                value = state.get(key) if isinstance(state, dict) else None
                if value is None or tuple(value.shape) != tuple(param.shape):
                    raise CheckpointError(f"torchvision backbone lacks {key} of shape {list(param.shape)} "
                                          f"(for {slice_name})", path=path)
                param.copy_(value)


# ---------------------------------------------------------------------------------------------------
# Identity


@lru_cache(maxsize=8)
def _ffhq_mean_landmarks(resolution: int) -> np.ndarray:
    from models.alignment import crop_from_frame_matrix, ffhq_quad
    from models.face_shape import MEAN_SHAPE_68

    points = np.zeros((NUM_LANDMARKS, 2))
    points[17:] = DLIB_MEAN_FACE
    # dlib's template has no jaw: take face_shape's, fitted onto dlib's points by a similarity
    src = torch.tensor(MEAN_SHAPE_68[17:])[None]
    tform = similarity_transform(src, torch.from_numpy(DLIB_MEAN_FACE)[None])[0].numpy()
    points[:17] = MEAN_SHAPE_68[:17] @ tform[:, :2].T + tform[:, 2]
    matrix = crop_from_frame_matrix(ffhq_quad(points), resolution)
    out = points @ matrix[:2, :2].T + matrix[:2, 2]
    out.setflags(write=False)
    return out


def ffhq_mean_landmarks(resolution: int) -> np.ndarray:
    """(68, 2) landmarks of an average face in an FFHQ-aligned crop of `resolution` px (x, y; pixel
    centres at integers).

    Points 17-67 are dlib's mean face (the template its chip alignment fits), the jaw is
    face_shape.MEAN_SHAPE_68's, and the FFHQ recipe itself (models.alignment.ffhq_quad) places them in
    the crop. FFHQ alignment puts every face's eyes and mouth at nearly the same crop pixels (the crop
    is a function of exactly those points), so for an FFHQ-aligned crop without landmarks this is a
    sound stand-in for the face's own points; they differ most along the jaw.
    """
    return _ffhq_mean_landmarks(int(resolution))


class IdentityLoss(nn.Module):
    """1 - cosine similarity of face-api recognition descriptors (models.identity), (N,); images in
    [-1, 1].

    The chips are dlib-aligned from landmarks: the target's crop landmarks when given (use them for
    both images: the reconstruction is meant to sit where the target's face is), else
    `ffhq_mean_landmarks(R)` (the crops are FFHQ-aligned). ArcFace, Choe 2023's choice, is not
    available offline; this net is a port of dlib's ResNet (see models/identity.py).
    """

    def __init__(self, encoder: IdentityEncoder | None = None) -> None:
        super().__init__()
        self.encoder = (encoder if encoder is not None else IdentityEncoder.from_weights()).eval()
        self.encoder.requires_grad_(False)

    def points_for(self, images: torch.Tensor, points: torch.Tensor | None) -> torch.Tensor:
        """(N, 68, 2) landmarks to align chips with: `points`, or the FFHQ mean face."""
        n, _, h, w = images.shape
        if points is None:
            if h != w:
                raise ValueError(f"identity: without landmarks the images must be square FFHQ crops, "
                                 f"got {h}x{w}")
            template = torch.tensor(ffhq_mean_landmarks(h), dtype=images.dtype, device=images.device)
            return template.expand(n, NUM_LANDMARKS, 2)
        if tuple(points.shape) != (n, NUM_LANDMARKS, 2):
            raise ValueError(f"identity: points must be ({n}, 68, 2), got {tuple(points.shape)}")
        return points.to(device=images.device, dtype=images.dtype)

    def embed(self, images: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 128) descriptors of images in [-1, 1]."""
        _check_images(images, "identity")
        return self.encoder.from_landmarks((images + 1) / 2, self.points_for(images, points))

    def forward(self, images: torch.Tensor, target_descriptors: torch.Tensor,
                points: torch.Tensor | None = None) -> torch.Tensor:
        return 1 - identity_similarity(self.embed(images, points), target_descriptors)

    def provenance(self) -> dict:
        return self.encoder.provenance()


# ---------------------------------------------------------------------------------------------------
# Latent and noise regularisers


def delta_regularization(ws: torch.Tensor) -> torch.Tensor:
    """Choe 2023's delta-regularisation (its eq. 3.4, after e4e): with W+ written as (w_0, w_0 + d_1,
    ..., w_0 + d_{L-1}), the sum of |d_i|^2 over the layers i >= 1. (N, L, C) -> (N,)."""
    if ws.ndim != 3:
        raise ValueError(f"delta_regularization: ws must be (N, num_ws, w_dim), got {tuple(ws.shape)}")
    return (ws[:, 1:] - ws[:, :1]).square().sum(dim=(1, 2))


def noise_regularization(noise: Sequence[torch.Tensor]) -> torch.Tensor:
    """NVIDIA's projector's noise regulariser, per sample: for each (N, 1, r, r) map, and for its 2x
    average-pooled versions down to 8 x 8, the squared mean of the map times itself shifted by one
    pixel (wrapping), horizontally and vertically. It is 0 for spatially uncorrelated noise and keeps
    the optimiser from hiding image content in the noise inputs. -> (N,)"""
    total = None
    for v in noise:
        if v.ndim != 4 or v.shape[1] != 1:
            raise ValueError(f"noise_regularization: maps must be (N, 1, r, r), got {tuple(v.shape)}")
        while True:
            term = ((v * v.roll(1, dims=3)).mean(dim=(1, 2, 3)).square()
                    + (v * v.roll(1, dims=2)).mean(dim=(1, 2, 3)).square())
            total = term if total is None else total + term
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    if total is None:
        raise ValueError("noise_regularization: no noise maps")
    return total


@torch.no_grad()
def normalize_noise_(noise: Sequence[torch.Tensor]) -> None:
    """In place: each sample's map to mean 0 and mean square 1 (the projector does this after every
    step, so that the maps stay unit noise and the regulariser cannot be met by shrinking them)."""
    for v in noise:
        v -= v.mean(dim=(1, 2, 3), keepdim=True)
        v *= v.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()


# ---------------------------------------------------------------------------------------------------
# Landmarks (for projection: generated image's landmarks against the driving frame's)

# Uzolas 2021's code defaults (lukasuz/stylegan2-landmark-projection, --landmark_weights)
DEFAULT_GROUP_WEIGHTS: dict[str, float] = {
    "jaw": 0.05, "brow_left": 1.0, "brow_right": 1.0, "nose_bridge": 0.1, "nose_lower": 1.0,
    "eye_left": 1.0, "eye_right": 1.0, "mouth_outer": 5.0, "mouth_inner": 5.0,
}


def point_weights(weights: dict[str, float] | torch.Tensor | None = None) -> torch.Tensor:
    """(68,) per-point weights: from per-group weights (models.landmarks.IBUG_GROUPS names), a (68,)
    tensor as is, or None for DEFAULT_GROUP_WEIGHTS."""
    if weights is None:
        weights = DEFAULT_GROUP_WEIGHTS
    if isinstance(weights, dict):
        return group_weights(weights)
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if tuple(weights.shape) != (NUM_LANDMARKS,):
        raise ValueError(f"point weights must be (68,), got {tuple(weights.shape)}")
    return weights


def landmark_coordinate_loss(points: torch.Tensor, target: torch.Tensor,
                             weights: dict[str, float] | torch.Tensor | None = None,
                             scale: float = 1.0) -> torch.Tensor:
    """Weighted sum over the 68 points of the Euclidean distance |p - q| / scale (e.g. scale = the
    image size, for a loss that does not change with resolution). (N, 68, 2) x 2 -> (N,). For the
    coordinate backends (faceapi)."""
    if points.shape != target.shape or points.ndim != 3 or points.shape[1:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmark points must both be (N, 68, 2), got {tuple(points.shape)} and "
                         f"{tuple(target.shape)}")
    w = point_weights(weights).to(points)
    return (torch.linalg.vector_norm(points - target, dim=2) * w).sum(dim=1) / scale


def landmark_heatmap_loss(heatmaps: torch.Tensor, target: torch.Tensor,
                          weights: dict[str, float] | torch.Tensor | None = None) -> torch.Tensor:
    """Uzolas 2021's heatmap loss, per sample: the L2 norm of the point-weighted heatmap difference,
    sqrt(sum over points p and pixels of (w_p (H_p - T_p))^2) (the Uzolas code; its write-up prints a
    sum of absolute values). (N, 68, h, w) x 2 -> (N,). For FAN's heatmaps."""
    if heatmaps.shape != target.shape or heatmaps.ndim != 4 or heatmaps.shape[1] != NUM_LANDMARKS:
        raise ValueError(f"heatmaps must both be (N, 68, h, w), got {tuple(heatmaps.shape)} and "
                         f"{tuple(target.shape)}")
    w = point_weights(weights).to(heatmaps)
    return torch.linalg.vector_norm(((heatmaps - target) * w[:, None, None]).flatten(1), dim=1)


# ---------------------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor, what: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"{what}: images must be float (N, 3, H, W) in [-1, 1], got "
                         f"{tuple(images.shape)} {images.dtype}")
