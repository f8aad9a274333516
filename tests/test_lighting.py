"""Indoor lighting rigs: the numpy layout (always) and the Blender lights it becomes (pip bpy)."""

from __future__ import annotations

import numpy as np
import pytest

from blender_addon.core import lighting as L

FLOOR = [[(-3.65, -3.15), (3.65, -3.15), (3.65, 3.15), (-3.65, 3.15)]]


def test_rig_is_seeded_and_lays_panels_over_the_floor() -> None:
    a = L.sample_office_rig(np.random.default_rng(4), FLOOR, 2.85)
    b = L.sample_office_rig(np.random.default_rng(4), FLOOR, 2.85)
    c = L.sample_office_rig(np.random.default_rng(5), FLOOR, 2.85)
    assert a == b and a != c
    for seed in range(30):
        rig = L.sample_office_rig(np.random.default_rng(seed), FLOOR, 2.85)
        panels = [light for light in rig.lights if light.kind == "panel"]
        assert 4 <= len(panels) <= L.MAX_PANELS
        xy = np.array([p.position[:2] for p in panels])
        assert (np.abs(xy[:, 0]) < 3.65 + 1.0).all() and (np.abs(xy[:, 1]) < 3.15 + 1.0).all()
        assert all(p.position[2] == 2.85 and p.size == L.FIXTURES[rig.fixture] for p in panels)
        assert all(np.allclose(L.facing(p), (0, 0, -1)) for p in panels)  # they shine down
        assert 3000 - 150 <= min(p.kelvin for p in panels) and max(p.kelvin for p in panels) <= 5500 + 150
        # Mean floor irradiance from the panels is the drawn target (per grid cell).
        cell = rig.spacing[0] * rig.spacing[1]
        assert np.mean([p.power_w for p in panels]) / cell == pytest.approx(rig.floor_irradiance, rel=0.2)
        windows = [light for light in rig.lights if light.kind == "window"]
        assert len(windows) == int(rig.window)
        for window in windows:
            inward = -np.asarray(window.position[:2]) / np.linalg.norm(window.position[:2])
            assert float(np.dot(L.facing(window)[:2], inward)) > 0.3  # it shines into the room
            assert abs(L.facing(window)[2]) < 1e-9
    assert {L.sample_office_rig(np.random.default_rng(s), FLOOR, 2.85).window for s in range(30)} == {True, False}


def test_matching_to_a_photo_white_balances_and_exposes_the_rig() -> None:
    rig = next(r for r in (L.sample_office_rig(np.random.default_rng(s), FLOOR, 2.85) for s in range(30))
               if r.window)
    # A cool, dim photo inside a black fisheye surround.
    photo = np.zeros((40, 40, 3))
    photo[5:35, 5:35] = (0.09, 0.10, 0.12)
    cast, median = L.photo_statistics(photo)
    assert cast == pytest.approx((0.75, 0.8333, 1.0), abs=1e-3)
    assert median == pytest.approx(0.2126 * 0.09 + 0.7152 * 0.10 + 0.0722 * 0.12)
    matched, match = L.match_to_photo(rig, cast, median, np.random.default_rng(0))
    again, _ = L.match_to_photo(rig, cast, median, np.random.default_rng(0))
    assert matched == again and 0.2 <= match.albedo <= 0.4
    # Exposure: the photo's median surface of the drawn albedo, lit by the new target.
    assert matched.floor_irradiance == pytest.approx(np.pi * median / match.albedo, rel=1e-3)
    for before, after in zip(rig.lights, matched.lights, strict=True):
        assert after.power_w == pytest.approx(before.power_w * match.gain, rel=1e-3)
        assert (after.position, after.size, after.kelvin) == (before.position, before.size, before.kelvin)
    # White balance: a fitting at the room's temperature takes the photo's colour; the
    # daylight window stays bluer than the room's light, relative to it.
    panel = min((light for light in matched.lights if light.kind == "panel"),
                key=lambda light: abs(light.kelvin - rig.kelvin))
    expected = np.asarray(cast) * np.asarray(L.kelvin_to_linear_rgb(panel.kelvin)) / np.asarray(
        L.kelvin_to_linear_rgb(rig.kelvin))
    assert np.allclose(panel.colour, expected / expected.max(), atol=1e-4)
    window = next(light for light in matched.lights if light.kind == "window")
    assert window.colour[2] / window.colour[0] > cast[2] / cast[0]
    with pytest.raises(ValueError, match="black"):
        L.photo_statistics(np.zeros((4, 4, 3)))


