"""Recipe for the bundled sample scene: a furnished office, rendered once as the empty-room photo.

    python -m blender_addon.bl.make_sample_scene scenes/sample_office

builds the office (floor, walls, a meeting table with six chairs, two desks with monitors
and chairs, a cabinet), renders it through the scene's fisheye lens (an OpenCV fisheye /
Kannala-Brandt calibration with non-zero k1..k4) from 2.8 m, and writes ``empty_room.jpg``
and ``scene.json``. The proxies in ``scene.json`` come from the same numbers as the rendered
furniture, so they line up with the photo exactly. The result is deterministic for a given
``--seed`` and Blender version.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import bpy
import numpy as np
from PIL import Image

from blender_addon.bl import scene_build
from blender_addon.core.batch import LightingRecipe
from blender_addon.core.fisheye import FisheyeCamera, LensModel
from blender_addon.core.scene_format import FORMAT_VERSION, SCENE_FILE, load_scene
from protocol.fileio import atomic_write_bytes, atomic_write_json

ROOM_X, ROOM_Y, ROOM_HEIGHT = 4.0, 3.5, 2.8  # half extents and ceiling height, metres
CAMERA_HEIGHT = 2.8
LENS = {"model": "kannala_brandt", "focal_px": 330.0,
        "coefficients": [-0.03, 0.004, -0.0005, 0.00002], "fov_deg": 180.0}
PHOTO_SIZE = 1024
SEAT_HEIGHT = 0.46

# name, centre (x, y), size (x, y, z), yaw, role
FURNITURE: list[tuple[str, tuple[float, float], tuple[float, float, float], float, str]] = [
    ("meeting_table", (-1.2, 0.0), (2.4, 1.1, 0.75), 0.0, "table"),
    ("desk_north", (2.3, 2.35), (1.6, 0.8, 0.74), 0.0, "table"),
    ("desk_south", (2.3, -2.35), (1.6, 0.8, 0.74), 0.0, "table"),
    ("cabinet", (-3.55, -2.6), (0.7, 1.2, 1.1), 0.0, "cabinet"),
    ("shelf", (-3.7, 2.2), (0.5, 1.6, 1.8), 0.0, "cabinet"),
]
# name, position, facing (deg, the way a seated person looks)
SEATS: list[tuple[str, tuple[float, float], float]] = [
    ("chair_n1", (-1.8, 0.85), -90.0), ("chair_n2", (-0.6, 0.85), -90.0),
    ("chair_s1", (-1.8, -0.85), 90.0), ("chair_s2", (-0.6, -0.85), 90.0),
    ("chair_w", (-2.75, 0.0), 0.0), ("chair_e", (0.35, 0.0), 180.0),
    ("chair_desk_n", (2.3, 1.6), 90.0), ("chair_desk_s", (2.3, -1.6), -90.0),
]


def _principled(name: str, color: tuple[float, float, float], roughness: float = 0.6,
                noise: float = 0.0, noise_scale: float = 8.0) -> bpy.types.Material:
    """A Principled material, optionally mottled by a noise texture (carpet, wood)."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = nodes.get("Principled BSDF")
    bsdf.inputs["Roughness"].default_value = roughness
    if noise <= 0:
        bsdf.inputs["Base Color"].default_value = (*color, 1.0)
        return material
    texture = nodes.new("ShaderNodeTexNoise")
    texture.inputs["Scale"].default_value = noise_scale
    texture.inputs["Detail"].default_value = 6.0
    ramp = nodes.new("ShaderNodeValToRGB")
    dark = tuple(c * (1 - noise) for c in color)
    ramp.color_ramp.elements[0].color = (*dark, 1.0)
    ramp.color_ramp.elements[1].color = (*color, 1.0)
    links.new(texture.outputs["Fac"], ramp.inputs["Fac"])
    links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    return material


