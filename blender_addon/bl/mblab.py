"""Optional MB-Lab backend: people made with the MB-Lab add-on when it is installed.

MB-Lab (github.com/animate1978/MB-Lab, archived) ships its character library as
``data/humanoid_library.blend``. Its scripting entry points, checked against its source:
``scene.mblab_character_name`` (an enum of character ids such as ``f_ca01``),
``bpy.ops.mbast.init_character()``, object properties ``character_age``, ``character_mass``,
``character_tone`` and material properties such as ``skin_complexion``, ``skin_hue``,
``skin_oil``, ``skin_bump`` (registered on ``bpy.types.Object`` once a session starts),
``bpy.ops.mbast.finalize_character()`` and ``bpy.ops.mbast.load_animation(filepath=...)``.

This backend could not be run where it was written (no MB-Lab library is reachable there),
so :func:`create_person_auto` uses it only when :func:`availability` says it is usable and
otherwise falls back to the built-in MakeHuman backend with a warning that says how to
install MB-Lab.
"""

from __future__ import annotations

import warnings

import addon_utils
import bpy
import numpy as np

from blender_addon.bl import humans
from blender_addon.core.bvh import PoseLibrary
from blender_addon.core.human_params import PersonParams, PoseChoice

MBLAB_MODULE_NAMES = ("MB-Lab", "MB-Lab-master", "mb_lab")
INSTALL_MESSAGE = (
    "MB-Lab is not installed: download MB-Lab from https://github.com/animate1978/MB-Lab "
    "(a release zip that includes data/humanoid_library.blend), install it with Edit > "
    "Preferences > Add-ons > Install, enable it, then retry. The built-in MakeHuman humans "
    "are used meanwhile."
)


class MbLabMissing(RuntimeError):
    """MB-Lab or its character library is not available."""


def availability() -> tuple[bool, str]:
    """Whether MB-Lab is installed, enabled and has its operators; and why not."""
    installed = {mod.__name__ for mod in addon_utils.modules()}
    found = [name for name in MBLAB_MODULE_NAMES if name in installed]
    if not found:
        return False, INSTALL_MESSAGE
    enabled, _loaded = addon_utils.check(found[0])
    if not enabled:
        try:
            addon_utils.enable(found[0], default_set=True)
        except (ImportError, RuntimeError, AttributeError, ValueError) as error:  # report, do not crash
            return False, f"MB-Lab add-on {found[0]!r} failed to enable ({error}). {INSTALL_MESSAGE}"
    if not hasattr(bpy.types.Scene, "mblab_character_name") or not hasattr(bpy.ops.mbast, "init_character"):
        return False, f"MB-Lab add-on {found[0]!r} is enabled but its operators are missing. {INSTALL_MESSAGE}"
    return True, f"MB-Lab add-on {found[0]!r} is available"


def character_ids() -> list[str]:
    """MB-Lab's realistic character ids (its anime characters are left out)."""
    prop = bpy.types.Scene.bl_rna.properties.get("mblab_character_name")
    items = [item.identifier for item in prop.enum_items] if prop is not None else []
    return [i for i in items if "_an" not in i]


def _character_for(params: PersonParams, ids: list[str]) -> str:
    """Closest MB-Lab character id for the phenotype (gender prefix, ethnicity code)."""
    ethnicity, gender, _build = params.phenotype.split("-")
    prefix = "f_" if gender == "female" else "m_"
    code = {"african": "af", "asian": "as", "caucasian": "ca"}[ethnicity]
    candidates = [i for i in ids if i.startswith(prefix + code)] or [i for i in ids if i.startswith(prefix)]
    if not candidates:
        raise MbLabMissing(f"MB-Lab offers no character for {params.phenotype}; ids: {ids}")
    return min(candidates)


def create_person_mblab(params: PersonParams, pose: PoseChoice, *, name: str, location: tuple[float, float, float],
                        heading_rad: float, pass_index: int) -> humans.PersonHandle:
    """Create one MB-Lab character with the Table 7.1 parameters and a BVH pose."""
    ok, message = availability()
    if not ok:
        raise MbLabMissing(message)
    if pose.bvh_path is None:
        raise MbLabMissing("the MB-Lab backend poses people from BVH files only; built-in poses need the "
                           "built-in backend")
    scene = bpy.context.scene
    before = set(bpy.data.objects)
    scene.mblab_character_name = _character_for(params, character_ids())
    bpy.ops.mbast.init_character()
    body = bpy.context.view_layer.objects.active
    try:
        # MB-Lab's metaparameters run from -1 to 1 (age) and 0..1 (mass, tone).
        settings = {
            "character_age": float(np.clip((params.age_years - 25.0) / 45.0 * 2.0 - 1.0, -1.0, 1.0)),
            "character_mass": params.weight, "character_tone": params.muscle,
            "skin_complexion": params.skin_melanin, "skin_hue": params.skin_hue,
            "skin_oil": params.skin_oil, "skin_bump": params.skin_bump,
        }
        skipped = [key for key in settings if not hasattr(body, key)]
        for key, value in settings.items():
            if key not in skipped:
                setattr(body, key, value)
        bpy.ops.mbast.finalize_character()
        bpy.ops.mbast.load_animation(filepath=pose.bvh_path)
        scene.frame_set(int(pose.frame or 0))
        created = [o for o in bpy.data.objects if o not in before]
        armature = next(o for o in created if o.type == "ARMATURE")
        # MB-Lab characters face -Y at rest.
        armature.rotation_euler = (0.0, 0.0, heading_rad + np.pi / 2)
        armature.location = location
        for obj in created:
            obj.pass_index = pass_index
        bpy.context.view_layer.update()
        head_bone = next(b for b in armature.pose.bones if b.name.lower() == "head")
        head = np.array(armature.matrix_world @ ((head_bone.head + head_bone.tail) / 2))
    except BaseException:
        for obj in [o for o in bpy.data.objects if o not in before]:
            bpy.data.objects.remove(obj, do_unlink=True)
        raise
    record = {"name": name, "backend": "mblab", "pass_index": pass_index, "objects": [o.name for o in created],
              "pose_kind": pose.kind, "pose": pose.to_dict(), "bvh_file": pose.bvh_path, "bvh_frame": pose.frame,
              "head_world": head.tolist(), "params": params.to_dict(), "mblab_settings_skipped": skipped}
    return humans.PersonHandle(name=name, objects=created, armature=armature, head_world=head,
                               pass_index=pass_index, record=record)


def create_person_auto(params: PersonParams, pose: PoseChoice, *, name: str, location: tuple[float, float, float],
                       heading_rad: float, pass_index: int, library: PoseLibrary | None = None,
                       backend: str = "auto") -> humans.PersonHandle:
    """``backend``: "builtin", "mblab" (error when missing) or "auto" (MB-Lab when usable)."""
    valid = ("auto", "builtin", "mblab")
    if backend not in valid:
        raise ValueError(f"unknown human backend {backend!r}; valid: {list(valid)}")
    if backend != "builtin":
        ok, message = availability()
        if ok and pose.bvh_path is not None:
            return create_person_mblab(params, pose, name=name, location=location, heading_rad=heading_rad,
                                       pass_index=pass_index)
        if backend == "mblab":
            raise MbLabMissing(message)
        if not ok:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    return humans.create_person(params, pose, name=name, location=location, heading_rad=heading_rad,
                                pass_index=pass_index, library=library)
