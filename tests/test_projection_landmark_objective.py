"""The projection's landmark-objective settings (models/projection.py): `landmark_input` (how images
enter the landmark net: (x + 1) / 2, or the Uzolas code's min-max per image) and `fan_flip` (FAN's
mirrored second pass), on the tiny generator (conftest G) and FAN's architecture with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.projection import ProjectionConfig, Projector, landmark_net_input


@pytest.fixture(scope="module")
def fan():
    fan_models = pytest.importorskip("face_alignment.models")
    from models.landmarks.fan import FanLandmarks

    torch.manual_seed(0)
    return FanLandmarks(fan_models.FAN(1).eval(), "random", "random", flip_input=False)


def test_minmax_equals_unit_on_a_full_range_image_and_differs_otherwise():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    x[:, 0, 0, 0], x[:, 1, 1, 1] = -1.0, 1.0  # each image spans [-1, 1] exactly
    torch.testing.assert_close(landmark_net_input(x, "minmax"), landmark_net_input(x, "unit"))
    narrow = x * 0.5 + 0.1  # spans [-0.4, 0.6]
    unit, minmax = landmark_net_input(narrow, "unit"), landmark_net_input(narrow, "minmax")
    assert not torch.allclose(unit, minmax)
    assert float(minmax.amin()) == 0.0 and float(minmax.amax()) == pytest.approx(1.0)
    torch.testing.assert_close(unit, (narrow + 1) / 2)
    # per image: a second image's range does not change the first's
    both = landmark_net_input(torch.cat([narrow[:1], x[1:] * 3]), "minmax")
    torch.testing.assert_close(both[0], minmax[0])
    # uint8 crops (the heatmap form's driving images): / 255, or min-max
    crops = torch.tensor([[[[40.0, 200.0]]]]).expand(1, 3, 1, 2)
    torch.testing.assert_close(landmark_net_input(crops, "unit", 0.0, 255.0), crops / 255)
    stretched = landmark_net_input(crops, "minmax", 0.0, 255.0)
    torch.testing.assert_close(stretched[0, 0, 0], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="landmark_input"):
        landmark_net_input(x, "zscore")


def test_config_checks_and_records_the_landmark_settings():
    with pytest.raises(ValueError, match="landmark_input"):
        ProjectionConfig(landmark_input="zscore")
    with pytest.raises(ValueError, match="fan_flip"):
        ProjectionConfig(fan_flip="yes")
    settings = ProjectionConfig(landmark_input="minmax", fan_flip=True).provenance()["settings"]
    assert (settings["landmark_input"], settings["fan_flip"]) == ("minmax", True)


def _terms(G, fan, **changes) -> tuple[Projector, torch.Tensor]:
    """Frame 0 with no steps: the final evaluation's landmark term, heatmap form."""
    g = torch.Generator().manual_seed(4)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=g))
    with torch.no_grad():
        crops = ((G.synthesis(ws).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    config = ProjectionConfig.identity_free(landmark_form="heatmaps", steps_first=0, **changes)
    projector = Projector(G, config, init_latent=ws[0], landmarks=fan)
    result = projector.project_frames(0, driving_images=crops[1:])
    return projector, result.losses["landmark"]


def test_landmark_input_changes_the_heatmap_objective(G, fan):
    with torch.no_grad():
        image = G.synthesis(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(4))))
    assert (float(image.amin()), float(image.amax())) != (-1.0, 1.0)  # not exactly [-1, 1]: the two differ
    _, unit = _terms(G, fan)
    _, minmax = _terms(G, fan, landmark_input="minmax")
    assert torch.isfinite(unit).all() and torch.isfinite(minmax).all()
    assert not torch.allclose(unit, minmax)


def test_fan_flip_is_a_projection_setting(G, fan):
    projector, off = _terms(G, fan)
    assert projector.landmarks is fan and projector.provenance()["landmarks"]["flip_input"] is False
    projector, on = _terms(G, fan, fan_flip=True)
    assert projector.landmarks is not fan and projector.landmarks.net is fan.net  # the same net, shared
    assert projector.landmarks.flip_input is True and fan.flip_input is False  # the given one unchanged
    assert projector.provenance()["landmarks"]["flip_input"] is True
    assert not np.allclose(off.numpy(), on.numpy())


def test_fan_takes_a_whole_256_image_as_it_is(fan):
    """The fast path (no resampling of a 256 x 256 image without a box) gives what the crop gave."""
    from models.landmarks.base import crop_square, whole_image_boxes

    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    resampled = crop_square(images, whole_image_boxes(images), 256)
    torch.testing.assert_close(resampled, images, atol=1e-4, rtol=0)  # float rounding of the grid only
    with torch.no_grad():
        direct = fan(images)
        via_crop = fan.net(resampled)
    torch.testing.assert_close(direct.heatmaps, via_crop[-1] if isinstance(via_crop, list) else via_crop,
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(direct.crops, whole_image_boxes(images))
