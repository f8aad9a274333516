"""Renders annotated frames of a scene in Cycles (the Blender side of ``core.batch``).

``FrameRenderer(scene, config)`` builds the static part once per worker process (Cycles
settings, fisheye camera, shadow-catcher floor, furniture proxies); ``render_frame(i)``
then, for frame i: draws its recipe, adds the people (each in its own collection, with its
instance id as ``pass_index``) and, where the scene asks for them, a chair at every seat
(``core.chairs``), lights the room, animates a small shift for motion blur,
adds one 1-sample view layer per person (their unoccluded silhouettes), renders everything
in one call, composites the people and their shadows over the room photo, derives the
annotations in numpy, writes image, mask, soft masks and per-frame JSON (last), and removes
the people. Soft masks (``mask_mode="soft"``) come from the main layer's Cryptomatte asset pass
(why that, and its layout: ``core.soft_masks``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
import numpy as np

from blender_addon.bl import scene_build
from blender_addon.core import batch, camera_sensor, dataset, soft_masks
from blender_addon.core.batch import BatchConfig, FrameRecipe, PersonRecipe
from blender_addon.core.chairs import Chair, frame_chairs, part_corners
from blender_addon.core.lighting import (
    LightingRig,
    PhotoMatch,
    match_to_photo,
    photo_statistics,
    sample_office_rig,
)
from blender_addon.core.render_region import Region, people_region
from blender_addon.core.scene_format import SceneSpec, load_scene
from protocol import coverage as coverage_file

FPS = 24
RIG_STREAM = 0x4C16  # seeds the lighting rig's own random stream beside the frame seed
MASK_LAYER_PREFIX = "mask_"


@dataclass
class _Person:
    """A person in the Blender scene, whatever backend made them."""

    recipe: PersonRecipe
    collection: bpy.types.Collection
    root: bpy.types.Object  # the object that carries the motion-blur keyframes
    head_world: np.ndarray
    record: dict[str, Any]
    handle: Any = None  # humans.PersonHandle for the mpfb2 backend


def _proxy_person(recipe: PersonRecipe, collection: bpy.types.Collection) -> _Person:
    """A geometric stand-in (body box, head sphere): fast pipeline tests, not a human model."""
    root = bpy.data.objects.new(f"{recipe.name}_root", None)
    collection.objects.link(root)
    standing = recipe.kind == "standing"
    base_z = recipe.location[2]  # floor (standing) or seat height (sitting)
    body_height = 1.45 if standing else 0.6
    head_z = base_z + (1.62 if standing else 0.8)
    body = scene_build.add_box(f"{recipe.name}_body", (0.0, 0.0, 0.0), (0.3, 0.45, body_height),
                               collection=collection)
    body.location = (0.0, 0.0, body_height / 2)
    head = scene_build.add_marker(f"{recipe.name}_head", (0.0, 0.0, head_z - base_z),
                                  0.11, recipe.pass_index, collection)
    emissive = head.data.materials[0]
    head.data.materials.clear()
    bpy.data.materials.remove(emissive)
    material = bpy.data.materials.get("proxy_skin") or scene_build._material("proxy_skin", (0.8, 0.55, 0.4))
    body.data.materials.append(material)
    head.data.materials.append(material)
    for obj in (body, head):
        obj.parent = root
        obj.pass_index = recipe.pass_index
    root.location = recipe.location
    root.rotation_euler = (0.0, 0.0, recipe.heading_rad)
    head_world = np.array([recipe.location[0], recipe.location[1], head_z])
    return _Person(recipe, collection, root, head_world,
                   {"backend": "proxy", "head_world": head_world.tolist()})


class FrameRenderer:
    """Renders frames of one run; one instance per worker process."""

    def __init__(self, config: BatchConfig, out: Path, scene: SceneSpec | None = None,
                 threads: int = 0, cycles_seed_offset: int = 0, reset: bool = True,
                 window: Region | None = None) -> None:
        # reset=False builds into the current scene instead of a factory-empty Blender: only
        # inside scene_state.preserved(hide_existing=True) (render_in_place), which undoes it.
        # cycles_seed_offset decorrelates a benchmark's reference from the renders it scores.
        # window: render only this rectangle, whatever config.render.region says (benchmarks
        # score settings in one window against a costly reference of that window alone).
        self.cycles_seed_offset = cycles_seed_offset
        self.window = window
        self.config = config
        self.out = Path(out)
        self.scene = scene or load_scene(config.scene)
        self.camera = self.scene.camera_for(config.render.resolution)
        self.settings = self.camera.cycles_settings()
        self.traced = self.camera.traced()
        from blender_addon.core.posing import pose_library_for

        # CMU mocap (--pose-library) and the asset folder's static MakeHuman poses.
        self.pose_library = pose_library_for(config.pose_library,
                                             config.assets if config.human_backend == "mpfb2" else None)
        self.asset_library = None
        if config.assets and config.human_backend == "mpfb2":
            from blender_addon.core.garments import AssetLibrary

            self.asset_library = AssetLibrary(config.assets)
        if reset:
            scene_build.reset_blender()
        render = config.render
        self.device = scene_build.configure_cycles(scene_build.CyclesOptions(
            samples=render.samples, adaptive_threshold=render.adaptive_threshold,
            denoise=render.denoise, denoise_quality=render.denoise_quality,
            motion_blur_shutter=render.motion_blur_shutter,
            device=render.device, threads=threads,
            cryptomatte_depth=soft_masks.CRYPTOMATTE_DEPTH if render.mask_mode == "soft" else 0),
            self.camera.width, self.camera.height)
        scene_build.add_fisheye_camera(self.camera)
        scene_build.add_shadow_catcher_polygons(self.scene.floor_polygons)
        scene_build.add_furniture_proxies(self.scene.furniture)
        bpy.context.scene.render.fps = FPS
        bpy.context.preferences.edit.keyframe_new_interpolation_type = "LINEAR"
        self.photo = dataset.load_photo_linear(self.scene.photo_path, (self.camera.width, self.camera.height))
        tint = self.photo.reshape(-1, 3).mean(axis=0)
        self.photo_tint = tint / max(float(tint.max()), 1e-6)
        # Only --match-photo reads them (a photo they cannot be taken from fails there, not here).
        self.photo_statistics = photo_statistics(self.photo) if config.match_photo else None
        self.scene_hashes = {
            "scene_json_sha256": batch.file_sha256(self.scene.root / "scene.json"),
            "photo_sha256": batch.file_sha256(self.scene.photo_path),
        }

    # -- people --------------------------------------------------------------------------------

    def _add_people(self, recipe: FrameRecipe) -> list[_Person]:
        people: list[_Person] = []
        try:
            for person in recipe.people:
                collection = bpy.data.collections.new(person.name)
                bpy.context.scene.collection.children.link(collection)
                if self.config.human_backend == "proxy":
                    people.append(_proxy_person(person, collection))
                    continue
                from blender_addon.bl import humans

                try:
                    handle = humans.create_person(
                        person.params, person.pose, name=person.name, location=person.location,
                        heading_rad=person.heading_rad, pass_index=person.pass_index,
                        library=self.pose_library, collection=collection,
                        asset_library=self.asset_library)
                except BaseException:
                    bpy.data.collections.remove(collection)
                    raise
                record = {k: v for k, v in handle.record.items() if k != "objects"}
                people.append(_Person(person, collection, handle.armature,
                                      np.asarray(handle.head_world, dtype=np.float64), record, handle))
        except BaseException:
            self._remove_people(people)
            raise
        return people

    def _animate(self, people: list[_Person]) -> None:
        """Keys at frames 0 and 2 around the true position at frame 1: motion blur only."""
        scene = bpy.context.scene
        scene.frame_set(1)
        if self.config.render.motion_blur_shutter <= 0:
            return
        for person in people:
            root = person.root
            base = np.array(root.location)
            step = np.asarray(person.recipe.velocity_mps) / FPS
            for frame, sign in ((0, -1.0), (2, 1.0)):
                root.location = tuple(base + sign * step)
                root.keyframe_insert("location", frame=frame)
            root.location = tuple(base)
        scene.frame_set(1)

    def _remove_people(self, people: list[_Person]) -> None:
        for person in people:
            if person.handle is not None:
                from blender_addon.bl import humans

                humans.remove_person(person.handle)
            for obj in list(person.collection.all_objects):
                data = obj.data
                obj.animation_data_clear()
                bpy.data.objects.remove(obj, do_unlink=True)
                if data is not None and data.users == 0 and isinstance(data, bpy.types.Mesh):
                    bpy.data.meshes.remove(data)
            bpy.data.collections.remove(person.collection)
        for action in list(bpy.data.actions):
            if action.users == 0:
                bpy.data.actions.remove(action)

    # -- one frame -----------------------------------------------------------------------------

    def render_frame(self, index: int) -> dict[str, Any]:
        started = time.monotonic()
        recipe = batch.sample_frame_recipe(self.scene, self.config, index, self.pose_library)
        lighting = recipe.lighting
        ambient = tuple(float(c * t) for c, t in zip(lighting.ambient_color, self.photo_tint))
        # The room photo's tint colours the ambient light, so people match the photo.
        rig, photo_match = self._lighting_rig(recipe)
        scene_build.apply_lighting(dataclasses.replace(lighting, ambient_color=ambient), rig)
        bpy.context.scene.cycles.seed = (recipe.cycles_seed + self.cycles_seed_offset) % (2**31 - 1)
        people = self._add_people(recipe)
        chairs = frame_chairs(self.scene, recipe.people)
        chair_collection = None
        try:
            if chairs:
                assert self.scene.chairs is not None  # frame_chairs gives chairs only then
                chair_collection = scene_build.add_chairs(chairs, self.scene.chairs)
            self._animate(people)
            region = self._render_region(people, rig, chairs)
            scene_build.set_render_border(region, self.camera)
            collections = [p.collection for p in people]
            for person in people:
                scene_build.add_mask_layer(f"{MASK_LAYER_PREFIX}{person.recipe.pass_index}",
                                           person.collection, collections, chair_collection)
            passes = scene_build.render_layers()
            # Read now: the names go with the objects when the people are removed.
            assets = {p.recipe.pass_index: _asset_names(p.collection) for p in people}
        finally:
            scene_build.remove_view_layers(f"{MASK_LAYER_PREFIX}{p.recipe.pass_index}" for p in people)
            self._remove_people(people)
            if chair_collection is not None:
                scene_build.remove_chairs(chair_collection)
        record = self._write(index, recipe, people, passes, assets, region, rig, photo_match, chairs)
        print(f"frame {index}: {len(people)} people, {time.monotonic() - started:.1f} s", flush=True)
        return record

    def _lighting_rig(self, recipe: FrameRecipe) -> tuple[LightingRig, PhotoMatch | None]:
        """Ceiling panels (and maybe a window) over the floor, drawn from the frame's seed on
        a stream of its own, so the recipe's other draws stay as they were; then, with
        ``match_photo``, white-balanced and exposed as the photo (its draw on a third stream)."""
        rng = np.random.default_rng([recipe.seed, RIG_STREAM])
        ceiling = self.scene.camera_position[2] + 0.05
        rig = sample_office_rig(rng, self.scene.floor_polygons, ceiling)
        if not self.config.match_photo:
            return rig, None
        assert self.photo_statistics is not None  # set in __init__ when match_photo is
        cast, median = self.photo_statistics
        return match_to_photo(rig, cast, median, np.random.default_rng([recipe.seed, RIG_STREAM, 1]))

    def _render_region(self, people: list[_Person], rig: LightingRig, chairs: list[Chair]) -> Region | None:
        """The rectangle the people, the chairs and their visible shadows can change (None:
        all of it)."""
        if self.window is not None:
            return self.window
        if self.config.render.region == "full":
            return None
        boxes = [box for box in (scene_build.world_box(p.collection) for p in people) if box is not None]
        boxes += [part_corners(part) for chair in chairs for part in chair.parts]
        return people_region(self.camera, boxes, rig, self.scene.floor_polygons)

    def _crop(self, array: np.ndarray) -> np.ndarray:
        return scene_build.crop_to_output(array, self.camera)

    def _coverage(self, main: dict[str, np.ndarray], ids: np.ndarray,
                  assets: dict[int, set[str]], annotated: list[int]) -> dict[int, np.ndarray]:
        """Each annotated person's coverage: anti-aliased (soft) or the 0/1 instance mask."""
        if self.config.render.mask_mode == "hard":
            return soft_masks.hard_people_coverage(ids, annotated)
        ranks = [self._crop(rank) for rank in soft_masks.rank_passes(main)]
        coverage = soft_masks.people_coverage(ranks, {k: assets[k] for k in annotated})
        for instance in annotated:
            if not coverage[instance].any():
                # The instance ids see this person, so Cryptomatte must: the asset names did
                # not match what Blender hashed (an object outside the person's hierarchy?).
                raise scene_build.RenderBackendError(
                    f"person {instance} has visible pixels but no Cryptomatte coverage under the "
                    f"asset names {sorted(assets[instance])}; render with --hard-masks to skip "
                    "soft masks, and report this")
        return coverage

    def _write(self, index: int, recipe: FrameRecipe, people: list[_Person],
               passes: dict[str, dict[str, np.ndarray]],
               assets: dict[int, set[str]], region: Region | None, rig: LightingRig,
               photo_match: PhotoMatch | None, chairs: list[Chair]) -> dict[str, Any]:
        main = passes[scene_build.MAIN_LAYER]
        combined = self._crop(main["Combined"])
        catcher = self._crop(main["Shadow Catcher"]) if "Shadow Catcher" in main else None
        # Outside the image circle Cycles traces nothing but draws opaque black, and outside
        # the border it leaves the shadow catcher empty (0): there the frame is the photo, with
        # whatever it shows (a real camera's timestamp, say).
        combined = np.where(self.traced[..., None], combined, 0.0)
        if catcher is not None:
            rendered = self.traced
            if region is not None:
                rendered = rendered & region.mask(self.camera.width, self.camera.height)
            catcher = np.where(rendered[..., None], catcher, 1.0)
        valid_ids = {p.recipe.pass_index for p in people}
        ids = np.rint(self._crop(main["Object Index"])).astype(np.int64)
        ids[~np.isin(ids, list(valid_ids))] = 0
        full_masks = {}
        for person in people:
            layer = passes.get(f"{MASK_LAYER_PREFIX}{person.recipe.pass_index}", {})
            if "Object Index" in layer:
                full_masks[person.recipe.pass_index] = (
                    np.rint(self._crop(layer["Object Index"])) == person.recipe.pass_index)
        heads = {p.recipe.pass_index: p.head_world for p in people}
        annotations, hidden = dataset.annotate_people(ids, full_masks, heads, self.camera,
                                                      self.config.head_radius_m)
        name = batch.frame_name(index)
        annotated = [a["instance_id"] for a in annotations]
        coverage = self._coverage(main, ids, assets, annotated)
        soft_files: dict[str, np.ndarray] = {}
        for annotation in annotations:
            path = coverage_file.soft_mask_path(name, annotation["instance_id"])
            annotation["soft_mask"] = path
            soft_files[path] = coverage[annotation["instance_id"]]
        image = dataset.composite_over_photo(combined, catcher, self.photo)
        sensor = None
        if self.config.sensor is not None:
            # The real camera's look, on every person (hidden ones too) and every chair: on
            # what was rendered, not on the photo, which has that look already.
            covered = (ids > 0).astype(np.float64)
            for person_coverage in coverage.values():
                covered = np.maximum(covered, person_coverage)
            if chairs:
                covered = np.maximum(covered, np.clip(combined[..., 3], 0.0, 1.0))
            sensor = camera_sensor.SensorRecipe.sample(
                camera_sensor.SensorProfile.from_dict(self.config.sensor), recipe.seed)
            image = camera_sensor.apply_sensor(image, covered, sensor, recipe.seed)
        record = {
            "index": index,
            "frame": name,
            "image": f"images/{name}.png",
            "mask": f"masks/{name}.png",
            "mask_mode": self.config.render.mask_mode,
            "width": self.camera.width,
            "height": self.camera.height,
            "annotations": annotations,
            "hidden_people": hidden,
            "camera": self.camera.to_dict(),
            "scene": self.scene.to_dict(),
            "manifest": {
                "global_seed": self.config.seed,
                "frame_seed": recipe.seed,
                "scene_dir": self.config.scene,
                **self.scene_hashes,
                "config": self.config.to_dict(),
                "recipe": recipe.to_dict(),
                # The lights people were rendered under (the recipe's sun is not used).
                "lighting_rig": rig.to_dict(),
                "photo_match": photo_match.to_dict() if photo_match is not None else None,
                "people": [p.record for p in people],
                # Chairs rendered at the seats (scenes with "chairs"): which seat, who sat.
                "chairs": [{"seat": c.seat, "occupant": c.occupant} for c in chairs],
                "sensor": sensor.to_dict() if sensor is not None else None,
                # The rendered rectangle (output pixels); outside it the frame is the photo.
                "render_region": region.to_dict() if region is not None else None,
                "versions": batch.versions(),
            },
        }
        dataset.write_frame(self.out, name, image, ids.astype(np.uint16), record, soft_files)
        return record


