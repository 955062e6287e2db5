"""models/inversion.py on a tiny generator (CPU, 32 px): reconstruction, the identity and delta terms,
batch independence, failure handling, determinism, schedule, provenance.

The loss nets are the real ones; LPIPS runs as the explicit "uncalibrated-alex" opt-in (the test
environment has no torchvision weights, and AlexNet is the cheap one at 32 px). The identity term is
off except in its own test: the recognition net costs ~0.5 s per 150 px chip per step on this CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from models.inversion import InversionConfig, InversionStep, inversion_provenance, invert
from models.losses import IdentityLoss, delta_regularization
from storage.errors import WeightsMissingError

FAST = InversionConfig(perceptual="uncalibrated-alex", lambda_id=0.0)
# Batch vs single frames, latents after 30 steps (values about +-3): measured 5e-6 max |diff| with one
# thread, 2e-3 with two (batched kernels round differently, and Adam turns tiny gradient differences
# into lr-sized steps where a gradient is near zero).
BATCH_ATOL = 1e-3




@pytest.fixture(scope="module")
def known(G):
    """4 targets G(w*) for known w* (in W: every layer equal), rendered with G's stored noise."""
    g = torch.Generator().manual_seed(1)
    w_true = G.mapping(torch.randn(4, G.z_dim, generator=g))
    with torch.no_grad():
        targets = G.synthesis(w_true)
        start = G.synthesis(G.w_avg.expand(4, G.num_ws, -1))
    return w_true, targets, (start - targets).square().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def exact_runs(G, known):
    """150 steps on G's own noise (the targets' noise), with and without delta-regularisation."""
    _, targets, _ = known
    config = FAST.replace(steps=150, optimize_noise=False)
    return invert(G, targets, config), invert(G, targets, config.replace(lambda_dreg=0.0))


def test_reconstruction_error_falls_tenfold(known, exact_runs):
    w_true, targets, mse_start = known
    result = exact_runs[0]
    assert result.failed == [None] * 4 and result.ok.all()
    mse_end = (result.reconstructions - targets).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(mse_end, result.losses["mse"], rtol=1e-4, atol=1e-7)
    factor = mse_start / mse_end
    print(f"MSE {mse_start.tolist()} -> {mse_end.tolist()}: {factor.tolist()}x")
    assert (factor > 10).all()
    assert result.latents.shape == (4, 8, 64) and result.reconstructions.shape == (4, 3, 32, 32)
    for name in ("total", "mse", "lpips", "dreg"):
        assert result.losses[name].shape == (4,) and torch.isfinite(result.losses[name]).all()
    assert "id" not in result.losses and "noise_reg" not in result.losses  # weight 0 / noise not optimised


def test_delta_regularization_lowers_the_spread_of_layers(exact_runs):
    with_dreg, without = exact_runs
    spread_with = delta_regularization(with_dreg.latents)
    spread_without = delta_regularization(without.latents)
    print(f"sum |w_i - w_0|^2: {spread_with.tolist()} with, {spread_without.tolist()} without")
    assert (spread_with < spread_without).all()
    assert spread_with.mean() < 0.9 * spread_without.mean()  # measured: see the printout


def test_identity_term_lowers_identity_distance(G, known):
    _, targets, _ = known
    target = targets[:1]
    identity = IdentityLoss()
    distances = {}
    for lam in (0.0, 0.05, 0.5):  # off, Choe 2023's weight, ten times that
        result = invert(G, target, FAST.replace(steps=20, lambda_id=lam), seeds=[5])
        with torch.no_grad():
            distances[lam] = float(identity(result.reconstructions, identity.embed(target)))
        if lam:
            assert result.losses["id"][0] == pytest.approx(distances[lam], rel=1e-4, abs=1e-6)
    print(f"identity distance: {distances}")
    # measured 0.0462, 0.0453, 0.0233: the term pulls the identity in, more with more weight
    assert distances[0.5] < distances[0.05] < distances[0.0]
    assert distances[0.5] < 0.7 * distances[0.0]


