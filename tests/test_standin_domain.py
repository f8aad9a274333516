"""The stand-in camera model really changes the image statistics it claims to change."""

from __future__ import annotations

import numpy as np
import pytest

from refiner_daemon.evaluation.standin_domain import CameraModel, apply_camera_model


def test_degradation_darkens_corners_warms_and_adds_noise() -> None:
    flat = np.full((96, 96, 3), 128, dtype=np.uint8)
    out = apply_camera_model(flat, CameraModel(), np.random.default_rng(0))
    assert out.shape == flat.shape and out.dtype == np.uint8
    centre = out[40:56, 40:56].astype(float).mean()
    corner = out[:12, :12].astype(float).mean()
    assert corner < centre - 20, "vignetting should darken the corners"
    red, blue = out[..., 0].astype(float).mean(), out[..., 2].astype(float).mean()
    assert red > blue + 10, "the colour cast is warm"
    assert out[40:56, 40:56].std() > 1.5, "sensor noise should survive the JPEG"


def test_sampled_models_are_reproducible() -> None:
    a = CameraModel.sample(np.random.default_rng(3))
    b = CameraModel.sample(np.random.default_rng(3))
    assert a == b and a != CameraModel.sample(np.random.default_rng(4))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        apply_camera_model(np.zeros((8, 8), np.uint8), CameraModel(), np.random.default_rng(0))


def test_only_the_people_are_degraded() -> None:
    from refiner_daemon.evaluation.standin_domain import apply_camera_model_to_people

    rng = np.random.default_rng(0)
    image = (rng.uniform(40, 200, (96, 128, 3))).astype(np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    mask[10:50, 20:40] = 1  # person 1
    mask[60:90, 80:120] = 2  # person 2
    out = apply_camera_model_to_people(image, mask, CameraModel(), np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == np.uint8
    outside = mask == 0
    assert np.array_equal(out[outside], image[outside]), "the background must stay bit-identical"
    for person in (1, 2):
        inner = np.zeros_like(mask, bool)
        ys, xs = np.nonzero(mask == person)
        inner[ys.min() + 3:ys.max() - 2, xs.min() + 3:xs.max() - 2] = True
        change = np.abs(out[inner].astype(int) - image[inner].astype(int)).mean()
        assert change > 5, f"person {person} should change (mean change {change:.1f})"
        assert out[inner][:, 2].mean() < image[inner][:, 2].mean() - 5, "the warm cast lowers blue"
    # Soft edge: on the outline the change is partial (about half the full weight).
    from refiner_daemon.evaluation.standin_domain import person_blend_weights

    weights = person_blend_weights(mask)
    assert weights[outside].max() == 0.0
    assert 0.3 < weights[10, 30] < 0.8 and weights[30, 30] > 0.99


def test_person_mask_must_match_the_image() -> None:
    from refiner_daemon.evaluation.standin_domain import apply_camera_model_to_people

    with pytest.raises(ValueError, match="does not match"):
        apply_camera_model_to_people(np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4), np.uint8),
                                     CameraModel(), np.random.default_rng(0))
