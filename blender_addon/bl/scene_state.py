"""Leave the artist's scene exactly as it was: snapshot what a render changes, restore it after.

``preserved(scene)`` is a context manager around anything that renders inside the artist's own
Blender session (``render.render_in_place``, ``ui.preview_worker.render_preview(in_place=True)``).
On the way in it records:

- the scene's render settings: every plain value of ``scene.render``, its ``image_settings``,
  ``scene.cycles``, ``scene.view_settings`` and ``scene.display_settings``, the camera, the world,
  the current frame, the compositor node group and ``use_compositing``;
- every view layer: name, ``use``, samples and every ``use_pass_*`` flag (Blender's and Cycles');
- the world's node inputs (a render relights the room through them);
- each object's ``hide_render`` (the render hides the artist's objects while it runs);
- which data-blocks exist (objects, collections, meshes, materials, lights, cameras, worlds,
  images, actions, node groups), and the edit preference a render sets.

On the way out, also when the render raised, it removes the view layers and data-blocks the
render added and writes every recorded value back. ``fingerprint(scene)`` is the comparison the
tests make before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import bpy

# bpy.data collections whose new members a render adds (and must take away again).
DATA_KINDS = ("objects", "collections", "meshes", "materials", "lights", "cameras", "worlds",
              "images", "actions", "node_groups", "textures")
_PLAIN = {"BOOLEAN", "INT", "FLOAT", "STRING", "ENUM"}
# Values Blender computes from others (restoring them too would round the others off).
_DERIVED = {"white_balance_whitepoint"}


def _settings_blocks(scene: bpy.types.Scene) -> dict[str, Any]:
    blocks = {"render": scene.render, "image_settings": scene.render.image_settings,
              "view_settings": scene.view_settings, "display_settings": scene.display_settings}
    cycles = getattr(scene, "cycles", None)
    if cycles is not None:
        blocks["cycles"] = cycles
    return blocks


def _values(struct: Any) -> dict[str, Any]:
    """Every plain, writable RNA value of ``struct`` (arrays as tuples)."""
    values: dict[str, Any] = {}
    for prop in struct.bl_rna.properties:
        if prop.identifier == "rna_type" or prop.type not in _PLAIN or prop.is_readonly:
            continue
        try:
            value = getattr(struct, prop.identifier)
        except (AttributeError, RuntimeError):
            continue
        if getattr(prop, "is_array", False) or (prop.type != "STRING" and hasattr(value, "__len__")
                                                and not isinstance(value, (str, set))):
            value = tuple(value)
        values[prop.identifier] = value
    return values


def _restore_values(struct: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if name in _DERIVED:
            continue
        try:
            if getattr(struct, name) != value:
                setattr(struct, name, value)
        except (AttributeError, TypeError, ValueError, RuntimeError):
            pass  # a value that depends on another one (restored in a later pass) or a locked one


def _layer_values(layer: bpy.types.ViewLayer) -> dict[str, Any]:
    values = {"use": layer.use, "samples": layer.samples}
    for prop in layer.bl_rna.properties:
        if prop.identifier.startswith("use_pass_"):
            values[prop.identifier] = getattr(layer, prop.identifier)
    cycles = getattr(layer, "cycles", None)
    if cycles is not None:
        for prop in cycles.bl_rna.properties:
            if prop.identifier.startswith("use_pass_") or prop.identifier == "use_denoising":
                values[f"cycles.{prop.identifier}"] = getattr(cycles, prop.identifier)
    return values


def _restore_layer(layer: bpy.types.ViewLayer, values: dict[str, Any]) -> None:
    for name, value in values.items():
        target, attr = (layer.cycles, name[len("cycles."):]) if name.startswith("cycles.") else (layer, name)
        try:
            if getattr(target, attr) != value:
                setattr(target, attr, value)
        except (AttributeError, TypeError, RuntimeError):
            pass


def _world_inputs(world: bpy.types.World | None) -> dict[tuple[str, str], Any]:
    if world is None or world.node_tree is None:
        return {}
    values = {}
    for node in world.node_tree.nodes:
        for socket in node.inputs:
            if hasattr(socket, "default_value"):
                value = socket.default_value
                values[(node.name, socket.identifier)] = tuple(value) if hasattr(value, "__len__") else value
    return values


def _compositor(scene: bpy.types.Scene) -> str | None:
    group = getattr(scene, "compositing_node_group", None)  # Blender 5.0's compositor
    return None if group is None else group.name


def fingerprint(scene: bpy.types.Scene | None = None) -> dict[str, Any]:
    """What a render could change in ``scene``, as plain values to compare."""
    scene = scene or bpy.context.scene
    blocks = {name: _values(struct) for name, struct in _settings_blocks(scene).items()}
    return {
        "settings": blocks,
        "view_layers": {layer.name: _layer_values(layer) for layer in scene.view_layers},
        "camera": scene.camera.name if scene.camera else None,
        "world": scene.world.name if scene.world else None,
        "world_inputs": {f"{n}/{s}": v for (n, s), v in _world_inputs(scene.world).items()},
        "frame_current": scene.frame_current,
        "use_compositing": scene.render.use_compositing,
        "compositing_node_group": _compositor(scene),
        "scene_objects": sorted(o.name for o in scene.objects),
        "hide_render": sorted(o.name for o in scene.objects if o.hide_render),
        "collections": sorted(c.name for c in scene.collection.children_recursive),
        "data": {kind: sorted(item.name for item in getattr(bpy.data, kind)) for kind in DATA_KINDS},
        "keyframe_interpolation": bpy.context.preferences.edit.keyframe_new_interpolation_type,
    }


class _Snapshot:
    def __init__(self, scene: bpy.types.Scene) -> None:
        self.scene = scene
        self.settings = {name: _values(struct) for name, struct in _settings_blocks(scene).items()}
        self.layers = [(layer, layer.name, _layer_values(layer)) for layer in scene.view_layers]
        self.camera = scene.camera
        self.world = scene.world
        self.world_inputs = _world_inputs(scene.world)
        self.frame = scene.frame_current
        self.compositor = getattr(scene, "compositing_node_group", None)
        self.hide_render = {obj.name: obj.hide_render for obj in bpy.data.objects}
        self.data = {kind: {item.as_pointer() for item in getattr(bpy.data, kind)} for kind in DATA_KINDS}
        self.interpolation = bpy.context.preferences.edit.keyframe_new_interpolation_type

    def restore(self) -> None:
        scene = self.scene
        kept = {layer.as_pointer() for layer, _, _ in self.layers}
        for layer in list(scene.view_layers):
            if layer.as_pointer() not in kept:
                scene.view_layers.remove(layer)
        # New data-blocks go, objects first (they use the meshes, lights, cameras and materials).
        for kind in DATA_KINDS:
            before = self.data[kind]
            store = getattr(bpy.data, kind)
            for item in [i for i in store if i.as_pointer() not in before]:
                if kind == "objects":
                    store.remove(item, do_unlink=True)
                else:
                    store.remove(item)
        scene.camera = self.camera
        scene.world = self.world
        if self.world is not None and self.world.node_tree is not None:
            for node in self.world.node_tree.nodes:
                for socket in node.inputs:
                    key = (node.name, socket.identifier)
                    if key in self.world_inputs:
                        try:
                            socket.default_value = self.world_inputs[key]
                        except (TypeError, ValueError):
                            pass
        if hasattr(scene, "compositing_node_group"):
            scene.compositing_node_group = self.compositor
        for obj in bpy.data.objects:
            if obj.name in self.hide_render and obj.hide_render != self.hide_render[obj.name]:
                obj.hide_render = self.hide_render[obj.name]
        for layer, name, values in self.layers:
            layer.name = name
            _restore_layer(layer, values)
        blocks = _settings_blocks(scene)
        for _ in range(2):  # twice: some values are only accepted once another one is back
            for name, values in self.settings.items():
                _restore_values(blocks[name], values)
        if scene.frame_current != self.frame:
            scene.frame_set(self.frame)
        bpy.context.preferences.edit.keyframe_new_interpolation_type = self.interpolation


@contextmanager
def preserved(scene: bpy.types.Scene | None = None, *, hide_existing: bool = False) -> Iterator[bpy.types.Scene]:
    """Snapshot ``scene`` (default: the current one), yield it, restore it, also on error.

    ``hide_existing``: hide the artist's own objects from the render (``hide_render``) and switch
    off their other view layers while inside, so only what the render adds is rendered."""
    scene = scene or bpy.context.scene
    snapshot = _Snapshot(scene)
    try:
        if hide_existing:
            for obj in scene.objects:
                obj.hide_render = True
            for layer in list(scene.view_layers)[1:]:
                layer.use = False
        yield scene
    finally:
        snapshot.restore()