def test_batch_gives_the_results_of_single_frames(G, known):
    _, targets, _ = known
    config = FAST.replace(steps=30)  # noise maps optimised per frame (the default)
    seeds = [11, 12, 13, 14]
    batch = invert(G, targets, config, seeds=seeds)
    singles = [invert(G, targets[i:i + 1], config, seeds=[seeds[i]]) for i in range(4)]
    latents = torch.cat([s.latents for s in singles])
    diff = (batch.latents - latents).abs().max().item()
    print(f"batch vs singles: latents max |diff| {diff:.2e}")
    assert diff < BATCH_ATOL
    for layer, maps in enumerate(batch.noise):
        torch.testing.assert_close(maps, torch.cat([s.noise[layer] for s in singles]), rtol=0,
                                   atol=BATCH_ATOL)
    torch.testing.assert_close(batch.losses["total"], torch.cat([s.losses["total"] for s in singles]),
                               rtol=1e-2, atol=1e-4)
    # the order of the batch does not matter at all
    order = [2, 0, 3, 1]
    shuffled = invert(G, targets[order], config, seeds=[seeds[i] for i in order])
    assert torch.equal(shuffled.latents, batch.latents[order])


def test_cpu_runs_are_bitwise_deterministic(G, known):
    _, targets, _ = known
    config = FAST.replace(steps=10)
    a = invert(G, targets[:2], config, seeds=[3, 4])
    b = invert(G, targets[:2], config, seeds=[3, 4])
    assert torch.equal(a.latents, b.latents) and torch.equal(a.reconstructions, b.reconstructions)
    assert all(torch.equal(x, y) for x, y in zip(a.noise, b.noise, strict=True))
    c = invert(G, targets[:2], config, seeds=[3, 5])  # another seed: other noise, other latents
    assert torch.equal(a.latents[0], c.latents[0]) and not torch.equal(a.latents[1], c.latents[1])


def test_a_target_with_nan_pixels_fails_alone(G, known):
    _, targets, _ = known
    config = FAST.replace(steps=10)
    bad = targets[:3].clone()
    bad[1, 0, 5, 5] = float("nan")
    result = invert(G, bad, config, seeds=[0, 1, 2])
    assert result.failed[1] == "target has non-finite pixels"
    assert result.failed[0] is None and result.failed[2] is None
    assert result.ok.tolist() == [True, False, True]
    assert torch.isnan(result.latents[1]).all() and torch.isnan(result.losses["total"][1])
    good = invert(G, targets[[0, 2]], config, seeds=[0, 2])
    torch.testing.assert_close(result.latents[[0, 2]], good.latents, rtol=0, atol=BATCH_ATOL)


def test_a_loss_that_goes_nan_mid_run_fails_that_frame_only(G, known):
    _, targets, _ = known
    config = FAST.replace(steps=12)
    seen: list[InversionStep] = []

    def inject(state: InversionStep) -> None:
        seen.append(state)
        if state.step == 4:
            with torch.no_grad():
                state.latents[2, 3, 0] = float("nan")

    result = invert(G, targets[:3], config, seeds=[0, 1, 2], callback=inject)
    assert result.failed[0] is None and result.failed[1] is None
    assert result.failed[2] is not None and result.failed[2].startswith("loss became nan at step 5")
    print(result.failed[2])
    assert len(seen) == 12 and seen[-1].active.tolist() == [True, True, False]
    assert seen[0].learning_rate == 0.0 and seen[0].losses["total"].shape == (3,)
    clean = invert(G, targets[:3], config, seeds=[0, 1, 2])
    # the other frames never saw the NaN: identical to a run without it
    assert torch.equal(result.latents[:2], clean.latents[:2])
    assert torch.isfinite(result.latents[:2]).all() and torch.isnan(result.latents[2]).all()


