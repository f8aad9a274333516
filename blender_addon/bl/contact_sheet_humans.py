"""Contact sheet of random people, seen from above and in profile, for eyeballing the humans.

Renders N seeded random people (standing from a BVH folder when given, else built-in poses;
a quarter sitting on a box seat) with Cycles at low samples, in rows, each row from above
and from the side, and writes one JPEG plus a JSON of every person's record beside it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from pathlib import Path

import bpy
import numpy as np
from PIL import Image, ImageDraw

from blender_addon.bl import humans, scene_build
from blender_addon.core.garments import AssetLibrary, find_assets_root
from blender_addon.core.human_params import sample_person_params, sample_pose
from blender_addon.core.lighting import sample_office_rig
from blender_addon.core.posing import pose_library_for
from protocol.fileio import atomic_write_bytes, atomic_write_json

SPACING = 1.25  # metres between people in a row
PIXELS_PER_METRE = 110
SEAT_HEIGHT = 0.45


def portable_paths(value: object, start: Path) -> object:
    """``value`` with every absolute path string made relative to ``start``.

    The records are committed next to the sheet (docs/images), so the asset and BVH paths they
    name must read as they do from the repository root, not as on the machine that rendered.
    """
    if isinstance(value, dict):
        return {key: portable_paths(item, start) for key, item in value.items()}
    if isinstance(value, list):
        return [portable_paths(item, start) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, start)
    return value


def _setup_scene(samples: int, lighting: str = "sun") -> bpy.types.Scene:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.film_transparent = False
    world = bpy.data.worlds.new("sheet_world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.55, 0.58, 0.62, 1.0)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.9 if lighting == "sun" else 0.35
    scene.world = world
    if lighting == "office":
        return scene  # the ceiling rig is added once the people are placed
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.5
    sun.rotation_euler = (math.radians(35), math.radians(15), math.radians(30))
    scene.collection.objects.link(sun)
    return scene


def _camera(scene: bpy.types.Scene, name: str, location, rotation, ortho_scale: float) -> bpy.types.Object:
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    cam.data.type = "ORTHO"
    cam.data.ortho_scale = ortho_scale
    cam.location = location
    cam.rotation_euler = rotation
    scene.collection.objects.link(cam)
    return cam


def _render(scene: bpy.types.Scene, camera: bpy.types.Object, width: int, height: int, path: Path) -> Image.Image:
    scene.camera = camera
    scene.render.resolution_x = width
    scene.render.resolution_y = height
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return Image.open(path).convert("RGB")


def build_sheet(out: Path, count: int, seed: int, mocap: Path | None, samples: int, per_row: int,
                assets: AssetLibrary | None = None, lighting: str = "office") -> list[dict]:
    scene = _setup_scene(samples, lighting)
    library = pose_library_for(str(mocap) if mocap else None, str(assets.root) if assets else None)
    if library is not None:
        print("pose sources (frames accepted/rejected):", json.dumps(library.stats()))
    rng = np.random.default_rng(seed)
    rows = math.ceil(count / per_row)
    width_m = per_row * SPACING
    records: list[dict] = []
    row_objects: list[list] = [[] for _ in range(rows)]
    for i in range(count):
        row, col = divmod(i, per_row)
        kind = "sitting" if i % 4 == 3 else "standing"
        params = sample_person_params(rng)
        pose = sample_pose(rng, kind, library if (library is not None and i % 2 == 0) else None)
        x = (col + 0.5) * SPACING - width_m / 2
        y = row * 10.0  # rows far apart so each renders alone
        z = SEAT_HEIGHT if kind == "sitting" else 0.0
        handle = humans.create_person(params, pose, name=f"person_{i:02d}", location=(x, y, z),
                                      heading_rad=0.0, pass_index=i + 1, library=library,
                                      asset_library=assets)
        row_objects[row].extend(handle.objects)
        if kind == "sitting":
            bpy.ops.mesh.primitive_cube_add(size=1.0, location=(x - 0.05, y, SEAT_HEIGHT / 2))
            seat = bpy.context.active_object
            seat.scale = (0.42, 0.42, SEAT_HEIGHT)
            row_objects[row].append(seat)
        records.append(handle.record)
    bpy.ops.mesh.primitive_plane_add(size=200.0, location=(0, 0, 0))
    if lighting == "office":
        # Ceiling panels 2.85 m up over every row, as in a rendered frame (core.lighting).
        floor = [[(-width_m / 2, -1.5), (width_m / 2, -1.5), (width_m / 2, (rows - 1) * 10.0 + 1.5),
                  (-width_m / 2, (rows - 1) * 10.0 + 1.5)]]
        scene_build.apply_rig(sample_office_rig(np.random.default_rng(seed), floor, 2.85, window_probability=0.0))
    tmp = out.parent / f".{out.stem}_tiles"
    tmp.mkdir(parents=True, exist_ok=True)
    strips: list[Image.Image] = []
    width_px = int(width_m * PIXELS_PER_METRE)
    for row in range(rows):
        for other in range(rows):
            for obj in row_objects[other]:
                obj.hide_render = other != row
        y = row * 10.0
        top_h = int(1.6 * PIXELS_PER_METRE)
        top = _camera(scene, f"top_{row}", (0, y, 10.0), (0, 0, 0), width_m)
        strips.append(_render(scene, top, width_px, top_h, tmp / f"top_{row}.png"))
        side_h = int(2.2 * PIXELS_PER_METRE)
        # Camera on -Y looking along +Y: people facing +X are seen in profile.
        side = _camera(scene, f"side_{row}", (0, y - 20.0, 1.0), (math.radians(90), 0, 0), width_m)
        strips.append(_render(scene, side, width_px, side_h, tmp / f"side_{row}.png"))
    sheet = Image.new("RGB", (width_px, sum(s.height for s in strips)), "white")
    offset = 0
    draw = ImageDraw.Draw(sheet)
    for index, strip in enumerate(strips):
        sheet.paste(strip, (0, offset))
        draw.text((4, offset + 2), ("top" if index % 2 == 0 else "profile") + f" row {index // 2}", fill="white")
        offset += strip.height
    buffer = io.BytesIO()
    sheet.save(buffer, "JPEG", quality=85)
    atomic_write_bytes(out, buffer.getvalue())
    atomic_write_json(out.with_suffix(".json"), {"seed": seed, "people": portable_paths(records, Path.cwd())})
    for png in tmp.iterdir():
        png.unlink()
    tmp.rmdir()
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blender_addon.bl.contact_sheet_humans",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m blender_addon.bl.contact_sheet_humans docs/images/humans_contact_sheet.jpg\n"
            "  python -m blender_addon.bl.contact_sheet_humans out/sheet.jpg --mocap ../shared/data/mocap "
            "--count 12 --seed 3\n"
        ),
    )
    parser.add_argument("out", type=Path, help="output JPEG path (a .json with the records is written beside it)")
    parser.add_argument("--count", type=int, default=24, help="number of people (default 24)")
    parser.add_argument("--per-row", type=int, default=12, help="people per row (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--mocap", type=Path, default=None, help="folder of BVH files for standing poses")
    parser.add_argument("--samples", type=int, default=16, help="Cycles samples (default 16)")
    parser.add_argument("--assets", default=None,
                        help="MakeHuman asset folder (garments, hair); default $FISHEYE_SYNTH_MAKEHUMAN_ASSETS "
                             "or ../shared/data/makehuman_assets when present")
    parser.add_argument("--no-assets", action="store_true", help="painted clothing and shell hair only")
    parser.add_argument("--lighting", choices=("office", "sun"), default="office",
                        help="ceiling panels as in rendered frames (default) or one sun")
    args = parser.parse_args(argv)
    if args.count < 1 or args.per_row < 1:
        parser.error("--count and --per-row must be at least 1")
    root = None if args.no_assets else find_assets_root(args.assets)
    assets = AssetLibrary(root) if root else None
    print(f"assets: {root or 'none (painted clothing)'}")
    records = build_sheet(args.out, args.count, args.seed, args.mocap, args.samples, args.per_row, assets,
                          args.lighting)
    print(f"wrote {args.out} with {len(records)} people")
    return 0


if __name__ == "__main__":
    sys.exit(main())
