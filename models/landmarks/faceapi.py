"""face-api's 68-point landmark net (FaceLandmark68Net), ported to PyTorch; the offline default.

Architecture (from @vladmandic/face-api 1.7.15, src/faceFeatureExtractor and src/faceLandmarkNet):
- input: the face crop padded to a square (centred, black), resized to 112 x 112, RGB 0..255 minus
  the mean (122.782, 117.001, 104.298), divided by 255;
- four dense blocks (32, 64, 128, 256 channels), each halving the resolution: conv0 (a plain 3x3 conv
  in the first block, a depthwise-separable conv after) with stride 2, then three stride-1 separable
  convs whose inputs are the ReLU of the sum of all earlier outputs of the block;
  112 -> 56 -> 28 -> 14 -> 7;
- 7x7 average pool, a fully connected layer 256 -> 136: x0, y0, x1, y1, ... of the 68 points as
  fractions of the padded square.
Convolutions use TF's 'same' padding, which for stride 2 on an even size pads only bottom/right.

Weights: the vendored TF.js files in models/assets/faceapi/ (uint8-quantised; see its README).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.landmarks.base import NUM_LANDMARKS, LandmarkBackend, LandmarkResult, crop_to_image_points
from models.tfjs_weights import read_tfjs_weights, tfjs_weights_sha256
from storage.errors import CheckpointError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "faceapi"
LANDMARK_MANIFEST = ASSETS_DIR / "face_landmark_68_model-weights_manifest.json"
# face-api's per-channel mean (0..255 scale), subtracted before dividing by 255; both nets use it.
FACEAPI_MEAN_RGB = (122.782, 117.001, 104.298)


def faceapi_normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> face-api's input scale: (255 x - mean) / 255."""
    mean = torch.tensor(FACEAPI_MEAN_RGB, device=images.device, dtype=images.dtype) / 255.0
    return images - mean[None, :, None, None]


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad NCHW `x` as TF's padding='SAME' does (any extra pixel goes bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: W then H
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SeparableConv2d(nn.Module):
    """TF separableConv2d + bias: depthwise 3x3 (stride s, 'same'), then pointwise 1x1 with bias."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(tf_same_pad(x, 3, self.stride)))

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class DenseBlock(nn.Module):
    """face-api's denseBlock4: four convs, each fed the ReLU of the sum of the block's earlier outputs.

    in_channels/out_channels: channels in and out; first: conv0 is a plain 3x3 conv (the first
    block, on RGB) rather than a separable one.
    """

    def __init__(self, in_channels: int, out_channels: int, first: bool = False) -> None:
        super().__init__()
        self.first = first
        self.conv0 = (nn.Conv2d(in_channels, out_channels, 3, stride=2) if first
                      else SeparableConv2d(in_channels, out_channels, stride=2))
        self.conv1 = SeparableConv2d(out_channels, out_channels)
        self.conv2 = SeparableConv2d(out_channels, out_channels)
        self.conv3 = SeparableConv2d(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = F.relu(self.conv0(tf_same_pad(x, 3, 2) if self.first else x))
        out2 = self.conv1(out1)
        out3 = self.conv2(F.relu(out1 + out2))
        out4 = self.conv3(F.relu(out1 + out2 + out3))
        return F.relu(out1 + out2 + out3 + out4)

    def extra_repr(self) -> str:
        return f"first={self.first}"


class FaceLandmark68Net(nn.Module):
    """The network alone: (N, 3, 112, 112) RGB in [0, 1] -> (N, 68, 2) x, y as fractions of the input."""

    input_size = 112
    channels = (32, 64, 128, 256)

    def __init__(self) -> None:
        super().__init__()
        chans = (3, *self.channels)
        self.dense = nn.ModuleList(
            DenseBlock(chans[i], chans[i + 1], first=(i == 0)) for i in range(len(self.channels)))
        self.fc = nn.Linear(self.channels[-1], 2 * NUM_LANDMARKS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(f"FaceLandmark68Net takes (N, 3, 112, 112), got {tuple(x.shape)}")
        out = faceapi_normalize(x)
        for block in self.dense:
            out = block(out)
        out = F.avg_pool2d(out, 7, stride=2)  # 7x7 -> 1x1, as tf.avgPool(out, [7, 7], [2, 2], 'valid')
        return self.fc(out.flatten(1)).view(-1, NUM_LANDMARKS, 2)

    @torch.no_grad()
    def load_tfjs(self, weights: dict[str, np.ndarray], source: str | Path = "?") -> None:
        """Copy face-api's tensors (TF layouts, names `dense{i}/conv{j}/...`, `fc/...`) into the net."""
        used: set[str] = set()

        def take(name: str, param: torch.Tensor, layout: tuple[int, ...] | None) -> None:
            if name not in weights:
                raise CheckpointError(f"face-api landmark weights lack tensor {name!r}", path=source)
            value = torch.from_numpy(np.ascontiguousarray(weights[name]))
            if layout is not None:
                value = value.permute(*layout)
            if tuple(value.shape) != tuple(param.shape):
                raise CheckpointError(f"face-api landmark tensor {name!r} has shape "
                                      f"{list(weights[name].shape)}, expected one for {list(param.shape)}",
                                      path=source)
            param.copy_(value)
            used.add(name)

        hwio, hwc1 = (3, 2, 0, 1), (2, 3, 0, 1)  # TF conv HWIO -> OIHW; depthwise HWC1 -> C1HW
        for i, block in enumerate(self.dense):
            for j, conv in enumerate((block.conv0, block.conv1, block.conv2, block.conv3)):
                prefix = f"dense{i}/conv{j}"
                if isinstance(conv, SeparableConv2d):
                    take(f"{prefix}/depthwise_filter", conv.depthwise.weight, hwc1)
                    take(f"{prefix}/pointwise_filter", conv.pointwise.weight, hwio)
                    take(f"{prefix}/bias", conv.pointwise.bias, None)
                else:
                    take(f"{prefix}/filters", conv.weight, hwio)
                    take(f"{prefix}/bias", conv.bias, None)
        take("fc/weights", self.fc.weight, (1, 0))
        take("fc/bias", self.fc.bias, None)
        extra = sorted(set(weights) - used)
        if extra:
            raise CheckpointError(f"face-api landmark weights have unexpected tensors {extra[:3]}",
                                  path=source)


