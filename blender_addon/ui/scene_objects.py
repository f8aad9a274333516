"""The loaded scene as ordinary Blender objects an artist edits, and back.

- Camera: the calibrated fisheye camera (``scene_build.add_fisheye_camera``) with the room
  photo as its background image.
- Furniture: unit cubes scaled to size (location = centre, scale = size, rotation Z = yaw), so
  G, S and R edit them directly; custom properties ``fsynth_holdout``/``fsynth_obstacle``.
- Floor region: one mesh, one face per polygon, at z = 0.
- Seats: arrow empties at the pelvis position (z = seat height), rotation Z = facing.
- People: whatever backend built them; their root object carries ``fsynth_person``.

Objects are recognised by the custom property ``fsynth_role``, not by name, so artists may
rename them (the name becomes the proxy's name in scene.json).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from blender_addon.bl import scene_build
from blender_addon.core.batch import BatchConfig, FrameRecipe, sample_frame_recipe
from blender_addon.core.scene_format import FurnitureProxy, SceneSpec, Seat

ROLE = "fsynth_role"
PERSON = "fsynth_person"
SCENE_COLLECTION = "FS Scene"
PROXY_COLLECTION = "FS Proxies"
PEOPLE_COLLECTION = "FS People"
PHOTO_IMAGE = "FS photo"


def _collection(name: str) -> bpy.types.Collection:
    collection = bpy.data.collections.get(name)
    if collection is None:
        collection = bpy.data.collections.new(name)
    if collection.name not in bpy.context.scene.collection.children:
        bpy.context.scene.collection.children.link(collection)
    return collection


def _remove_collection(name: str) -> None:
    collection = bpy.data.collections.get(name)
    if collection is None:
        return
    for child in list(collection.children):
        _remove_collection(child.name)
    for obj in list(collection.objects):
        remove_object(obj)
    bpy.data.collections.remove(collection)


def remove_object(obj: bpy.types.Object) -> None:
    """Delete an object and its data when nothing else uses it (no orphans left behind)."""
    data = obj.data
    obj.animation_data_clear()
    bpy.data.objects.remove(obj, do_unlink=True)
    if data is None or data.users > 0:
        return
    for kind, pool in ((bpy.types.Mesh, bpy.data.meshes), (bpy.types.Camera, bpy.data.cameras),
                       (bpy.types.Armature, bpy.data.armatures), (bpy.types.Curve, bpy.data.curves)):
        if isinstance(data, kind):
            pool.remove(data)
            return


def _unit_cube_mesh() -> bpy.types.Mesh:
    mesh = bpy.data.meshes.get("FS unit cube")
    if mesh is None:
        mesh = bpy.data.meshes.new("FS unit cube")
        corners = [(x, y, z) for z in (-0.5, 0.5) for y in (-0.5, 0.5) for x in (-0.5, 0.5)]
        faces = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
        mesh.from_pydata(corners, [], faces)
        mesh.update()
    return mesh


def add_furniture(item: FurnitureProxy, collection: bpy.types.Collection | None = None) -> bpy.types.Object:
    obj = bpy.data.objects.new(item.name, _unit_cube_mesh())
    obj.location = item.center
    obj.scale = item.size
    obj.rotation_euler = (0.0, 0.0, math.radians(item.yaw_deg))
    obj.display_type = "WIRE"
    obj.show_in_front = True
    obj[ROLE] = "furniture"
    obj["fsynth_holdout"] = bool(item.holdout)
    obj["fsynth_obstacle"] = bool(item.obstacle)
    (collection or _collection(PROXY_COLLECTION)).objects.link(obj)
    return obj


def add_seat(seat: Seat, collection: bpy.types.Collection | None = None) -> bpy.types.Object:
    obj = bpy.data.objects.new(seat.name, None)
    obj.empty_display_type = "SINGLE_ARROW"
    obj.empty_display_size = 0.4
    obj.location = (seat.position[0], seat.position[1], seat.height_m)
    # The arrow points along local Z: tip it onto +X (about Y), then turn it to face (about Z).
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = (0.0, math.pi / 2, math.radians(seat.facing_deg))
    obj[ROLE] = "seat"
    obj["fsynth_facing_jitter_deg"] = float(seat.facing_jitter_deg)
    (collection or _collection(PROXY_COLLECTION)).objects.link(obj)
    return obj


def add_floor(polygons: Any, collection: bpy.types.Collection | None = None) -> bpy.types.Object:
    vertices: list[tuple[float, float, float]] = []
    faces: list[tuple[int, ...]] = []
    for polygon in polygons:
        start = len(vertices)
        vertices += [(float(x), float(y), 0.0) for x, y in polygon]
        faces.append(tuple(range(start, len(vertices))))
    mesh = bpy.data.meshes.new("FS floor region")
    mesh.from_pydata(vertices, [], faces)
    mesh.update()
    obj = bpy.data.objects.new("floor_region", mesh)
    obj.display_type = "WIRE"
    obj[ROLE] = "floor"
    (collection or _collection(PROXY_COLLECTION)).objects.link(obj)
    return obj


def build_scene(spec: SceneSpec, long_side: int | None) -> bpy.types.Object:
    """Replace any loaded scene with ``spec``: camera + photo background + editable proxies."""
    clear_people()
    _remove_collection(SCENE_COLLECTION)
    _remove_collection(PROXY_COLLECTION)
    camera = scene_build.add_fisheye_camera(spec.camera_for(long_side))
    for collection in camera.users_collection:
        collection.objects.unlink(camera)
    _collection(SCENE_COLLECTION).objects.link(camera)
    camera[ROLE] = "camera"
    image = bpy.data.images.get(PHOTO_IMAGE)
    if image is not None:
        bpy.data.images.remove(image)
    image = bpy.data.images.load(str(spec.photo_path), check_existing=False)
    image.name = PHOTO_IMAGE
    background = camera.data.background_images.new()
    background.image = image
    background.alpha = 1.0
    background.frame_method = "FIT"
    camera.data.show_background_images = True
    proxies = _collection(PROXY_COLLECTION)
    for item in spec.furniture:
        add_furniture(item, proxies)
    add_floor(spec.floor_polygons, proxies)
    for seat in spec.seats:
        add_seat(seat, proxies)
    return camera


def _objects(role: str) -> list[bpy.types.Object]:
    return sorted((o for o in bpy.context.scene.objects if o.get(ROLE) == role), key=lambda o: o.name)


def read_proxies() -> tuple[list[FurnitureProxy], list[list[tuple[float, float]]], list[Seat]]:
    """The proxies as the artist left them, in scene-format types (world coordinates)."""
    furniture = []
    for obj in _objects("furniture"):
        scale = obj.matrix_world.to_scale()
        yaw = obj.matrix_world.to_euler("XYZ").z
        furniture.append(FurnitureProxy(obj.name, tuple(obj.matrix_world.translation), tuple(abs(s) for s in scale),
                                        math.degrees(yaw), bool(obj.get("fsynth_holdout", True)),
                                        bool(obj.get("fsynth_obstacle", True))))
    polygons: list[list[tuple[float, float]]] = []
    for obj in _objects("floor"):
        world = np.array(obj.matrix_world)
        coords = np.array([v.co for v in obj.data.vertices], dtype=np.float64).reshape(-1, 3)
        coords = coords @ world[:3, :3].T + world[:3, 3]
        for face in obj.data.polygons:
            polygons.append([(float(coords[i][0]), float(coords[i][1])) for i in face.vertices])
    seats = []
    for obj in _objects("seat"):
        x, y, z = obj.matrix_world.translation
        arrow = obj.matrix_world.col[2]  # the arrow's direction (local Z) in the world
        facing = math.degrees(math.atan2(arrow[1], arrow[0]))
        seats.append(Seat(obj.name, (x, y), z, facing, float(obj.get("fsynth_facing_jitter_deg", 15.0))))
    return furniture, polygons, seats


def edited_scene(spec: SceneSpec) -> SceneSpec:
    """``spec`` with the proxies replaced by the edited objects (for placement and overlays)."""
    furniture, polygons, seats = read_proxies()
    return replace(spec, furniture=tuple(furniture),
                   floor_polygons=tuple(tuple(p) for p in polygons) or spec.floor_polygons,
                   seats=tuple(seats))


# ---------------------------------------------------------------------------------------------
# People.


def people_roots() -> list[bpy.types.Object]:
    return sorted((o for o in bpy.context.scene.objects if PERSON in o), key=lambda o: o.name)


def clear_people() -> None:
    _remove_collection(PEOPLE_COLLECTION)
    for action in list(bpy.data.actions):
        if action.users == 0:
            bpy.data.actions.remove(action)


def populate(spec: SceneSpec, config: BatchConfig, backend: str) -> FrameRecipe:
    """Replace the people with frame 0 of ``config`` (the same people the preview renders).

    ``backend``: mpfb2 (built-in), proxy, or mblab (MB-Lab, an error when it is missing).
    """
    from blender_addon.bl import render
    from blender_addon.core.posing import pose_library_for

    library = pose_library_for(config.pose_library, config.assets if backend == "mpfb2" else None)
    assets = None
    if config.assets and backend == "mpfb2":
        from blender_addon.core.garments import AssetLibrary

        assets = AssetLibrary(config.assets)
    recipe = sample_frame_recipe(spec, config, 0, library)
    clear_people()
    people = _collection(PEOPLE_COLLECTION)
    for person in recipe.people:
        collection = bpy.data.collections.new(person.name)
        people.children.link(collection)
        if backend == "proxy":
            root = render._proxy_person(person, collection).root
        elif backend == "mblab":
            from blender_addon.bl import mblab

            handle = mblab.create_person_mblab(person.params, person.pose, name=person.name,
                                               location=person.location, heading_rad=person.heading_rad,
                                               pass_index=person.pass_index)
            for obj in handle.objects:
                for owner in list(obj.users_collection):
                    owner.objects.unlink(obj)
                collection.objects.link(obj)
            root = handle.armature
        else:
            from blender_addon.bl import humans

            root = humans.create_person(person.params, person.pose, name=person.name,
                                        location=person.location, heading_rad=person.heading_rad,
                                        pass_index=person.pass_index, library=library,
                                        collection=collection, asset_library=assets).armature
        root[PERSON] = person.name
        root["fsynth_kind"] = person.kind
    return recipe


def people_overrides() -> dict[str, dict[str, Any]]:
    """Where each person's root is now: {name: {location, heading_rad}} (moved people too)."""
    overrides = {}
    for root in people_roots():
        location = root.matrix_world.translation
        overrides[str(root[PERSON])] = {"location": [float(location.x), float(location.y), float(location.z)],
                                        "heading_rad": float(root.matrix_world.to_euler("XYZ").z)}
    return overrides


def show_image(name: str, pixels: np.ndarray) -> bpy.types.Image:
    """Create or update an image datablock from uint8 (H, W, 3) pixels and show it in any Image Editor."""
    from blender_addon.core.preview_pipeline import to_blender_pixels

    height, width = pixels.shape[:2]
    image = bpy.data.images.get(name)
    if image is not None and tuple(image.size) != (width, height):
        bpy.data.images.remove(image)
        image = None
    if image is None:
        image = bpy.data.images.new(name, width, height, alpha=True)
    image.pixels.foreach_set(to_blender_pixels(pixels))
    image.update()
    window_manager = getattr(bpy.context, "window_manager", None)
    for window in getattr(window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
                area.tag_redraw()
                break
    return image


def image_pixels(image: bpy.types.Image) -> np.ndarray:
    """uint8 (H, W, 3) top-down pixels of an image datablock (for tests and scripts)."""
    width, height = image.size
    flat = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(flat)
    rgba = flat.reshape(height, width, 4)[::-1]
    return np.clip(np.rint(rgba[..., :3] * 255.0), 0, 255).astype(np.uint8)


def scene_folder_of(path: str) -> Path:
    return Path(bpy.path.abspath(path)).resolve()
