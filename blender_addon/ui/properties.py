"""The panel's settings and its runtime state.

Settings (scene folder, people counts, seed, render and daemon choices) are stored on the scene
(``scene.fisheye_synth``) and saved with the file: they describe the work. Runtime state (live
preview on or off, what it shows, each background task's status, whether it runs, its progress)
lives on the window manager (``window_manager.fisheye_synth_runtime``): never written into the
.blend, never touched by undo, reset when another file is loaded, like Blender's own job state.
The default people counts are thesis Table 7.2's U(1, 5) sitting and U(0, 4) standing
(``core.placement.PlacementConfig``).
"""

from __future__ import annotations

import bpy

from blender_addon.core import batch
from blender_addon.core.placement import PlacementConfig
from blender_addon.core.preview_pipeline import DISPLAY_MODES

HUMAN_BACKEND_ITEMS = [
    ("mpfb2", "Built-in (MakeHuman)", "Parametric MakeHuman/MPFB2 people, CC0 data shipped with the add-on's setup"),
    ("proxy", "Proxy", "Box-and-sphere stand-ins: fastest, for layout and pipeline checks"),
    ("mblab", "MB-Lab", "MB-Lab characters (needs the MB-Lab add-on installed; see its availability)"),
]
MASK_MODE_ITEMS = [("soft", "Soft", "Instance masks plus anti-aliased coverage per person"),
                   ("hard", "Hard", "Instance masks only (0/1 coverage), no Cryptomatte pass")]
SENSOR_ITEMS = [("off", "Off", "People as Cycles rendered them"),
                ("photo", "From photo", "Measure the camera on the scene's photo"),
                ("profile", "Profile", "A profile measured on real frames of the camera")]
PRESET_ITEMS = [(name, name.capitalize(), f"Render preset {name!r} of the render CLI") for name in batch.PRESETS]
DISPLAY_ITEMS = [
    ("synthetic", "Synthetic", "Show the rendered frame as it came out of Cycles"),
    ("refined", "Refined", "Show the frame with every person refined by the daemon"),
    ("attention", "Refined + attention", "Show the refined frame with the refiner's attention maps in red"),
]
assert [item[0] for item in DISPLAY_ITEMS] == list(DISPLAY_MODES)
TRAIN_KIND_ITEMS = [
    ("train_refiner", "Refiner", "Train a CycleGAN/AGGAN refiner on the daemon"),
    ("train_detector", "Detector", "Train the head detector on the daemon"),
]
# Thesis Table 7.2: U(1, 5) sitting and U(0, 4) standing people per image.
TABLE_7_2_SITTING: tuple[int, int] = PlacementConfig().sitting_range
TABLE_7_2_STANDING: tuple[int, int] = PlacementConfig().standing_range
# Background task channels (``runtime.TASKS`` names) mirrored on the window manager.
CHANNELS = ("render", "batch", "daemon", "refine", "live", "train")


def _live_changed(self: bpy.types.PropertyGroup, context: bpy.types.Context) -> None:
    from blender_addon.ui import live_preview

    if self.live_enabled:
        live_preview.enable()
    else:
        live_preview.disable()


def _display_changed(self: bpy.types.PropertyGroup, context: bpy.types.Context) -> None:
    from blender_addon.ui import live_preview

    live_preview.show_current(context.scene)


def runtime_state(context: bpy.types.Context | None = None) -> bpy.types.PropertyGroup | None:
    """``window_manager.fisheye_synth_runtime``, or None when the add-on is not registered."""
    window_manager = getattr(context or bpy.context, "window_manager", None)
    return getattr(window_manager, "fisheye_synth_runtime", None)


