"""StyleGAN3 generator (Karras et al., "Alias-Free Generative Adversarial Networks"), configs T and R.

Written for this project in plain PyTorch from the paper and the structure of NVIDIA's official
networks (read, not copied): no custom CUDA ops, CPU and CUDA, float32. Parameter and buffer names are
those of NVIDIA's network pickles (`mapping.fc0.weight`, `synthesis.input.transform`,
`synthesis.L3_52_512.magnitude_ema`, `...up_filter`, ...), so an official state_dict loads one to one
(`models.checkpoints` does that).

The maths:
  mapping    as StyleGAN2's (models.stylegan2.MappingNetwork), 2 layers by default.
  input      w[0] -> affine (rotation angle as (cos, sin), translation) -> Fourier features: sin(2 pi
             (f . x + phase)) on a sampling grid of `size` px at `sampling_rate`, with random
             frequencies of the disc of radius `bandwidth`; the stored 3x3 `transform` (an inverse
             image transform chosen by the user) rotates/translates them; frequencies beyond the band
             are faded out; then a learned channel mixing (1x1, no bias).
  layer i    modulated conv (k x k, `padding` k - 1, input scaled by magnitude_ema^-1/2; demodulated,
             except the toRGB layer) -> filtered leaky ReLU: + bias, upsample by `up` (zero insertion +
             low-pass `up_filter`), lrelu(0.2) * sqrt(2), clamp, low-pass `down_filter` and keep every
             `down`-th sample. Cutoffs and stopbands follow a geometric progression from the first layer
             to the last; the last `num_critical` layers are critically sampled (cutoff = Nyquist).
  toRGB      1x1 modulated conv without demodulation (styles / sqrt(fan-in)), bias, clamp; the image
             is multiplied by `output_scale`.

Filters are designed as NVIDIA designs them: separable Kaiser-windowed sinc (scipy's `firwin` with a
transition `width`, written here in numpy), or, for the R config's downsampling filters outside the
critically sampled layers, a radially symmetric Kaiser-windowed jinc. A checkpoint carries the filters
too (`up_filter`, `down_filter`); the loader checks them against this design.

Speed: `filtered_lrelu` runs the FIR steps separably (1-D filters one axis at a time, or the 2-D radial
filter), upsamples with stride-`up` depthwise transposed convolutions (no multiplication by inserted zeros)
and downsamples with stride-`down` depthwise convolutions (only kept samples are computed).
`filtered_lrelu_reference`
is the literal version (zero insertion, full 2-D filters, then subsampling) kept for tests and the
benchmark.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.generator import GeneratorBase, SynthesisBase
from models.stylegan2 import FullyConnectedLayer, MappingNetwork, ModulatedLayer

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
ARCHITECTURE = "stylegan3"


# ---------------------------------------------------------------------------------------------------
# Filter design


def kaiser_beta_for(numtaps: int, width: float) -> float:
    """Kaiser window beta for a transition band `width` (fraction of Nyquist), Kaiser's formulas."""
    atten = 2.285 * (numtaps - 1) * math.pi * width + 7.95  # attenuation this length achieves (dB)
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten > 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> torch.Tensor | None:
    """Low-pass FIR filter with `numtaps` taps, `cutoff` and transition `width` in Hz at rate `fs`.

    Separable (radial=False): 1-D windowed sinc with a Kaiser window, normalised to unit DC gain
    (what scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs) returns). radial=True: a 2-D
    (numtaps, numtaps) jinc with the outer product of the same Kaiser window, sum 1. numtaps 1: None
    (identity).
    """
    if numtaps < 1:
        raise ValueError(f"numtaps must be >= 1, got {numtaps}")
    if numtaps == 1:
        return None
    nyquist = fs / 2
    beta = kaiser_beta_for(numtaps, width / nyquist)
    window = np.kaiser(numtaps, beta)
    if not radial:
        c = cutoff / nyquist
        m = np.arange(numtaps) - (numtaps - 1) / 2
        f = c * np.sinc(c * m) * window
        return torch.as_tensor(f / f.sum(), dtype=torch.float32)
    from scipy.special import j1

    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(r > 0, j1(2 * math.pi * cutoff * r) / (math.pi * np.where(r > 0, r, 1)), cutoff)
    f = f * np.outer(window, window)
    return torch.as_tensor(f / f.sum(), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# Filtered leaky ReLU


def _pad_crop(x: torch.Tensor, dim: int, lo: int, hi: int) -> torch.Tensor:
    """Zero-pad (positive) or crop (negative) `lo` before and `hi` after along `dim`."""
    if lo < 0:
        x = x.narrow(dim, -lo, x.shape[dim] + lo)
        lo = 0
    if hi < 0:
        x = x.narrow(dim, 0, x.shape[dim] + hi)
        hi = 0
    if lo or hi:
        pads = [0, 0] * (x.ndim - dim - 1) + [lo, hi]
        x = F.pad(x, pads)
    return x


def _up_weight(f: torch.Tensor | None, up: int, c: int, dim: int, x: torch.Tensor) -> torch.Tensor:
    """Depthwise kernel (c, 1, T, 1) or (c, 1, 1, T) of one upsampling axis: f times up (None: 1)."""
    f = torch.ones(1, dtype=x.dtype, device=x.device) if f is None else f.to(x.dtype)
    shape = (1, 1, f.shape[0], 1) if dim == 2 else (1, 1, 1, f.shape[0])
    return (f * up).reshape(shape).repeat(c, 1, 1, 1)


def _up_crop(length: int, taps: int, up: int, pad: tuple[int, int]) -> tuple[int, int]:
    """(lo, hi) for _pad_crop that turns the full transposed-conv output, (L-1)*up + T samples, into
    the padded convolution's L*up + pad0 + pad1 - T + 1 (its sample j is full sample j + T-1-pad0)."""
    full = (length - 1) * up + taps
    start = taps - 1 - pad[0]
    out_len = length * up + pad[0] + pad[1] - taps + 1
    return -start, out_len + start - full


def _upsample_axis(x: torch.Tensor, f: torch.Tensor | None, up: int, pad: tuple[int, int],
                   dim: int) -> torch.Tensor:
    """One axis of upfirdn: zero insertion by `up`, pad, convolve with 1-D `f` times `up`.

    A depthwise transposed convolution with stride `up` and kernel f computes exactly the products
    with the real samples (none with inserted zeros); a crop (or zero padding) gives the padded
    convolution's samples."""
    if f is None and up == 1:
        return _pad_crop(x, dim, pad[0], pad[1])
    taps = 1 if f is None else f.shape[0]
    stride = (up, 1) if dim == 2 else (1, up)
    y = F.conv_transpose2d(x, _up_weight(f, up, x.shape[1], dim, x), stride=stride, groups=x.shape[1])
    return _pad_crop(y, dim, *_up_crop(x.shape[dim], taps, up, pad))


def _upsample_axis_adjoint(g: torch.Tensor, f: torch.Tensor | None, up: int, pad: tuple[int, int],
                           dim: int, length: int) -> torch.Tensor:
    """The transpose of `_upsample_axis` (its gradient): undo the crop, then a stride-`up` conv."""
    if f is None and up == 1:
        return _pad_crop(g, dim, -pad[0], -pad[1])
    taps = 1 if f is None else f.shape[0]
    lo, hi = _up_crop(length, taps, up, pad)
    g = _pad_crop(g, dim, -lo, -hi)
    stride = (up, 1) if dim == 2 else (1, up)
    return F.conv2d(g, _up_weight(f, up, g.shape[1], dim, g), stride=stride, groups=g.shape[1])


def _down_weights(f: torch.Tensor | None, down: int, c: int, x: torch.Tensor
                  ) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """The depthwise (kernel, stride) steps of a downsampling: H then W for a 1-D filter, one 2-D step
    for a radial one; filters flipped (the convolutions run as correlations)."""
    if f is None:
        f = torch.ones(1, dtype=x.dtype, device=x.device)
    f = f.to(x.dtype)
    if f.ndim == 2:
        return [(f.flip([0, 1])[None, None].repeat(c, 1, 1, 1), (down, down))]
    taps = f.shape[0]
    return [(f.flip(0).reshape(1, 1, taps, 1).repeat(c, 1, 1, 1), (down, 1)),
            (f.flip(0).reshape(1, 1, 1, taps).repeat(c, 1, 1, 1), (1, down))]


def _downsample(x: torch.Tensor, f: torch.Tensor | None, down: int) -> torch.Tensor:
    """Convolve with `f` (1-D separable or 2-D) without padding and keep every `down`-th sample:
    depthwise convolutions with stride `down` (only the kept samples are computed)."""
    if f is None and down == 1:
        return x
    for weight, stride in _down_weights(f, down, x.shape[1], x):
        x = F.conv2d(x, weight, stride=stride, groups=x.shape[1])
    return x


def _downsample_adjoint(g: torch.Tensor, f: torch.Tensor | None, down: int,
                        size: tuple[int, int]) -> torch.Tensor:
    """The transpose of `_downsample` back to `size` (H, W): stride-`down` transposed convolutions."""
    if f is None and down == 1:
        return g
    for weight, stride in reversed(_down_weights(f, down, g.shape[1], g)):
        g = F.conv_transpose2d(g, weight, stride=stride, groups=g.shape[1])
    # the forward dropped up to down - 1 trailing samples that no output used: they get zero gradient
    return F.pad(g, [0, size[1] - g.shape[3], 0, size[0] - g.shape[2]])


class _FilteredLReLU(torch.autograd.Function):
    """filtered_lrelu with a hand-written backward: it keeps one byte per upsampled sample (which
    branch of the leaky ReLU / clamp it took) instead of the float intermediates autograd would keep
    (4 of them), and runs the transposed filters as forward convolutions."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None,
                up: int, down: int, padding: tuple[int, int, int, int], gain: float, slope: float,
                clamp: float | None) -> torch.Tensor:
        y = x + b.to(x.dtype).reshape(1, -1, 1, 1)
        y = _upsample_axis(y, fu, up, (padding[2], padding[3]), dim=2)
        size_h = y.shape[2]
        y = _upsample_axis(y, fu, up, (padding[0], padding[1]), dim=3)
        branch = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # 1: positive side (derivative gain), 2: negative side (gain * slope), 0: clamped
            branch = torch.where(y > 0, 1, 2).to(torch.uint8) if slope != 1 else \
                torch.ones_like(y, dtype=torch.uint8)
        if slope != 1:
            y = F.leaky_relu(y, slope)
        if gain != 1:
            y = y * gain
        if clamp is not None:
            if branch is not None:
                branch.masked_fill_(y.abs() > clamp, 0)
            y = y.clamp(-clamp, clamp)
        ctx.save_for_backward(branch, fu, fd)
        ctx.config = (up, down, padding, gain, slope, x.shape[2], size_h, x.shape[3], tuple(y.shape[2:]))
        return _downsample(y, fd, down)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        branch, fu, fd = ctx.saved_tensors
        up, down, padding, gain, slope, in_h, size_h, in_w, act_size = ctx.config
        g = _downsample_adjoint(grad, fd, down, act_size)
        g = torch.where(branch == 1, g * gain, torch.where(branch == 2, g * (gain * slope), 0))
        g = _upsample_axis_adjoint(g, fu, up, (padding[0], padding[1]), dim=3, length=in_w)
        g = _upsample_axis_adjoint(g, fu, up, (padding[2], padding[3]), dim=2, length=in_h)
        grad_b = g.sum(dim=[0, 2, 3]) if ctx.needs_input_grad[1] else None
        return (g if ctx.needs_input_grad[0] else None, grad_b, *[None] * 8)


def filtered_lrelu(
    x: torch.Tensor,                    # (N, C, H, W)
    fu: torch.Tensor | None,            # upsampling filter: 1-D (separable) or None (identity)
    fd: torch.Tensor | None,            # downsampling filter: 1-D, 2-D (radial) or None
    b: torch.Tensor,                    # (C,) bias, added before upsampling
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),  # (x0, x1, y0, y1) applied after zero insertion
    gain: float = LRELU_GAIN,
    slope: float = LRELU_SLOPE,
    clamp: float | None = None,
) -> torch.Tensor:
    """bias -> upsample `up`x with fu (gain up^2) -> lrelu(slope) * gain, clamp -> fd, keep every
    `down`-th sample. Filters are applied as convolutions. The same function as
    `filtered_lrelu_reference`, computed separably with strided depthwise convolutions, and with a
    backward pass that keeps one byte per upsampled sample (see the module docstring)."""
    if fu is not None and fu.ndim != 1:
        raise ValueError("filtered_lrelu: the upsampling filter must be 1-D (separable)")
    return _FilteredLReLU.apply(x, b, fu, fd, up, down, tuple(padding), float(gain), float(slope),
                                None if clamp is None else float(clamp))


def filtered_lrelu_reference(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None,
                             b: torch.Tensor, up: int = 1, down: int = 1,
                             padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = LRELU_GAIN,
                             slope: float = LRELU_SLOPE, clamp: float | None = None) -> torch.Tensor:
    """The literal filtered leaky ReLU: zero insertion, full 2-D FIR filters (outer products of the
    1-D ones), subsampling. Slow; the yardstick for `filtered_lrelu`."""
    n, c, h, w = x.shape

    def as_2d(f: torch.Tensor | None) -> torch.Tensor:
        if f is None:
            return torch.ones(1, 1, dtype=x.dtype, device=x.device)
        return torch.outer(f, f).to(x.dtype) if f.ndim == 1 else f.to(x.dtype)

    def conv(y: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        kernel = f2.flip([0, 1])[None, None].repeat(c, 1, 1, 1)
        return F.conv2d(y, kernel, groups=c)

    y = x + b.to(x.dtype).reshape(1, -1, 1, 1)
    if up > 1:
        y = y.reshape(n, c, h, 1, w, 1)
        y = F.pad(y, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    y = _pad_crop(_pad_crop(y, 2, padding[2], padding[3]), 3, padding[0], padding[1])
    y = conv(y, as_2d(fu) * up ** 2)
    y = F.leaky_relu(y, slope) * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    y = conv(y, as_2d(fd))
    return y[:, :, ::down, ::down]


# ---------------------------------------------------------------------------------------------------
# Modulated convolution


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *, demodulate: bool,
                     padding: int, input_gain: torch.Tensor | None = None,
                     fused: bool = True) -> torch.Tensor:
    """StyleGAN3's modulated convolution: weight and styles pre-normalised (each sample's styles to unit
    RMS, each filter to unit RMS; demodulation cancels both), demodulation, then `input_gain` per input
    channel. fused: one grouped conv with per-sample weights; else scale activations around one conv."""
    n, in_channels = x.shape[:2]
    out_channels, w_in, kh, kw = weight.shape
    if w_in != in_channels or styles.shape != (n, in_channels):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
                         f"styles {tuple(styles.shape)} do not fit together")
    if demodulate:
        weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_channels, 1, 1)  # (N, out, in, k, k)
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None  # (N, out)
    gain = None if input_gain is None else input_gain.reshape(-1)
    if fused:
        if dcoefs is not None:
            w = w * dcoefs.reshape(n, out_channels, 1, 1, 1)
        if gain is not None:
            w = w * gain.reshape(1, 1, -1, 1, 1)
        y = F.conv2d(x.reshape(1, n * in_channels, *x.shape[2:]),
                     w.reshape(n * out_channels, in_channels, kh, kw).to(x.dtype),
                     padding=padding, groups=n)
        return y.reshape(n, out_channels, *y.shape[2:])
    scale = styles if gain is None else styles * gain.reshape(1, -1)
    y = F.conv2d(x * scale.to(x.dtype).reshape(n, in_channels, 1, 1), weight.to(x.dtype), padding=padding)
    if dcoefs is not None:
        y = y * dcoefs.to(y.dtype).reshape(n, out_channels, 1, 1)
    return y


# ---------------------------------------------------------------------------------------------------
# Layers


class SynthesisInput(nn.Module):
    """Fourier features of the first layer, rotated/translated by an affine of w[0] and `transform`."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.channels = channels
        self.size = int(size)
        self.sampling_rate = float(sampling_rate)
        self.bandwidth = float(bandwidth)
        # Random frequencies of the disc of radius `bandwidth` (radial density falls like exp(-r^2/4)).
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3))  # inverse transform w.r.t. the output image
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)
        coords = (torch.arange(self.size, dtype=torch.float64) + 0.5 - self.size / 2) / self.sampling_rate
        self.register_buffer("grid_coords", coords.float(), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        n = w.shape[0]
        t = self.affine(w)  # (cos, sin, tx, ty), unnormalised
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        cos, sin, tx, ty = t.unbind(dim=1)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        rotation = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], dim=1).reshape(n, 3, 3)
        translation = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], dim=1).reshape(n, 3, 3)
        m = rotation @ translation @ self.transform.unsqueeze(0)
        freqs = self.freqs.unsqueeze(0) @ m[:, :2, :2]                          # (N, C, 2)
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ m[:, :2, 2:]).squeeze(2)
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)  # (N, C)
        g = self.grid_coords
        # arg[n, c, y, x] = fx * gx[x] + fy * gy[y] + phase
        arg = (freqs[:, :, 0, None, None] * g[None, None, None, :]
               + freqs[:, :, 1, None, None] * g[None, None, :, None] + phases[:, :, None, None])
        x = torch.sin(arg * (2 * math.pi)) * amplitudes[:, :, None, None]
        mix = self.weight / math.sqrt(self.channels)
        return torch.einsum("nchw,dc->ndhw", x, mix)

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, channels={self.channels}, size={self.size}, "
                f"sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}")


