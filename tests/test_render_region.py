"""Rendering only the people's region: the rectangle holds the people and the shadows their
lights make visible (numpy), and a frame rendered that way equals the full render inside it
and is the photo outside it (bpy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_addon.core.fisheye import FisheyeCamera, LensModel
from blender_addon.core.lighting import AreaLight, LightingRig
from blender_addon.core.render_region import Region, box_corners, people_region, shadow_points

ROOT = Path(__file__).resolve().parents[1]
FLOOR = [[[-4.0, -4.0], [4.0, -4.0], [4.0, 4.0], [-4.0, 4.0]]]


def _camera(size: int = 400) -> FisheyeCamera:
    return FisheyeCamera(LensModel("equidistant", fov_deg=180.0, focal_px=size / np.pi), size, size,
                         (size / 2, size / 2), float(size), (0.0, 0.0, 2.8))


def _panel(x: float, y: float, power: float = 10.0) -> AreaLight:
    return AreaLight(f"panel_{x}_{y}", "panel", (x, y, 2.7), (0.0, 0.0, 0.0), (0.6, 0.6), power,
                     (1.0, 1.0, 1.0), 4000.0)


def _rig(*lights: AreaLight) -> LightingRig:
    return LightingRig(lights, "square_panels", 4000.0, 1.5, (2.0, 2.0), False)


PERSON = box_corners((1.0, 1.0, 0.0), (1.4, 1.3, 1.75))  # a standing person


def test_no_people_no_region_and_people_inside_it() -> None:
    camera = _camera()
    assert people_region(camera, [], _rig(_panel(0, 0)), FLOOR) is None
    region = people_region(camera, [PERSON], None, FLOOR)
    assert region is not None and 0 < region.share_of(camera.width, camera.height) < 0.25
    pixels, _ = camera.project(PERSON)
    assert (pixels[:, 0] >= region.x0).all() and (pixels[:, 0] < region.x1).all()
    assert (pixels[:, 1] >= region.y0).all() and (pixels[:, 1] < region.y1).all()


def test_a_dominant_light_casts_its_shadow_into_the_region() -> None:
    camera = _camera()
    # A panel right beside the person, low share elsewhere: the shadow falls away from it,
    # towards +x +y, and must be inside the region.
    lit = people_region(camera, [PERSON], _rig(_panel(0.6, 0.6)), FLOOR)
    unlit = people_region(camera, [PERSON], None, FLOOR)
    assert lit is not None and unlit is not None
    assert lit.x1 > unlit.x1 and lit.area > unlit.area
    shadow = shadow_points(PERSON, _rig(_panel(0.6, 0.6)), (-4, -4, 4, 4))
    assert shadow[:, 0].max() > 2.0 and shadow[:, 2].min() == pytest.approx(0.0)


def test_a_faint_far_light_adds_no_shadow() -> None:
    camera = _camera()
    near = _panel(0.6, 0.6, power=50.0)  # casts the person's shadow towards +x +y
    # A weak panel beyond the person: its shadow would reach far across the room (towards
    # -x -y), but its light there is under 1% of the near panel's, so it cannot darken the
    # photo by a grey level.
    weak_far = _panel(3.8, 3.8, power=0.05)
    alone = people_region(camera, [PERSON], _rig(near), FLOOR)
    both = people_region(camera, [PERSON], _rig(near, weak_far), FLOOR)
    assert alone == both
    # The same far light at full power does count.
    strong = people_region(camera, [PERSON], _rig(near, _panel(3.8, 3.8, power=50.0)), FLOOR)
    assert alone is not None and strong is not None
    assert strong.x0 < alone.x0 and strong.x1 == alone.x1


def test_region_mask_and_record() -> None:
    region = Region(2, 3, 6, 5)
    mask = region.mask(8, 8)
    assert mask.sum() == region.area == 8 and mask[3, 2] and not mask[5, 6]
    assert region.to_dict() == {"x0": 2, "y0": 3, "x1": 6, "y1": 5}


@pytest.mark.blender
def test_region_render_equals_full_render_inside_and_photo_outside(tmp_path: Path) -> None:
    pytest.importorskip("bpy")
    from blender_addon.bl import cli_entry
    from blender_addon.core.dataset import linear_to_srgb, load_photo_linear
    from blender_addon.core.render_cli import Backend, run
    from blender_addon.core.scene_format import load_scene

    def render(region: str) -> Path:
        out = tmp_path / region
        code = run(["--scene", str(ROOT / "scenes" / "sample_office"), "--count", "1", "--seed", "3",
                    "--human-backend", "proxy", "--preset", "fast", "--resolution", "160",
                    "--samples", "8", "--no-denoise", "--adaptive-threshold", "0", "--sitting", "2,2",
                    "--standing", "1,1", "--region", region, "--workers", "0", "--threads", "2",
                    "--no-progress", "--out", str(out)],
                   Backend(cli_entry.worker_command, cli_entry.render_in_process))
        assert code == 0
        return out

    full, people = render("full"), render("people")

    def read(out: Path, kind: str) -> np.ndarray:
        return np.asarray(Image.open(out / kind / "000000.png")).astype(int)

    record = json.loads((people / "frames" / "000000.json").read_text())
    box = record["manifest"]["render_region"]
    assert json.loads((full / "frames" / "000000.json").read_text())["manifest"]["render_region"] is None
    inside = Region(**box).mask(160, 160)
    assert 0.05 < inside.mean() < 0.9  # a part of the frame, not all of it
    # The same pixels where the people are rendered; the same masks and annotations.
    assert (read(full, "images")[inside] == read(people, "images")[inside]).all()
    assert (read(full, "masks") == read(people, "masks")).all()
    full_record = json.loads((full / "frames" / "000000.json").read_text())
    assert full_record["annotations"] == record["annotations"]
    # Outside, the region render is the photo itself; the full render is too, but for the
    # image circle's anti-aliased rim, where its film filter darkens the photo's edge.
    photo = load_photo_linear(load_scene(ROOT / "scenes" / "sample_office").photo_path, (160, 160))
    photo_srgb = (np.clip(linear_to_srgb(photo), 0, 1) * 255 + 0.5).astype(int)
    assert (read(people, "images")[~inside] == photo_srgb[~inside]).all()
    camera = load_scene(ROOT / "scenes" / "sample_office").camera_for(160)
    circle = float(camera.lens.radius_px(np.radians(camera.lens.fov_deg / 2), camera.native_width)) * camera.scale
    cx, cy = camera.principal_point
    yy, xx = np.mgrid[:160, :160]
    rim = np.abs(np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) - circle) < 3
    differs = np.abs(read(full, "images") - read(people, "images")).max(axis=-1) > 2
    assert differs[rim].any() and not (differs & ~rim).any()


@pytest.mark.blender
def test_a_full_render_keeps_the_photo_outside_the_image_circle(tmp_path: Path) -> None:
    """Real frames carry a timestamp in a corner, outside the lens's circle, where Cycles
    traces nothing: the composite must keep it, not blacken it."""
    pytest.importorskip("bpy")
    import shutil

    from blender_addon.bl import cli_entry
    from blender_addon.core.dataset import linear_to_srgb, load_photo_linear
    from blender_addon.core.render_cli import Backend, run
    from blender_addon.core.scene_format import load_scene

    scene = tmp_path / "scene"
    shutil.copytree(ROOT / "scenes" / "sample_office", scene)
    photo_path = load_scene(scene).photo_path
    photo = np.asarray(Image.open(photo_path).convert("RGB")).copy()
    photo[10:60, 10:200] = (230, 230, 230)  # a timestamp's plate, in the black corner
    Image.fromarray(photo).save(photo_path)
    out = tmp_path / "out"
    code = run(["--scene", str(scene), "--count", "1", "--seed", "3", "--human-backend", "proxy",
                "--preset", "fast", "--resolution", "160", "--samples", "4", "--region", "full",
                "--hard-masks", "--workers", "0", "--threads", "2", "--no-progress", "--out", str(out)],
               Backend(cli_entry.worker_command, cli_entry.render_in_process))
    assert code == 0
    image = np.asarray(Image.open(out / "images" / "000000.png")).astype(int)
    expected = (np.clip(linear_to_srgb(load_photo_linear(photo_path, (160, 160))), 0, 1) * 255 + 0.5).astype(int)
    outside = ~load_scene(scene).camera_for(160).traced()
    assert outside.sum() > 1000 and (expected[outside] > 100).any()
    assert (image[outside] == expected[outside]).all()