class FaceApiLandmarks(LandmarkBackend):
    """face-api's landmark net behind the backend interface.

    Each face box is grown to a square about its centre (face-api pads the crop to a square,
    centred), resampled to 112 x 112 (`crop_square`: bilinear, anti-aliased for large faces), and
    the net's fractions of that square are mapped back to image pixels. Fully differentiable.
    """

    name = "faceapi"
    differentiable = True

    def __init__(self, net: FaceLandmark68Net, weights_sha256: str, weights_path: str) -> None:
        super().__init__()
        self.net = net
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path

    @classmethod
    def from_weights(cls, weights: str | Path | None = None) -> FaceApiLandmarks:
        """Load the vendored weights, or a TF.js manifest (or the folder holding face-api's
        `face_landmark_68_model-weights_manifest.json`) given as `weights`."""
        manifest = Path(weights) if weights is not None else LANDMARK_MANIFEST
        if manifest.is_dir():
            manifest = manifest / LANDMARK_MANIFEST.name
        net = FaceLandmark68Net()
        net.load_tfjs(read_tfjs_weights(manifest), source=manifest)
        return cls(net.eval(), tfjs_weights_sha256(manifest), str(manifest))

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None) -> LandmarkResult:
        size = self.net.input_size
        regions, crops = self.square_crops(images, boxes, size)
        # face-api's outputs are pixel positions in its 112 input divided by 112 (tfjs resizes with
        # pixel 0 on pixel 0), so fraction * 112 is a crop pixel coordinate.
        points = crop_to_image_points(self.net(crops) * size, regions, size)
        return LandmarkResult(points=points, heatmaps=None, crops=regions)

    def provenance(self) -> dict:
        return {"backend": self.name, "weights_sha256": self.weights_sha256,
                "input_size": self.net.input_size}
