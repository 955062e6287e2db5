"""Identity: face-api's face recognition net (dlib's ResNet metric net, 128-D) ported to PyTorch, and
dlib's face-chip alignment, both differentiable.

    encoder = IdentityEncoder.from_weights()              # vendored face-api weights
    desc = encoder.from_landmarks(images, points)         # (N, 128), points: (N, 68, 2) iBUG
    desc = encoder.embed(chips)                           # chips: (N, 3, 150, 150) aligned, [0, 1]
    identity_similarity(desc_a, desc_b)                   # cosine, (N,)

Net (from @vladmandic/face-api 1.7.15, src/faceRecognitionNet), input a 150 x 150 RGB chip, minus
face-api's mean (122.782, 117.001, 104.298), divided by 255:
- 7x7 conv stride 2 'valid' (150 -> 72), 3x3 max pool stride 2 (-> 35);
- residual blocks: 3 x 32 ch; a down block + 3 x 64 ch (17); a down block + 2 x 128 ch (8);
  a down block + 2 x 256 ch (3, padded to 4); a final down block (1, padded to 2);
- each conv is conv + bias followed by a per-channel affine "scale" layer (folded into the conv
  here at load time); a down block's first conv is 3x3 stride 2 'valid', its shortcut a 2x2 average
  pool whose channels are doubled with zeros; when the two differ in size by one (8 -> 3 vs 4),
  the conv branch is zero-padded at the bottom and right, as face-api does;
- global average, then a 256 -> 128 linear map without bias. The descriptor is not normalised
  (dlib's is not either); compare descriptors by cosine or by Euclidean distance (dlib: < 0.6 same).

Chip alignment (dlib's get_face_chip_details + extract_image_chip, 68-point case): a least-squares
similarity transform from 33 of the 68 points (eyes, nose, upper lips; not jaw, brows or lower lip)
to dlib's mean face template, the template placed in a `size` chip with `padding` (dlib's
(padding + t) / (2 padding + 1) * size), sampled bilinearly. dlib's own extraction maps chip pixel
corners to a rectangle of `size * scale - 1` pixels centred on the template centre; this follows it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.alignment import align_torch
from models.landmarks.faceapi import ASSETS_DIR, faceapi_normalize
from models.tfjs_weights import read_tfjs_weights, tfjs_weights_sha256
from storage.errors import CheckpointError

RECOGNITION_MANIFEST = ASSETS_DIR / "face_recognition_model-weights_manifest.json"
CHIP_SIZE = 150
CHIP_PADDING = 0.25

# dlib's mean face shape: the average positions of iBUG points 17..67 in a unit square (dlib,
# dlib/image_transforms/interpolation.h, get_face_chip_details). Data, not code.
_DLIB_MEAN_FACE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)
_DLIB_MEAN_FACE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)
DLIB_MEAN_FACE = np.stack([_DLIB_MEAN_FACE_X, _DLIB_MEAN_FACE_Y], axis=1)  # (51, 2): points 17..67
# The points dlib aligns on: 27..54 and 60..64 (it skips the jaw, the brows and the lower lip).
DLIB_ALIGN_POINTS = tuple(i for i in range(17, 68) if not (i <= 26 or 55 <= i <= 59 or 65 <= i <= 67))


# ---------------------------------------------------------------------------------------------------
# Chip alignment.


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking (N, P, 2)
    `src` onto `dst`, as (N, 2, 3) matrices [A | t]. Closed form (as complex numbers, dst ~ c src + t),
    which is Umeyama's solution, the one dlib's find_similarity_transform computes; differentiable."""
    src_c = src - src.mean(dim=1, keepdim=True)
    dst_c = dst - dst.mean(dim=1, keepdim=True)
    norm = (src_c ** 2).sum(dim=(1, 2))
    a = (src_c * dst_c).sum(dim=(1, 2)) / norm  # real part of c = s cos(theta)
    b = (src_c[..., 0] * dst_c[..., 1] - src_c[..., 1] * dst_c[..., 0]).sum(dim=1) / norm  # s sin(theta)
    A = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], dim=1)  # (N, 2, 2)
    t = dst.mean(dim=1) - (A @ src.mean(dim=1, keepdim=True).transpose(1, 2)).squeeze(-1)
    return torch.cat([A, t[..., None]], dim=2)


