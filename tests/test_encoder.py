"""The inversion encoder (models/encoder.py), its training (stages/train_encoder.py) and the
encoder-initialised inversion (stages/encoder_init.py), on the tiny generator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from models.encoder import InversionEncoder, delta_regularization, layer_groups, load_encoder
from models.inversion import InversionConfig, invert, reconstruction_loss
from stages.encoder_init import EncoderInversionConfig, encoder_config, encoder_start
from stages.train_encoder import EncoderData, encoder_loss_plot_path, train_encoder_to
from storage.errors import CheckpointError, InputError
from tests.tiny import tiny_generator

# A small encoder and a cheap objective: what a test can train in seconds on one core.
SMALL = {"channels": 16, "max_channels": 64, "fpn_channels": 32}
FAST = {"perceptual": "none", "lambda_lpips": 0.0, "batch_size": 4, "eval_samples": 16, "model": SMALL,
        "learning_rate": 3e-3, "progressive_every": 10}
TRAINED_STEPS = 120


@pytest.fixture(scope="module")
def G():  # noqa: N802 (the generator's usual name)
    return tiny_generator()


@pytest.fixture(scope="module")
def trained(G, tmp_path_factory) -> tuple[Path, dict]:
    """An encoder trained for TRAINED_STEPS steps (about 12 s on an idle core), and its summary."""
    out = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    summary = train_encoder_to(G, out, TRAINED_STEPS, FAST, checkpoint_every=TRAINED_STEPS, device="cpu",
                               log=lambda _: None)
    return out, summary


def test_shapes_groups_and_progressive_offsets(G):
    assert layer_groups(18) == (3, 4)  # pSp's coarse / medium / fine split of 18 layers
    assert layer_groups(8) == (1, 2)
    torch.manual_seed(0)
    E = InversionEncoder.for_generator(G, **SMALL)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    out = E.encode(x)
    assert out.latents.shape == (3, G.num_ws, G.w_dim) and out.deltas.shape == (3, G.num_ws - 1, G.w_dim)
    # e4e's parametrisation: layer i = layer 0 + delta_i, and switched-off offsets are exactly 0.
    torch.testing.assert_close(out.latents[:, 1:] - out.latents[:, :1], out.deltas, atol=1e-5, rtol=0)
    E.set_active_deltas(2)
    out = E.encode(x)
    deltas = out.deltas.detach()
    assert float(deltas[:, 2:].abs().max()) == 0 and float(deltas[:, :2].abs().max()) > 0
    assert torch.equal(out.latents[:, 3], out.latents[:, 0])
    assert delta_regularization(out.deltas).shape == (3,)
    for fragment in ("num_ws=8", "active_deltas=2", "layers coarse/medium/fine=1/2/5"):
        assert fragment in repr(E)
    # A frame's code does not depend on its batch (no batch statistics).
    torch.testing.assert_close(E(x[1:2]), E(x)[1:2], atol=1e-5, rtol=0)
    for bad in (torch.zeros(2, 3, 64, 64), torch.zeros(3, 32, 32),
                torch.zeros(2, 3, 32, 32, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="images must be"):
            E.encode(bad)


def test_training_lowers_the_loss_and_records_provenance(G, trained):
    out, summary = trained
    before, after = summary["eval_before"], summary["eval_after"]
    # Held-out generator samples (seeded apart from training). In so few steps the encoder learns the
    # image (pixel MSE 1.32 -> 0.985 after 120 steps: 1.34x; 0.90-1.00 in other settings) before the
    # W+ code (the latent term stays near its w_avg value 0.93: the tiny random generator's w -> image
    # map is far from linear, and 600 steps lower it only to 0.87). The test asks for 1.25x on the
    # image term and a lower total.
    assert after["pixel"] * 1.25 < before["pixel"], (before, after)
    assert after["total"] < before["total"], (before, after)
    assert summary["steps"] == TRAINED_STEPS and summary["active_deltas"] == G.num_ws - 1
    assert encoder_loss_plot_path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    E = load_encoder(out, G)
    record = E.provenance
    assert record["generator"]["weights_sha256"] == G.weights_sha256()
    assert record["settings"]["learning_rate"] == FAST["learning_rate"] and record["code_version"]
    assert not E.training and not any(p.requires_grad for p in E.parameters())


def test_resume_continues_bitwise(G, tmp_path):
    settings = {**FAST, "progressive_every": 2}
    whole = train_encoder_to(G, tmp_path / "whole.pt", 6, settings, checkpoint_every=6, device="cpu",
                             log=lambda _: None)
    train_encoder_to(G, tmp_path / "split.pt", 3, settings, checkpoint_every=3, device="cpu",
                     log=lambda _: None)
    resumed = train_encoder_to(G, tmp_path / "split.pt", 6, settings, checkpoint_every=3, device="cpu",
                               log=lambda _: None)
    assert resumed["resumed_from"] == 3 and resumed["trained_now"] == 3
    a, b = torch.load(tmp_path / "whole.pt"), torch.load(tmp_path / "split.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert whole["eval_after"] == resumed["eval_after"]
    # Other settings or too few steps: refused, never continued or overwritten.
    before = (tmp_path / "split.pt").read_bytes()
    with pytest.raises(CheckpointError, match="differs in settings"):
        train_encoder_to(G, tmp_path / "split.pt", 8, {**settings, "learning_rate": 1e-4}, device="cpu")
    with pytest.raises(CheckpointError, match="more than --steps 4"):
        train_encoder_to(G, tmp_path / "split.pt", 4, settings, device="cpu")
    with pytest.raises(InputError, match="unknown encoder training settings: colour"):
        train_encoder_to(G, tmp_path / "other.pt", 4, {"colour": 1}, device="cpu")
    assert (tmp_path / "split.pt").read_bytes() == before


def test_mismatched_or_broken_encoder_is_refused(G, trained, tmp_path):
    out, _ = trained
    other = tiny_generator(seed=7)
    with pytest.raises(CheckpointError, match="trained for another generator") as err:
        load_encoder(out, other)
    assert "\n" not in str(err.value) and str(out) in str(err.value)
    with pytest.raises(CheckpointError, match="trained for another generator"):
        encoder_config(InversionConfig(steps=5), out, other)
    bigger = tiny_generator(resolution=64)
    with pytest.raises(CheckpointError, match="encoder is for 32 px crops"):
        load_encoder(out, bigger)
    junk = tmp_path / "junk.pt"
    torch.save({"format": "something-else"}, junk)
    with pytest.raises(CheckpointError, match="not an inversion-encoder checkpoint"):
        load_encoder(junk, G)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_encoder(truncated, G)
    with pytest.raises(CheckpointError, match="no such encoder file"):
        encoder_config(InversionConfig(), tmp_path / "absent.pt", G)


def test_encoder_config_provenance_and_round_trip(G, trained, tmp_path):
    from tasks.invert import config_from_settings, settings_of

    out, _ = trained
    plain = InversionConfig(steps=25, perceptual="uncalibrated-alex")
    config = encoder_config(plain, out, G)
    assert isinstance(config, EncoderInversionConfig)
    assert config.steps == 25 and config.perceptual == "uncalibrated-alex"  # given settings kept
    assert config.initial_noise_factor == 0.0  # the refinement's own default
    record = config.provenance()
    assert record["init"]["kind"] == "encoder" and len(record["init"]["encoder_sha256"]) == 64
    assert "encoder_path" not in record["settings"]  # the file's content is the key, not where it is
    assert config_from_settings(settings_of(config)) == config
    assert type(config_from_settings(settings_of(plain))) is InversionConfig
    # A w_avg-started inversion with the same settings is another key.
    from storage.provenance import provenance_key

    same = plain.replace(initial_noise_factor=0.0)
    assert provenance_key(same.provenance()) != provenance_key(record)
    # The same encoder copied elsewhere: same key; its content changed since: refused in the worker.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(out.read_bytes())
    assert provenance_key(encoder_config(plain, copy, G).provenance()) == provenance_key(record)
    stale = dataclasses.replace(config, encoder_path=str(copy), encoder_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="encoder file changed since the job started"):
        encoder_start(G, torch.zeros(1, 3, 32, 32), stale)
    assert encoder_start(G, torch.zeros(1, 3, 32, 32), plain) is None


def test_encoder_start_beats_w_avg_after_the_same_steps(G, trained):
    out, _ = trained
    data = EncoderData(G, {"mixing": 0.5, "cache_fraction": 0.0})
    targets, _ = data.generated(4, torch.Generator().manual_seed(777))  # held out: not a training seed
    base = InversionConfig(steps=40, perceptual="uncalibrated-alex", lambda_id=0.0)
    results = {}
    # the same objective from both starts (the refinement's cheap first phase off)
    encoder = encoder_config(base, out, G).replace(pixel_warmup=0.0)
    for name, config in (("w_avg", base), ("encoder", encoder)):
        init = encoder_start(G, targets, config)
        result = invert(G, targets, config, init=init, seeds=[0, 1, 2, 3])
        results[name] = float(reconstruction_loss(result.losses, config).mean())
    # Measured (mean of the 4 frames' MSE + LPIPS terms): after 0 steps encoder 0.29, w_avg 0.55;
    # after 40 steps 0.044 and 0.058, every frame lower (at 5-20 steps one of the four was not: this
    # 120-step encoder is weak). The test asks for 10 % lower.
    assert results["encoder"] * 1.1 < results["w_avg"], results


def test_refinement_options_change_the_trajectory_and_are_recorded(G):
    """lr_rampup 0 (no warm-up), network_terms_every k (LPIPS and identity every k-th step, their
    image gradient reused between), noise_start "const" (the noise maps start at G's noise_const) and
    plateau_patience (early stop once the loss stops improving):
    each changes the steps as intended, is in provenance when it departs from the plain objective,
    and bad values are refused."""
    from storage.provenance import provenance_key

    targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    base = InversionConfig(steps=4, perceptual="uncalibrated-alex", lambda_dreg=0.0)

    def trajectory(config: InversionConfig) -> tuple[list[torch.Tensor], list[dict], list[float]]:
        latents, terms, lrs = [], [], []

        def keep(state) -> None:
            latents.append(state.latents.detach().clone())
            terms.append({k: v.clone() for k, v in state.losses.items()})
            lrs.append(state.learning_rate)

        invert(G, targets, config, seeds=[0, 1], callback=keep)
        return latents, terms, lrs

    plain_latents, plain_terms, plain_lrs = trajectory(base)
    assert plain_lrs[0] == 0.0  # the projector's warm-up starts at 0
    _, _, lrs = trajectory(base.replace(lr_rampup=0.0))
    assert lrs[0] == base.learning_rate and lrs[1] == plain_lrs[1] == base.learning_rate

    lagged_latents, lagged_terms, _ = trajectory(base.replace(network_terms_every=2))
    # Step 0 evaluates the networks: the full objective's step (to rounding). Step 1 reuses step 0's
    # LPIPS and identity values and image gradient: another step than the plain one.
    torch.testing.assert_close(lagged_latents[0], plain_latents[0], atol=1e-5, rtol=0)
    for name in ("lpips", "id"):
        torch.testing.assert_close(lagged_terms[0][name], plain_terms[0][name])
        assert torch.equal(lagged_terms[1][name], lagged_terms[0][name])
        assert not torch.equal(plain_terms[1][name], plain_terms[0][name])
        assert not torch.equal(lagged_terms[2][name], lagged_terms[1][name])  # re-evaluated at step 2
    torch.testing.assert_close(lagged_terms[1]["mse"], plain_terms[1]["mse"], atol=1e-3, rtol=1e-2)
    assert float((lagged_latents[3] - plain_latents[3]).abs().max()) > 1e-6

    # noise_start "const": the maps start at G's noise_const, so 0 steps render what G renders in its
    # "const" noise mode (the random start does not).
    start = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(9)))
    const = invert(G, targets, base.replace(steps=0, noise_start="const"), init=start, seeds=[0, 1])
    for maps, (_, layer) in zip(const.noise, G.synthesis.noise_layers(), strict=True):
        assert torch.equal(maps[:, 0], layer.noise_const.expand(2, -1, -1))
    with torch.no_grad():
        torch.testing.assert_close(const.reconstructions, G.synthesis(start, noise_mode="const"))
    rand = invert(G, targets, base.replace(steps=0), init=start, seeds=[0, 1])
    assert float((rand.reconstructions - const.reconstructions).abs().max()) > 1e-3

    # plateau_patience: the batch stops once no frame's reconstruction loss has improved by the
    # tolerance for that many steps (here step 0 improves on nothing before it; steps 1 and 2 do not
    # halve it), and the final losses are those of the last step's latents.
    seen: list[int] = []
    early = invert(G, targets, base.replace(steps=20, plateau_patience=2, plateau_tolerance=0.5),
                   seeds=[0, 1], callback=lambda state: seen.append(state.step))
    assert seen == [0, 1, 2] and early.ok.all()
    seen.clear()
    invert(G, targets, base.replace(steps=6, plateau_patience=2, plateau_tolerance=0.0), seeds=[0, 1],
           callback=lambda state: seen.append(state.step))
    assert seen == list(range(6))  # still improving: all the steps

    # Provenance: the plain objective's record has none of the keys (caches made before the options
    # keep their keys); other values are recorded and are other keys, and so is lr_rampup 0.
    assert not {"network_terms_every", "noise_start", "plateau_patience", "plateau_tolerance"} & set(
        base.provenance()["settings"])
    plateau = base.replace(plateau_patience=3).provenance()["settings"]
    assert plateau["plateau_patience"] == 3 and plateau["plateau_tolerance"] == 1e-3
    lagged = base.replace(network_terms_every=4)
    assert lagged.provenance()["settings"]["network_terms_every"] == 4
    assert base.replace(noise_start="const").provenance()["settings"]["noise_start"] == "const"
    keys = {provenance_key(c.provenance()) for c in (base, lagged, base.replace(lr_rampup=0.0),
                                                      base.replace(noise_start="const"),
                                                      base.replace(plateau_patience=3))}
    assert len(keys) == 5
    for bad in ({"network_terms_every": 0}, {"network_terms_every": 1.5}, {"network_terms_every": True},
                {"lr_rampup": -0.1}, {"lr_rampup": 1.5}, {"noise_start": "zeros"},
                {"plateau_patience": -1}, {"plateau_patience": 2.0}, {"plateau_tolerance": 1.0},
                {"plateau_tolerance": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            base.replace(**bad)


def test_pixel_warmup_skips_the_network_terms_first(G):
    """pixel_warmup f: the first P = floor(f * steps) steps optimise MSE and the regularisers only
    (the steps of a config without the LPIPS and identity terms, bitwise, under the same schedule),
    the rest the full objective (the last step always: f < 1); the final losses are the full
    objective's; plateau_patience counts from step P; the option is in provenance only when not 0,
    and bad values are refused."""
    from storage.provenance import provenance_key

    targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    base = InversionConfig(steps=4, perceptual="uncalibrated-alex", lambda_dreg=0.0)

    def trajectory(config: InversionConfig) -> tuple[list[torch.Tensor], list[dict], dict]:
        latents, terms = [], []

        def keep(state) -> None:
            latents.append(state.latents.detach().clone())
            terms.append({k: v.clone() for k, v in state.losses.items()})

        result = invert(G, targets, config, seeds=[0, 1], callback=keep)
        return latents, terms, result.losses

    pixel_latents, _, _ = trajectory(base.replace(lambda_lpips=0.0, lambda_id=0.0))
    plain_latents, _, _ = trajectory(base)
    warm_latents, warm_terms, warm_final = trajectory(base.replace(pixel_warmup=0.5))
    for step in (0, 1):  # the cheap phase: the pixel-only objective's steps, no network terms
        assert torch.equal(warm_latents[step], pixel_latents[step])
        assert not {"lpips", "id"} & set(warm_terms[step])
    for step in (2, 3):  # then the full objective
        assert {"lpips", "id"} <= set(warm_terms[step])
        assert float((warm_latents[step] - pixel_latents[step]).abs().max()) > 1e-6
        assert float((warm_latents[step] - plain_latents[step]).abs().max()) > 1e-6
    assert {"mse", "lpips", "id"} <= set(warm_final) and bool(torch.isfinite(warm_final["total"]).all())
    # a fraction of whatever steps are asked for: the last step is a full one, even with few steps
    warmups = [base.replace(steps=k, pixel_warmup=0.625).pixel_warmup_steps for k in (0, 1, 4, 160)]
    assert warmups == [0, 0, 2, 100]
    most_latents, most_terms, _ = trajectory(base.replace(pixel_warmup=0.99))
    assert all(torch.equal(a, b) for a, b in zip(most_latents[:3], pixel_latents[:3], strict=True))
    assert {"lpips", "id"} <= set(most_terms[3])

    # plateau_patience counts from the first full step (the total jumps there as the terms come in)
    seen: list[int] = []
    early = base.replace(steps=20, pixel_warmup=0.15, plateau_patience=2, plateau_tolerance=0.5)
    invert(G, targets, early, seeds=[0, 1], callback=lambda state: seen.append(state.step))
    assert seen == [0, 1, 2, 3, 4, 5]

    assert "pixel_warmup" not in base.provenance()["settings"]
    warm = base.replace(pixel_warmup=0.5)
    assert warm.provenance()["settings"]["pixel_warmup"] == 0.5
    assert provenance_key(warm.provenance()) != provenance_key(base.provenance())
    for bad in (-0.1, 1.0, 2, True, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="pixel_warmup"):
            base.replace(pixel_warmup=bad)
