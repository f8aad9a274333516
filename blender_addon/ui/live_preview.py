"""Live refined preview in the camera view.

With live mode on, a ``depsgraph_update_post`` handler notices people being moved, turned,
re-rolled or re-posed and touches a debouncer; a ``runtime`` task waits for the scene to be
quiet for ``live_delay_s``, then starts a low-resolution, low-sample preview render (a
subprocess), crops and refines the result on the daemon, reinserts it, and shows it as the
camera's front background image (``FS live``). Nothing here blocks: the render runs in another
process and the daemon is polled with zero timeouts, so each timer tick takes milliseconds.
The display toggle (synthetic / refined / attention) re-shows the last result without work.
The switch and the toggle are runtime state on the window manager
(``window_manager.fisheye_synth_runtime``); resolution, samples, model and debounce time are the
scene's settings.
"""

from __future__ import annotations

from typing import Any

import bpy

from blender_addon.core.preview_pipeline import Debouncer, PreviewResult
from blender_addon.ui import actions, runtime, scene_objects

LIVE_IMAGE = "FS live"
_STATE: dict[str, Any] = {"debouncer": None, "result": None}


def _settings(scene: bpy.types.Scene | None = None) -> Any:
    return getattr(scene or bpy.context.scene, "fisheye_synth", None)


def _is_person_update(update: Any) -> bool:
    target = getattr(update, "id", None)
    if not isinstance(target, bpy.types.Object):
        return False
    obj = getattr(target, "original", target)
    while obj is not None:
        if scene_objects.PERSON in obj:
            return True
        obj = obj.parent
    return any(c.name.startswith("person_") or c.name == scene_objects.PEOPLE_COLLECTION
               for c in getattr(target.original, "users_collection", ()))


@bpy.app.handlers.persistent
def on_depsgraph_update(scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph) -> None:
    debouncer = _STATE["debouncer"]
    if debouncer is None:
        return
    if any(_is_person_update(update) for update in depsgraph.updates):
        debouncer.touch()
        runtime.set_status("live", "scene changed: waiting for it to settle")


class LiveTask:
    """Starts a render-refine round whenever the debouncer fires and nothing is running."""

    def step(self) -> bool:
        debouncer: Debouncer | None = _STATE["debouncer"]
        if debouncer is None:
            return True
        settings = _settings()
        if settings is not None:
            debouncer.delay_s = settings.live_delay_s
        if debouncer.due(busy=runtime.busy("live_render") or runtime.busy("live_refine")):
            start_round()
        return False

    def cancel(self) -> None:
        pass


def start_round() -> None:
    """One live refresh: fast render, then crop, refine, reinsert and show."""
    settings = _settings()
    resolution = min(settings.preview_resolution, 512) if settings is not None else 256
    samples = min(settings.preview_samples, 8) if settings is not None else 4
    model = settings.model if settings is not None else ""
    try:
        actions.start_preview_render(
            resolution=resolution, samples=samples, channel="live_render",
            on_done=lambda out: actions.start_refine_preview(model=model, frame_dir=out, channel="live_refine",
                                                             on_done=show_result))
    except actions.ActionError as exc:
        runtime.set_status("live", f"paused: {exc}")


def show_result(result: PreviewResult) -> None:
    _STATE["result"] = result
    show_current()


def show_current(scene: bpy.types.Scene | None = None) -> bpy.types.Image | None:
    """Show the last live result in the mode the toggle asks for, over the camera view."""
    result: PreviewResult | None = _STATE["result"]
    if result is None:
        return None
    from blender_addon.ui.properties import runtime_state

    state = runtime_state()
    mode = state.display_mode if state is not None else "refined"
    image = scene_objects.show_image(LIVE_IMAGE, result.display_image(mode))
    camera = (scene or bpy.context.scene).camera
    if camera is not None and camera.type == "CAMERA":
        backgrounds = camera.data.background_images
        slot = next((b for b in backgrounds if b.image is not None and b.image.name == LIVE_IMAGE), None)
        if slot is None:
            slot = backgrounds.new()
            slot.image = image
        slot.display_depth = "FRONT"
        slot.alpha = 1.0
        slot.frame_method = "FIT"
        camera.data.show_background_images = True
    runtime.set_status("live", f"showing {mode} ({len(result.crops.records)} people)")
    return image


def enable() -> None:
    if _STATE["debouncer"] is None:
        _STATE["debouncer"] = Debouncer(0.6)
    if on_depsgraph_update not in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.append(on_depsgraph_update)
    runtime.start_task("live", LiveTask())
    _STATE["debouncer"].touch()  # show the current state once
    runtime.set_status("live", "on")


def disable() -> None:
    while on_depsgraph_update in bpy.app.handlers.depsgraph_update_post:
        bpy.app.handlers.depsgraph_update_post.remove(on_depsgraph_update)
    for name in ("live", "live_render", "live_refine"):
        runtime.cancel_task(name)
    _STATE["debouncer"] = None
    runtime.clear_status("live")


def is_enabled() -> bool:
    return on_depsgraph_update in bpy.app.handlers.depsgraph_update_post


def debouncer() -> Debouncer | None:
    return _STATE["debouncer"]


def reset() -> None:
    disable()
    _STATE["result"] = None