def _asset_names(collection: bpy.types.Collection) -> set[str]:
    """Names of the Cryptomatte assets (top-most parents) of a person's objects."""
    names = set()
    for obj in collection.all_objects:
        while obj.parent is not None:
            obj = obj.parent
        names.add(obj.name)
    return names


def render_frames(out: Path, frames: list[int], threads: int = 0) -> None:
    """Worker body: render ``frames`` of the run in ``out`` (skipping finished ones)."""
    config = batch.load_run_config(out)
    renderer = FrameRenderer(config, out, threads=threads)
    for index in frames:
        if batch.frame_done(out, index):
            continue
        renderer.render_frame(index)


def render_in_place(config: BatchConfig, out: Path, index: int = 0, threads: int = 0) -> dict[str, Any]:
    """Render frame ``index`` of the run in ``out`` inside this Blender session, leaving the
    artist's scene exactly as it was (``scene_state.preserved``): their objects are hidden from
    the render while it runs, and everything the render set or added is undone, also on error.
    The add-on's own renders run in a subprocess; this is for scripts inside an artist's file."""
    from blender_addon.bl import scene_state

    with scene_state.preserved(hide_existing=True):
        renderer = FrameRenderer(config, out, threads=threads, reset=False)
        return renderer.render_frame(index)
