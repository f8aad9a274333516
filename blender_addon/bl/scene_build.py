"""Builds the static Blender scene a frame is rendered in, from pure-Python descriptions.

Read top to bottom: reset, render settings, fisheye camera, shadow-catcher floor (the annotated
floor region), furniture proxies (shadow-catching holdouts), chairs (visible, per frame), lights (an indoor rig of area lights, or a sun), then ``render_layers`` renders and reads every view layer's passes back
from a multilayer EXR into numpy. People are added per frame by ``blender_addon.bl.render``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from blender_addon.core.batch import LightingRecipe
from blender_addon.core.chairs import Chair
from blender_addon.core.dataset import srgb_to_linear
from blender_addon.core.fisheye import FisheyeCamera
from blender_addon.core.lighting import LightingRig
from blender_addon.core.render_region import Region, box_corners
from blender_addon.core.scene_format import ChairStyle

MAIN_LAYER = "main"
FURNITURE_COLLECTION = "furniture_proxies"


class RenderBackendError(RuntimeError):
    """Blender could not do what was asked (device missing, render failed)."""


def reset_blender() -> None:
    """Start from an empty factory scene, so no state leaks in from a user's startup file."""
    bpy.ops.wm.read_factory_settings(use_empty=True)


@dataclass(frozen=True)
class CyclesOptions:
    """The subset of Cycles settings a frame needs (see ``core.batch.RenderSettings``)."""

    samples: int
    adaptive_threshold: float  # 0 disables adaptive sampling
    denoise: bool
    motion_blur_shutter: float  # 0 disables motion blur
    denoise_quality: str = "high"  # OpenImageDenoise's quality: high, balanced or fast
    device: str = "cpu"  # "cpu", "gpu" or "auto"
    threads: int = 0  # 0 = all cores
    seed: int = 0
    # Ranked Cryptomatte asset pairs on the main layer (soft person masks, see
    # core.soft_masks); 0 = no Cryptomatte pass (mask_mode "hard").
    cryptomatte_depth: int = 0


def _enable_gpu() -> bool:
    """Switch Cycles to the first available GPU backend; False when there is none."""
    prefs = bpy.context.preferences.addons["cycles"].preferences
    for backend in ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"):
        try:
            prefs.compute_device_type = backend
        except TypeError:
            continue
        prefs.get_devices()
        gpus = [d for d in prefs.devices if d.type == backend]
        if gpus:
            for device in prefs.devices:
                device.use = device.type == backend
            return True
    return False


