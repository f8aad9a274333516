"""The panel's operators: each turns its settings into arguments for ``ui.actions`` and
reports failures with ``self.report`` and ``{'CANCELLED'}``. Docstrings are the tooltips.

Every operator has a ``poll``: buttons are greyed out, with the reason as their tooltip
(``poll_message_set``), when there is no scene, no loaded room, or when the job they would start
is already running (then the panel offers Cancel instead)."""

from __future__ import annotations

import bpy

from blender_addon.core.batch import BatchError
from blender_addon.core.placement import PlacementError
from blender_addon.core.preview_pipeline import PreviewError, RenderJobSpec
from blender_addon.core.scene_format import FurnitureProxy, SceneFormatError, Seat
from blender_addon.ui import actions, runtime, scene_objects
from protocol.errors import ProtocolError

# Errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (actions.ActionError, SceneFormatError, PlacementError, BatchError, PreviewError, ProtocolError,
               FileNotFoundError, ValueError, RuntimeError)


def _settings(context: bpy.types.Context) -> bpy.types.PropertyGroup:
    return context.scene.fisheye_synth


def _has_settings(cls: type, context: bpy.types.Context) -> bool:
    if getattr(getattr(context, "scene", None), "fisheye_synth", None) is None:
        cls.poll_message_set("no scene: open or create a .blend file")
        return False
    return True


def _room_loaded(cls: type, context: bpy.types.Context) -> bool:
    if not _has_settings(cls, context):
        return False
    if not context.scene.fisheye_synth.loaded_scene_dir:
        cls.poll_message_set("no room loaded: choose a scene folder and press Load Scene")
        return False
    return True


def _idle(cls: type, channel: str, what: str) -> bool:
    if runtime.busy(channel):
        cls.poll_message_set(f"{what} is running; cancel it first")
        return False
    return True


class _Action:
    """Mixin: run ``self.act(context)`` and turn user errors into a report. The default ``poll``
    asks for a scene with the add-on's settings; operators narrow it."""

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _has_settings(cls, context)

    def act(self, context: bpy.types.Context) -> str | None:
        raise NotImplementedError

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            message = self.act(context)
        except USER_ERRORS as exc:
            self.report({"ERROR"}, f"{self.bl_label}: {exc}")
            return {"CANCELLED"}
        if message:
            self.report({"INFO"}, message)
        return {"FINISHED"}


class FSYNTH_OT_load_scene(_Action, bpy.types.Operator):
    """Load a scene folder: the fisheye camera with the room photo as background, and its furniture, floor and seat proxies"""

    bl_idname = "fsynth.load_scene"
    bl_label = "Load Scene"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012  (Blender reads a plain set)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not _has_settings(cls, context):
            return False
        if not context.scene.fisheye_synth.scene_dir:
            cls.poll_message_set("choose a scene folder first (e.g. scenes/sample_office)")
            return False
        return True

    def act(self, context: bpy.types.Context) -> str:
        settings = _settings(context)
        if not settings.scene_dir:
            raise actions.ActionError("choose a scene folder first (e.g. scenes/sample_office)")
        spec = actions.load_scene(settings.scene_dir, settings.preview_resolution)
        message = f"loaded {spec.name}: {len(spec.furniture)} furniture, {len(spec.seats)} seats"
        current = ((settings.sitting_min, settings.sitting_max), (settings.standing_min, settings.standing_max))
        counts = actions.people_counts_after_load(spec, current)
        if counts is None:
            return message
        (settings.sitting_min, settings.sitting_max), (settings.standing_min, settings.standing_max) = counts
        (sitting, standing), source = counts, ("the scene's occupancy" if spec.occupancy else "thesis Table 7.2")
        return (f"{message}; people per frame ({source}): {sitting[0]}-{sitting[1]} sitting, "
                f"{standing[0]}-{standing[1]} standing")


class FSYNTH_OT_add_proxy(_Action, bpy.types.Operator):
    """Add a furniture box (occluder and obstacle) or a seat at the 3D cursor"""

    bl_idname = "fsynth.add_proxy"
    bl_label = "Add Proxy"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012  (Blender reads a plain set)

    kind: bpy.props.EnumProperty(name="Kind", items=[
        ("furniture", "Furniture box", "A box: hides people behind it and keeps standing people out"),
        ("seat", "Seat", "Where a seated person's pelvis goes; the arrow is where they look"),
    ])

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _room_loaded(cls, context)

    def act(self, context: bpy.types.Context) -> str:
        x, y, _z = context.scene.cursor.location
        if self.kind == "furniture":
            obj = scene_objects.add_furniture(FurnitureProxy("furniture", (x, y, 0.375), (1.2, 0.8, 0.75)))
        else:
            obj = scene_objects.add_seat(Seat("seat", (x, y), 0.46, 0.0))
        for other in context.selected_objects:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        return f"added {obj.name}"