class FSYNTH_PG_settings(bpy.types.PropertyGroup):
    """Scene, population, render, daemon and training settings of the Fisheye Synth panel."""

    scene_dir: bpy.props.StringProperty(name="Scene folder", subtype="DIR_PATH", default="",
                                        description="Folder with scene.json and the room photo, e.g. scenes/sample_office")
    loaded_scene_dir: bpy.props.StringProperty(name="Loaded scene", default="",
                                               description="The scene folder the proxies came from (save writes here)")
    sitting_min: bpy.props.IntProperty(name="Sitting min", default=TABLE_7_2_SITTING[0], min=0, max=50,
                                       description="Fewest seated people (thesis Table 7.2: 1)")
    sitting_max: bpy.props.IntProperty(name="Sitting max", default=TABLE_7_2_SITTING[1], min=0, max=50,
                                       description="Most seated people (thesis Table 7.2: 5)")
    standing_min: bpy.props.IntProperty(name="Standing min", default=TABLE_7_2_STANDING[0], min=0, max=50,
                                        description="Fewest standing people (thesis Table 7.2: 0)")
    standing_max: bpy.props.IntProperty(name="Standing max", default=TABLE_7_2_STANDING[1], min=0, max=50,
                                        description="Most standing people (thesis Table 7.2: 4)")
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0, description="Seed of the population (re-roll adds one)")
    pose_library: bpy.props.StringProperty(name="Pose library", subtype="DIR_PATH", default="",
                                           description="Folder of CMU BVH files for standing poses (empty: built-in poses)")
    human_backend: bpy.props.EnumProperty(name="Humans", items=HUMAN_BACKEND_ITEMS, default="mpfb2",
                                          description="Which human models populate the scene")
    mblab_status: bpy.props.StringProperty(name="MB-Lab", default="not checked",
                                           description="Whether MB-Lab is usable (press Check)")

    preview_resolution: bpy.props.IntProperty(name="Preview size", default=384, min=64, max=4096,
                                              description="Long side in pixels of preview renders")
    preview_samples: bpy.props.IntProperty(name="Preview samples", default=8, min=1, max=4096,
                                           description="Cycles samples of preview renders")

    batch_out: bpy.props.StringProperty(name="Output", subtype="DIR_PATH", default="",
                                        description="Dataset folder of the batch render (resumable)")
    batch_count: bpy.props.IntProperty(name="Frames", default=10, min=1, description="Number of frames to render")
    batch_preset: bpy.props.EnumProperty(name="Preset", items=PRESET_ITEMS, default="fast",
                                         description="Quality preset of the render CLI")
    batch_workers: bpy.props.IntProperty(
        name="Workers", default=0, min=0, max=64,
        description="Worker processes of the render CLI; 0: one per CPU, as many as free memory holds")
    batch_mask_mode: bpy.props.EnumProperty(
        name="Masks", items=MASK_MODE_ITEMS, default="soft",
        description="Soft: also write each person's anti-aliased coverage (used to paste refined crops back)")
    batch_sensor: bpy.props.EnumProperty(name="Camera look", items=SENSOR_ITEMS, default="off",
                                         description="Give the rendered people the real camera's look")
    batch_sensor_profile: bpy.props.StringProperty(
        name="Camera profile", subtype="FILE_PATH", default="",
        description="A profile from 'python -m blender_addon.core.camera_sensor measure REAL_FRAMES --out FILE'")

    model: bpy.props.StringProperty(name="Refiner model", default="",
                                    description="Model name on the daemon (Connect lists them); empty: the first one")
    live_delay_s: bpy.props.FloatProperty(name="Debounce (s)", default=0.6, min=0.05, max=10.0,
                                          description="Quiet time after the last change before the live preview renders")

    train_kind: bpy.props.EnumProperty(name="Job", items=TRAIN_KIND_ITEMS, default="train_refiner",
                                       description="Which training job to start on the daemon")
    train_config: bpy.props.StringProperty(name="Job config", subtype="FILE_PATH", default="",
                                           description="JSON file with the job's config (see docs/refiner.md, docs/detector.md)")


class FSYNTH_PG_runtime(bpy.types.PropertyGroup):
    """What is running now: the live preview switch and each background task's status and progress.
    On the window manager, so it is never saved in the .blend file nor undone."""

    live_enabled: bpy.props.BoolProperty(name="Live preview", default=False, update=_live_changed,
                                         description="Re-render, refine and show the frame whenever people change")
    display_mode: bpy.props.EnumProperty(name="Show", items=DISPLAY_ITEMS, default="refined", update=_display_changed,
                                         description="Which frame the live preview shows in the camera view")

    render_running: bpy.props.BoolProperty(name="Preview render running", default=False)
    render_status: bpy.props.StringProperty(name="Preview render", default="")
    render_progress: bpy.props.FloatProperty(name="Preview render progress", default=0.0, min=0.0, max=1.0,
                                             subtype="FACTOR")
    batch_running: bpy.props.BoolProperty(name="Batch render running", default=False)
    batch_status: bpy.props.StringProperty(name="Batch render", default="")
    batch_progress: bpy.props.FloatProperty(name="Batch render progress", default=0.0, min=0.0, max=1.0,
                                            subtype="FACTOR")
    daemon_running: bpy.props.BoolProperty(name="Connecting", default=False)
    daemon_status: bpy.props.StringProperty(name="Daemon", default="")
    refine_running: bpy.props.BoolProperty(name="Refining", default=False)
    refine_status: bpy.props.StringProperty(name="Refine", default="")
    live_running: bpy.props.BoolProperty(name="Live preview running", default=False)
    live_status: bpy.props.StringProperty(name="Live preview status", default="")
    train_running: bpy.props.BoolProperty(name="Training job followed", default=False)
    train_status: bpy.props.StringProperty(name="Training", default="")
    train_state: bpy.props.StringProperty(name="Training job state", default="",
                                          description="The job's state as the daemon reports it")


def reset_runtime_state() -> None:
    """Back to defaults on every window manager (unregister, file load); no update callbacks run."""
    for window_manager in getattr(bpy.data, "window_managers", ()):
        state = getattr(window_manager, "fisheye_synth_runtime", None)
        if state is None:
            continue
        for name in FSYNTH_PG_runtime.__annotations__:
            state.property_unset(name)
