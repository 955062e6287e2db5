"""StyleGAN2 generator (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN"), config F.

Written for this project in plain PyTorch: no custom CUDA ops, runs on CPU and CUDA, float32 everywhere
except the optional float16 blocks on CUDA. Parameter and buffer names are those of NVIDIA's official
network pickles (`mapping.fc0.weight`, `synthesis.b64.conv0.affine.bias`, `synthesis.b4.const`,
`...noise_const`, ...), so an official `state_dict` loads one to one (`models.checkpoints` does that);
the only official entries missing here are the `resample_filter` buffers, which are a function of the
architecture and not weights.

The maths, in the order a layer applies it:
  mapping    z -> normalize_2nd_moment(z) -> num_layers x (equalised-lr linear, lrelu*sqrt(2)) -> w,
             broadcast to num_ws copies; truncation lerps towards `w_avg` (optionally only the first
             `truncation_cutoff` layers).
  synthesis  a learned 4x4 constant; per resolution a block of two modulated 3x3 convolutions (the first
             upsamples 2x: transposed conv, then the [1,3,3,1] low-pass filter) and a 1x1 toRGB whose
             output is added to the 2x-upsampled image of the previous block ("skip" architecture).
  layer      styles = affine(w) (bias initialised to 1); weight * styles, then demodulation
             (divide each output filter by its L2 norm); + noise * noise_strength; + bias; lrelu(0.2)
             * sqrt(2); clamp to +-conv_clamp.

Equalised learning rate: weights are stored unscaled (N(0,1) at init, divided by lr_multiplier) and
scaled at run time, as in the official code; that is what makes the stored tensors interchangeable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.generator import GeneratorBase, SynthesisBase

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps activations' second moment through lrelu(0.2)
RESAMPLE_TAPS = (1, 3, 3, 1)


# ---------------------------------------------------------------------------------------------------
# Functional pieces


def make_resample_filter(taps: tuple[int, ...] = RESAMPLE_TAPS) -> torch.Tensor:
    """2-D low-pass filter: outer product of the 1-D taps, normalised to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def fir_filter_2d(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int], gain: float = 1.0) -> torch.Tensor:
    """Depthwise 2-D FIR filter (true convolution) with zero padding `pad` = (before, after) on both axes.

    Output size is H + pad0 + pad1 - taps + 1.
    """
    channels = x.shape[1]
    kernel = (f.flip([0, 1]) * gain).to(x.dtype)[None, None].repeat(channels, 1, 1, 1)
    if pad[0] == pad[1] >= 0:  # let the conv pad (saves a padded copy of x)
        return F.conv2d(x, kernel, padding=pad[0], groups=channels)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, kernel, groups=channels)


