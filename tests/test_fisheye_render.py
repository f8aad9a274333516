"""The numpy projection matches Cycles: emissive markers at known 3D points, for every lens.

Markers are small spheres spread over the whole image circle (0 to 85 degrees off-axis);
each one's rendered centroid (from the Object Index pass) must lie within 1.0 px of its
projected centre at 1024 x 1024. Emissive markers on black need only a couple of samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("bpy")

from blender_addon.bl import scene_build
from blender_addon.core.fisheye import FisheyeCamera, LensModel

pytestmark = pytest.mark.blender

SIZE = 1024
CASES = {
    "equidistant": (LensModel("equidistant", 330.0), (512.0, 512.0), (0.0, 0.0, 0.0)),
    "equisolid": (LensModel("equisolid", 360.0, fov_deg=185.0), (512.0, 512.0), (0.0, 0.0, 30.0)),
    # OpenCV fisheye / Kannala-Brandt with non-zero k1..k4, fitted onto Cycles' polynomial.
    "kannala_brandt": (LensModel("kannala_brandt", 330.0, (-0.03, 0.004, -0.0005, 0.00002), 180.0),
                       (512.0, 512.0), (0.0, 0.0, 0.0)),
    # The same lens off-centre and slightly tilted: square canvas, then a crop.
    "kannala_brandt_offcentre": (LensModel("kannala_brandt", 330.0, (-0.03, 0.004, -0.0005, 0.00002), 180.0),
                                 (540.0, 497.0), (4.0, -3.0, 10.0)),
    "cycles_polynomial": (LensModel("cycles_polynomial", 0.0, (0.0, -0.1, 0.0005, -2e-5, 3e-7), 180.0, 36.0),
                          (512.0, 512.0), (0.0, 0.0, 0.0)),
}


def _marker_points(camera: FisheyeCamera, count: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Points on rings from the centre to 85 degrees, at 1.5-3 m, with radii ~2.5 px wide."""
    rng = np.random.default_rng(1)
    thetas = np.radians(np.linspace(0.0, 85.0, count))
    phis = rng.uniform(0, 2 * math.pi, count)
    dists = rng.uniform(1.5, 3.0, count)
    local = np.stack([np.sin(thetas) * np.cos(phis), np.sin(thetas) * np.sin(phis), -np.cos(thetas)], 1)
    points = np.asarray(camera.position) + (local * dists[:, None]) @ camera.rotation.T
    return points, dists * 0.012


@pytest.mark.parametrize("case", sorted(CASES))
def test_projection_matches_rendered_markers(case: str) -> None:
    lens, centre, rotation = CASES[case]
    camera = FisheyeCamera(lens, SIZE, SIZE, centre, float(SIZE), (0.2, -0.1, 2.8), rotation)
    points, radii = _marker_points(camera)
    scene_build.reset_blender()
    scene_build.configure_cycles(scene_build.CyclesOptions(samples=2, adaptive_threshold=0.0,
                                                           denoise=False, motion_blur_shutter=0.0),
                                 SIZE, SIZE)
    scene_build.add_fisheye_camera(camera)
    for index, (point, radius) in enumerate(zip(points, radii), start=1):
        scene_build.add_marker(f"marker_{index}", point, float(radius), index)
    passes = scene_build.render_layers()[scene_build.MAIN_LAYER]
    ids = np.rint(scene_build.crop_to_output(passes["Object Index"], camera)).astype(int)
    assert ids.shape == (SIZE, SIZE)
    projected, visible = camera.project(points)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    errors = []
    for index in range(1, len(points) + 1):
        mask = ids == index
        assert visible[index - 1]
        assert mask.sum() >= 8, f"marker {index} barely rendered ({mask.sum()} px)"
        centroid = np.array([(xs[mask] + 0.5).mean(), (ys[mask] + 0.5).mean()])
        errors.append(float(np.linalg.norm(centroid - projected[index - 1])))
    print(f"{case}: max marker error {max(errors):.3f} px")
    assert max(errors) < 1.0, f"{case}: per-marker error px {np.round(errors, 3)}"
    # The markers really span the image circle (not all bunched at the centre).
    radii_px = np.linalg.norm(projected - np.asarray(camera.effective_principal_point()), axis=1)
    assert radii_px.max() > 0.4 * SIZE