def configure_cycles(options: CyclesOptions, width: int, height: int) -> str:
    """Set up Cycles for a render of ``width x height``; returns the device actually used."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    device = "CPU"
    if options.device in ("gpu", "auto") and _enable_gpu():
        device = "GPU"
    elif options.device == "gpu":
        raise RenderBackendError(
            "--device gpu was asked for but Cycles found no CUDA/OptiX/HIP/oneAPI/Metal device; "
            "use --device cpu or auto"
        )
    scene.cycles.device = device
    scene.cycles.samples = options.samples
    scene.cycles.use_adaptive_sampling = options.adaptive_threshold > 0
    if options.adaptive_threshold > 0:
        scene.cycles.adaptive_threshold = options.adaptive_threshold
    scene.cycles.use_denoising = options.denoise
    if options.denoise:
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
        scene.cycles.denoising_quality = options.denoise_quality.upper()
    scene.cycles.seed = options.seed
    scene.cycles.use_animated_seed = False
    scene.render.use_motion_blur = options.motion_blur_shutter > 0
    if options.motion_blur_shutter > 0:
        scene.render.motion_blur_shutter = options.motion_blur_shutter
    scene.render.threads_mode = "FIXED" if options.threads else "AUTO"
    if options.threads:
        scene.render.threads = options.threads
    scene.render.resolution_x = width
    scene.render.resolution_y = height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    scene.render.film_transparent = True
    scene.render.filter_size = 1.5
    # Linear output; the sRGB transfer is applied in numpy after compositing over the photo.
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    scene.cycles.max_bounces = 4
    scene.cycles.diffuse_bounces = 2
    scene.cycles.glossy_bounces = 2
    scene.cycles.transmission_bounces = 2
    scene.cycles.transparent_max_bounces = 8
    layer = scene.view_layers[0]
    layer.name = MAIN_LAYER
    layer.use_pass_combined = True
    layer.use_pass_object_index = True
    layer.cycles.use_pass_shadow_catcher = True
    layer.use_pass_cryptomatte_asset = options.cryptomatte_depth > 0
    if options.cryptomatte_depth > 0:
        layer.pass_cryptomatte_depth = options.cryptomatte_depth
    return device


def add_fisheye_camera(camera: FisheyeCamera) -> bpy.types.Object:
    """The Blender camera that renders ``camera`` on its square canvas (see core.fisheye)."""
    settings = camera.cycles_settings()
    data = bpy.data.cameras.new("fisheye")
    data.type = "PANO"
    data.panorama_type = settings.panorama_type
    data.fisheye_fov = settings.fisheye_fov
    data.fisheye_lens = settings.fisheye_lens
    for index, value in enumerate(settings.polynomial):
        setattr(data, f"fisheye_polynomial_k{index}", value)
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = settings.sensor_width
    data.sensor_height = settings.sensor_width  # the canvas is square
    data.clip_start = 0.01
    data.clip_end = 100.0
    obj = bpy.data.objects.new("fisheye", data)
    obj.location = camera.position
    obj.rotation_mode = "XYZ"
    obj.rotation_euler = tuple(math.radians(a) for a in camera.rotation_euler_deg)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.scene.camera = obj
    scene = bpy.context.scene
    scene.render.resolution_x = settings.canvas_px
    scene.render.resolution_y = settings.canvas_px
    return obj


def set_render_border(region: Region | None, camera: FisheyeCamera) -> None:
    """Render only ``region`` (output pixels) of the frame, or all of it for None. The passes
    keep the full canvas size; pixels outside the border stay empty (0)."""
    render = bpy.context.scene.render
    if region is None:
        render.use_border = False
        return
    settings = camera.cycles_settings()
    canvas = settings.canvas_px
    ox, oy = settings.crop_offset_px
    render.use_border, render.use_crop_to_border = True, False
    # Blender's border is in canvas fractions with y measured from the bottom.
    render.border_min_x, render.border_max_x = (region.x0 + ox) / canvas, (region.x1 + ox) / canvas
    render.border_min_y = 1 - (region.y1 + oy) / canvas
    render.border_max_y = 1 - (region.y0 + oy) / canvas


def world_box(collection: bpy.types.Collection) -> np.ndarray | None:
    """The 8 corners of the world-space box around every posed mesh or curve in ``collection``
    (the evaluated geometry: armature and shape keys applied), or None when it has none."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    points = []
    for obj in collection.all_objects:
        if obj.type not in {"MESH", "CURVES", "CURVE"}:
            continue
        evaluated = obj.evaluated_get(depsgraph)
        matrix = np.array(evaluated.matrix_world, dtype=np.float64)
        local = np.array([tuple(corner) for corner in evaluated.bound_box], dtype=np.float64)
        points.append(local @ matrix[:3, :3].T + matrix[:3, 3])
    if not points:
        return None
    merged = np.concatenate(points)
    return box_corners(merged.min(axis=0), merged.max(axis=0))


def crop_to_output(array: np.ndarray, camera: FisheyeCamera) -> np.ndarray:
    """Cut the output image out of the square render canvas (see ``FisheyeCamera.canvas``)."""
    ox, oy = camera.cycles_settings().crop_offset_px
    return array[oy:oy + camera.height, ox:ox + camera.width]


def _material(name: str, color: Sequence[float], emission: float = 0.0,
              roughness: float = 0.6) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    material.use_nodes = True  # default from Blender 5 on; kept for older versions
    bsdf = material.node_tree.nodes.get("Principled BSDF")
    bsdf.inputs["Base Color"].default_value = (*color[:3], 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    if emission > 0:
        bsdf.inputs["Emission Color"].default_value = (*color[:3], 1.0)
        bsdf.inputs["Emission Strength"].default_value = emission
    return material


def _mesh_object(name: str, vertices: np.ndarray, faces: Sequence[Sequence[int]],
                 collection: bpy.types.Collection | None = None) -> bpy.types.Object:
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(map(float, v)) for v in vertices], [], [tuple(f) for f in faces])
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj


