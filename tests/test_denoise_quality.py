"""``--denoise-quality`` reaches Cycles: OpenImageDenoise's quality is set as asked and changes
the denoised pixels, while the same quality renders the same pixels twice."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.bl import scene_build
from blender_addon.core.fisheye import FisheyeCamera, LensModel

pytestmark = pytest.mark.blender

SIZE = 64


def _render(quality: str) -> np.ndarray:
    camera = FisheyeCamera(LensModel("equidistant", SIZE / 3), SIZE, SIZE, (SIZE / 2, SIZE / 2), float(SIZE),
                           (0.0, 0.0, 2.5))
    scene_build.reset_blender()
    scene_build.configure_cycles(scene_build.CyclesOptions(samples=4, adaptive_threshold=0.0, denoise=True,
                                                           motion_blur_shutter=0.0, denoise_quality=quality,
                                                           threads=1), SIZE, SIZE)
    assert bpy.context.scene.cycles.denoising_quality == quality.upper()
    scene_build.add_fisheye_camera(camera)
    bpy.ops.mesh.primitive_plane_add(size=6.0)  # a grey floor
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.4, location=(0.3, 0.2, 0.4))
    light = bpy.data.objects.new("lamp", bpy.data.lights.new("lamp", "AREA"))
    light.data.energy, light.data.size = 300.0, 0.5
    light.location = (1.0, -0.5, 2.0)
    bpy.context.scene.collection.objects.link(light)
    passes = scene_build.render_layers()[scene_build.MAIN_LAYER]
    return np.asarray(passes["Combined"], dtype=np.float64)


def test_the_denoiser_quality_changes_the_denoised_pixels() -> None:
    high, again, balanced = _render("high"), _render("high"), _render("balanced")
    assert high[..., :3].mean() > 0.01, "the test scene rendered black"
    np.testing.assert_array_equal(high, again)
    assert np.abs(high - balanced)[..., :3].max() > 1e-4