def upsample_2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling: zero insertion, then the low-pass filter with gain 4 (keeps the mean)."""
    n, c, h, w = x.shape
    taps = f.shape[0]
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, 1, 0, 0, 0, 1])  # a zero after every sample on both axes
    x = x.reshape(n, c, 2 * h, 2 * w)
    return fir_filter_2d(x, f, pad=((taps + 1) // 2, (taps - 2) // 2), gain=4.0)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(x: torch.Tensor, bias: torch.Tensor, *, lrelu: bool, gain: float = 1.0,
             clamp: float | None = None) -> torch.Tensor:
    """x + bias (per channel), optional lrelu(0.2), times gain, clamped to +-clamp."""
    x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if lrelu:
        x = F.leaky_relu(x, LRELU_SLOPE)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def _conv(x: torch.Tensor, w: torch.Tensor, *, up: int, padding: int, f: torch.Tensor | None,
          groups: int) -> torch.Tensor:
    """Plain conv (up=1), or 2x upsampling conv: transposed conv with stride 2, then the low-pass filter.

    `w` is (groups * out, in, k, k) in conv2d layout. The padding of the filter step makes the output
    exactly 2x the input: the transposed conv gives 2(H-1)+k, the filter adds pad0+pad1-taps+1.
    """
    if up == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if up != 2 or f is None:
        raise ValueError(f"unsupported upsampling factor {up}")
    out_total, in_channels, kh, kw = w.shape
    # conv_transpose2d wants (groups * in, out, k, k).
    w = w.reshape(groups, out_total // groups, in_channels, kh, kw).transpose(1, 2)
    w = w.reshape(groups * in_channels, out_total // groups, kh, kw)
    x = F.conv_transpose2d(x, w, stride=2, groups=groups)
    taps = f.shape[0]
    pad0 = padding + (taps + 1) // 2 - (kw - 1)
    pad1 = padding + (taps - 2) // 2 - (kw - 2)
    return fir_filter_2d(x, f, pad=(pad0, pad1), gain=4.0)


def modulated_conv2d(
    x: torch.Tensor,                    # (N, in, H, W) activations
    weight: torch.Tensor,               # (out, in, k, k) unscaled conv weight
    styles: torch.Tensor,               # (N, in) per-sample input-channel scales
    *,
    demodulate: bool = True,            # normalise each output filter to unit L2 norm (per sample)
    up: int = 1,                        # 1, or 2 for the upsampling conv
    padding: int = 0,                   # conv padding (with respect to the upsampled image when up=2)
    resample_filter: torch.Tensor | None = None,  # low-pass filter for up=2
    noise: torch.Tensor | None = None,  # added after demodulation, before the bias
    fused: bool = True,                 # one grouped conv with per-sample weights, or scale activations
) -> torch.Tensor:
    """StyleGAN2's modulated convolution (weight demodulation).

    fused=True builds per-sample weights and runs one grouped convolution (cheap for batch 1);
    fused=False scales the activations before and after one shared convolution instead (the same
    function; cheaper for large batches). Both give the same result up to float rounding.
    """
    n, in_channels = x.shape[:2]
    out_channels, w_in, kh, kw = weight.shape
    if w_in != in_channels or styles.shape != (n, in_channels):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"styles {tuple(styles.shape)} do not fit together")

    if x.dtype == torch.float16 and demodulate:
        # Bring weight and styles to max-abs ~1 so the products below stay in fp16 range;
        # demodulation divides the scale out again.
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)

    dcoefs = None
    if demodulate or fused:
        w = weight.unsqueeze(0) * styles.reshape(n, 1, in_channels, 1, 1)  # (N, out, in, k, k)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # (N, out)

    if fused:
        if dcoefs is not None:
            w = w * dcoefs.reshape(n, out_channels, 1, 1, 1)
        y = _conv(x.reshape(1, n * in_channels, *x.shape[2:]),
                  w.reshape(n * out_channels, in_channels, kh, kw).to(x.dtype),
                  up=up, padding=padding, f=resample_filter, groups=n)
        y = y.reshape(n, out_channels, *y.shape[2:])
    else:
        y = x * styles.to(x.dtype).reshape(n, in_channels, 1, 1)
        y = _conv(y, weight.to(x.dtype), up=up, padding=padding, f=resample_filter, groups=1)
        if dcoefs is not None:
            y = y * dcoefs.to(x.dtype).reshape(n, out_channels, 1, 1)
    if noise is not None:
        y = y + noise.to(y.dtype)
    return y


# ---------------------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate; optional lrelu."""

    def __init__(
        self,
        in_features: int,           # input width
        out_features: int,          # output width
        lrelu: bool = False,        # lrelu(0.2) * sqrt(2) after the bias, else linear
        lr_multiplier: float = 1.0, # learning-rate multiplier: weights stored / lr, scaled back at run time
        bias_init: float = 0.0,     # initial bias value (1 for the style affines: styles start at 1)
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.lrelu = lrelu
        self.lr_multiplier = lr_multiplier
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if not self.lrelu:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, lrelu=True, gain=LRELU_GAIN)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"activation={'lrelu' if self.lrelu else 'linear'}, lr_multiplier={self.lr_multiplier:g}")