def test_colour_temperature_runs_from_warm_to_cool() -> None:
    warm, neutral, cool = (L.kelvin_to_linear_rgb(k) for k in (2700, 4000, 6500))
    assert warm[0] == 1.0 and warm[2] < neutral[2] < cool[2]
    assert all(0.0 <= c <= 1.0 for c in cool) and max(cool) == 1.0


def test_bad_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one polygon"):
        L.sample_office_rig(np.random.default_rng(0), [], 2.8)


@pytest.mark.blender
def test_rig_becomes_hidden_area_lights_and_is_replaced_each_frame() -> None:
    bpy = pytest.importorskip("bpy")
    from blender_addon.bl import scene_build
    from blender_addon.core.batch import sample_lighting

    scene_build.reset_blender()
    recipe = sample_lighting(np.random.default_rng(0))
    rig = L.sample_office_rig(np.random.default_rng(1), FLOOR, 2.85)
    scene_build.apply_lighting(recipe, rig)
    lights = [o for o in bpy.data.objects if o.type == "LIGHT" and o.data.type == "AREA"]
    assert len(lights) == len(rig.lights)
    assert all(not o.visible_camera for o in lights)
    assert bpy.data.objects["sun"].data.energy == 0.0
    other = L.sample_office_rig(np.random.default_rng(2), FLOOR, 2.85)
    scene_build.apply_lighting(recipe, other)
    assert len([o for o in bpy.data.objects if o.type == "LIGHT" and o.data.type == "AREA"]) == len(other.lights)
    scene_build.apply_lighting(recipe, None)  # no rig: the sun of the recipe
    assert not [o for o in bpy.data.objects if o.type == "LIGHT" and o.data.type == "AREA"]
    assert bpy.data.objects["sun"].data.energy == pytest.approx(recipe.sun_strength)
    floor = scene_build.add_shadow_catcher_polygons(FLOOR)
    assert floor.is_shadow_catcher and len(floor.data.polygons) == 1 and len(floor.data.vertices) == 4


@pytest.mark.blender
def test_a_render_with_match_photo_records_and_uses_the_matched_rig(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("bpy")
    import json
    from pathlib import Path

    from blender_addon.bl import cli_entry
    from blender_addon.core.render_cli import Backend, run

    scene = Path(__file__).resolve().parents[1] / "scenes" / "sample_office"

    def render(out: Path, *extra: str) -> dict:
        code = run(["--scene", str(scene), "--count", "1", "--seed", "3", "--human-backend", "proxy",
                    "--preset", "fast", "--resolution", "64", "--samples", "2", "--hard-masks",
                    "--workers", "0", "--threads", "2", "--no-progress", "--out", str(out), *extra],
                   Backend(cli_entry.worker_command, cli_entry.render_in_process))
        assert code == 0
        return json.loads((out / "frames" / "000000.json").read_text())["manifest"]

    plain, matched = render(tmp_path / "plain"), render(tmp_path / "matched", "--match-photo")
    assert plain["photo_match"] is None and matched["config"]["match_photo"] is True
    match = matched["photo_match"]
    gain = match["gain"]
    # The same drawn rig, scaled and recoloured: what the manifest says is what was rendered.
    for before, after in zip(plain["lighting_rig"]["lights"], matched["lighting_rig"]["lights"], strict=True):
        assert after["power_w"] == pytest.approx(before["power_w"] * gain, rel=1e-3)
        assert after["position"] == before["position"]
    assert matched["recipe"] == plain["recipe"]  # the match draws on its own stream
