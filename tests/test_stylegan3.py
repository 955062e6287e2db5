"""Our StyleGAN3 (models/stylegan3.py) against NVIDIA's outputs on the official-format fixture pickles
(../shared/fixtures/stylegan3/, see its README), plus its pieces in other configurations: filter design
against scipy, the fast filtered leaky ReLU against the literal one, random configs of other shapes,
loading (numpy arrays in the restricted unpickler, native round trip, refusals)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_generator
from models.checkpoints import convert_checkpoint, unpickle_network
from models.stylegan3 import (
    Generator,
    design_lowpass_filter,
    filtered_lrelu,
    filtered_lrelu_reference,
    state_shapes,
)
from storage.errors import CheckpointError
from tests.support.generators import assert_mapping_matches, reference_case
from tests.support.generators import max_abs as _max_abs

FIXTURES = ["sg3t_tiny64", "sg3r_tiny64"]
TOLERANCE = 1e-4  # max abs, float32; measured ~1e-6 (docs/generator.md)


@pytest.fixture(scope="session")
def sg3_dir(sg3_fixture_dir: Path) -> Path:
    return sg3_fixture_dir


@pytest.fixture(params=FIXTURES)
def fixture(request, sg3_dir: Path, fixture_generator):
    return reference_case(sg3_dir, request.param, fixture_generator)


# ---------------------------------------------------------------------------------------------------
# Parity with NVIDIA's outputs


def test_loaded_config_matches_fixture_facts(fixture):
    name, G, ref, facts = fixture
    assert isinstance(G, Generator)
    assert (G.img_resolution, G.num_ws, G.w_dim, G.z_dim) == (
        facts["resolution"], facts["num_ws"], facts["w_dim"], facts["z_dim"])
    for key in ("channel_base", "channel_max", "margin_size", "conv_clamp", "num_layers", "mapping_layers"):
        assert G.config[key] == facts[key], key
    assert G.config["conv_kernel"] == (3 if facts["config"] == "stylegan3-t" else 1)
    assert G.config["use_radial_filters"] == (facts["config"] == "stylegan3-r")
    assert sum(p.numel() for p in G.parameters()) == facts["params"]
    assert G.source_sha256 == facts["sha256"] and G.source_format == "nvidia-pickle"
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    torch.testing.assert_close(G.w_avg, torch.from_numpy(ref["w_avg"]), rtol=0, atol=0)
    # the checkpoint's trained buffers were loaded, not left at their initial values
    emas = [layer.magnitude_ema.item() for layer in G.synthesis.layers()]
    assert all(abs(e - 1) > 1e-3 for e in emas)
    assert not torch.equal(G.synthesis.input.transform, torch.eye(3))


def test_mapping_matches_reference(fixture):
    _, G, ref, _ = fixture
    assert_mapping_matches(G, ref, TOLERANCE)
    z = torch.from_numpy(ref["z"])
    with torch.no_grad():
        assert _max_abs(G.mapping(z, truncation_psi=0.7, truncation_cutoff=4),
                        ref["ws_psi07_cutoff4"]) <= TOLERANCE
    assert np.abs(ref["ws_psi07"] - ref["ws_psi07_cutoff4"]).max() > 100 * TOLERANCE


@pytest.mark.parametrize("fused", [None, True])  # activation scaling for batch 2, or grouped conv
def test_synthesis_matches_reference(fixture, fused):
    name, G, ref, _ = fixture
    step = int(ref["pixel_step"])
    with torch.no_grad():
        for key, w in (("img", "ws_psi07"), ("img_wplus", "wplus")):
            got = G.synthesis(torch.from_numpy(ref[w]), noise_mode="const", fused_modconv=fused)
            err = _max_abs(got[:, :, ::step, ::step], ref[key])
            assert err <= TOLERANCE, (name, key, err)
        # noise_mode is accepted and changes nothing; G(z) is mapping then synthesis
        ws = torch.from_numpy(ref["ws_psi07"])
        assert torch.equal(G.synthesis(ws, noise_mode="random", fused_modconv=fused),
                           G.synthesis(ws, noise_mode="none", fused_modconv=fused))
        img = G(torch.from_numpy(ref["z"]), truncation_psi=0.7, noise_mode="random")
        assert _max_abs(img, ref["img"]) <= TOLERANCE
    assert np.abs(ref["img"] - ref["img_wplus"]).max() > 100 * TOLERANCE


def test_reference_filtered_lrelu_gives_the_same_image(fixture):
    _, G, ref, _ = fixture
    ws = torch.from_numpy(ref["wplus"])
    with torch.no_grad():
        fast = G.synthesis(ws)
        G.set_fast_filters(False)
        try:
            slow = G.synthesis(ws)
        finally:
            G.set_fast_filters(True)
    assert _max_abs(slow, ref["img_wplus"]) <= TOLERANCE
    assert float((fast - slow).abs().max()) <= 1e-5


def test_gradients_flow_to_ws(fixture):
    _, G, ref, _ = fixture
    ws = torch.from_numpy(ref["wplus"][:1]).clone().requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all()
    # every layer's w matters; ws[0] drives only the Fourier input's affine, which the fixtures keep
    # at NVIDIA's initial value (weight 0), so its gradient is exactly 0 there
    assert (ws.grad[0, 1:].abs().sum(dim=1) > 0).all()
    assert bool(ws.grad[0, 0].abs().sum() > 0) == bool(G.synthesis.input.affine.weight.abs().sum() > 0)
    assert G.synthesis.noise_layers() == []
    with pytest.raises(ValueError, match="has none"):
        G.synthesis(ws.detach(), noise=[torch.zeros(1, 1, 4, 4)])


def test_pickle_to_native_gives_identical_generator(fixture, tmp_path):
    name, G, ref, _ = fixture
    native = convert_checkpoint(G.source_path, tmp_path / f"{name}.safetensors")
    G2 = load_generator(native)
    assert isinstance(G2, Generator) and G2.source_format == "native"
    assert G2.config == G.config and G2.fingerprint() == G.fingerprint()
    assert G2.converted_from == {"name": f"{name}.pkl", "sha256": G.source_sha256, "format": "nvidia-pickle"}
    for (n1, t1), (n2, t2) in zip(sorted(G.state_dict().items()), sorted(G2.state_dict().items()),
                                  strict=True):
        assert n1 == n2 and torch.equal(t1, t2), n1
    ws = torch.from_numpy(ref["wplus"])
    with torch.no_grad():
        assert torch.equal(G2.synthesis(ws), G.synthesis(ws))


def test_weights_hash_differs_from_a_stylegan2_generator_of_the_same_tensors(fixture):
    _, G, _, _ = fixture
    assert G.fingerprint()["architecture"] == "stylegan3"
    assert len(G.weights_sha256()) == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_cuda_matches_reference(fixture):
    """float32 on CUDA with TF32 off: the same 1e-4 bound as on the CPU."""
    _, G, ref, _ = fixture
    Gc = load_generator(G.source_path, device="cuda")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ws = Gc.mapping(torch.from_numpy(ref["z"]).cuda(), truncation_psi=0.7)
            errors = {"ws": _max_abs(ws, ref["ws_psi07"]),
                      "img": _max_abs(Gc.synthesis(ws), ref["img"]),
                      "img_wplus": _max_abs(Gc.synthesis(torch.from_numpy(ref["wplus"]).cuda()),
                                            ref["img_wplus"])}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    print(f"\ncuda fp32 max abs errors {errors}")
    assert max(errors.values()) <= TOLERANCE, errors


# ---------------------------------------------------------------------------------------------------
# Pieces, in other configurations


@pytest.mark.parametrize("numtaps,cutoff,width,fs", [
    (12, 2.0, 4.7, 32), (24, 11.3, 9.0, 64), (12, 32.0, 12.5, 128), (7, 3.0, 2.0, 16), (13, 0.4, 0.3, 2)])
def test_separable_filter_design_is_scipys_kaiser_firwin(numtaps, cutoff, width, fs):
    import scipy.signal

    ours = design_lowpass_filter(numtaps, cutoff, width, fs)
    theirs = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-7)
    assert design_lowpass_filter(1, cutoff, width, fs) is None


def test_radial_filter_is_the_checkpoints(sg3_dir, fixture_generator):
    G = fixture_generator(str(sg3_dir / "sg3r_tiny64.pkl"))
    radial = [layer for layer in G.synthesis.layers() if layer.down_radial]
    assert radial and all(layer.down_filter.ndim == 2 for layer in radial)
    # the loader already refuses files whose filters differ from the design: check it independently
    for layer in radial:
        spec = Generator(**G.config).synthesis.get_submodule(
            G.synthesis.layer_names[G.synthesis.layers().index(layer)])
        torch.testing.assert_close(spec.down_filter, layer.down_filter, rtol=0, atol=1e-6)
        f = layer.down_filter
        torch.testing.assert_close(f, f.t(), rtol=0, atol=0)  # radially symmetric
        assert abs(float(f.sum()) - 1) < 1e-5


@pytest.mark.parametrize("up,down,taps_up,taps_down,pad,radial", [
    (2, 2, 12, 12, (9, 8, 9, 8), False),
    (4, 2, 24, 12, (13, 10, 13, 10), False),
    (2, 4, 12, 24, (3, -2, 5, 1), True),
    (1, 2, 1, 12, (2, 3, 2, 3), False),
    (2, 1, 12, 1, (-1, 4, 0, 0), False),
    (1, 1, 1, 1, (0, 0, 0, 0), False),
])
def test_fast_filtered_lrelu_equals_the_literal_one(up, down, taps_up, taps_down, pad, radial):
    g = torch.Generator().manual_seed(up * 10 + down)
    x = torch.randn(2, 3, 17, 19, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    fu = None if taps_up == 1 else torch.rand(taps_up, generator=g, dtype=torch.float64)
    fd = None if taps_down == 1 else torch.rand(
        *((taps_down, taps_down) if radial else (taps_down,)), generator=g, dtype=torch.float64)
    kw = dict(up=up, down=down, padding=pad, gain=1.4, slope=0.2, clamp=2.5)
    fast = filtered_lrelu(x, fu, fd, b, **kw)
    slow = filtered_lrelu_reference(x, fu, fd, b, **kw)
    assert fast.shape == slow.shape
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    (gx_fast,) = torch.autograd.grad(fast.sin().sum(), x)
    (gx_slow,) = torch.autograd.grad(slow.sin().sum(), x)
    torch.testing.assert_close(gx_fast, gx_slow, rtol=0, atol=1e-10)


@pytest.mark.parametrize("config", [
    dict(img_resolution=32, num_layers=6, num_critical=1, conv_kernel=3, channel_base=512, channel_max=16,
         margin_size=4, mapping_layers=3, z_dim=24, w_dim=16, filter_size=4),
    dict(img_resolution=16, num_layers=4, num_critical=2, conv_kernel=1, use_radial_filters=True,
         channel_base=256, channel_max=8, margin_size=2, z_dim=8, w_dim=8, conv_clamp=None,
         img_channels=1, output_scale=1.0, lrelu_upsampling=1),
    dict(img_resolution=128, num_layers=8, num_critical=3, channel_base=256, channel_max=8, margin_size=0,
         z_dim=8, w_dim=8, first_cutoff=4, first_stopband=8, last_stopband_rel=1.5),
], ids=["32px-t", "16px-r-gray", "128px-custom-cutoffs"])
def test_other_configurations_build_run_and_differentiate(config):
    torch.manual_seed(0)
    G = Generator(**config).eval()
    with torch.no_grad():  # freshly built, the input's rotation/translation affine is 0 (NVIDIA's init)
        G.synthesis.input.affine.weight.normal_()
    assert {k: tuple(v.shape) for k, v in G.state_dict().items()} == state_shapes(config)
    assert G.num_ws == config["num_layers"] + 2
    z = torch.randn(2, config["z_dim"])
    ws = G.mapping(z, truncation_psi=0.5, truncation_cutoff=2).detach().requires_grad_(True)
    img = G.synthesis(ws)
    assert img.shape == (2, config.get("img_channels", 3), config["img_resolution"], config["img_resolution"])
    assert torch.isfinite(img).all() and img.std() > 0
    img.square().mean().backward()
    assert torch.isfinite(ws.grad).all() and (ws.grad.abs().sum(dim=2) > 0).all()
    with torch.no_grad():  # batch independence: a sample's image does not depend on its batch mates
        torch.testing.assert_close(G.synthesis(ws[:1]), img[:1], rtol=0, atol=1e-5)


def test_native_round_trip_of_another_configuration(tmp_path):
    from models.checkpoints import save_native

    torch.manual_seed(1)
    G = Generator(img_resolution=16, num_layers=4, channel_base=128, channel_max=8, margin_size=2,
                  z_dim=8, w_dim=8, conv_kernel=1, use_radial_filters=True)
    G2 = load_generator(save_native(G, tmp_path / "g.safetensors"))
    assert isinstance(G2, Generator) and G2.config == G.config
    ws = torch.randn(1, G.num_ws, 8)
    with torch.no_grad():
        assert torch.equal(G.synthesis(ws), G2.synthesis(ws))


# ---------------------------------------------------------------------------------------------------
# Loading: numpy arrays, refusals


@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_numeric_numpy_arrays_unpickle_under_both_module_names(module, tmp_path):
    data = pickle.dumps({"a": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.float32([0.5, 2])},
                        protocol=3)  # protocol 3: GLOBAL opcodes by name, bytes as BINBYTES
    for name in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        data = data.replace(b"c" + name + b"\n_reconstruct\n", b"c" + module + b"\n_reconstruct\n")
    assert b"c" + module + b"\n_reconstruct" in data
    path = tmp_path / "arrays.pkl"
    path.write_bytes(data)
    out = unpickle_network(path)
    np.testing.assert_array_equal(out["a"], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(out["b"], np.float32([0.5, 2]))


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps(np.array([1, "x", None], dtype=object), protocol=3))
    with pytest.raises(CheckpointError, match="numpy dtype|disallowed dtype"):
        unpickle_network(path)


def test_array_with_short_data_is_refused(tmp_path):
    raw = np.arange(4, dtype=np.float64).tobytes()
    data = pickle.dumps(np.arange(4, dtype=np.float64), protocol=3)
    assert b"C\x20" + raw in data  # SHORT_BINBYTES of 32 bytes
    # claim 4 float64 but carry 3: the unpickler checks the byte count against the shape first
    path = tmp_path / "short.pkl"
    path.write_bytes(data.replace(b"C\x20" + raw, b"C\x18" + raw[:24]))
    with pytest.raises(CheckpointError, match="not raw bytes of its size"):
        unpickle_network(path)


def test_a_tensor_that_does_not_fit_the_config_is_refused_before_building(sg3_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    native = convert_checkpoint(sg3_dir / "sg3t_tiny64.pkl", tmp_path / "ok.safetensors")
    with safe_open(str(native), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = next(k for k in tensors if k.endswith("L3_36_32.weight"))
    bad = dict(tensors, **{name: torch.zeros(32, 32, 5, 5)})
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"L3_36_32.weight has shape \(32, 32, 5, 5\)"):
        load_generator(tmp_path / "bad.safetensors")
    filt = next(k for k in tensors if k.endswith("down_filter"))
    bad = dict(tensors, **{filt: tensors[filt].flip(0) * 0.5})
    save_file(bad, str(tmp_path / "filt.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="low-pass filter"):
        load_generator(tmp_path / "filt.safetensors")
    huge = dict(meta, config=json.dumps(dict(json.loads(meta["config"]), channel_max=100000)))
    save_file(tensors, str(tmp_path / "huge.safetensors"), metadata=huge)
    with pytest.raises(CheckpointError, match="channel_max=100000 out of range"):
        load_generator(tmp_path / "huge.safetensors")


# ---------------------------------------------------------------------------------------------------
# Registry: the official SG3 entries have no published digest; the first verified download's is
# recorded and enforced afterwards


@pytest.fixture
def local_server(sg3_dir):
    """A local HTTP server (127.0.0.1, port 0) serving the fixture directory; stopped after the test."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(sg3_dir)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_official_sg3_entries_are_trusted_on_first_use_then_enforced(sg3_dir, local_server, tmp_path,
                                                                     monkeypatch, capsys):
    from storage import weights

    for name in ("sg3-t-ffhq-1024", "sg3-r-ffhq-1024", "sg3-t-ffhqu-256", "sg3-r-ffhqu-256"):
        spec = weights.REGISTRY[name]
        assert spec.kind == "stylegan3" and spec.sha256 is None and spec.size is None
        assert spec.url.startswith("https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/")
        assert spec.url.endswith("/" + spec.filename)
    facts = json.loads((sg3_dir / "sg3t_tiny64.json").read_text())
    spec = weights.REGISTRY["sg3-t-ffhq-1024"]
    monkeypatch.setenv("FACEREENACT_HOME", str(tmp_path))
    monkeypatch.setenv(spec.url_env_var, f"{local_server}/sg3t_tiny64.pkl")  # the tiny one stands in
    path = weights.fetch(spec.name)
    assert facts["sha256"] in capsys.readouterr().err  # the digest it saw, for the user
    assert weights.read_record(path) == facts["sha256"]
    G = load_generator(spec.name)  # the registered name resolves to the fetched file
    assert isinstance(G, Generator) and G.source_sha256 == facts["sha256"]
    # From now on the recorded digest is enforced: another file at the URL is refused.
    path.unlink()
    monkeypatch.setenv(spec.url_env_var, f"{local_server}/sg3r_tiny64.pkl")
    with pytest.raises(CheckpointError, match="recorded at its first fetch"):
        weights.fetch(spec.name, quiet=True)
    assert not path.exists()