def test_init_starts_from_given_latents(G, known):
    w_true, targets, _ = known
    config = FAST.replace(optimize_noise=False)
    unmoved = invert(G, targets[:2], config.replace(steps=0), init=w_true[:2])
    assert torch.equal(unmoved.latents, w_true[:2])
    with torch.no_grad():
        torch.testing.assert_close(unmoved.reconstructions, G.synthesis(w_true[:2]), rtol=0, atol=1e-5)
    # from the optimum (a previous frame's latent, say), a short run ends closer than one from w_avg.
    # Not on it: Adam scales a gradient of float noise (loss 1e-13 here) up to lr-sized steps, and at
    # 10 steps the lr ramp is at 0.1 from step 1 (measured MSE 0.04 vs 0.16-0.24 from w_avg).
    short = config.replace(steps=10, initial_noise_factor=0.0)
    near = invert(G, targets[:2], short, init=w_true[:2])
    far = invert(G, targets[:2], short)
    print(f"10 steps: MSE {near.losses['mse'].tolist()} from w*, {far.losses['mse'].tolist()} from w_avg")
    assert (near.losses["mse"] < 0.5 * far.losses["mse"]).all()
    bad_init = w_true[:2].clone()
    bad_init[0, 0, 0] = float("inf")
    result = invert(G, targets[:2], config.replace(steps=2), init=bad_init)
    assert result.failed == ["initial latent has non-finite values", None]


def test_bad_arguments_are_refused(G, known):
    _, targets, _ = known
    with pytest.raises(ValueError, match="targets must be"):
        invert(G, targets[:, :, :16], FAST)
    with pytest.raises(ValueError, match="in \\[-1, 1\\]"):
        invert(G, targets * 127.5 + 127.5, FAST)
    with pytest.raises(ValueError, match="init must be"):
        invert(G, targets, FAST, init=torch.zeros(4, 3, 64))
    with pytest.raises(ValueError, match="2 seeds for 4 frames"):
        invert(G, targets, FAST, seeds=[1, 2])
    with pytest.raises(ValueError, match="landmarks must be"):
        invert(G, targets, FAST, landmarks=torch.zeros(4, 5, 2))
    with pytest.raises(ValueError, match="perceptual"):
        InversionConfig(perceptual="vgg")
    with pytest.raises(ValueError, match="lambda_id"):
        InversionConfig(lambda_id=-1.0)


def test_default_config_needs_the_lpips_backbone(G, known):
    """Choe 2023's configuration (calibrated VGG LPIPS) refuses with the one-line error when the
    torchvision weights are absent (as in tests), instead of downloading them."""
    _, targets, _ = known
    with pytest.raises(WeightsMissingError, match="facereenact weights fetch lpips-vgg16"):
        invert(G, targets[:1], InversionConfig(steps=1))


def test_schedule_follows_the_official_projector():
    c = InversionConfig()
    weights = (c.lambda_mse, c.lambda_lpips, c.lambda_id, c.lambda_dreg)
    assert c.steps == 1000 and weights == (0.1, 1.5, 0.05, 0.002)  # Choe 2023
    assert c.learning_rate_at(0) == 0.0
    assert c.learning_rate_at(25) == pytest.approx(0.05)  # half way up the 5 % ramp
    assert c.learning_rate_at(50) == c.learning_rate_at(500) == pytest.approx(0.1)
    assert c.learning_rate_at(875) == pytest.approx(0.1 * (0.5 - 0.5 * math.cos(0.5 * math.pi)))
    assert c.learning_rate_at(999) < 1e-4
    assert c.w_noise_factor_at(0) == 0.05
    assert c.w_noise_factor_at(375) == pytest.approx(0.05 * 0.25)
    assert c.w_noise_factor_at(750) == c.w_noise_factor_at(900) == 0.0


def test_provenance_records_settings_generator_and_loss_nets(G):
    config = FAST.replace(lambda_id=0.05)
    record = inversion_provenance(G, config)
    assert record["stage"] == "inversion" and record["calibrated"] is False
    assert record["settings"]["lambda_dreg"] == 0.002 and record["settings"]["steps"] == 1000
    assert record["settings"]["perceptual"] == "uncalibrated-alex"
    assert record["generator"]["weights_sha256"] == G.weights_sha256()
    assert record["losses"]["perceptual"] == {**record["losses"]["perceptual"], "perceptual": "lpips-alex",
                                              "calibrated": False}
    assert record["losses"]["identity"]["identity"] == "faceapi-recognition"
    from storage.provenance import provenance_key

    assert provenance_key(record) != provenance_key(inversion_provenance(G, config.replace(steps=999)))
    assert InversionConfig().provenance()["calibrated"] is True
