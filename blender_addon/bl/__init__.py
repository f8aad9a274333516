"""The Blender backend: the only modules allowed to import ``bpy`` and ``mathutils``."""