class FSYNTH_OT_save_scene(_Action, bpy.types.Operator):
    """Write the edited proxies back into the loaded scene's scene.json (validated first)"""

    bl_idname = "fsynth.save_scene"
    bl_label = "Save Scene"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _room_loaded(cls, context)

    def act(self, context: bpy.types.Context) -> str:
        spec = actions.save_current_scene()
        return f"saved {spec.root / 'scene.json'}"


class FSYNTH_OT_show_alignment(_Action, bpy.types.Operator):
    """Show the photo with every proxy projected through the calibrated fisheye lens, to line them up"""

    bl_idname = "fsynth.show_alignment"
    bl_label = "Alignment Overlay"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _room_loaded(cls, context)

    def act(self, context: bpy.types.Context) -> str:
        image = actions.show_alignment(_settings(context).preview_resolution)
        return f"see image {image.name!r} in the Image Editor"


class FSYNTH_OT_check_mblab(_Action, bpy.types.Operator):
    """Check whether the MB-Lab add-on is installed and usable as the human backend"""

    bl_idname = "fsynth.check_mblab"
    bl_label = "Check MB-Lab"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _has_settings(cls, context)

    def act(self, context: bpy.types.Context) -> str:
        from blender_addon.bl import mblab

        ok, message = mblab.availability()
        _settings(context).mblab_status = ("available: " if ok else "missing: ") + message
        return message


def _population(context: bpy.types.Context) -> dict:
    settings = _settings(context)
    if settings.human_backend == "mblab":
        from blender_addon.bl import mblab

        ok, message = mblab.availability()
        settings.mblab_status = ("available: " if ok else "missing: ") + message
        if not ok:
            raise actions.ActionError(f"MB-Lab backend chosen but not usable: {message}")
    return {"seed": settings.seed, "sitting": (settings.sitting_min, settings.sitting_max),
            "standing": (settings.standing_min, settings.standing_max), "backend": settings.human_backend,
            "pose_library": bpy.path.abspath(settings.pose_library) if settings.pose_library else ""}


class FSYNTH_OT_populate(_Action, bpy.types.Operator):
    """Place people in the scene (counts, seed, poses, backend): the people frame 0 of a render with this seed shows"""

    bl_idname = "fsynth.populate"
    bl_label = "Populate"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012  (Blender reads a plain set)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _room_loaded(cls, context)

    def act(self, context: bpy.types.Context) -> str:
        count = actions.populate(**_population(context))
        return f"placed {count} people"


class FSYNTH_OT_reroll(_Action, bpy.types.Operator):
    """Populate again with the next seed"""

    bl_idname = "fsynth.reroll"
    bl_label = "Re-roll"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012  (Blender reads a plain set)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _room_loaded(cls, context)

    def act(self, context: bpy.types.Context) -> str:
        _settings(context).seed += 1
        count = actions.populate(**_population(context))
        return f"seed {_settings(context).seed}: placed {count} people"


class FSYNTH_OT_clear_people(_Action, bpy.types.Operator):
    """Remove every populated person"""

    bl_idname = "fsynth.clear_people"
    bl_label = "Clear People"
    bl_options = {"REGISTER", "UNDO"}  # noqa: RUF012  (Blender reads a plain set)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _has_settings(cls, context)

    def act(self, context: bpy.types.Context) -> str:
        actions.clear_people()
        return "people removed"


class FSYNTH_OT_render_preview(_Action, bpy.types.Operator):
    """Render one frame of the people as placed (in the background) and show it with its annotations"""

    bl_idname = "fsynth.render_preview"
    bl_label = "Render Preview"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _room_loaded(cls, context) and _idle(cls, "render", "a preview render")

    def act(self, context: bpy.types.Context) -> str:
        settings = _settings(context)
        out = actions.start_preview_render(resolution=settings.preview_resolution,
                                           samples=settings.preview_samples)
        return f"rendering into {out}"


