"""Pure Python/numpy parts of the add-on: nothing here may import bpy or mathutils."""