def _resampling(in_rate: int, out_rate: int, is_torgb: bool, filter_size: int,
                lrelu_upsampling: int) -> tuple[int, int, int, int]:
    """(up factor, down factor, up taps, down taps) of a layer; the leaky ReLU runs at
    max(in, out) * lrelu_upsampling (toRGB: no resampling)."""
    tmp_rate = max(in_rate, out_rate) * (1 if is_torgb else lrelu_upsampling)
    up, down = int(round(tmp_rate / in_rate)), int(round(tmp_rate / out_rate))
    if in_rate * up != tmp_rate or out_rate * down != tmp_rate:
        raise ValueError(f"sampling rates {in_rate} -> {tmp_rate} -> {out_rate} are not integer ratios")
    up_taps = filter_size * up if up > 1 and not is_torgb else 1
    down_taps = filter_size * down if down > 1 and not is_torgb else 1
    return up, down, up_taps, down_taps


class SynthesisLayer(ModulatedLayer):
    """Modulated conv + filtered leaky ReLU (or the final toRGB layer)."""

    def __init__(
        self,
        w_dim: int,
        is_torgb: bool,
        is_critically_sampled: bool,
        in_channels: int,
        out_channels: int,
        in_size: int,
        out_size: int,
        in_sampling_rate: int,
        out_sampling_rate: int,
        in_cutoff: float,
        out_cutoff: float,
        in_half_width: float,
        out_half_width: float,
        conv_kernel: int = 3,               # conv kernel size (1 for the R config); toRGB: 1
        filter_size: int = 6,               # low-pass taps per sample of the lower rate when resampling
        lrelu_upsampling: int = 2,          # rate of the leaky ReLU relative to the higher of in/out rate
        use_radial_filters: bool = False,   # radially symmetric downsampling filter (not when critical)
        conv_clamp: float | None = 256,     # clamp to +-conv_clamp; None = none
        use_fp16: bool = False,             # recorded only: this implementation computes in float32
    ) -> None:
        super().__init__(in_channels, out_channels, w_dim, kernel_size=1 if is_torgb else conv_kernel)
        self.is_torgb = is_torgb
        self.is_critically_sampled = is_critically_sampled
        self.in_size = int(in_size)
        self.out_size = int(out_size)
        self.in_sampling_rate = in_sampling_rate
        self.out_sampling_rate = out_sampling_rate
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.use_fp16 = use_fp16
        tmp_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.tmp_sampling_rate = tmp_rate
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor, self.down_factor, self.up_taps, self.down_taps = _resampling(
            in_sampling_rate, out_sampling_rate, is_torgb, filter_size, lrelu_upsampling)
        self.down_radial = use_radial_filters and not is_critically_sampled
        self.register_buffer("up_filter", design_lowpass_filter(
            self.up_taps, in_cutoff, in_half_width * 2, tmp_rate))
        self.register_buffer("down_filter", design_lowpass_filter(
            self.down_taps, out_cutoff, out_half_width * 2, tmp_rate, radial=self.down_radial))

        # Padding (after zero insertion) so the output has out_size samples, centred as in the paper's
        # symmetric interpretation (sample i at (i + 1/2) / rate).
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = (pad_lo, pad_hi, pad_lo, pad_hi)
        self.fast = True  # filtered_lrelu (False: filtered_lrelu_reference; tests and benchmark)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        if x.shape[1:] != (self.in_channels, self.in_size, self.in_size):
            raise ValueError(f"synthesis layer: got input {tuple(x.shape)}, expected "
                             f"(N, {self.in_channels}, {self.in_size}, {self.in_size})")
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb,
                             padding=self.conv_kernel - 1, input_gain=self.magnitude_ema.rsqrt(),
                             fused=fused_modconv)
        op = filtered_lrelu if self.fast else filtered_lrelu_reference
        return op(x, self.up_filter, self.down_filter, self.bias, up=self.up_factor, down=self.down_factor,
                  padding=self.padding, gain=1.0 if self.is_torgb else LRELU_GAIN,
                  slope=1.0 if self.is_torgb else LRELU_SLOPE, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (f"is_torgb={self.is_torgb}, critical={self.is_critically_sampled}, "
                f"channels={self.in_channels}->{self.out_channels}, size={self.in_size}->{self.out_size}, "
                f"rate={self.in_sampling_rate}->{self.tmp_sampling_rate}->{self.out_sampling_rate}, "
                f"kernel={self.conv_kernel}, up={self.up_factor}, down={self.down_factor}")


def layer_specs(img_resolution: int, img_channels: int = 3, channel_base: int = 32768,
                channel_max: int = 512, num_layers: int = 14, num_critical: int = 2,
                first_cutoff: float = 2, first_stopband: float = 2 ** 2.1,
                last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10) -> dict[str, np.ndarray]:
    """Per-layer cutoffs, stopbands, sampling rates, half widths, sizes and channels (index 0: the
    Fourier input; 1..num_layers: the layers; the last one is toRGB). Geometric progression from the
    first layer's cutoff/stopband to Nyquist at the last non-critical layer."""
    if num_layers <= num_critical:
        raise ValueError(f"num_layers ({num_layers}) must exceed num_critical ({num_critical})")
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    return dict(cutoffs=cutoffs, stopbands=stopbands, sampling_rates=rates, half_widths=half_widths,
                sizes=sizes, channels=channels)


def state_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every state_dict entry of Generator(**config), computed without building it
    (a loader checks a file's tensors against these before allocating anything)."""
    defaults = {k: p.default for k, p in inspect.signature(Generator.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    c = {**defaults, **config}
    w_dim, z_dim = c["w_dim"], c["z_dim"]
    shapes: dict[str, tuple[int, ...]] = {"mapping.w_avg": (w_dim,)}
    for i in range(c["mapping_layers"]):
        shapes[f"mapping.fc{i}.weight"] = (w_dim, z_dim if i == 0 else w_dim)
        shapes[f"mapping.fc{i}.bias"] = (w_dim,)
    spec = layer_specs(c["img_resolution"], c["img_channels"], c["channel_base"], c["channel_max"],
                       c["num_layers"], c["num_critical"], c["first_cutoff"], c["first_stopband"],
                       c["last_stopband_rel"], c["margin_size"])
    channels, sizes, rates = (spec[k].astype(int) for k in ("channels", "sizes", "sampling_rates"))
    c0 = int(channels[0])
    shapes.update({"synthesis.input.weight": (c0, c0), "synthesis.input.affine.weight": (4, w_dim),
                   "synthesis.input.affine.bias": (4,), "synthesis.input.transform": (3, 3),
                   "synthesis.input.freqs": (c0, 2), "synthesis.input.phases": (c0,)})
    n = c["num_layers"]
    for idx in range(n + 1):
        prev, is_torgb = max(idx - 1, 0), idx == n
        cin, cout = int(channels[prev]), int(channels[idx])
        k = 1 if is_torgb else c["conv_kernel"]
        prefix = f"synthesis.L{idx}_{int(sizes[idx])}_{cout}."
        shapes.update({prefix + "affine.weight": (cin, w_dim), prefix + "affine.bias": (cin,),
                       prefix + "weight": (cout, cin, k, k), prefix + "bias": (cout,),
                       prefix + "magnitude_ema": ()})
        _, _, up_taps, down_taps = _resampling(int(rates[prev]), int(rates[idx]), is_torgb,
                                               c["filter_size"], c["lrelu_upsampling"])
        if up_taps > 1:
            shapes[prefix + "up_filter"] = (up_taps,)
        if down_taps > 1:
            radial = c["use_radial_filters"] and idx < n - c["num_critical"]
            shapes[prefix + "down_filter"] = (down_taps, down_taps) if radial else (down_taps,)
    return shapes


class SynthesisNetwork(SynthesisBase):
    """ws (N, num_ws, w_dim) -> images (N, img_channels, R, R)."""

    def __init__(
        self,
        w_dim: int,                         # width of w
        img_resolution: int,                # output resolution
        img_channels: int = 3,              # image channels
        channel_base: int = 32768,          # layer channels: min(channel_base / 2 / cutoff, channel_max)
        channel_max: int = 512,
        num_layers: int = 14,               # synthesis layers, the Fourier input and toRGB aside
        num_critical: int = 2,              # critically sampled layers at the end
        first_cutoff: float = 2,            # cutoff of the first layer, in cycles per image
        first_stopband: float = 2 ** 2.1,   # stopband of the first layer
        last_stopband_rel: float = 2 ** 0.3,  # last stopband, relative to the last cutoff (Nyquist)
        margin_size: int = 10,              # pixels computed outside the image on each side
        output_scale: float = 0.25,         # factor on the toRGB output
        num_fp16_res: int = 4,              # recorded (NVIDIA's fp16 layers); computed in float32
        conv_kernel: int = 3,               # 3: config T; 1: config R
        filter_size: int = 6,               # low-pass taps per sample of the lower rate when resampling
        lrelu_upsampling: int = 2,          # rate of the leaky ReLU relative to the higher in/out rate
        use_radial_filters: bool = False,   # radially symmetric downsampling filters (config R)
        conv_clamp: float | None = 256,     # clamp activations to +-conv_clamp; None = none
    ) -> None:
        super().__init__(w_dim, img_resolution, img_channels)
        self.num_layers = num_layers
        self.num_critical = num_critical
        self.num_ws = num_layers + 2
        self.output_scale = output_scale
        spec = layer_specs(img_resolution, img_channels, channel_base, channel_max, num_layers,
                           num_critical, first_cutoff, first_stopband, last_stopband_rel, margin_size)
        rates, sizes, channels = spec["sampling_rates"], spec["sizes"], spec["channels"]
        cutoffs, half_widths = spec["cutoffs"], spec["half_widths"]
        self.input = SynthesisInput(w_dim, int(channels[0]), int(sizes[0]), rates[0], cutoffs[0])
        self.layer_names: list[str] = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=w_dim, is_torgb=idx == num_layers,
                is_critically_sampled=idx >= num_layers - num_critical,
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(rates[prev]), out_sampling_rate=int(rates[idx]),
                in_cutoff=float(cutoffs[prev]), out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]), out_half_width=float(half_widths[idx]),
                conv_kernel=conv_kernel, filter_size=filter_size, lrelu_upsampling=lrelu_upsampling,
                use_radial_filters=use_radial_filters, conv_clamp=conv_clamp,
                use_fp16=bool(rates[idx] * 2 ** num_fp16_res > img_resolution))
            name = f"L{idx}_{layer.out_size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def layers(self) -> list[SynthesisLayer]:
        return [getattr(self, name) for name in self.layer_names]

    def noise_layers(self) -> list[tuple[str, nn.Module]]:
        """StyleGAN3 has no noise inputs: always empty (the StyleGAN2 interface, for the optimisers)."""
        return []

    def forward(
        self,
        ws: torch.Tensor,                   # (N, num_ws, w_dim)
        noise_mode: str = "const",          # accepted for StyleGAN2 compatibility; changes nothing
        force_fp32: bool = True,            # accepted; this implementation is float32 throughout
        fused_modconv: bool | None = None,  # None: fused for batch 1, activation scaling otherwise
        noise: list[torch.Tensor] | None = None,  # must be None or empty (no noise inputs)
    ) -> torch.Tensor:
        self.check_ws(ws, noise_mode)
        if noise:
            raise ValueError(f"synthesis: {len(noise)} noise maps given, a StyleGAN3 generator has none")
        if fused_modconv is None:
            fused_modconv = ws.shape[0] == 1
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for layer, w in zip(self.layers(), ws[1:], strict=True):
            x = layer(x, w, fused_modconv=fused_modconv)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"num_layers={self.num_layers}, num_critical={self.num_critical}")


