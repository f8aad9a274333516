"""Registers the add-on's Blender classes in a loop and unregisters them in reverse.

``register(addon_package)``: the installed extension's shim passes its own ``__package__``
(e.g. ``bl_ext.user_default.fisheye_synth``), which names the preferences and the user data
folder; registered from source it defaults to ``blender_addon``.

Before anything is registered, the running Blender's version is checked against
``core.blender_version.MIN_BLENDER_VERSION`` (5.0.0, also the manifest's
``blender_version_min``): an older Blender gets ``UnsupportedBlenderError`` naming both
versions, Blender shows it and leaves the add-on disabled, and nothing is half-registered.
"""

from __future__ import annotations

import bpy

from blender_addon.ui import operators, panels, preferences, properties

classes: tuple[type, ...] = (
    preferences.FSYNTH_AP_preferences,
    properties.FSYNTH_PG_settings,
    properties.FSYNTH_PG_runtime,
    *operators.classes,
    *panels.classes,
)


@bpy.app.handlers.persistent
def _on_load_pre(*_args: object) -> None:
    # A new file: running tasks and the live preview belong to the old one.
    from blender_addon.ui import actions, live_preview, runtime

    live_preview.reset()
    runtime.shutdown()
    actions.reset()
    properties.reset_runtime_state()


def running_version() -> tuple[int, int, int]:
    """``bpy.app.version`` (a function, so a test can stand in an older Blender)."""
    return tuple(bpy.app.version)  # type: ignore[return-value]


def register(addon_package: str | None = None) -> None:
    from blender_addon.core import blender_version

    try:
        blender_version.check(running_version())
    except blender_version.UnsupportedBlenderError as exc:
        print(f"fisheye_synth: not enabled: {exc}")
        raise
    preferences.set_addon_package(addon_package)
    preferences.FSYNTH_AP_preferences.bl_idname = preferences.addon_package()
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.fisheye_synth = bpy.props.PointerProperty(type=properties.FSYNTH_PG_settings)
    # Runtime state (live switch, task status and progress): never saved in the .blend, never undone.
    bpy.types.WindowManager.fisheye_synth_runtime = bpy.props.PointerProperty(type=properties.FSYNTH_PG_runtime)
    bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    from blender_addon.ui import actions, live_preview, runtime

    live_preview.reset()
    runtime.shutdown()
    actions.reset()
    properties.reset_runtime_state()
    while _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    del bpy.types.WindowManager.fisheye_synth_runtime
    del bpy.types.Scene.fisheye_synth
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
