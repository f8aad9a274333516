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