def build_office() -> None:
    """The visible room: what the 'photo' shows. Proxies are derived from the same tables."""
    floor_mat = _principled("carpet", (0.22, 0.25, 0.30), 0.9, noise=0.35, noise_scale=40.0)
    wall_mat = _principled("wall", (0.78, 0.76, 0.72), 0.8)
    wood = _principled("wood", (0.45, 0.30, 0.18), 0.4, noise=0.3, noise_scale=6.0)
    metal = _principled("metal", (0.55, 0.56, 0.58), 0.35)
    fabric = _principled("chair_fabric", (0.10, 0.12, 0.16), 0.8)
    screen = _principled("screen", (0.02, 0.02, 0.025), 0.2)
    cabinet_mat = _principled("cabinet", (0.70, 0.70, 0.68), 0.5)
    add = scene_build.add_box
    add("floor", (0, 0, -0.01), (2 * ROOM_X, 2 * ROOM_Y, 0.02), material=floor_mat)
    thickness = 0.1
    add("wall_n", (0, ROOM_Y + thickness / 2, ROOM_HEIGHT / 2), (2 * ROOM_X, thickness, ROOM_HEIGHT), material=wall_mat)
    add("wall_s", (0, -ROOM_Y - thickness / 2, ROOM_HEIGHT / 2), (2 * ROOM_X, thickness, ROOM_HEIGHT), material=wall_mat)
    add("wall_e", (ROOM_X + thickness / 2, 0, ROOM_HEIGHT / 2), (thickness, 2 * ROOM_Y, ROOM_HEIGHT), material=wall_mat)
    add("wall_w", (-ROOM_X - thickness / 2, 0, ROOM_HEIGHT / 2), (thickness, 2 * ROOM_Y, ROOM_HEIGHT), material=wall_mat)
    for name, (x, y), (sx, sy, sz), yaw, role in FURNITURE:
        if role == "table":
            add(f"{name}_top", (x, y, sz - 0.02), (sx, sy, 0.04), yaw, material=wood)
            for dx in (-1, 1):
                for dy in (-1, 1):
                    add(f"{name}_leg", (x + dx * (sx / 2 - 0.06), y + dy * (sy / 2 - 0.06), (sz - 0.04) / 2),
                        (0.05, 0.05, sz - 0.04), material=metal)
        else:
            add(name, (x, y, sz / 2), (sx, sy, sz), yaw, material=cabinet_mat)
    for x in (1.9, 2.7):
        for y, sign in ((2.55, 1), (-2.55, -1)):
            add("monitor", (x, y, 0.74 + 0.2), (0.55, 0.04, 0.36), material=screen)
            add("monitor_foot", (x, y + sign * 0.05, 0.75), (0.2, 0.15, 0.02), material=metal)
    for name, (x, y), facing in SEATS:
        add(f"{name}_seat", (x, y, SEAT_HEIGHT - 0.04), (0.48, 0.48, 0.08), facing, material=fabric)
        back = math.radians(facing + 180.0)
        add(f"{name}_back", (x + 0.24 * math.cos(back), y + 0.24 * math.sin(back), SEAT_HEIGHT + 0.25),
            (0.06, 0.44, 0.5), facing, material=fabric)
        add(f"{name}_post", (x, y, (SEAT_HEIGHT - 0.08) / 2), (0.06, 0.06, SEAT_HEIGHT - 0.08), material=metal)


def add_office_lights() -> None:
    """Ceiling panels plus a window-like sun: the room's own light in the 'photo'."""
    for index, (x, y) in enumerate([(-2.0, -1.5), (-2.0, 1.5), (2.0, -1.5), (2.0, 1.5)]):
        light = bpy.data.lights.new(f"panel_{index}", "AREA")
        light.shape = "SQUARE"
        light.size = 1.2
        light.energy = 40.0
        obj = bpy.data.objects.new(f"panel_{index}", light)
        obj.location = (x, y, ROOM_HEIGHT - 0.05)
        bpy.context.scene.collection.objects.link(obj)
    scene_build.apply_lighting(LightingRecipe(
        sun_elevation_deg=55.0, sun_azimuth_deg=30.0, sun_strength=0.8, sun_angle_deg=3.0,
        sun_color=(1.0, 0.96, 0.9), ambient_color=(0.8, 0.85, 0.95), ambient_strength=0.15))