_BOX_FACES = [(0, 1, 2, 3), (4, 7, 6, 5), (0, 4, 5, 1), (1, 5, 6, 2), (2, 6, 7, 3), (3, 7, 4, 0)]


def box_vertices(center: Sequence[float], size: Sequence[float], yaw_deg: float) -> np.ndarray:
    """The 8 corners of a box standing on z = center_z - size_z / 2, rotated about Z."""
    sx, sy, sz = (s / 2.0 for s in size)
    corners = np.array([[-sx, -sy, -sz], [sx, -sy, -sz], [sx, sy, -sz], [-sx, sy, -sz],
                        [-sx, -sy, sz], [sx, -sy, sz], [sx, sy, sz], [-sx, sy, sz]])
    yaw = math.radians(yaw_deg)
    rot = np.array([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    return corners @ rot.T + np.asarray(center, dtype=np.float64)


def add_box(name: str, center: Sequence[float], size: Sequence[float], yaw_deg: float = 0.0,
            material: bpy.types.Material | None = None,
            collection: bpy.types.Collection | None = None) -> bpy.types.Object:
    obj = _mesh_object(name, box_vertices(center, size, yaw_deg), _BOX_FACES, collection)
    if material is not None:
        obj.data.materials.append(material)
    return obj


def add_shadow_catcher_floor(extent: tuple[float, float, float, float]) -> bpy.types.Object:
    """A floor plane at z = 0 covering ``(xmin, ymin, xmax, ymax)``, catching shadows only."""
    xmin, ymin, xmax, ymax = extent
    verts = np.array([[xmin, ymin, 0], [xmax, ymin, 0], [xmax, ymax, 0], [xmin, ymax, 0]])
    floor = _mesh_object("shadow_catcher_floor", verts, [(0, 1, 2, 3)])
    floor.data.materials.append(_material("floor_catcher", (0.6, 0.6, 0.6)))
    floor.is_shadow_catcher = True
    return floor


def add_shadow_catcher_polygons(polygons: Sequence[Sequence[Sequence[float]]]) -> bpy.types.Object:
    """The annotated floor region (one n-gon per polygon, z = 0) as the shadow catcher.

    Shadows then fall only where the room really has open floor: not onto walls, furniture
    or beyond the room, where a plane at z = 0 would put them in the wrong place."""
    verts: list[tuple[float, float, float]] = []
    faces: list[tuple[int, ...]] = []
    for polygon in polygons:
        start = len(verts)
        verts.extend((float(x), float(y), 0.0) for x, y in polygon)
        faces.append(tuple(range(start, len(verts))))
    floor = _mesh_object("shadow_catcher_floor", np.asarray(verts), faces)
    floor.data.materials.append(_material("floor_catcher", (0.6, 0.6, 0.6)))
    floor.is_shadow_catcher = True
    return floor


def add_furniture_proxies(furniture: Iterable[object], catch_shadows: bool = True) -> bpy.types.Collection:
    """Furniture proxies (those marked ``holdout``) as shadow catchers: like holdouts they hide
    the people behind them and show the photo, and they also catch the people's shadows, so a
    table top darkens under an arm or a head as the floor does (the composite multiplies the
    photo by the Shadow Catcher pass everywhere).

    They cast no shadows: the photo already has the furniture's own. ``catch_shadows=False``
    makes plain holdouts (where rough proxies would put shadows in the wrong place).
    """
    collection = bpy.data.collections.new(FURNITURE_COLLECTION)
    bpy.context.scene.collection.children.link(collection)
    for item in furniture:
        if not item.holdout:
            continue
        # The name keeps its "holdout_" prefix: Cryptomatte hashes names, and soft masks and
        # their tests key on them.
        obj = add_box(f"holdout_{item.name}", item.center, item.size, item.yaw_deg,
                      collection=collection)
        obj.is_shadow_catcher = catch_shadows
        obj.is_holdout = not catch_shadows
        obj.visible_shadow = False
        obj.pass_index = 0
    return collection


CHAIR_COLLECTION = "chairs"


def add_chairs(chairs: Sequence[Chair], style: ChairStyle) -> bpy.types.Collection:
    """The frame's rendered chairs (``core.chairs``): visible, shadow-casting boxes with a
    fabric cushion and backrest and a metal frame, object index 0 (never a person's)."""
    collection = bpy.data.collections.new(CHAIR_COLLECTION)
    bpy.context.scene.collection.children.link(collection)
    materials: dict[str, bpy.types.Material] = {}
    try:
        materials["fabric"] = _material("chair_fabric", srgb_to_linear(np.asarray(style.fabric_srgb)).tolist(),
                                        roughness=0.9)
        materials["frame"] = _material("chair_frame", srgb_to_linear(np.asarray(style.frame_srgb)).tolist(),
                                       roughness=0.35)
        materials["frame"].node_tree.nodes["Principled BSDF"].inputs["Metallic"].default_value = 0.8
        for chair in chairs:
            for part in chair.parts:
                obj = add_box(f"chair_{chair.seat}_{part.name}", part.center, part.size, part.yaw_deg,
                              material=materials[part.material], collection=collection)
                obj.pass_index = 0
    except BaseException:
        remove_chairs(collection, list(materials.values()))  # what was built so far
        raise
    return collection


def remove_chairs(collection: bpy.types.Collection, materials: Sequence[bpy.types.Material] = ()) -> None:
    """Delete a frame's chairs, their meshes and their materials (theirs, and ``materials``)."""
    owned = {*materials, *(slot for obj in collection.objects for slot in obj.data.materials)}
    for obj in list(collection.objects):
        mesh = obj.data
        bpy.data.objects.remove(obj, do_unlink=True)
        bpy.data.meshes.remove(mesh)
    for material in owned:
        bpy.data.materials.remove(material)
    bpy.data.collections.remove(collection)


RIG_COLLECTION = "lighting_rig"


def apply_lighting(lighting: LightingRecipe, rig: LightingRig | None = None) -> None:
    """A uniform world (soft fill) plus either the indoor rig's area lights (ceiling panels,
    maybe a window; see ``core.lighting``) or, without a rig, one sun."""
    apply_rig(rig)
    world = bpy.context.scene.world or bpy.data.worlds.new("world")
    bpy.context.scene.world = world
    world.use_nodes = True
    background = world.node_tree.nodes.get("Background")
    background.inputs["Color"].default_value = (*lighting.ambient_color, 1.0)
    background.inputs["Strength"].default_value = lighting.ambient_strength
    sun = bpy.data.objects.get("sun")
    if sun is None:
        sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
        bpy.context.scene.collection.objects.link(sun)
    sun.data.energy = 0.0 if rig is not None else lighting.sun_strength
    sun.data.color = lighting.sun_color
    sun.data.angle = math.radians(lighting.sun_angle_deg)
    # A sun points down its local -Z; tilt it away from the zenith, then turn it.
    sun.rotation_euler = (math.radians(90.0 - lighting.sun_elevation_deg), 0.0,
                          math.radians(lighting.sun_azimuth_deg))


def apply_rig(rig: LightingRig | None) -> None:
    """Replace the previous frame's rig lights with ``rig``'s (none when it is None)."""
    collection = bpy.data.collections.get(RIG_COLLECTION)
    if collection is None:
        collection = bpy.data.collections.new(RIG_COLLECTION)
        bpy.context.scene.collection.children.link(collection)
    for obj in list(collection.objects):
        light = obj.data
        bpy.data.objects.remove(obj, do_unlink=True)
        if light is not None and light.users == 0:
            bpy.data.lights.remove(light)
    if rig is None:
        return
    for spec in rig.lights:
        data = bpy.data.lights.new(f"rig_{spec.name}", "AREA")
        data.shape = "RECTANGLE"
        data.size, data.size_y = spec.size
        data.energy = spec.power_w
        data.color = spec.colour
        obj = bpy.data.objects.new(f"rig_{spec.name}", data)
        obj.location = spec.position
        obj.rotation_euler = tuple(math.radians(a) for a in spec.rotation_deg)
        # Lights light the people; the camera must never see the emitters themselves (the
        # render is composited over the photo, which has its own lamps).
        obj.visible_camera = False
        collection.objects.link(obj)


def add_marker(name: str, location: Sequence[float], radius: float, pass_index: int,
               collection: bpy.types.Collection | None = None) -> bpy.types.Object:
    """An emissive UV sphere: a calibration target for the projection test."""
    mesh = bpy.data.meshes.new(name)
    import bmesh  # Blender-only module, imported here so this file's import stays light

    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=24, v_segments=12, radius=radius)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    obj.location = tuple(location)
    obj.pass_index = pass_index
    obj.data.materials.append(_material(f"{name}_emit", (1.0, 1.0, 1.0), emission=5.0))
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj


def add_mask_layer(name: str, include: bpy.types.Collection, all_people: Sequence[bpy.types.Collection],
                   chairs: bpy.types.Collection | None = None) -> None:
    """A 1-sample view layer with only ``include`` visible: one person's unoccluded mask."""
    scene = bpy.context.scene
    layer = scene.view_layers.new(name)
    layer.use_pass_combined = False
    layer.use_pass_object_index = True
    layer.samples = 1
    layer.cycles.use_denoising = False
    layer.cycles.use_pass_shadow_catcher = False
    for child in layer.layer_collection.children:
        keep = child.collection == include
        # Neither furniture nor chairs hide the person here: the mask is the whole silhouette.
        if (child.collection in all_people or child.collection == chairs
                or child.collection.name == FURNITURE_COLLECTION):
            child.exclude = not keep


def remove_view_layers(names: Iterable[str]) -> None:
    """Remove the named view layers (those a frame added), leaving every other one."""
    scene = bpy.context.scene
    for name in names:
        layer = scene.view_layers.get(name)
        if layer is not None and len(scene.view_layers) > 1:
            scene.view_layers.remove(layer)


def remove_extra_view_layers() -> None:
    scene = bpy.context.scene
    for layer in list(scene.view_layers):
        if layer.name != MAIN_LAYER:
            scene.view_layers.remove(layer)


def read_multilayer_exr(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {pass: array}}`` with arrays (H, W) or (H, W, C), row 0 at the top."""
    import OpenEXR

    layers: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    # Blender 5 writes one EXR part per pass; channels are named "<layer>.<pass>.<component>".
    with OpenEXR.File(str(path), separate_channels=True) as exr:
        for part in exr.parts:
            for full_name, channel in part.channels.items():
                layer, _, rest = full_name.partition(".")
                pass_name, _, component = rest.rpartition(".")
                layers.setdefault(layer, {}).setdefault(pass_name, {})[component] = channel.pixels
    result: dict[str, dict[str, np.ndarray]] = {}
    for layer, passes in layers.items():
        result[layer] = {}
        for pass_name, comps in passes.items():
            # Cryptomatte's channels are lower case (r, g, b, a = id, coverage, id, coverage):
            # order them like R, G, B, A, not as the file happens to list them.
            rank = {c: i for i, c in enumerate("RGBAXYZV")}
            order = sorted(comps, key=lambda c: (rank.get(c.upper(), len(rank)), c))
            arrays = [np.asarray(comps[c], dtype=np.float32) for c in order]
            result[layer][pass_name] = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=-1)
    return result


def render_layers(workdir: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Render every view layer of the current scene; return their passes as float arrays."""
    scene = bpy.context.scene
    folder = Path(workdir) if workdir else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="render_", suffix=".exr", dir=folder)
    os.close(fd)
    path = Path(name)
    settings = scene.render.image_settings
    settings.media_type = "MULTI_LAYER_IMAGE"
    settings.file_format = "OPEN_EXR_MULTILAYER"
    settings.color_depth = "32"
    settings.exr_codec = "ZIP"
    scene.render.use_compositing = False
    scene.render.use_sequencer = False
    scene.render.filepath = str(path)
    scene.render.use_file_extension = False
    try:
        bpy.ops.render.render(write_still=True)
        if not path.exists() or path.stat().st_size == 0:
            raise RenderBackendError(f"Cycles wrote no image to {path}")
        return read_multilayer_exr(path)
    finally:
        path.unlink(missing_ok=True)