# ---------------------------------------------------------------------------------------------------
# Generator


class Generator(GeneratorBase):
    """StyleGAN3 generator with the StyleGAN2 class's public contract (models.stylegan2.Generator):
    `mapping(z, truncation_psi=, truncation_cutoff=)`, `synthesis(ws, noise_mode=)`, `G(z)`, num_ws,
    w_dim, z_dim, img_resolution, w_avg, config, weights_sha256(), fingerprint()."""

    architecture = ARCHITECTURE
    hash_prefix = f"{ARCHITECTURE}\n"   # a StyleGAN2 and a StyleGAN3 generator never share a hash

    def __init__(
        self,
        img_resolution: int,                    # output resolution
        z_dim: int = 512,
        w_dim: int = 512,
        img_channels: int = 3,
        mapping_layers: int = 2,                # mapping depth (StyleGAN3: 2)
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
        channel_base: int = 32768,              # channels: min(channel_base / 2 / cutoff, channel_max)
        channel_max: int = 512,
        num_layers: int = 14,                   # synthesis layers, Fourier input and toRGB aside
        num_critical: int = 2,                  # critically sampled layers at the end
        first_cutoff: float = 2,
        first_stopband: float = 2 ** 2.1,
        last_stopband_rel: float = 2 ** 0.3,
        margin_size: int = 10,                  # pixels computed outside the image on each side
        output_scale: float = 0.25,
        num_fp16_res: int = 4,                  # recorded (NVIDIA's fp16 layers); computed in float32
        conv_kernel: int = 3,                   # 3: config T; 1: config R
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        use_radial_filters: bool = False,       # config R
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,      # recorded (training only)
    ) -> None:
        config = dict(
            img_resolution=img_resolution, z_dim=z_dim, w_dim=w_dim, img_channels=img_channels,
            mapping_layers=mapping_layers, mapping_lr_multiplier=mapping_lr_multiplier,
            w_avg_beta=w_avg_beta, channel_base=channel_base, channel_max=channel_max,
            num_layers=num_layers, num_critical=num_critical, first_cutoff=first_cutoff,
            first_stopband=first_stopband, last_stopband_rel=last_stopband_rel, margin_size=margin_size,
            output_scale=output_scale, num_fp16_res=num_fp16_res, conv_kernel=conv_kernel,
            filter_size=filter_size, lrelu_upsampling=lrelu_upsampling,
            use_radial_filters=use_radial_filters, conv_clamp=conv_clamp,
            magnitude_ema_beta=magnitude_ema_beta)
        super().__init__(config)
        synthesis = SynthesisNetwork(
            w_dim, img_resolution, img_channels, channel_base=channel_base, channel_max=channel_max,
            num_layers=num_layers, num_critical=num_critical, first_cutoff=first_cutoff,
            first_stopband=first_stopband, last_stopband_rel=last_stopband_rel, margin_size=margin_size,
            output_scale=output_scale, num_fp16_res=num_fp16_res, conv_kernel=conv_kernel,
            filter_size=filter_size, lrelu_upsampling=lrelu_upsampling,
            use_radial_filters=use_radial_filters, conv_clamp=conv_clamp)
        mapping = MappingNetwork(z_dim, w_dim, synthesis.num_ws, num_layers=mapping_layers,
                                 lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta)
        self._set_networks(synthesis, mapping)

    def set_fast_filters(self, fast: bool) -> None:
        """Use the separable/polyphase filtered_lrelu (True, default) or the literal reference."""
        for layer in self.synthesis.layers():
            layer.fast = fast

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, *, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const", force_fp32: bool = True,
                fused_modconv: bool | None = None) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32, fused_modconv=fused_modconv)

    def family_fingerprint(self) -> dict[str, Any]:
        return {"architecture": ARCHITECTURE, "noise_inputs": 0}