class FSYNTH_OT_batch_render(_Action, bpy.types.Operator):
    """Render a dataset with the render CLI in a background process (progress in the status bar; resumable)"""

    bl_idname = "fsynth.batch_render"
    bl_label = "Batch Render"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _room_loaded(cls, context) and _idle(cls, "batch", "a batch render")

    def act(self, context: bpy.types.Context) -> str:
        settings = _settings(context)
        if runtime.busy("batch"):
            raise actions.ActionError("a batch render is running; cancel it first")
        if not settings.batch_out:
            raise actions.ActionError("choose an output folder for the dataset")
        spec = actions.current_scene()
        if settings.human_backend == "mblab":
            self.report({"WARNING"}, "batch renders use built-in humans; MB-Lab is for the viewport")
        job = RenderJobSpec(
            scene_dir=str(spec.root), out_dir=bpy.path.abspath(settings.batch_out), count=settings.batch_count,
            seed=settings.seed, preset=settings.batch_preset,
            sitting=(settings.sitting_min, settings.sitting_max),
            standing=(settings.standing_min, settings.standing_max),
            human_backend="proxy" if settings.human_backend == "proxy" else "mpfb2",
            pose_library=bpy.path.abspath(settings.pose_library) if settings.pose_library else "",
            workers=settings.batch_workers or None, mask_mode=settings.batch_mask_mode,
            sensor=_sensor_choice(settings))
        process = actions.start_batch_render(job)
        return f"batch render started: {' '.join(process.command[-6:])}"


def _sensor_choice(settings: bpy.types.PropertyGroup) -> str:
    """The render CLI's ``--sensor`` value from the panel's camera-look settings."""
    if settings.batch_sensor == "photo":
        return "photo"
    if settings.batch_sensor == "profile":
        if not settings.batch_sensor_profile:
            raise actions.ActionError("choose a camera profile file, or set Camera look to Off or From photo")
        return bpy.path.abspath(settings.batch_sensor_profile)
    return ""


class FSYNTH_OT_cancel(_Action, bpy.types.Operator):
    """Cancel a running background task (render, refine, connect)"""

    bl_idname = "fsynth.cancel"
    bl_label = "Cancel"

    channel: bpy.props.StringProperty(name="Task", default="batch")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not runtime.TASKS:
            cls.poll_message_set("nothing is running")
            return False
        return True

    def act(self, context: bpy.types.Context) -> str:
        if not actions.cancel(self.channel):
            raise actions.ActionError(f"nothing running on {self.channel!r}")
        return f"{self.channel} cancelled"


class FSYNTH_OT_connect(_Action, bpy.types.Operator):
    """Ask the refiner daemon for its version, device and models (endpoint and keys: add-on preferences)"""

    bl_idname = "fsynth.connect"
    bl_label = "Connect"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _idle(cls, "daemon", "a connection attempt")

    def act(self, context: bpy.types.Context) -> str:
        actions.connect()
        return "connecting ..."


class FSYNTH_OT_refine_preview(_Action, bpy.types.Operator):
    """Crop the last preview render, refine the people on the daemon and show original | refined in the Image Editor"""

    bl_idname = "fsynth.refine_preview"
    bl_label = "Refine Preview"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _has_settings(cls, context) and _idle(cls, "refine", "a refine preview")

    def act(self, context: bpy.types.Context) -> str:
        actions.start_refine_preview(model=_settings(context).model)
        return "refining ..."


class FSYNTH_OT_train(_Action, bpy.types.Operator):
    """Start a training job on the daemon with the chosen JSON config; progress and losses appear in the panel"""

    bl_idname = "fsynth.train"
    bl_label = "Start Training"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _has_settings(cls, context) and _idle(cls, "train", "a training job")

    def act(self, context: bpy.types.Context) -> str:
        settings = _settings(context)
        if runtime.busy("train"):
            raise actions.ActionError("a training job is being followed; cancel it first")
        if not settings.train_config:
            raise actions.ActionError("choose a job config JSON file first")
        actions.start_training(settings.train_kind, settings.train_config)
        return f"{settings.train_kind} requested"


class FSYNTH_OT_train_cancel(_Action, bpy.types.Operator):
    """Ask the daemon to cancel the training job shown in the panel"""

    bl_idname = "fsynth.train_cancel"
    bl_label = "Cancel Training"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not runtime.busy("train"):
            cls.poll_message_set("no training job is being followed")
            return False
        return True

    def act(self, context: bpy.types.Context) -> str:
        if not actions.cancel_training():
            raise actions.ActionError("no started training job to cancel")
        return "cancel requested"


classes: tuple[type, ...] = (
    FSYNTH_OT_load_scene, FSYNTH_OT_add_proxy, FSYNTH_OT_save_scene, FSYNTH_OT_show_alignment,
    FSYNTH_OT_check_mblab, FSYNTH_OT_populate, FSYNTH_OT_reroll, FSYNTH_OT_clear_people,
    FSYNTH_OT_render_preview, FSYNTH_OT_batch_render, FSYNTH_OT_cancel, FSYNTH_OT_connect,
    FSYNTH_OT_refine_preview, FSYNTH_OT_train, FSYNTH_OT_train_cancel,
)