class ModulatedLayer(nn.Module):
    """What every modulated convolution holds, StyleGAN2's and StyleGAN3's: the style affine (w -> one
    scale per input channel, starting at 1), the conv weight (N(0, 1), equalised learning rate) and
    the output bias. Created in this order, so a seeded generator draws the same weights."""

    def __init__(
        self,
        in_channels: int,                   # input feature maps (the affine's output width)
        out_channels: int,                  # output feature maps
        w_dim: int,                         # width of the w that drives the style affine
        kernel_size: int,                   # conv kernel size
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class MappingNetwork(nn.Module):
    """z (N, z_dim) -> ws (N, num_ws, w_dim), with truncation towards the tracked average w."""

    def __init__(
        self,
        z_dim: int,                         # input latent (Z) width
        w_dim: int,                         # intermediate latent (W) width
        num_ws: int,                        # copies of w to output, one per synthesis input
        num_layers: int = 8,                # fully connected layers
        layer_features: int | None = None,  # width of the hidden layers, None = w_dim
        lr_multiplier: float = 0.01,        # learning-rate multiplier of the mapping layers
        w_avg_beta: float | None = 0.995,   # decay of the moving average of w (used with update_w_avg)
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        hidden = w_dim if layer_features is None else layer_features
        widths = [z_dim] + [hidden] * (num_layers - 1) + [w_dim]
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(widths[i], widths[i + 1], lrelu=True,
                                                        lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,                        # (N, z_dim)
        c: torch.Tensor | None = None,          # class label; only unconditional networks: None
        *,
        truncation_psi: float = 1.0,            # 1 = no truncation; 0 = every w is w_avg
        truncation_cutoff: int | None = None,   # truncate only the first this many ws; None = all
        update_w_avg: bool = False,             # move w_avg towards this batch's mean (training only)
    ) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"mapping: z must be (N, {self.z_dim}), got {tuple(z.shape)}")
        if c is not None and c.numel() != 0:
            raise ValueError("mapping: this generator is unconditional; pass c=None")
        x = normalize_2nd_moment(z.to(torch.float32))
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_w_avg:
            if self.w_avg_beta is None:
                raise ValueError("mapping: w_avg_beta is None, w_avg is not tracked")
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            truncated = self.w_avg.lerp(ws, truncation_psi)
            if truncation_cutoff is None:
                ws = truncated
            else:
                keep = torch.arange(self.num_ws, device=ws.device) >= truncation_cutoff
                ws = torch.where(keep[None, :, None], ws, truncated)
        return ws

    def extra_repr(self) -> str:
        return (f"z_dim={self.z_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
                f"num_layers={self.num_layers}, w_avg_beta={self.w_avg_beta}")


class SynthesisLayer(ModulatedLayer):
    """Modulated 3x3 conv (+ 2x upsampling), noise, bias, lrelu, clamp."""

    def __init__(
        self,
        in_channels: int,                   # input feature maps
        out_channels: int,                  # output feature maps
        w_dim: int,                         # width of the w that drives the style affine
        resolution: int,                    # output resolution (input is resolution // up)
        up: int = 1,                        # 2 for the first layer of a block
        kernel_size: int = 3,               # conv kernel size
        use_noise: bool = True,             # per-pixel noise input (noise_const buffer + noise_strength)
        conv_clamp: float | None = None,    # clamp activations to +-conv_clamp; None = no clamp
    ) -> None:
        super().__init__(in_channels, out_channels, w_dim, kernel_size)
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("resample_filter", make_resample_filter(), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                fused_modconv: bool = True, noise: torch.Tensor | None = None) -> torch.Tensor:
        """`noise`: explicit (N, 1, R, R) unit noise for this call (e.g. one map per sample, as an
        optimiser holds them); it replaces `noise_const` / `noise_mode` and is scaled by
        noise_strength like them. Ignored by a layer without noise input."""
        in_res = self.resolution // self.up
        if x.shape[1:] != (self.in_channels, in_res, in_res):
            raise ValueError(f"synthesis layer {self.resolution}px: got input {tuple(x.shape)}, "
                             f"expected (N, {self.in_channels}, {in_res}, {in_res})")
        styles = self.affine(w)
        explicit, noise = noise, None
        if self.use_noise and explicit is not None:
            if explicit.shape != (x.shape[0], 1, self.resolution, self.resolution):
                raise ValueError(f"synthesis layer {self.resolution}px: noise must be (N, 1, "
                                 f"{self.resolution}, {self.resolution}) with N={x.shape[0]}, "
                                 f"got {tuple(explicit.shape)}")
            noise = explicit * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device,
                                dtype=torch.float32) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, noise=noise, fused=fused_modconv)
        return bias_act(x, self.bias, lrelu=True, gain=LRELU_GAIN, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, resolution={self.resolution}, up={self.up}, "
                f"use_noise={self.use_noise}, conv_clamp={self.conv_clamp}")