def random_generator(
    resolution: int = 32,               # output resolution
    seed: int = 0,                      # the same seed gives the same weights
    z_dim: int = 64,
    w_dim: int = 64,
    channels: int = 16,                 # feature maps of every layer (channel_max)
    num_layers: int = 6,                # synthesis layers (14 in real checkpoints)
    margin_size: int = 4,               # 10 in real checkpoints
    conv_kernel: int = 3,               # 3: config T; 1 (with radial filters): config R
    w_avg_samples: int = 2000,
    device: str | torch.device = "cpu",
) -> Generator:
    """A small random StyleGAN3 generator in eval mode with requires_grad off (like a loaded one), with
    every tensor non-trivial: random biases, a non-zero input affine (so ws[0] matters), magnitude
    EMAs that are not 1, w_avg the mean of mapped z. For tests and offline demos."""
    from models.stylegan2 import mean_w

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(img_resolution=resolution, z_dim=z_dim, w_dim=w_dim, channel_base=channels * resolution,
                      channel_max=channels, num_layers=num_layers, num_critical=2, margin_size=margin_size,
                      conv_kernel=conv_kernel, use_radial_filters=conv_kernel == 1)
        with torch.no_grad():
            for name, param in G.named_parameters():
                if name.endswith(".bias"):
                    scale = 0.1 / G.config["mapping_lr_multiplier"] if name.startswith("mapping.") else 0.1
                    param.add_(scale * torch.randn_like(param))
            G.synthesis.input.affine.weight.normal_(0, 0.3)
            for layer in G.synthesis.layers():
                layer.magnitude_ema.fill_(float(0.5 + torch.rand([])))
            G.mapping.w_avg.copy_(mean_w(G, num_samples=w_avg_samples, seed=seed))
    return G.eval().requires_grad_(False).to(device)
