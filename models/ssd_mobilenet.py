"""face-api's SSD MobileNet v1 face detector, ported to PyTorch.

The network (Liu et al., "SSD: Single Shot MultiBox Detector", on the MobileNet v1 backbone of Howard
et al.) as `@vladmandic/face-api` 1.7.15 runs it, with that package's weights
(models/assets/faceapi/ssd_mobilenetv1_model*, TF.js format, uint8-quantised; see the README there).
Written from the package's description of the architecture, not copied:

- input: the image padded to a square (padding bottom/right), resized to 512 x 512, scaled to
  [-1, 1];
- backbone: a 3x3 stride-2 convolution, then 13 depthwise-separable pairs (depthwise 3x3 + batch
  norm, pointwise 1x1 with a folded bias), ReLU6 after each; stride 2 in pairs 2, 4, 6 and 12. The
  output of pair 11 (32 x 32, 512 channels) and the last (16 x 16, 1024) feed the heads;
- extra layers: four (1x1, 3x3 stride 2) pairs down to 8, 4, 2 and 1 cells;
- heads: per feature map a 1x1 box-encoding conv (4 numbers per anchor) and a 1x1 class conv
  (3 numbers per anchor; sigmoid of the second is the face score): 3 anchors per cell on the 32 x 32
  map, 6 on the others, 5118 in all. The anchors ship with the weights (`Output/extra_dim`, as
  (ymin, xmin, ymax, xmax) fractions of the square);
- decoding: the usual SSD box coder with scales (10, 10, 5, 5); then greedy non-maximum suppression
  at IoU 0.5.

Every convolution pads as TF's 'SAME' does (extra pixel bottom/right). Torch only; the detector
interface around it is models/detection.py's `SsdMobilenetDetector`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.landmarks.faceapi import ASSETS_DIR, tf_same_pad
from models.tfjs_weights import read_tfjs_weights, tfjs_weights_sha256
from storage.errors import CheckpointError

__all__ = ["INPUT_SIZE", "SSD_MANIFEST", "SsdMobilenetV1", "load_ssd_mobilenet"]

SSD_MANIFEST = ASSETS_DIR / "ssd_mobilenetv1_model-weights_manifest.json"
INPUT_SIZE = 512
NUM_ANCHORS = 5118
_BN_EPS = 1e-3  # the TF graph's batch-norm epsilon
_BOX_SCALES = (10.0, 10.0, 5.0, 5.0)  # SSD box coder: ty, tx, th, tw
_STRIDE2_PAIRS = (2, 4, 6, 12)
# (in, out) channels of the backbone's 13 separable pairs
_PAIRS = [(32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
          (512, 512), (512, 512), (512, 512), (512, 1024), (1024, 1024)]
# (in, out, kernel, stride) of the 8 extra convolutions
_EXTRA = [(1024, 256, 1, 1), (256, 512, 3, 2), (512, 128, 1, 1), (128, 256, 3, 2), (256, 128, 1, 1),
          (128, 256, 3, 2), (256, 64, 1, 1), (64, 128, 3, 2)]
# (channels, anchors per cell) of the six heads, in output order: pair 11, backbone out, extras 1, 3, 5, 7
_HEADS = [(512, 3), (1024, 6), (512, 6), (256, 6), (256, 6), (128, 6)]


class _Conv(nn.Module):
    """Convolution (no bias) + per-channel offset + ReLU6, TF 'SAME' padding: face-api's
    'pointwise' layer (also used for the first 3x3 and the extra 3x3 convolutions)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.weight = nn.Parameter(torch.zeros(cout, cin, kernel, kernel))
        self.offset = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(tf_same_pad(x, self.kernel, self.stride), self.weight, stride=self.stride)
        return (x + self.offset[None, :, None, None]).clamp(0.0, 6.0)