class ToRGBLayer(ModulatedLayer):
    """Modulated 1x1 conv to image channels, without demodulation; bias, clamp."""

    def __init__(
        self,
        in_channels: int,                   # input feature maps
        out_channels: int,                  # image channels (3)
        w_dim: int,                         # width of w
        conv_clamp: float | None = None,    # clamp output to +-conv_clamp; None = no clamp
    ) -> None:
        super().__init__(in_channels, out_channels, w_dim, kernel_size=1)
        self.conv_clamp = conv_clamp
        self.weight_gain = 1 / math.sqrt(in_channels)  # no demodulation, so the equalised-lr gain stays

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias, lrelu=False, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, conv_clamp={self.conv_clamp}"


class SynthesisBlock(nn.Module):
    """One resolution: (const | upsampling conv0), conv1, toRGB added to the upsampled image."""

    def __init__(
        self,
        in_channels: int,                   # feature maps coming in; 0 = first block (learned constant)
        out_channels: int,                  # feature maps of this resolution
        w_dim: int,                         # width of w
        resolution: int,                    # output resolution of the block
        img_channels: int = 3,              # image channels
        use_fp16: bool = False,             # run this block in float16 (CUDA only; else float32)
        conv_clamp: float | None = None,    # activation clamp of every layer; None = no clamp
        use_noise: bool = True,             # noise inputs in the conv layers
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.use_fp16 = use_fp16
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        use_noise=use_noise, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    use_noise=use_noise, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1
        self.register_buffer("resample_filter", make_resample_filter(), persistent=False)

    def forward(
        self,
        x: torch.Tensor | None,             # (N, in_channels, R/2, R/2), None for the first block
        img: torch.Tensor | None,           # (N, img_channels, R/2, R/2) float32, None for the first
        ws: torch.Tensor,                   # (N, num_conv + num_torgb, w_dim)
        noise_mode: str = "const",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,  # None: fused for batch 1 (see SynthesisNetwork.forward)
        noise: list[torch.Tensor] | None = None,  # num_conv explicit (N, 1, R, R) maps (see SynthesisLayer)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = ws.shape[0]
        if ws.shape[1:] != (self.num_conv + self.num_torgb, self.w_dim):
            raise ValueError(f"block {self.resolution}px: ws {tuple(ws.shape)}, expected "
                             f"(N, {self.num_conv + self.num_torgb}, {self.w_dim})")
        fp16 = self.use_fp16 and not force_fp32 and ws.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        if fused_modconv is None:
            fused_modconv = n == 1
        w_iter = iter(ws.unbind(dim=1))
        if noise is not None and len(noise) != self.num_conv:
            raise ValueError(f"block {self.resolution}px: {len(noise)} noise maps for {self.num_conv} layers")
        noise0, noise1 = (None, None) if noise is None else (noise[0], noise[-1])

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat(n, 1, 1, 1)
            x = self.conv1(x, next(w_iter), noise_mode, fused_modconv, noise1)
        else:
            if x is None or x.shape != (n, self.in_channels, self.resolution // 2, self.resolution // 2):
                raise ValueError(f"block {self.resolution}px: got x "
                                 f"{None if x is None else tuple(x.shape)}")
            x = x.to(dtype)
            x = self.conv0(x, next(w_iter), noise_mode, fused_modconv, noise0)
            x = self.conv1(x, next(w_iter), noise_mode, fused_modconv, noise1)

        if img is not None:
            img = upsample_2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv).to(torch.float32)
        img = y if img is None else img + y
        return x, img

    def extra_repr(self) -> str:
        return (f"resolution={self.resolution}, in_channels={self.in_channels}, "
                f"out_channels={self.out_channels}, use_fp16={self.use_fp16}")


class SynthesisNetwork(SynthesisBase):
    """ws (N, num_ws, w_dim) -> images (N, img_channels, R, R), values about [-1, 1]."""

    def __init__(
        self,
        w_dim: int,                         # width of w
        img_resolution: int,                # output resolution, a power of two >= 4
        img_channels: int = 3,              # image channels
        channel_base: int = 32768,          # feature maps at resolution r: min(channel_base // r,
        channel_max: int = 512,             #   channel_max)
        num_fp16_res: int = 0,              # run the N highest resolutions in float16 on CUDA
        conv_clamp: float | None = None,    # activation clamp (256 in NVIDIA's training configs)
        use_noise: bool = True,             # noise inputs
    ) -> None:
        super().__init__(w_dim, img_resolution, img_channels)
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.num_fp16_res = num_fp16_res
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(
                in_channels=channels[r // 2] if r > 4 else 0, out_channels=channels[r], w_dim=w_dim,
                resolution=r, img_channels=img_channels, use_fp16=r >= fp16_resolution,
                conv_clamp=conv_clamp, use_noise=use_noise)
            setattr(self, f"b{r}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last block's toRGB; earlier toRGBs share the next block's first w

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{r}") for r in self.block_resolutions]

    def noise_layers(self) -> list[tuple[str, SynthesisLayer]]:
        """The layers with a noise input, in the order `forward(noise=...)` takes their maps:
        ("b4.conv1", layer), ("b8.conv0", layer), ...; `layer.resolution` is the map's size."""
        layers = []
        for block in self.blocks():
            for name in ("conv0", "conv1"):
                layer = getattr(block, name, None)
                if layer is not None and layer.use_noise:
                    layers.append((f"b{block.resolution}.{name}", layer))
        return layers

    def forward(
        self,
        ws: torch.Tensor,                   # (N, num_ws, w_dim): W (all rows equal) or W+
        noise_mode: str = "const",          # "const": the stored noise_const buffers (deterministic);
                                            # "none": no noise; "random": fresh N(0,1) noise per call
        force_fp32: bool = False,           # ignore the float16 blocks even on CUDA
        fused_modconv: bool | None = None,  # None: fused for batch 1, activation scaling otherwise
        noise: list[torch.Tensor] | None = None,  # explicit per-sample noise: one (N, 1, r, r) map per
                                            # entry of noise_layers(), in that order; replaces
                                            # noise_mode (an inversion optimises one map per frame)
    ) -> torch.Tensor:
        self.check_ws(ws, noise_mode)
        noise_iter = None
        if noise is not None:
            expected = len(self.noise_layers())
            if len(noise) != expected:
                raise ValueError(f"synthesis: {len(noise)} noise maps given, the generator has {expected} "
                                 f"noise inputs (see noise_layers())")
            noise_iter = iter(noise)
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for block in self.blocks():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            block_noise = None
            if noise_iter is not None and block.conv1.use_noise:
                block_noise = [next(noise_iter) for _ in range(block.num_conv)]
            x, img = block(x, img, block_ws, noise_mode=noise_mode, force_fp32=force_fp32,
                           fused_modconv=fused_modconv, noise=block_noise)
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


# ---------------------------------------------------------------------------------------------------
# Generator


class Generator(GeneratorBase):
    """StyleGAN2 generator: `mapping` (z -> ws) and `synthesis` (ws -> image).

    `G.config` holds the constructor arguments (what the native checkpoint stores); after
    `models.load_generator`, `G.source_path` / `G.source_sha256` name the file it came from.
    """

    def __init__(
        self,
        img_resolution: int,                        # output resolution (power of two)
        z_dim: int = 512,                           # input latent width
        w_dim: int = 512,                           # intermediate latent width
        img_channels: int = 3,                      # image channels
        mapping_layers: int = 8,                    # layers of the mapping network
        mapping_layer_features: int | None = None,  # hidden width of the mapping network, None = w_dim
        mapping_lr_multiplier: float = 0.01,        # learning-rate multiplier of the mapping network
        w_avg_beta: float | None = 0.995,           # decay of the tracked w average
        channel_base: int = 32768,                  # feature maps: min(channel_base // res, channel_max)
        channel_max: int = 512,
        num_fp16_res: int = 0,                      # float16 for the N highest resolutions, CUDA only
        conv_clamp: float | None = None,            # activation clamp, None = none (NVIDIA trains with 256)
        use_noise: bool = True,                     # per-pixel noise inputs
    ) -> None:
        config = dict(
            img_resolution=img_resolution, z_dim=z_dim, w_dim=w_dim, img_channels=img_channels,
            mapping_layers=mapping_layers, mapping_layer_features=mapping_layer_features,
            mapping_lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta,
            channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp, use_noise=use_noise)
        super().__init__(config)
        synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base=channel_base,
                                     channel_max=channel_max, num_fp16_res=num_fp16_res,
                                     conv_clamp=conv_clamp, use_noise=use_noise)
        mapping = MappingNetwork(z_dim, w_dim, synthesis.num_ws, num_layers=mapping_layers,
                                 layer_features=mapping_layer_features,
                                 lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta)
        self._set_networks(synthesis, mapping)

    def forward(
        self,
        z: torch.Tensor,                        # (N, z_dim)
        c: torch.Tensor | None = None,          # unconditional: None
        *,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "const",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32, fused_modconv=fused_modconv)


def mean_w(G: Generator, num_samples: int = 10_000, seed: int = 123, batch: int = 1000) -> torch.Tensor:
    """Mean of mapped w over `num_samples` z ~ N(0, I) (numpy RandomState(seed), as NVIDIA's projector).

    Returns (w_dim,) on G's device. Used where a checkpoint carries no w_avg.
    """
    return mapped_w_stats(G, num_samples, seed, batch)[0]


def mapped_w_stats(G: Generator, num_samples: int = 10_000, seed: int = 123, batch: int = 1000
                   ) -> tuple[torch.Tensor, float]:
    """Mean (w_dim,) and spread of mapped w over `num_samples` z ~ N(0, I) drawn with numpy
    RandomState(seed), as NVIDIA's projector computes them: the spread is the scalar
    sqrt(mean_i |w_i - mean|^2) (the RMS distance from the mean, over all w_dim coordinates), which
    scales the projector's latent noise. Mean on G's device; sums in float64."""
    device = G.w_avg.device
    z_all = np.random.RandomState(seed).randn(num_samples, G.z_dim).astype(np.float32)
    total = torch.zeros(G.w_dim, dtype=torch.float64, device=device)
    total_sq = torch.zeros(G.w_dim, dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, num_samples, batch):
            z = torch.from_numpy(z_all[start:start + batch]).to(device)
            w = G.mapping(z)[:, 0].double()
            total += w.sum(dim=0)
            total_sq += w.square().sum(dim=0)
    mean = total / num_samples
    # sum_i |w_i - m|^2 = sum_i |w_i|^2 - n |m|^2
    spread = ((total_sq.sum() - num_samples * mean.square().sum()).clamp(min=0) / num_samples).sqrt()
    return mean.float(), float(spread)
