"""The projection schedule's speed-ups (models/projection.py): each setting does what it says, the
published schedule has every one off, and a resumed run stays bitwise with them on. Tiny generator,
faceapi landmarks, CPU; a few steps each."""

from __future__ import annotations

import math

import pytest
import torch

from models.projection import STATE_FORMAT, ProjectionConfig, ProjectionResult, Projector
from tests.support.projection import g_noise, known_sequence, quick

pytestmark = pytest.mark.usefixtures("one_thread")


def sequence(G, faceapi, frames: int):
    """Latents along a direction, their renders (G's noise), faceapi landmarks and G's noise maps."""
    return (*known_sequence(G, faceapi, frames, 0.05, seed=4), g_noise(G))


def config(**changes) -> ProjectionConfig:
    """Few steps, every speed-up off unless asked (step counts exact)."""
    return quick(**{"lpips_every": 1, **changes})


def test_published_has_every_speed_up_off_and_the_defaults_have_ours_on():
    p = ProjectionConfig.published()
    assert (p.batch_frames, p.early_stop_patience, p.early_stop_target, p.lpips_every, p.warm_first_frame,
            p.start_extrapolation) == (1, 0, 0.0, 1, False, 0.0)
    assert (p.steps_first, p.steps_next, p.learning_rate, p.learning_rate_next, p.initial_noise_factor,
            p.initial_noise_factor_next) == (300, 50, 0.1, 0.1, 0.05, 0.05)
    # a speed-up asked of published() explicitly is kept (an ablation row builds on it)
    assert ProjectionConfig.published(warm_first_frame=True).warm_first_frame
    d = ProjectionConfig()
    assert d.warm_first_frame and d.early_stop_patience > 0 and d.lpips_every > 1
    assert (d.early_stop_min_steps, d.early_stop_patience, d.lpips_every) == (5, 3, 4)
    assert d.start_extrapolation == 0 and d.early_stop_target == 0  # measured: no gain (docs)


