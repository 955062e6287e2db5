"""The generator's behaviour on tiny random generators: shapes, truncation, noise, gradients, batches,
fingerprints, and the rosinality and native formats. No fixtures needed."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import load_generator
from models.checkpoints import convert_checkpoint, save_native, to_rosinality
from models.stylegan2 import Generator, mapped_w_stats, mean_w
from storage.errors import CheckpointError, InputError, WeightsMissingError
from tests.tiny import tiny_generator


def _z(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).randn(n, dim).astype(np.float32))


def test_shapes_and_contract(G):
    z = _z(3, G.z_dim)
    ws = G.mapping(z)
    assert ws.shape == (3, G.num_ws, G.w_dim) and G.num_ws == 8
    img = G.synthesis(ws)
    assert img.shape == (3, 3, 32, 32) and img.dtype == torch.float32
    assert torch.equal(G(z), img)
    assert G.w_avg.shape == (G.w_dim,)
    assert G.mapping.num_ws == G.num_ws and G.c_dim == 0


def test_tiny_generator_is_deterministic_and_seeded():
    a, b, c = tiny_generator(seed=3), tiny_generator(seed=3), tiny_generator(seed=4)
    assert a.weights_sha256() == b.weights_sha256() != c.weights_sha256()
    assert outputs_differ(a, c)


def outputs_differ(a: Generator, b: Generator) -> bool:
    ws = a.w_avg.expand(1, a.num_ws, -1)
    return not torch.allclose(a.synthesis(ws), b.synthesis(ws))


def test_bad_shapes_are_refused(G):
    with pytest.raises(ValueError, match="z must be"):
        G.mapping(torch.zeros(2, G.z_dim + 1))
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(torch.zeros(2, G.num_ws - 1, G.w_dim))
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(torch.zeros(1, G.num_ws, G.w_dim), noise_mode="fixed")
    with pytest.raises(ValueError, match="unconditional"):
        G.mapping(torch.zeros(1, G.z_dim), torch.ones(1, 3))


def test_truncation(G):
    z = _z(2, G.z_dim)
    full = G.mapping(z)
    assert torch.allclose(G.mapping(z, truncation_psi=0.0), G.w_avg.expand_as(full))
    half = G.mapping(z, truncation_psi=0.5)
    assert torch.allclose(half, G.w_avg + 0.5 * (full - G.w_avg), atol=1e-6)
    cut = G.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.equal(cut[:, :3], half[:, :3]) and torch.equal(cut[:, 3:], full[:, 3:])


def test_noise_modes(G):
    ws = G.mapping(_z(2, G.z_dim))
    const = G.synthesis(ws, noise_mode="const")
    assert torch.equal(const, G.synthesis(ws, noise_mode="const"))
    none = G.synthesis(ws, noise_mode="none")
    assert (const - none).abs().max() > 1e-3
    r1, r2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
    assert (r1 - r2).abs().max() > 1e-3


def test_batch_equals_single_and_fused_equals_unfused(G):
    ws = G.mapping(_z(3, G.z_dim, seed=1)) + 0.1 * torch.randn(3, G.num_ws, G.w_dim)
    batch = G.synthesis(ws, fused_modconv=False)
    fused = G.synthesis(ws, fused_modconv=True)
    singles = torch.cat([G.synthesis(ws[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)
    torch.testing.assert_close(fused, singles, rtol=0, atol=1e-5)


def test_gradients_reach_ws_and_noise_buffers():
    G = tiny_generator()
    # What NVIDIA's projector does: optimise W+ and the noise_const buffers.
    noise_bufs = {name: buf for name, buf in G.synthesis.named_buffers() if "noise_const" in name}
    assert len(noise_bufs) == 2 * int(math.log2(G.img_resolution)) - 3
    for buf in noise_bufs.values():
        buf.requires_grad = True
    ws = G.w_avg.detach().expand(2, G.num_ws, -1).clone().requires_grad_(True)
    G.synthesis(ws, noise_mode="const").square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum(dim=2).min() > 0  # every layer's w matters
    for name, buf in noise_bufs.items():
        assert buf.grad is not None and buf.grad.abs().max() > 0, name
    assert all(p.grad is None for p in G.parameters())  # weights stay frozen


def test_explicit_per_sample_noise(G):
    ws = G.mapping(_z(3, G.z_dim, seed=2))
    layers = G.synthesis.noise_layers()
    assert [name for name, _ in layers][:3] == ["b4.conv1", "b8.conv0", "b8.conv1"]
    assert len(layers) == 2 * int(math.log2(G.img_resolution)) - 3
    # the stored buffers given explicitly reproduce noise_mode="const"
    const = [layer.noise_const.expand(3, 1, -1, -1) for _, layer in layers]
    torch.testing.assert_close(G.synthesis(ws, noise=const), G.synthesis(ws), rtol=0, atol=0)
    # one map per sample: a batch is its samples rendered alone, and the maps matter
    gen_ = torch.Generator().manual_seed(0)
    own = [torch.randn(3, 1, layer.resolution, layer.resolution, generator=gen_) for _, layer in layers]
    batch = G.synthesis(ws, noise=own, fused_modconv=False)
    singles = torch.cat([G.synthesis(ws[i:i + 1], noise=[n[i:i + 1] for n in own]) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-5)
    assert (batch - G.synthesis(ws, fused_modconv=False)).abs().max() > 1e-3
    # gradients reach the maps
    maps = [n.clone().requires_grad_(True) for n in own]
    G.synthesis(ws, noise=maps).square().mean().backward()
    assert all(m.grad is not None and m.grad[:, 0].abs().amax(dim=(1, 2)).min() > 0 for m in maps)
    with pytest.raises(ValueError, match="noise maps"):
        G.synthesis(ws, noise=own[:-1])
    with pytest.raises(ValueError, match="noise must be"):
        G.synthesis(ws, noise=[n[:1] for n in own])


def test_mapped_w_stats_match_a_direct_computation(G):
    mean, spread = mapped_w_stats(G, num_samples=500, seed=7, batch=128)
    z = torch.from_numpy(np.random.RandomState(7).randn(500, G.z_dim).astype(np.float32))
    w = G.mapping(z)[:, 0].double()
    torch.testing.assert_close(mean, w.mean(0).float(), rtol=0, atol=1e-5)
    assert spread == pytest.approx(float((w - w.mean(0)).square().sum(1).mean().sqrt()), rel=1e-6)
    torch.testing.assert_close(mean_w(G, num_samples=500, seed=7), mean, rtol=0, atol=0)


def test_update_w_avg_tracks_the_batch_mean():
    G = tiny_generator()
    before = G.w_avg.clone()
    z = _z(64, G.z_dim, seed=5)
    G.mapping(z, update_w_avg=True)
    expected = G.mapping(z)[:, 0].mean(0).lerp(before, G.mapping.w_avg_beta)
    torch.testing.assert_close(G.w_avg, expected)


def test_fingerprint_follows_the_weights():
    G = tiny_generator()
    fp = G.fingerprint()
    assert set(fp) == {"weights_sha256", "config_key", "img_resolution", "num_ws", "w_dim"}
    assert G.fingerprint() == fp
    copy = Generator(**G.config)
    copy.load_state_dict(G.state_dict())
    assert copy.fingerprint() == fp
    with torch.no_grad():
        G.synthesis.b8.conv1.bias[0] += 1e-3  # in place: the memo must notice
    assert G.fingerprint()["weights_sha256"] != fp["weights_sha256"]


# ---------------------------------------------------------------------------------------------------
# rosinality stylegan2-pytorch files


def _rosinality_forward(sd: dict, latent: torch.Tensor) -> torch.Tensor:
    """Their generator's forward, written from their model.py's description, on their state-dict layout
    (fused modulated conv with the equalised-lr scale inside, noises.noise_i buffers, FusedLeakyReLU
    biases, ToRGB skip with Upsample). Independent of our module code: it checks the name mapping."""
    k = torch.tensor([1.0, 3, 3, 1])
    kernel = torch.outer(k, k) / 64

    def upfirdn(x, f, up, pad):
        n, c, h, w = x.shape
        if up == 2:
            zeros = torch.zeros(n, c, h, 2, w, 2)
            zeros[:, :, :, 0, :, 0] = x
            x = zeros.reshape(n, c, 2 * h, 2 * w)
        x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
        return F.conv2d(x, f.flip([0, 1])[None, None].repeat(c, 1, 1, 1), groups=c)

    def linear(prefix, x, lr=1.0, act=False):
        w, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
        out = F.linear(x, w * (lr / math.sqrt(w.shape[1])))
        return F.leaky_relu(out + b * lr, 0.2) * math.sqrt(2) if act else out + b * lr

    def modconv(prefix, x, style, demod=True, up=False):
        weight = sd[f"{prefix}.weight"]  # (1, out, in, k, k)
        _, out_c, in_c, ks, _ = weight.shape
        s = linear(f"{prefix}.modulation", style).view(-1, 1, in_c, 1, 1)
        w = weight / math.sqrt(in_c * ks * ks) * s
        if demod:
            w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + 1e-8).view(-1, out_c, 1, 1, 1)
        n = x.shape[0]
        if up:
            w = w.transpose(1, 2).reshape(n * in_c, out_c, ks, ks)
            y = F.conv_transpose2d(x.reshape(1, n * in_c, *x.shape[2:]), w, stride=2, groups=n)
            return upfirdn(y.reshape(n, out_c, *y.shape[2:]), kernel * 4, 1, (1, 1))
        y = F.conv2d(x.reshape(1, n * in_c, *x.shape[2:]), w.reshape(n * out_c, in_c, ks, ks),
                     padding=ks // 2, groups=n)
        return y.reshape(n, out_c, *y.shape[2:])

    def styled(prefix, x, style, noise, up=False):
        y = modconv(f"{prefix}.conv", x, style, up=up) + sd[f"{prefix}.noise.weight"] * noise
        return F.leaky_relu(y + sd[f"{prefix}.activate.bias"].view(1, -1, 1, 1), 0.2) * math.sqrt(2)

    def to_rgb(prefix, x, style, skip=None):
        y = modconv(f"{prefix}.conv", x, style, demod=False) + sd[f"{prefix}.bias"]
        return y if skip is None else y + upfirdn(skip, kernel * 4, 2, (2, 1))

    n = latent.shape[0]
    out = sd["input.input"].repeat(n, 1, 1, 1)
    out = styled("conv1", out, latent[:, 0], sd["noises.noise_0"])
    skip = to_rgb("to_rgb1", out, latent[:, 1])
    i = 1
    for j in range(len({key.split(".")[1] for key in sd if key.startswith("to_rgbs.")})):
        out = styled(f"convs.{2 * j}", out, latent[:, i], sd[f"noises.noise_{2 * j + 1}"], up=True)
        out = styled(f"convs.{2 * j + 1}", out, latent[:, i + 1], sd[f"noises.noise_{2 * j + 2}"])
        skip = to_rgb(f"to_rgbs.{j}", out, latent[:, i + 2], skip)
        i += 2
    return skip


def test_rosinality_export_matches_their_forward():
    G = tiny_generator(z_dim=64, w_dim=64)
    ckpt = to_rosinality(G)
    ws = G.mapping(_z(2, G.z_dim)) + 0.2 * torch.randn(2, G.num_ws, G.w_dim)
    theirs = _rosinality_forward(ckpt["g_ema"], ws)
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), theirs, rtol=0, atol=1e-5)


def test_rosinality_file_loads_identically(tmp_path):
    G = tiny_generator()
    path = tmp_path / "550000.pt"
    torch.save(to_rosinality(G), path)
    G2 = load_generator(path)
    assert G2.source_format == "torch"
    assert G2.config == G.config
    assert G2.weights_sha256() == G.weights_sha256()
    ws = G.mapping(_z(3, G.z_dim)) + 0.1 * torch.randn(3, G.num_ws, G.w_dim)
    assert torch.equal(G2.synthesis(ws), G.synthesis(ws))
    assert torch.equal(G2.mapping(_z(3, G.z_dim), truncation_psi=0.7),
                       G.mapping(_z(3, G.z_dim), truncation_psi=0.7))


def test_rosinality_training_snapshot_without_latent_avg(tmp_path):
    """Their train.py saves args (an argparse.Namespace) and no latent_avg: w_avg is then computed."""
    G = tiny_generator()
    ckpt = to_rosinality(G)
    snapshot = {"g_ema": ckpt["g_ema"], "g": ckpt["g_ema"], "args": argparse.Namespace(size=32, lr=0.002)}
    torch.save(snapshot, tmp_path / "000100.pt")
    G2 = load_generator(tmp_path / "000100.pt")
    torch.testing.assert_close(G2.w_avg, mean_w(G2), rtol=0, atol=0)
    torch.testing.assert_close(G2.w_avg, G.w_avg, rtol=0, atol=0.2)  # both means of mapped z


def test_rosinality_export_refuses_clamped_generator():
    with pytest.raises(ValueError, match="clamp"):
        to_rosinality(tiny_generator(conv_clamp=256))


# ---------------------------------------------------------------------------------------------------
# Native format and name resolution


def test_native_roundtrip_and_integrity(tmp_path):
    G = tiny_generator(conv_clamp=256)
    path = save_native(G, tmp_path / "g.safetensors")
    G2 = load_generator(path)
    assert G2.config == G.config and G2.fingerprint() == G.fingerprint()
    ws = G.w_avg.expand(2, G.num_ws, -1)
    assert torch.equal(G2.synthesis(ws), G.synthesis(ws))

    # Flip one float in the data section: caught by the recorded content hash.
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_generator(bad)


def test_native_refuses_foreign_safetensors_and_bad_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a facereenact generator"):
        load_generator(tmp_path / "other.safetensors")
    G = tiny_generator()
    tensors = {k: v.contiguous() for k, v in G.state_dict().items()}
    save_file(tensors, tmp_path / "huge.safetensors", metadata={
        "format": "facereenact.stylegan2", "format_version": "1",
        "config": '{"img_resolution": 1073741824}'})
    with pytest.raises(CheckpointError, match="img_resolution"):
        load_generator(tmp_path / "huge.safetensors")


def test_convert_checkpoint_from_rosinality(tmp_path):
    G = tiny_generator()
    torch.save(to_rosinality(G), tmp_path / "g.pt")
    out = convert_checkpoint(tmp_path / "g.pt", tmp_path / "sub" / "g.safetensors")
    G2 = load_generator(out)
    assert G2.weights_sha256() == G.weights_sha256()
    assert G2.converted_from["format"] == "torch"
    with pytest.raises(InputError, match="destination is the source"):
        convert_checkpoint(out, out)


def test_missing_paths_and_names(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        load_generator(tmp_path / "nope.pkl")
    assert "nope.pkl" in str(err.value)
    with pytest.raises(InputError, match="not a checkpoint file"):
        load_generator(tmp_path)
    with pytest.raises(WeightsMissingError, match="no-such-model"):
        load_generator("no-such-model")
    with pytest.raises(WeightsMissingError, match="weights fetch ffhq-1024"):
        load_generator("ffhq-1024")  # registered, but not downloaded in the test's empty home


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("up", [1, 2])
def test_float16_modulated_conv_stays_in_range(fused, up):
    """The float16 path (used by the fp16 blocks on CUDA; float16 conv also runs on CPU) pre-normalises
    weight and styles: with large styles the activation-scaling path would otherwise overflow."""
    from models.stylegan2 import make_resample_filter, modulated_conv2d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 8, 8, generator=gen)
    weight = 300 * torch.randn(16, 8, 3, 3, generator=gen)
    styles = 300 * (torch.randn(2, 8, generator=gen) + 1)
    kwargs = dict(up=up, padding=1, resample_filter=make_resample_filter(), fused=fused)
    ref = modulated_conv2d(x, weight, styles, **kwargs)
    half = modulated_conv2d(x.half(), weight, styles, **kwargs)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), ref, rtol=0, atol=1e-2 * ref.abs().max().item())
