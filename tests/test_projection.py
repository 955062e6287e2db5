"""Landmark projection (models/projection.py) on the tiny generator with the faceapi landmark net, CPU.

Driving sequences are made from the generator itself: known latents w_t = w_0 + t s (w_1 - w_0) along
a direction, rendered with G's own noise maps, and faceapi's landmarks of those renders as the
targets. The landmark net sees random-generator images, not faces, and is very sensitive to them;
the factors asserted below were measured with margin (the numbers are in the comments).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.landmarks.base import IBUG_GROUPS
from models.metrics import landmark_jitter, landmark_nme, latent_jitter
from models.projection import (
    SEED_GROUP_WEIGHTS,
    ProjectionConfig,
    ProjectionResult,
    Projector,
    interpolate_subframes,
    latent_distance,
    rescale_points,
    retarget_landmarks,
)
from tests.support.projection import g_noise, known_sequence, quick

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------
# defaults


def test_defaults_are_the_seed_codes():
    c = ProjectionConfig()
    assert (c.lambda_lpips, c.lambda_landmark, c.lambda_fidelity, c.lambda_smooth) == (1.0, 0.1, 0.05, 0.05)
    assert (c.steps_first, c.steps_next, c.learning_rate) == (300, 50, 0.1)
    assert c.group_weight_dict() == {
        "jaw": 0.05, "brow_left": 1.0, "brow_right": 1.0, "nose_bridge": 0.1, "nose_lower": 1.0,
        "eye_left": 1.0, "eye_right": 1.0, "mouth_outer": 5.0, "mouth_inner": 5.0}
    assert list(c.group_weight_dict()) == list(IBUG_GROUPS) and c.group_weights == SEED_GROUP_WEIGHTS
    p = ProjectionConfig.published()
    assert (p.learning_rate_next, p.initial_noise_factor_next, p.batch_frames, p.early_stop_patience,
            p.lpips_every) == (0.1, 0.05, 1, 0, 1)
    f = ProjectionConfig.identity_free()
    assert f.lambda_lpips == 0 and f.lambda_fidelity == 0.05 and not f.relative_landmarks
    # the projector's lr ramps, per frame: 0 at step 0, peak after 5 %, down to ~0 at the end
    assert p.learning_rate_at(0, 50, first=False) == 0
    assert p.learning_rate_at(10, 50, first=False) == pytest.approx(0.1)
    assert p.learning_rate_at(49, 50, first=False) < 0.002


@pytest.mark.parametrize("changes, fragment", [
    ({"landmark_form": "heatmaps"}, "relative_landmarks"),
    ({"latent_norm": "l1"}, "latent_norm"),
    ({"group_weights": (1.0,) * 8}, "group_weights"),
    ({"lambda_smooth": -1.0}, "lambda_smooth"),
    ({"batch_frames": 0}, "batch_frames"),
    ({"perceptual": "vgg"}, "perceptual"),
])
def test_config_rejects_bad_settings(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        ProjectionConfig(**changes)


def test_window_start_aligns_to_absolute_frames():
    c = ProjectionConfig(batch_frames=3)
    assert [c.window_start(f) for f in range(9)] == [0, 1, 1, 1, 4, 4, 4, 7, 7]
    assert [ProjectionConfig().window_start(f) for f in range(4)] == [0, 1, 2, 3]


def test_windows_are_the_one_rule():
    """Frame 0 alone, then `batch_frames` at a time on absolute indices; a start inside a window gives
    that window's tail; each window lies in one window_start."""
    c = ProjectionConfig(batch_frames=3)
    assert c.windows(0, 9) == [(0, 1), (1, 4), (4, 7), (7, 9)]
    assert c.windows(5, 9) == [(5, 7), (7, 9)]
    assert c.windows(4, 5) == [(4, 5)] and c.windows(3, 3) == []
    assert ProjectionConfig().windows(0, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    for start in range(9):
        for first, end in c.windows(start, 11):
            assert {c.window_start(f) for f in range(first, end)} == {c.window_start(first)}


# ---------------------------------------------------------------------------------------------------
# small pure functions


def test_subframes_are_midpoints():
    ws = torch.randn(4, 3, 5)
    sub = interpolate_subframes(ws)
    assert sub.shape == (7, 3, 5)
    assert torch.equal(sub[0::2], ws)
    assert torch.allclose(sub[1::2], (ws[:-1] + ws[1:]) / 2)
    assert torch.equal(interpolate_subframes(ws, repeat_last=True)[-2:], torch.stack([ws[-1], ws[-1]]))
    assert torch.equal(interpolate_subframes(ws[:1]), ws[:1])


def test_retarget_and_rescale():
    source = torch.rand(68, 2) * 30
    driving = torch.rand(5, 68, 2) * 30
    out = retarget_landmarks(driving, driving[0], source)
    assert torch.allclose(out[0], source)
    assert torch.allclose(out - source, driving - driving[0], atol=1e-5)
    # the source being the driving clip's own frame 0: relative targets are the driving landmarks
    assert torch.allclose(retarget_landmarks(driving, driving[0], driving[0]), driving, atol=1e-5)
    # crop pixels at 64 -> 32: the crop's outer edges (-0.5, 63.5) -> (-0.5, 31.5)
    assert torch.allclose(rescale_points(torch.tensor([-0.5, 63.5, 31.5]), 64, 32),
                          torch.tensor([-0.5, 31.5, 15.5]))


def test_latent_distance_forms():
    d = torch.zeros(2, 3, 4)
    d[1, 0, 0] = 3.0
    d[1, 1, 1] = 4.0
    assert torch.allclose(latent_distance(d, "l2"), torch.tensor([0.0, 5.0]))
    # the Uzolas code's sum of sqrt(d^2 + 1e-6): 12 coordinates, 10 of them zero
    expected = torch.tensor([12 * 1e-3, 10 * 1e-3 + np.sqrt(9 + 1e-6) + np.sqrt(16 + 1e-6)])
    assert torch.allclose(latent_distance(d, "charbonnier"), expected.float())


# ---------------------------------------------------------------------------------------------------
# the projection itself


def test_projection_lowers_landmark_error_to_known_targets(G, faceapi, lpips):
    """Targets from G(w_0 + t s d); frame 0 is the known w_0 (0 steps, G's noise). Staying at w_0 the
    later frames' NME is 0.17, 0.45, 0.89 (mean 0.50); after 20 steps each it is 0.087, 0.136,
    0.262 (mean 0.16): at least halved (measured 3.1x)."""
    ws, images, targets = known_sequence(G, faceapi, frames=4, step=0.1)
    config = quick(steps_first=0, steps_next=20)
    projector = Projector(G, config, look=images[:1], init_latent=ws[0], init_noise=g_noise(G),
                          landmarks=faceapi, perceptual=lpips)
    result = projector.project_frames(0, targets)
    assert result.frames == [0, 1, 2, 3] and result.failed == [None] * 4
    assert result.latents.shape == (4, G.num_ws, G.w_dim) and result.images.shape == (4, 3, 32, 32)
    assert result.steps.tolist() == [0, 20, 20, 20]
    assert torch.equal(result.latents[0], ws[0])  # no steps: frame 0 is its start
    before = landmark_nme(targets[:1].expand(4, -1, -1), targets)[1:]
    after = landmark_nme(result.points, result.targets)[1:]
    assert float(before.mean()) > 0.3
    assert float(after.mean()) < float(before.mean()) / 2, (before, after)
    # the result's points are the landmark net's on the result's images
    with torch.no_grad():
        again = faceapi((projector.render(result.latents) + 1) / 2).points
    assert torch.allclose(again, result.points, atol=1e-3)
    assert set(result.losses) == {"total", "lpips", "landmark", "smooth", "fidelity", "noise_reg"}


def test_smoothness_term_lowers_jitter(G, faceapi):
    """Targets: one face's landmarks with 0.5 px of independent noise per frame. The landmark net is
    so sensitive on random-generator images that Uzolas's 0.05 is lost in its gradients here; at
    lambda_smooth 5 the latent jitter falls from 1.73 to 0.49 and the landmark jitter from 2.03 to
    0.70 px (seed 1; seeds 2, 3: 0.56x and 0.33x latent)."""
    g = torch.Generator().manual_seed(1)
    w0, _ = G.mapping(torch.randn(2, G.z_dim, generator=g))
    noise = g_noise(G)
    with torch.no_grad():
        base = faceapi((G.synthesis(w0[None], noise=[m[None, None] for m in noise]) + 1) / 2).points
    targets = base + torch.randn(6, 68, 2, generator=g) * 0.5
    targets[0] = base[0]
    runs = {}
    for lam in (0.0, 5.0):
        config = ProjectionConfig.identity_free(steps_first=0, steps_next=10, early_stop_patience=0,
                                                lambda_smooth=lam)
        runs[lam] = Projector(G, config, init_latent=w0, init_noise=noise,
                              landmarks=faceapi).project_frames(0, targets)
    assert latent_jitter(runs[5.0].latents) < 0.5 * latent_jitter(runs[0.0].latents)
    assert landmark_jitter(runs[5.0].points) < 0.8 * landmark_jitter(runs[0.0].points)
    assert "smooth" not in runs[0.0].losses and "smooth" in runs[5.0].losses


@pytest.mark.parametrize("batch_frames, split, extrapolation", [(1, 2, 0.0), (3, 3, 0.0), (1, 2, 0.5),
                                                                (3, 3, 0.5)])
def test_resume_is_bitwise(G, faceapi, lpips, batch_frames, split, extrapolation):
    """Frames 0..6 in one go == frames 0..split, state saved, a new Projector, state loaded, then
    split+1..6. With windows, `split` is a window end (frames 1-3, 4-6). With start extrapolation the
    state carries the latent before the last too."""
    _, images, targets = known_sequence(G, faceapi, frames=7, step=0.05, seed=2)
    config = quick(batch_frames=batch_frames, early_stop_patience=2, early_stop_min_steps=1,
                   early_stop_min_steps_first=2, lpips_every=2, start_extrapolation=extrapolation)
    source = targets[0] + 0.3  # a cross-identity-like source: relative targets

    def make():
        return Projector(G, config, look=images[:1], source_landmarks=source, landmarks=faceapi,
                         perceptual=lpips)

    whole = make().project_frames(0, targets)
    first = make()
    head = first.project_frames(0, targets[:split + 1])
    state = first.state_dict()
    # the state is small and plain: one latent, the frozen noise maps, the driving reference
    assert state["frame"] == split and state["latent"].shape == (G.num_ws, G.w_dim)
    assert state["latent_before"].shape == (G.num_ws, G.w_dim)
    sizes = [(layer.resolution,) * 2 for _, layer in G.synthesis.noise_layers()]
    assert [m.shape for m in state["noise"]] == sizes
    assert all(isinstance(v, (int, str, np.ndarray, list)) for v in state.values())
    second = make()
    second.load_state_dict(state)
    tail = second.project_frames(split + 1, targets[split + 1:])
    both = ProjectionResult.concat([head, tail])
    assert both.frames == whole.frames
    assert torch.equal(both.latents, whole.latents)
    assert torch.equal(both.images, whole.images)
    assert torch.equal(both.targets, whole.targets)
    assert torch.equal(both.steps, whole.steps)
    # window by window (the reenact stage's loop): the same bits; two windows at once are refused
    stepper = make()
    parts = [stepper.project_window(a, targets[a:b]) for a, b in config.windows(0, 7)]
    assert torch.equal(ProjectionResult.concat(parts).latents, whole.latents)
    if batch_frames > 1:
        with pytest.raises(ValueError, match="not one window"):
            make().project_window(0, targets[:2])


def test_noise_is_optimised_on_frame_zero_then_frozen(G, faceapi, lpips):
    _, images, targets = known_sequence(G, faceapi, frames=3, step=0.05)
    projector = Projector(G, quick(), look=images[:1], landmarks=faceapi, perceptual=lpips)
    projector.project_frames(0, targets[:1])
    after_first = [m.clone() for m in projector.noise]
    stream = torch.Generator().manual_seed(303)  # frame 0's stream (config.seed + 0) draws the maps
    initial = [torch.randn(1, 1, lay.resolution, lay.resolution, generator=stream)
               for _, lay in G.synthesis.noise_layers()]
    assert all(not torch.equal(a, b) for a, b in zip(after_first, initial, strict=True))  # optimised
    projector.project_frames(1, targets[1:])
    assert all(torch.equal(a, b) for a, b in zip(after_first, projector.noise, strict=True))
    # renders use the frozen maps: midpoint sub-frames render as G(midpoint) with those maps
    result_ws = torch.stack([projector.init_latent, projector.last_latent])
    sub = interpolate_subframes(result_ws)
    with torch.no_grad():
        direct = G.synthesis(sub[1:2], noise=[m for m in after_first])
    assert torch.equal(projector.render(sub[1:2]), direct)
    assert torch.allclose(projector.render(sub)[1:2], direct, atol=1e-5)  # batched kernels round apart


def test_identity_free_variant_fidelity_pulls_toward_w_avg(G, faceapi):
    """No look image; from a sample latent 3 frames. With lambda_fidelity 0.05 the latents end
    nearer w_avg than with 0."""
    ws, _, targets = known_sequence(G, faceapi, frames=3, step=0.05, seed=3)
    distances = {}
    for lam in (0.0, 0.05):
        config = ProjectionConfig.identity_free(steps_first=15, steps_next=10, early_stop_patience=0,
                                                lambda_fidelity=lam)
        projector = Projector(G, config, init_latent=ws[0], landmarks=faceapi)
        assert projector.perceptual is None
        result = projector.project_frames(0, targets)
        assert "lpips" not in result.losses
        distances[lam] = (result.latents - G.w_avg).flatten(1).norm(dim=1)
    assert bool((distances[0.05] < distances[0.0]).all()), distances


def test_relative_targets_follow_the_driving_motion_on_the_source(G, faceapi, lpips):
    _, images, targets = known_sequence(G, faceapi, frames=3, step=0.05)
    source = targets[0] + torch.tensor([1.5, -0.5])
    projector = Projector(G, quick(steps_first=0, steps_next=0), look=images[:1], source_landmarks=source,
                          landmarks=faceapi, perceptual=lpips)
    result = projector.project_frames(0, targets)
    assert torch.allclose(result.targets, retarget_landmarks(targets, targets[0], source))
    absolute = Projector(G, quick(steps_first=0, steps_next=0, relative_landmarks=False), look=images[:1],
                         landmarks=faceapi, perceptual=lpips).project_frames(0, targets)
    assert torch.equal(absolute.targets, targets)
    # without a look or source landmarks, relative targets cannot be made
    with pytest.raises(ValueError, match="source"):
        Projector(G, ProjectionConfig.identity_free(relative_landmarks=True),
                  landmarks=faceapi).project_frames(0, targets)
    # a run starting after frame 0 without a state lacks the driving reference
    late = Projector(G, quick(), look=images[:1], landmarks=faceapi, perceptual=lpips)
    late.last_frame = 4
    with pytest.raises(ValueError, match="frame-0 landmarks"):
        late.project_frames(5, targets)


def test_landmark_resolution_rescales_targets(G, faceapi, lpips):
    """Landmarks given at the cache's crop size (here 64 for a 32 px generator) are rescaled."""
    _, images, targets = known_sequence(G, faceapi, frames=2, step=0.05)
    at64 = rescale_points(targets, 32, 64)
    projector = Projector(G, quick(steps_first=0, steps_next=0, relative_landmarks=False), look=images[:1],
                          landmark_resolution=64, landmarks=faceapi, perceptual=lpips)
    assert torch.allclose(projector.project_frames(0, at64).targets, targets, atol=1e-5)


def test_a_frame_without_landmarks_fails_alone(G, faceapi, lpips):
    _, images, targets = known_sequence(G, faceapi, frames=4, step=0.05)
    bad = targets.clone()
    bad[2] = float("nan")
    projector = Projector(G, quick(), look=images[:1], landmarks=faceapi, perceptual=lpips)
    result = projector.project_frames(0, bad)
    assert result.failed[2] is not None and "not finite" in result.failed[2]
    assert [f is None for f in result.failed] == [True, True, False, True]
    assert bool(torch.isnan(result.latents[2]).all())
    assert bool(torch.isfinite(result.latents[[0, 1, 3]]).all())
    assert result.steps.tolist() == [4, 3, 0, 3]
    # the chain went on from frame 1: the state is frame 3's
    assert projector.last_frame == 3 and torch.equal(projector.last_latent, result.latents[3])


def test_bad_calls_are_refused(G, faceapi, lpips):
    _, images, targets = known_sequence(G, faceapi, frames=2, step=0.05)
    with pytest.raises(ValueError, match="look"):
        Projector(G, quick(), landmarks=faceapi)
    projector = Projector(G, quick(), look=images[:1], landmarks=faceapi, perceptual=lpips)
    with pytest.raises(ValueError, match="next frame is 0"):
        projector.project_frames(1, targets)
    with pytest.raises(ValueError, match=r"\(n, 68, 2\)"):
        projector.project_frames(0, targets[:, :10])
    projector.project_frames(0, targets[:1])
    # a state made under other settings is not silently reused
    other = Projector(G, quick(lambda_smooth=0.5), look=images[:1], landmarks=faceapi, perceptual=lpips)
    with pytest.raises(ValueError, match="other settings"):
        other.load_state_dict(projector.state_dict())
    with pytest.raises(ValueError, match="uint8"):
        Projector(G, quick(), look=np.zeros((32, 32, 3), np.float32), landmarks=faceapi)


def test_heatmap_form_with_fan(G):
    """Uzolas 2021's form: FAN heatmaps of the driving crops (once per frame) against the render's.
    FAN's architecture with random weights (its real weights are not downloaded in tests)."""
    fan_models = pytest.importorskip("face_alignment.models")
    from models.landmarks.fan import FanLandmarks

    torch.manual_seed(0)
    fan = FanLandmarks(fan_models.FAN(1).eval(), "random", "random", flip_input=False)
    g = torch.Generator().manual_seed(4)
    ws = G.mapping(torch.randn(3, G.z_dim, generator=g))
    with torch.no_grad():
        crops = ((G.synthesis(ws).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    config = ProjectionConfig.identity_free(landmark_form="heatmaps", steps_first=6, steps_next=3,
                                            early_stop_patience=0, warm_first_frame=False)
    calls = []
    fan.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    projector = Projector(G, config, init_latent=ws[0], landmarks=fan)
    curve = []
    result = projector.project_frames(0, driving_images=crops[1:],
                                      callback=lambda s: curve.append(float(s.losses["landmark"][0])))
    assert result.failed == [None, None] and "landmark" in result.losses
    # FAN calls: per window one for the targets, one per step, one final evaluation
    assert calls == [1] + [1] * 6 + [1] + [1] + [1] * 3 + [1]
    assert result.targets is None
    assert min(curve[1:6]) < curve[0]
    with pytest.raises(ValueError, match="driving_images"):
        Projector(G, config, init_latent=ws[0], landmarks=fan).project_frames(
            0, driving_points=torch.zeros(1, 68, 2))


def test_provenance_names_what_the_latents_depend_on(G, faceapi, lpips):
    _, images, _ = known_sequence(G, faceapi, frames=1, step=0.05)
    a = Projector(G, quick(), look=images[:1], landmarks=faceapi, perceptual=lpips)
    record = a.provenance()
    assert record["stage"] == "projection" and record["settings"]["lambda_landmark"] == 0.1
    assert record["calibrated"] is False and record["perceptual"]["calibrated"] is False
    assert record["generator"]["weights_sha256"] == G.weights_sha256()
    assert record["landmarks"]["backend"] == "faceapi"
    b = Projector(G, quick(), look=images[:1] * 0.5, landmarks=faceapi, perceptual=lpips)
    assert a.provenance_key() != b.provenance_key()  # another look: another key
    c = Projector(G, quick(), look=images[:1], landmarks=faceapi, perceptual=lpips)
    assert a.provenance_key() == c.provenance_key()