@pytest.mark.parametrize("changes, fragment", [
    ({"start_extrapolation": -0.5}, "start_extrapolation"),
    ({"start_extrapolation": math.nan}, "start_extrapolation"),
    ({"early_stop_target": -1.0}, "early_stop_target"),
    ({"early_stop_target": 1.0, "landmark_form": "heatmaps", "relative_landmarks": False},
     "early_stop_target"),
])
def test_bad_speed_up_settings_are_refused(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        ProjectionConfig(**changes)


@pytest.mark.parametrize("batch_frames", [1, 3])
def test_extrapolated_start_is_the_velocity_formula(G, faceapi, lpips, batch_frames):
    """With 0 steps on later frames a frame's latent is its start: w_{i-1} + k a (w_{i-1} - w_{i-2})
    for the window's k-th frame; the state then carries the last two latents."""
    ws, images, points, noise = sequence(G, faceapi, frames=4)
    a = 0.75
    projector = Projector(G, config(steps_next=0, start_extrapolation=a, batch_frames=batch_frames),
                          look=images[:1], source_landmarks=points[0], landmarks=faceapi, perceptual=lpips)
    projector.load_state_dict({"format": STATE_FORMAT, "provenance_key": projector.provenance_key(),
                               "frame": 0, "latent": ws[1].numpy(), "latent_before": ws[0].numpy(),
                               "noise": [m.numpy() for m in noise], "driving_reference": points[0].numpy()})
    result = projector.project_frames(1, points[1:4])
    if batch_frames == 3:  # one window from (w_0, w_1)
        expected = torch.stack([ws[1] + (k * a) * (ws[1] - ws[0]) for k in range(1, 4)])
    else:  # frame by frame, each from the last two
        chain = [ws[0], ws[1]]
        for _ in range(3):
            chain.append(chain[-1] + a * (chain[-1] - chain[-2]))
        expected = torch.stack(chain[2:])
    assert torch.allclose(result.latents, expected, atol=1e-6)
    assert result.steps.tolist() == [0, 0, 0]
    state = projector.state_dict()
    assert torch.equal(torch.from_numpy(state["latent"]), result.latents[2])
    assert torch.equal(torch.from_numpy(state["latent_before"]), result.latents[1])
    # off: every later frame starts at (and with 0 steps stays at) w_{i-1}
    off = Projector(G, config(steps_next=0, batch_frames=batch_frames), look=images[:1],
                    source_landmarks=points[0], landmarks=faceapi, perceptual=lpips)
    off.load_state_dict({**state, "provenance_key": off.provenance_key(), "frame": 0,
                         "latent": ws[1].numpy(), "latent_before": ws[0].numpy()})
    assert torch.equal(off.project_frames(1, points[1:4]).latents, ws[1].expand(3, -1, -1))


def test_frame_zero_extrapolates_nothing_and_old_states_are_refused(G, faceapi, lpips):
    ws, images, points, noise = sequence(G, faceapi, frames=2)
    projector = Projector(G, config(start_extrapolation=1.0), look=images[:1], landmarks=faceapi,
                          perceptual=lpips, init_latent=ws[0], init_noise=noise)
    projector.project_frames(0, points[:1])
    state = projector.state_dict()
    assert state["latent_before"] is None  # one frame: no velocity yet, frame 1 starts at w_0
    old = {k: v for k, v in state.items() if k != "latent_before"} | {"format": 1}
    with pytest.raises(ValueError, match="format 1"):
        Projector(G, config(start_extrapolation=1.0), look=images[:1], landmarks=faceapi,
                  perceptual=lpips, init_latent=ws[0], init_noise=noise).load_state_dict(old)


def test_target_reached_stop_stops_earlier(G, faceapi, lpips):
    """A target every frame is below stops each window after its first step (no minimum); a target no
    frame reaches changes nothing; without it the full schedule runs."""
    ws, images, points, noise = sequence(G, faceapi, frames=3)

    def run(**changes) -> ProjectionResult:
        p = Projector(G, config(steps_first=6, steps_next=5, early_stop_min_steps=4, **changes),
                      look=images[:1], source_landmarks=points[0], landmarks=faceapi, perceptual=lpips)
        return p.project_frames(0, points)

    full = run()
    assert full.steps.tolist() == [6, 5, 5]
    assert run(early_stop_target=1e6).steps.tolist() == [1, 1, 1]
    never = run(early_stop_target=1e-9)
    assert never.steps.tolist() == [6, 5, 5] and torch.equal(never.latents, full.latents)


def test_warm_first_frame_takes_the_warm_schedule_from_a_given_start_only(G, faceapi, lpips):
    """From the source's inversion frame 0 gets the later frames' step cap, lr and w noise (lr 0 here:
    it stays at its start); from w_avg it keeps the long schedule."""
    ws, images, points, noise = sequence(G, faceapi, frames=1)
    warm = config(warm_first_frame=True, learning_rate_next=0.0, initial_noise_factor_next=0.0,
                  optimize_noise=False)

    def run(c: ProjectionConfig, init) -> ProjectionResult:
        return Projector(G, c, look=images[:1], source_landmarks=points[0], landmarks=faceapi,
                         perceptual=lpips, init_latent=init).project_frames(0, points)

    given = run(warm, ws[0])
    assert given.steps.tolist() == [3] and torch.equal(given.latents[0], ws[0])
    cold = run(warm.replace(warm_first_frame=False), ws[0])
    assert cold.steps.tolist() == [4] and not torch.equal(cold.latents[0], ws[0])
    from_avg = run(warm, None)
    assert from_avg.steps.tolist() == [4]


def test_look_features_are_computed_once_per_projector(G, faceapi, lpips):
    """The LPIPS features of the look are cached at construction: the backbone then runs once per step
    that has the LPIPS term (every step here) and once per frame's final evaluation, never for the look."""
    ws, images, points, noise = sequence(G, faceapi, frames=2)
    calls = []
    hook = lpips.lpips.net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        projector = Projector(G, config(), look=images[:1], source_landmarks=points[0], landmarks=faceapi,
                              perceptual=lpips)
        assert len(calls) == 1  # the look's features
        projector.project_frames(0, points)
    finally:
        hook.remove()
    assert len(calls) == 1 + (4 + 1) + (3 + 1)