def dlib_chip_transform(points: torch.Tensor, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
                        ) -> torch.Tensor:
    """(N, 2, 3) affine maps from chip pixel coordinates to image pixel coordinates of dlib's face
    chip for (N, 68, 2) iBUG landmarks (get_face_chip_details(det, size, padding))."""
    if points.ndim != 3 or tuple(points.shape[1:]) != (68, 2):
        raise ValueError(f"points must be (N, 68, 2), got {tuple(points.shape)}")
    template = torch.as_tensor(DLIB_MEAN_FACE, dtype=points.dtype, device=points.device)
    template = (padding + template[[i - 17 for i in DLIB_ALIGN_POINTS]]) / (2 * padding + 1) * size
    tform = similarity_transform(template.expand(points.shape[0], -1, -1), points[:, DLIB_ALIGN_POINTS])
    A, t = tform[:, :, :2], tform[:, :, 2]
    # dlib keeps angle and scale of the fit and re-centres: the chip is a rectangle of side
    # size * scale - 1 (pixel centres) about the image of the template centre (size / 2, size / 2),
    # rotated by the angle, whose corner pixels are chip pixels 0 and size - 1.
    centre = A @ torch.full((2, 1), size / 2.0, dtype=points.dtype, device=points.device)
    centre = centre.squeeze(-1) + t
    scale = torch.linalg.vector_norm(A[:, :, 0], dim=1)
    step = (size * scale - 1) / (size - 1)  # image pixels per chip pixel
    M = A / scale[:, None, None] * step[:, None, None]
    offset = centre - (M @ torch.full((2, 1), (size - 1) / 2.0, dtype=points.dtype,
                                      device=points.device)).squeeze(-1)
    return torch.cat([M, offset[..., None]], dim=2)


def align_face_chips(images: torch.Tensor, points: torch.Tensor, size: int = CHIP_SIZE,
                     padding: float = CHIP_PADDING) -> torch.Tensor:
    """dlib-style aligned face chips (N, 3, size, size) from images (N, 3, H, W) in [0, 1] and their
    (N, 68, 2) landmarks. Bilinear, zeros outside the image; differentiable in images and points.

    Where the chip shrinks the face 2x or more, dlib samples from an image pyramid; here the image is
    average-pooled first (align_torch's anti-aliasing), which blurs slightly differently.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    tform = dlib_chip_transform(points.to(images.dtype), size, padding)
    last_row = torch.tensor([0.0, 0.0, 1.0], dtype=tform.dtype, device=tform.device)
    frame_from_chip = torch.cat([tform, last_row.expand(tform.shape[0], 1, 3)], dim=1)
    return align_torch(images, frame_from_chip, size, padding_mode="zeros", antialias=True)


# ---------------------------------------------------------------------------------------------------
# The recognition net.


class ScaledConv(nn.Module):
    """conv + bias followed by face-api's per-channel scale layer, the scale folded into the conv.

    kernel, stride: of the conv; padding "same" (stride 1, pads 1 for 3x3) or "valid"; relu: apply
    ReLU after.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 padding: str = "same", relu: bool = True) -> None:
        super().__init__()
        if padding == "same" and stride != 1:
            raise ValueError("'same' padding is only used with stride 1 in this net")
        self.padding, self.relu = padding, relu
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride,
                              padding=kernel // 2 if padding == "same" else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return F.relu(out) if self.relu else out

    def extra_repr(self) -> str:
        return f"padding={self.padding!r}, relu={self.relu}"


