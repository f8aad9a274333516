"""Fisheye lens maths without Blender: round trips, the Kannala-Brandt fit, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon.core.fisheye import (
    CANVAS_SENSOR_MM,
    FisheyeCamera,
    FisheyeError,
    LensModel,
    fit_cycles_polynomial,
)

KB = LensModel("kannala_brandt", 330.0, (-0.03, 0.004, -0.0005, 0.00002), 180.0)
LENSES = {
    "equidistant": LensModel("equidistant", 330.0),
    "equisolid": LensModel("equisolid", 360.0, fov_deg=185.0),
    "kannala_brandt": KB,
    "cycles_polynomial": LensModel("cycles_polynomial", 0.0, (0.0, -0.1, 0.0005, -2e-5, 3e-7),
                                   180.0, 36.0),
}


def _camera(lens: LensModel, width: int = 1024, height: int = 1024,
            centre: tuple[float, float] | None = None,
            rotation: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> FisheyeCamera:
    return FisheyeCamera(lens, width, height, centre or (width / 2, height / 2), 1024.0,
                         (0.4, -0.3, 2.8), rotation)


@pytest.mark.parametrize("kind", sorted(LENSES))
def test_project_and_pixel_rays_are_inverse(kind: str) -> None:
    camera = _camera(LENSES[kind], centre=(500.0, 530.0), rotation=(3.0, -2.0, 25.0))
    rng = np.random.default_rng(0)
    pixels = rng.uniform(200, 800, size=(200, 2))
    rays = camera.pixel_rays(pixels)
    points = np.asarray(camera.position) + rays * rng.uniform(0.5, 4.0, size=(200, 1))
    projected, visible = camera.project(points)
    assert visible.all()
    assert np.abs(projected - pixels).max() < 1e-6


def test_equidistant_radius_is_theta_over_fov_of_the_canvas() -> None:
    camera = _camera(LENSES["equidistant"])
    settings = camera.cycles_settings()
    assert settings.canvas_px == 1024 and settings.crop_offset_px == (0, 0)
    theta = math.radians(60.0)
    point = np.array([[0.4 + 2.0 * math.tan(theta), -0.3, 0.8]])  # 2 m below, 60 deg off-axis
    (x, y), visible = (v[0] for v in camera.project(point))
    assert visible
    assert x - 512 == pytest.approx(theta / settings.fisheye_fov * 1024, abs=1e-9)
    assert y == pytest.approx(512.0)
    # The lens says r = f theta at native scale.
    assert x - 512 == pytest.approx(330.0 * theta, abs=1e-9)


def test_image_axes_follow_world_axes_and_rotation() -> None:
    camera = _camera(LENSES["equidistant"])
    below = np.array(camera.position) - [0, 0, 2.0]
    pixels, _ = camera.project(np.stack([below + [1, 0, 0], below + [0, 1, 0]]))
    assert pixels[0, 0] > 512 and abs(pixels[0, 1] - 512) < 1e-9  # +X is image right
    assert pixels[1, 1] < 512 and abs(pixels[1, 0] - 512) < 1e-9  # +Y is image up
    turned = _camera(LENSES["equidistant"], rotation=(0.0, 0.0, 90.0))
    pixel, _ = turned.project(below + [1, 0, 0])
    assert pixel[0, 1] > 512  # yawed 90 deg: +X now points image-down


def test_kannala_brandt_fit_is_sub_pixel_and_reported() -> None:
    k, report = fit_cycles_polynomial(KB, 1024.0, 1024.0)
    assert k[0] == 0.0 and k[1] < 0  # Cycles' sign convention: theta = -(k0 + k1 r + ...)
    assert report["max_error_px"] < 0.5
    assert report["rms_error_px"] <= report["max_error_px"]
    # The report measures the real thing: the fitted polynomial against the KB lens.
    camera = _camera(KB)
    settings = camera.cycles_settings()
    assert settings.fit_report == report
    theta = np.linspace(0.05, math.radians(89.0), 50)
    points = np.stack([0.4 + 2.0 * np.tan(theta), np.full_like(theta, -0.3), np.full_like(theta, 0.8)], 1)
    pixels, _ = camera.project(points)
    truth = KB.radius_px(theta, 1024.0)
    assert np.abs((pixels[:, 0] - 512) - truth).max() <= report["max_error_px"] + 1e-6


def test_cycles_polynomial_input_is_rescaled_to_the_canvas() -> None:
    lens = LENSES["cycles_polynomial"]
    camera = _camera(lens, centre=(480.0, 512.0))  # off-centre: the canvas grows to 1088
    settings = camera.cycles_settings()
    assert settings.canvas_px == 1088 and settings.crop_offset_px == (64, 32)
    theta = np.array([0.3, 0.8, 1.3])
    expected = lens.radius_px(theta, 1024.0)  # radius on the native photo
    points = np.stack([0.4 + 2.0 * np.tan(theta), np.full(3, -0.3), np.full(3, 0.8)], 1)
    pixels, _ = camera.project(points)
    assert np.allclose(pixels[:, 0] - 480.0, expected, atol=1e-6)
    assert settings.sensor_width == CANVAS_SENSOR_MM


def test_rendering_at_another_resolution_scales_pixels() -> None:
    full, half = _camera(KB), FisheyeCamera(KB, 512, 512, (256, 256), 1024.0, (0.4, -0.3, 2.8))
    points = np.array([[1.0, 1.0, 0.0], [-2.0, 0.5, 1.2]])
    assert np.allclose(half.project(points)[0] * 2, full.project(points)[0], atol=1e-6)


def test_points_outside_the_image_circle_are_not_visible() -> None:
    camera = _camera(LensModel("equisolid", 360.0, fov_deg=120.0))
    _, visible = camera.project(np.array([[0.4 + 10.0, -0.3, 2.7], [0.4, -0.3, 0.0]]))
    assert visible.tolist() == [False, True]


def test_bad_lenses_give_clear_errors() -> None:
    with pytest.raises(FisheyeError, match="unknown lens model 'fisheye'.*equidistant"):
        LensModel("fisheye", 300.0)
    with pytest.raises(FisheyeError, match="focal_px must be > 0"):
        LensModel("equidistant", 0.0)
    with pytest.raises(FisheyeError, match="4 coefficients"):
        LensModel("kannala_brandt", 300.0, (0.1,))
    with pytest.raises(FisheyeError, match="non-square pixels"):
        LensModel.from_opencv_fisheye(300.0, 330.0, (0.0, 0.0, 0.0, 0.0))
    folding = LensModel("kannala_brandt", 300.0, (-0.4, 0.0, 0.0, 0.0), 180.0)
    with pytest.raises(FisheyeError, match="not monotonic"):
        _camera(folding).cycles_settings()
    with pytest.raises(FisheyeError, match="360"):
        _camera(LensModel("equidistant", 50.0)).cycles_settings()


@pytest.mark.parametrize("kind", sorted(LENSES))
def test_traced_pixels_are_the_image_circle(kind: str) -> None:
    camera = _camera(LENSES[kind], 256, 200, centre=(120.0, 110.0))
    traced = camera.traced()
    assert traced.shape == (200, 256)
    # The circle Cycles traces: the radius at which it draws its largest angle (for an
    # equidistant lens, the canvas's inscribed circle, whatever the lens's fov_deg says).
    settings = camera.cycles_settings()
    radius = float(camera._radius_canvas_px(np.array(settings.fisheye_fov / 2), settings))
    cx, cy = camera.effective_principal_point()
    ys, xs = np.mgrid[0:200, 0:256]
    distance = np.hypot(xs + 0.5 - cx, ys + 0.5 - cy)
    assert traced[distance < radius - 0.5].all() and not traced[distance > radius + 0.5].any()
    assert (distance > radius + 0.5).any()
    # And where project() calls a point visible, its pixel is traced.
    rng = np.random.default_rng(1)
    pixels = np.column_stack([rng.uniform(0, 256, 300), rng.uniform(0, 200, 300)])
    points = np.asarray(camera.position) + camera.pixel_rays(pixels) * 2.0
    projected, visible = camera.project(points)
    # (Away from the rim: a point just inside it can lie in a pixel whose centre is outside.)
    clear = visible & (np.hypot(projected[:, 0] - cx, projected[:, 1] - cy) < radius - 1.0)
    rows, cols = projected[clear, 1].astype(int), projected[clear, 0].astype(int)
    assert clear.sum() > 100 and traced[rows, cols].all()
