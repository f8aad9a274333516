"""Blender add-on that renders annotated fisheye images of synthetic people in real rooms.

Layout: ``blender_addon.core`` is pure Python/numpy (scene format, fisheye projection,
placement, BVH, sampling, dataset writing) and importable without Blender;
``blender_addon.bl`` is the only package that imports ``bpy``/``mathutils``. Importing this
package never imports bpy: registration imports it lazily.
"""

from __future__ import annotations


def register() -> None:
    from blender_addon.bl import registration

    registration.register()


def unregister() -> None:
    from blender_addon.bl import registration

    registration.unregister()