def scene_json(size: int = PHOTO_SIZE) -> dict[str, Any]:
    """The scene file; the lens focal length is scaled to a photo of ``size`` pixels."""
    furniture: list[dict[str, Any]] = []
    for name, (x, y), (sx, sy, sz), yaw, _role in FURNITURE:
        furniture.append({"name": name, "center": [x, y, sz / 2], "size": [sx, sy, sz],
                          "yaw_deg": yaw, "holdout": True, "obstacle": True})
    for name, (x, y), facing in SEATS:
        # Chairs keep standing people away but never hide the person sitting on them.
        furniture.append({"name": f"{name}_chair", "center": [x, y, SEAT_HEIGHT / 2],
                          "size": [0.55, 0.55, SEAT_HEIGHT], "yaw_deg": facing,
                          "holdout": False, "obstacle": True})
    margin = 0.35
    floor = [[-ROOM_X + margin, -ROOM_Y + margin], [ROOM_X - margin, -ROOM_Y + margin],
             [ROOM_X - margin, ROOM_Y - margin], [-ROOM_X + margin, ROOM_Y - margin]]
    return {
        "format_version": FORMAT_VERSION,
        "name": "sample_office",
        "description": "A synthetic 8 x 7 m office seen from a 2.8 m ceiling fisheye; built by "
                       "python -m blender_addon.bl.make_sample_scene",
        "photo": "empty_room.jpg",
        "camera": {"lens": {**LENS, "focal_px": LENS["focal_px"] * size / PHOTO_SIZE}, "height_m": CAMERA_HEIGHT, "position_xy_m": [0.0, 0.0],
                   "rotation_euler_deg": [0.0, 0.0, 0.0]},
        "floor": {"polygons": [floor]},
        "furniture": furniture,
        "seats": [{"name": name, "position": [x, y], "height_m": SEAT_HEIGHT, "facing_deg": facing,
                   "facing_jitter_deg": 20.0} for name, (x, y), facing in SEATS],
    }


def make_sample_scene(out_dir: Path, samples: int = 64, size: int = PHOTO_SIZE, seed: int = 0) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    scene_build.reset_blender()
    lens = LensModel("kannala_brandt", LENS["focal_px"], tuple(LENS["coefficients"]), LENS["fov_deg"])
    camera = FisheyeCamera(lens, size, size, (size / 2, size / 2), float(PHOTO_SIZE),
                           (0.0, 0.0, CAMERA_HEIGHT))
    scene_build.configure_cycles(scene_build.CyclesOptions(samples=samples, adaptive_threshold=0.01,
                                                           denoise=True, motion_blur_shutter=0.0,
                                                           seed=seed), size, size)
    scene_build.add_fisheye_camera(camera)
    build_office()
    add_office_lights()
    bpy.context.scene.render.film_transparent = False
    with tempfile.TemporaryDirectory() as tmp:
        passes = scene_build.render_layers(Path(tmp))[scene_build.MAIN_LAYER]
    rgb = passes["Combined"][..., :3]
    srgb = np.where(rgb <= 0.0031308, 12.92 * rgb, 1.055 * np.power(np.clip(rgb, 0, None), 1 / 2.4) - 0.055)
    pixels = (np.clip(srgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    atomic_write_bytes(out_dir / "empty_room.jpg", buffer.getvalue())
    atomic_write_json(out_dir / SCENE_FILE, scene_json(size))
    load_scene(out_dir)  # the recipe must produce a scene that validates
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blender_addon.bl.make_sample_scene",
        description="Build the sample office scene: render its empty-room photo and write scene.json.",
        epilog="example:\n  python -m blender_addon.bl.make_sample_scene scenes/sample_office --samples 64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", type=Path, help="scene folder to (re)write")
    parser.add_argument("--samples", type=int, default=64, help="Cycles samples (default 64)")
    parser.add_argument("--size", type=int, default=PHOTO_SIZE, help="photo size in pixels (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="Cycles seed (default 0)")
    args = parser.parse_args(argv)
    path = make_sample_scene(args.out_dir, args.samples, args.size, args.seed)
    print(f"wrote {path / SCENE_FILE} and {path / 'empty_room.jpg'}")
    return 0


if __name__ == "__main__":
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    raise SystemExit(main(argv))