class ResidualBlock(nn.Module):
    """Two 3x3 scaled convs plus shortcut; `down`: the first conv has stride 2 ('valid') and the
    shortcut is a 2x2 average pool, zero-padded to twice the channels."""

    def __init__(self, in_channels: int, out_channels: int, down: bool = False) -> None:
        super().__init__()
        self.down = down
        self.conv1 = ScaledConv(in_channels, out_channels, 3, stride=2 if down else 1,
                                padding="valid" if down else "same")
        self.conv2 = ScaledConv(out_channels, out_channels, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        if not self.down:
            return F.relu(out + x)
        shortcut = F.avg_pool2d(x, 2)
        dh, dw = shortcut.shape[2] - out.shape[2], shortcut.shape[3] - out.shape[3]
        if dh or dw:  # face-api appends a zero row and column to the conv branch
            out = F.pad(out, (0, dw, 0, dh))
        if shortcut.shape[1] != out.shape[1]:
            shortcut = torch.cat([shortcut, torch.zeros_like(shortcut)], dim=1)
        return F.relu(out + shortcut)

    def extra_repr(self) -> str:
        return f"down={self.down}"


class FaceRecognitionNet(nn.Module):
    """dlib's ResNet metric net as face-api has it: (N, 3, 150, 150) RGB in [0, 1] -> (N, 128)."""

    input_size = CHIP_SIZE
    # (name in face-api's weights, in channels, out channels, down block)
    blocks = (
        ("conv32_1", 32, 32, False), ("conv32_2", 32, 32, False), ("conv32_3", 32, 32, False),
        ("conv64_down", 32, 64, True), ("conv64_1", 64, 64, False), ("conv64_2", 64, 64, False),
        ("conv64_3", 64, 64, False),
        ("conv128_down", 64, 128, True), ("conv128_1", 128, 128, False), ("conv128_2", 128, 128, False),
        ("conv256_down", 128, 256, True), ("conv256_1", 256, 256, False), ("conv256_2", 256, 256, False),
        ("conv256_down_out", 256, 256, True),
    )

    def __init__(self) -> None:
        super().__init__()
        self.stem = ScaledConv(3, 32, 7, stride=2, padding="valid")
        self.res = nn.ModuleDict(
            {name: ResidualBlock(cin, cout, down) for name, cin, cout, down in self.blocks})
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(f"FaceRecognitionNet takes (N, 3, 150, 150) chips, got {tuple(x.shape)}")
        out = F.max_pool2d(self.stem(faceapi_normalize(x)), 3, stride=2)
        for block in self.res.values():
            out = block(out)
        return self.fc(out.mean(dim=(2, 3)))

    @torch.no_grad()
    def load_tfjs(self, weights: dict[str, np.ndarray], source: str | Path = "?") -> None:
        """Copy face-api's tensors (`<block>/conv{1,2}/{conv/filters, conv/bias, scale/weights,
        scale/biases}`, `fc`) into the net, folding each scale layer into its conv."""
        used: set[str] = set()

        def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if name not in weights:
                raise CheckpointError(f"face-api recognition weights lack tensor {name!r}", path=source)
            value = torch.from_numpy(np.ascontiguousarray(weights[name]))
            if tuple(value.shape) != shape:
                raise CheckpointError(f"face-api recognition tensor {name!r} has shape {list(value.shape)}, "
                                      f"expected {list(shape)}", path=source)
            used.add(name)
            return value

        def load_conv(prefix: str, layer: ScaledConv) -> None:
            out_c, in_c, kh, kw = layer.conv.weight.shape
            filters = get(f"{prefix}/conv/filters", (kh, kw, in_c, out_c)).permute(3, 2, 0, 1)
            bias = get(f"{prefix}/conv/bias", (out_c,))
            gain = get(f"{prefix}/scale/weights", (out_c,))
            shift = get(f"{prefix}/scale/biases", (out_c,))
            layer.conv.weight.copy_(filters * gain[:, None, None, None])
            layer.conv.bias.copy_(bias * gain + shift)

        load_conv("conv32_down", self.stem)
        for name, block in self.res.items():
            load_conv(f"{name}/conv1", block.conv1)
            load_conv(f"{name}/conv2", block.conv2)
        self.fc.weight.copy_(get("fc", (256, 128)).t())
        extra = sorted(set(weights) - used)
        if extra:
            raise CheckpointError(f"face-api recognition weights have unexpected tensors {extra[:3]}",
                                  path=source)


class IdentityEncoder(nn.Module):
    """128-D identity descriptors of aligned chips or of faces given by landmarks; differentiable."""

    name = "faceapi-recognition"

    def __init__(self, net: FaceRecognitionNet, weights_sha256: str = "", chip_size: int = CHIP_SIZE,
                 chip_padding: float = CHIP_PADDING) -> None:
        super().__init__()
        self.net = net
        self.weights_sha256 = weights_sha256
        self.chip_size, self.chip_padding = chip_size, chip_padding

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, device: str | torch.device = "cpu"
                     ) -> IdentityEncoder:
        """The vendored face-api recognition weights, or a TF.js manifest (or its folder) given."""
        manifest = Path(weights) if weights is not None else RECOGNITION_MANIFEST
        if manifest.is_dir():
            manifest = manifest / RECOGNITION_MANIFEST.name
        net = FaceRecognitionNet()
        net.load_tfjs(read_tfjs_weights(manifest), source=manifest)
        return cls(net, tfjs_weights_sha256(manifest)).to(device).eval()

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """(N, 3, 150, 150) dlib-aligned chips, RGB in [0, 1] -> (N, 128) descriptors."""
        return self.net(chips)

    forward = embed

    def align(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """dlib-aligned chips of the faces whose (N, 68, 2) landmarks are given."""
        return align_face_chips(images, points, self.chip_size, self.chip_padding)

    def from_landmarks(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(N, 128) descriptors of images (N, 3, H, W) in [0, 1] given their (N, 68, 2) landmarks."""
        return self.embed(self.align(images, points))

    def provenance(self) -> dict:
        return {"identity": self.name, "weights_sha256": self.weights_sha256,
                "chip_size": self.chip_size, "chip_padding": self.chip_padding}


def identity_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of descriptors along the last dimension ((N, 128), (N, 128) -> (N,))."""
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8)
