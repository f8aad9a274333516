"""Registers the add-on's Blender classes in a loop and unregisters them in reverse."""

from __future__ import annotations

import bpy  # noqa: F401  (Blender-only module)

classes: tuple[type, ...] = ()


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