class _Depthwise(nn.Module):
    """Depthwise 3x3 + batch norm (inference statistics) + ReLU6."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.zeros(channels, 1, 3, 3))
        self.bn = nn.BatchNorm2d(channels, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(tf_same_pad(x, 3, self.stride), self.weight, stride=self.stride, groups=x.shape[1])
        return self.bn(x).clamp(0.0, 6.0)


class SsdMobilenetV1(nn.Module):
    """The detector network: (N, 3, 512, 512) RGB in [0, 1] -> (boxes (N, 5118, 4) as (ymin, xmin,
    ymax, xmax) fractions of the input square, face scores (N, 5118) in [0, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = _Conv(3, 32, 3, 2)
        self.depthwise = nn.ModuleList(
            _Depthwise(cin, 2 if i + 1 in _STRIDE2_PAIRS else 1) for i, (cin, _) in enumerate(_PAIRS))
        self.pointwise = nn.ModuleList(_Conv(cin, cout, 1, 1) for cin, cout in _PAIRS)
        self.extra = nn.ModuleList(_Conv(*spec) for spec in _EXTRA)
        self.box_heads = nn.ModuleList(nn.Conv2d(c, 4 * a, 1) for c, a in _HEADS)
        self.class_heads = nn.ModuleList(nn.Conv2d(c, 3 * a, 1) for c, a in _HEADS)
        self.register_buffer("anchors", torch.zeros(NUM_ANCHORS, 4))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.conv0(x * 2.0 - 1.0)
        conv11 = out
        for i, (dw, pw) in enumerate(zip(self.depthwise, self.pointwise, strict=True)):
            out = pw(dw(out))
            if i + 1 == 11:
                conv11 = out
        maps = [conv11, out]
        for k, layer in enumerate(self.extra):
            out = layer(out)
            if k % 2 == 1:
                maps.append(out)
        return maps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        encodings, logits = [], []
        heads = zip(self.box_heads, self.class_heads, strict=True)
        for fmap, (box_head, class_head) in zip(self.features(x), heads, strict=True):
            # NCHW -> NHWC before flattening, so anchors come in TF's (row, column, anchor) order.
            encodings.append(box_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, 4))
            logits.append(class_head(fmap).permute(0, 2, 3, 1).reshape(n, -1, 3))
        enc, cls = torch.cat(encodings, 1), torch.cat(logits, 1)
        if enc.shape[1] != NUM_ANCHORS:
            raise ValueError(f"expected a {INPUT_SIZE}x{INPUT_SIZE} input ({NUM_ANCHORS} anchors), "
                             f"got {tuple(x.shape[-2:])}")
        return self.decode(enc), torch.sigmoid(cls[..., 1])

    def decode(self, enc: torch.Tensor) -> torch.Tensor:
        a = self.anchors
        size = a[:, 2:] - a[:, :2]  # (h, w)
        centre = a[:, :2] + size / 2
        scales = enc.new_tensor(_BOX_SCALES)
        enc = enc / scales
        c = enc[..., :2] * size + centre
        half = torch.exp(enc[..., 2:]) * size / 2
        return torch.cat([c - half, c + half], -1)

    @torch.no_grad()
    def load_tfjs(self, weights: dict[str, np.ndarray], source: str | Path = "?") -> None:
        """Copy face-api's tensors (TF layouts and names) into the net."""
        used: set[str] = set()

        def take(name: str, param: torch.Tensor, layout: tuple[int, ...] | None = None) -> None:
            if name not in weights:
                raise CheckpointError(f"SSD MobileNet weights lack tensor {name!r}", path=source)
            value = torch.from_numpy(np.ascontiguousarray(weights[name]))
            if layout is not None:
                value = value.permute(*layout)
            value = value.reshape(param.shape) if value.numel() == param.numel() else value
            if tuple(value.shape) != tuple(param.shape):
                raise CheckpointError(f"SSD MobileNet tensor {name!r} has shape {list(weights[name].shape)}, "
                                      f"expected {list(param.shape)}", path=source)
            param.copy_(value)
            used.add(name)

        hwio, hwc1 = (3, 2, 0, 1), (2, 3, 0, 1)

        def conv(prefix: str, layer: _Conv) -> None:
            take(f"{prefix}/weights", layer.weight, hwio)
            take(f"{prefix}/convolution_bn_offset", layer.offset)

        conv("MobilenetV1/Conv2d_0_pointwise", self.conv0)
        for i, (dw, pw) in enumerate(zip(self.depthwise, self.pointwise, strict=True), 1):
            p = f"MobilenetV1/Conv2d_{i}_depthwise"
            take(f"{p}/depthwise_weights", dw.weight, hwc1)
            take(f"{p}/BatchNorm/gamma", dw.bn.weight)
            take(f"{p}/BatchNorm/beta", dw.bn.bias)
            take(f"{p}/BatchNorm/moving_mean", dw.bn.running_mean)
            take(f"{p}/BatchNorm/moving_variance", dw.bn.running_var)
            conv(f"MobilenetV1/Conv2d_{i}_pointwise", pw)
        for k, layer in enumerate(self.extra):
            conv(f"Prediction/Conv2d_{k}_pointwise", layer)
        for k, (box_head, class_head) in enumerate(zip(self.box_heads, self.class_heads, strict=True)):
            for head, what in ((box_head, "BoxEncodingPredictor"), (class_head, "ClassPredictor")):
                take(f"Prediction/BoxPredictor_{k}/{what}/weights", head.weight, hwio)
                take(f"Prediction/BoxPredictor_{k}/{what}/biases", head.bias)
        take("Output/extra_dim", self.anchors)
        # The rest of the manifest are scalars and 2-3 element constants of the exported TF graph
        # (resize size, slice bounds, stack indices); anything larger left over is a wrong file.
        extra = sorted(n for n in set(weights) - used if weights[n].size > 3)
        if extra:
            raise CheckpointError(f"SSD MobileNet weights have unexpected tensors {extra[:3]}", path=source)


def load_ssd_mobilenet(manifest: str | Path | None = None) -> tuple[SsdMobilenetV1, str, str]:
    """The network with the vendored weights (or a TF.js manifest / the folder holding
    `ssd_mobilenetv1_model-weights_manifest.json`), in eval mode, without gradients.
    Returns (net, weights sha256, manifest path)."""
    path = Path(manifest) if manifest is not None else SSD_MANIFEST
    if path.is_dir():
        path = path / SSD_MANIFEST.name
    net = SsdMobilenetV1()
    net.load_tfjs(read_tfjs_weights(path), source=path)
    return net.eval().requires_grad_(False), tfjs_weights_sha256(path), str(path)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, min_score: float,
        max_results: int) -> np.ndarray:
    """Greedy non-maximum suppression over (K, 4) boxes (any consistent corner layout): indices of
    the kept boxes, best score first."""
    order = np.flatnonzero(scores > min_score)
    order = order[np.argsort(-scores[order], kind="stable")]
    lo = np.minimum(boxes[:, :2], boxes[:, 2:])
    hi = np.maximum(boxes[:, :2], boxes[:, 2:])
    area = np.prod(hi - lo, axis=1)
    keep: list[int] = []
    for i in order:
        if len(keep) >= max_results:
            break
        if keep:
            k = np.asarray(keep)
            inter = np.prod(np.clip(np.minimum(hi[k], hi[i]) - np.maximum(lo[k], lo[i]), 0, None), axis=1)
            iou = inter / np.maximum(area[k] + area[i] - inter, 1e-12)
            if (iou > iou_threshold).any():
                continue
        keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)
