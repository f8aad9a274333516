"""The sidebar panel (View3D > Sidebar > Fisheye): scene, people, render, daemon, live, training.

Settings come from ``scene.fisheye_synth``; what runs (status, progress, the live switch) from
``window_manager.fisheye_synth_runtime``. A running render shows ``layout.progress`` (Blender
4.0+) with a Cancel button beside it."""

from __future__ import annotations

import bpy

from blender_addon.ui import runtime
from blender_addon.ui.properties import runtime_state

CATEGORY = "Fisheye"


def _progress(layout: bpy.types.UILayout, context: bpy.types.Context, channel: str, what: str) -> bool:
    """A progress bar with Cancel while ``channel`` runs; False (nothing drawn) when it does not."""
    state = runtime_state(context)
    if state is None or not getattr(state, f"{channel}_running", False):
        return False
    factor = float(getattr(state, f"{channel}_progress", 0.0))
    row = layout.row(align=True)
    row.progress(factor=factor, type="BAR", text=f"{what} {factor * 100:.0f} %")
    row.operator("fsynth.cancel", text="", icon="CANCEL").channel = channel
    return True


def _status(layout: bpy.types.UILayout, channel: str) -> None:
    text = runtime.STATUS.get(channel)
    if text:
        layout.label(text=text, icon="ERROR" if text.startswith("error") else "INFO")


class _Sub:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
    bl_parent_id = "FSYNTH_PT_main"


class FSYNTH_PT_main(bpy.types.Panel):
    """Fisheye Synth: synthetic people in real rooms, refined"""

    bl_label = "Fisheye Synth"
    bl_idname = "FSYNTH_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.fisheye_synth
        self.layout.label(text=f"Scene: {settings.loaded_scene_dir or 'none loaded'}")


class FSYNTH_PT_scene(_Sub, bpy.types.Panel):
    bl_label = "Scene"
    bl_idname = "FSYNTH_PT_scene"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.fisheye_synth
        layout = self.layout
        layout.prop(settings, "scene_dir")
        layout.operator("fsynth.load_scene", icon="FILE_FOLDER")
        row = layout.row(align=True)
        row.operator("fsynth.add_proxy", text="Box", icon="MESH_CUBE").kind = "furniture"
        row.operator("fsynth.add_proxy", text="Seat", icon="EMPTY_SINGLE_ARROW").kind = "seat"
        row = layout.row(align=True)
        row.operator("fsynth.show_alignment", icon="IMAGE_BACKGROUND")
        row.operator("fsynth.save_scene", icon="FILE_TICK")


class FSYNTH_PT_people(_Sub, bpy.types.Panel):
    bl_label = "Populate"
    bl_idname = "FSYNTH_PT_people"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.fisheye_synth
        layout = self.layout
        row = layout.row(align=True)
        row.prop(settings, "sitting_min", text="Sitting")
        row.prop(settings, "sitting_max", text="to")
        row = layout.row(align=True)
        row.prop(settings, "standing_min", text="Standing")
        row.prop(settings, "standing_max", text="to")
        layout.prop(settings, "seed")
        layout.prop(settings, "pose_library")
        layout.prop(settings, "human_backend")
        if settings.human_backend == "mblab":
            row = layout.row()
            row.label(text=f"MB-Lab: {settings.mblab_status}")
            row.operator("fsynth.check_mblab", text="Check", icon="FILE_REFRESH")
        row = layout.row(align=True)
        row.operator("fsynth.populate", icon="COMMUNITY")
        row.operator("fsynth.reroll", icon="FILE_REFRESH")
        row.operator("fsynth.clear_people", text="", icon="X")


class FSYNTH_PT_render(_Sub, bpy.types.Panel):
    bl_label = "Render"
    bl_idname = "FSYNTH_PT_render"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.fisheye_synth
        layout = self.layout
        row = layout.row(align=True)
        row.prop(settings, "preview_resolution", text="Size")
        row.prop(settings, "preview_samples", text="Samples")
        if not _progress(layout, context, "render", "Rendering preview"):
            layout.operator("fsynth.render_preview", icon="RENDER_STILL")
        _status(layout, "render")
        box = layout.box()
        box.label(text="Batch (render CLI, background process)")
        box.prop(settings, "batch_out")
        row = box.row(align=True)
        row.prop(settings, "batch_count")
        row.prop(settings, "batch_workers")
        box.prop(settings, "batch_preset")
        box.prop(settings, "batch_mask_mode")
        box.prop(settings, "batch_sensor")
        if settings.batch_sensor == "profile":
            box.prop(settings, "batch_sensor_profile")
        if not _progress(box, context, "batch", "Batch"):
            box.operator("fsynth.batch_render", icon="RENDER_ANIMATION")
        _status(box, "batch")


class FSYNTH_PT_daemon(_Sub, bpy.types.Panel):
    bl_label = "Refiner Daemon"
    bl_idname = "FSYNTH_PT_daemon"

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.fisheye_synth
        layout = self.layout
        layout.operator("fsynth.connect", icon="LINKED")
        _status(layout, "daemon")
        layout.prop(settings, "model")
        layout.operator("fsynth.refine_preview", icon="SHADERFX")
        _status(layout, "refine")
        box = layout.box()
        state = runtime_state(context)
        if state is not None:
            box.prop(state, "live_enabled", icon="REC")
            box.prop(state, "display_mode", expand=True)
        box.prop(settings, "live_delay_s")
        _status(box, "live")


class FSYNTH_PT_training(_Sub, bpy.types.Panel):
    bl_label = "Training"
    bl_idname = "FSYNTH_PT_training"
    bl_options = {"DEFAULT_CLOSED"}  # noqa: RUF012  (Blender reads a plain set)

    def draw(self, context: bpy.types.Context) -> None:
        settings = context.scene.fisheye_synth
        layout = self.layout
        layout.prop(settings, "train_kind", expand=True)
        layout.prop(settings, "train_config")
        row = layout.row(align=True)
        row.operator("fsynth.train", icon="PLAY")
        row.operator("fsynth.train_cancel", text="Cancel", icon="CANCEL")  # greyed out (poll) unless a job runs
        _status(layout, "train")
        job = runtime.INFO.get("job")
        if job:
            column = layout.column(align=True)
            for key, value in job.get("progress", {}).items():
                if isinstance(value, (int, float)):
                    column.label(text=f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


classes: tuple[type, ...] = (FSYNTH_PT_main, FSYNTH_PT_scene, FSYNTH_PT_people, FSYNTH_PT_render,
                             FSYNTH_PT_daemon, FSYNTH_PT_training)
