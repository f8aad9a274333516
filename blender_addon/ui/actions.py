"""What the panel does, as plain functions: the operators call these, and so can scripts.

Headless use (pip ``bpy`` or ``blender -b -P``), the same calls the buttons make::

    from blender_addon.ui import actions, runtime
    actions.load_scene("scenes/sample_office")
    actions.populate(seed=3, sitting=(2, 2), standing=(1, 1), backend="proxy")
    actions.start_preview_render(resolution=384, samples=8)
    runtime.run_until_idle(600)                     # drive the timer without a UI
    actions.start_refine_preview(model="aggan32")
    runtime.run_until_idle(30)

Long work (renders, daemon round trips, training jobs) starts a ``runtime`` task and returns at
once; the task is polled from a timer and reports through ``runtime.STATUS``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy

from blender_addon.core import batch
from blender_addon.core.batch import BatchConfig
from blender_addon.core.placement import PlacementConfig
from blender_addon.core.preview_pipeline import (
    MessageRouter,
    PreviewError,
    PreviewResult,
    RefinePreview,
    RenderJobSpec,
    RenderProcess,
    WarmWorker,
    draw_annotations,
    load_rendered_frame,
    render_cli_prefix,
    side_by_side,
)
from blender_addon.core.scene_edit import alignment_overlay, save_scene, write_working_copy
from blender_addon.core.scene_format import SceneSpec
from blender_addon.core.scene_format import load_scene as read_scene
from blender_addon.ui import runtime, scene_objects
from blender_addon.ui.preferences import makehuman_assets, user_dir
from protocol.errors import ProtocolError
from protocol.messages import (
    ErrorReply,
    Handshake,
    HandshakeReply,
    JobCancel,
    JobProgress,
    JobStart,
    JobStatus,
    JobSubscribe,
)

ADDON_VERSION = "0.1.0"
IMAGE_ANNOTATED = "FS preview annotated"
IMAGE_ORIGINAL = "FS original"
IMAGE_REFINED = "FS refined"
IMAGE_COMPARE = "FS original | refined"
IMAGE_ALIGNMENT = "FS alignment"
_STATE: dict[str, Any] = {"scene": None, "scene_dir": None, "router": None, "last_result": None}


class ActionError(RuntimeError):
    """A panel action that cannot run; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Scene.


def load_scene(folder: str, long_side: int | None = 1024) -> SceneSpec:
    """Load a scene folder: camera with the photo as background, editable proxies."""
    spec = load_scene_spec(folder)
    scene_objects.build_scene(spec, long_side)
    _STATE.update(scene=spec, scene_dir=str(spec.root))
    settings = getattr(bpy.context.scene, "fisheye_synth", None)
    if settings is not None:
        settings.loaded_scene_dir = str(spec.root)
    return spec


Counts = tuple[tuple[int, int], tuple[int, int]]  # (sitting, standing) inclusive ranges


def people_counts_after_load(spec: SceneSpec, current: Counts) -> Counts | None:
    """The panel's people counts once ``spec`` is loaded, as the render CLI defaults them: the
    room's occupancy where it has one. A room without one gets thesis Table 7.2 if the counts
    still hold what the previous room's occupancy set, and keeps the artist's own otherwise
    (None: leave them)."""
    applied = _STATE.get("occupancy_counts")
    if spec.occupancy is not None:
        counts: Counts = (spec.occupancy.sitting, spec.occupancy.standing)
        _STATE["occupancy_counts"] = counts
        return counts
    _STATE["occupancy_counts"] = None
    if applied is not None and tuple(map(tuple, current)) == applied:
        placement = PlacementConfig()
        return (placement.sitting_range, placement.standing_range)
    return None


def load_scene_spec(folder: str) -> SceneSpec:
    return read_scene(scene_objects.scene_folder_of(folder))


def current_scene() -> SceneSpec:
    """The loaded scene with the artist's current proxies."""
    folder = _STATE.get("scene_dir") or getattr(getattr(bpy.context.scene, "fisheye_synth", None),
                                                 "loaded_scene_dir", "")
    if not folder:
        raise ActionError("no scene loaded: choose a scene folder and press Load Scene")
    spec = _STATE.get("scene")
    if spec is None or str(spec.root) != str(folder):
        spec = read_scene(folder)
        _STATE.update(scene=spec, scene_dir=str(spec.root))
    return scene_objects.edited_scene(spec)


def save_current_scene() -> SceneSpec:
    """Write the edited proxies back into the loaded scene folder (validated, atomic)."""
    spec = current_scene()
    furniture, polygons, seats = scene_objects.read_proxies()
    saved = save_scene(spec.root, furniture, polygons, seats)
    _STATE["scene"] = saved
    return saved


def show_alignment(long_side: int = 1024) -> bpy.types.Image:
    """The photo with every proxy projected through the fisheye lens, in the Image Editor."""
    return scene_objects.show_image(IMAGE_ALIGNMENT, alignment_overlay(current_scene(), long_side))


# ---------------------------------------------------------------------------------------------
# People.


def batch_config(*, count: int = 1, seed: int = 0, sitting: tuple[int, int] = (1, 3),
                 standing: tuple[int, int] = (0, 2), backend: str = "mpfb2", pose_library: str = "",
                 preset: str = "fast", resolution: int | None = None, samples: int | None = None,
                 scene_dir: str | None = None) -> BatchConfig:
    """The render CLI's config for the panel's settings (MB-Lab renders as built-in humans)."""
    render = batch.with_overrides(batch.preset(preset), resolution=resolution, samples=samples,
                                  motion_blur_shutter=0.0 if resolution else None)
    return BatchConfig(scene=scene_dir or str(current_scene().root), count=count, seed=seed, preset=preset,
                       render=render, placement=PlacementConfig(sitting_range=tuple(sitting),
                                                                standing_range=tuple(standing)),
                       human_backend="proxy" if backend == "proxy" else "mpfb2",
                       pose_library=pose_library or None,
                       assets=None if backend == "proxy" else makehuman_assets())


def populate(*, seed: int, sitting: tuple[int, int], standing: tuple[int, int], backend: str,
             pose_library: str = "") -> int:
    """Place people (frame 0 of the seed's recipe) in the viewport; returns how many."""
    spec = current_scene()
    config = batch_config(seed=seed, sitting=sitting, standing=standing, backend=backend,
                          pose_library=pose_library, scene_dir=str(spec.root))
    recipe = scene_objects.populate(spec, config, backend)
    _STATE["population"] = {"seed": seed, "sitting": tuple(sitting), "standing": tuple(standing),
                            "backend": backend, "pose_library": pose_library}
    return len(recipe.people)


def clear_people() -> None:
    scene_objects.clear_people()
    _STATE.pop("population", None)


# ---------------------------------------------------------------------------------------------
# Rendering (subprocesses, polled).


def _blender_binary() -> str | None:
    return bpy.app.binary_path or None


class RenderTask:
    """Polls a render subprocess; progress in the status bar; ``on_done`` when it succeeded."""

    def __init__(self, channel: str, process: RenderProcess, on_done: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self.process = process
        self.on_done = on_done
        window_manager = getattr(bpy.context, "window_manager", None)
        self.window_manager = window_manager if hasattr(window_manager, "progress_begin") else None
        if self.window_manager is not None:
            self.window_manager.progress_begin(0, 100)
        runtime.set_status(channel, f"rendering 0/{process.count}")

    def _end_progress(self) -> None:
        if self.window_manager is not None:
            self.window_manager.progress_end()
            self.window_manager = None

    def step(self) -> bool:
        code = self.process.poll()
        done = self.process.frames_done
        if self.window_manager is not None:
            self.window_manager.progress_update(round(100 * self.process.progress))
        runtime.set_progress(self.channel, self.process.progress)
        if code is None:
            elapsed = time.monotonic() - self.process.started
            runtime.set_status(self.channel, f"rendering {done}/{self.process.count} ({elapsed:.0f} s)")
            return False
        self._end_progress()
        if code != 0:
            raise ActionError(f"render exited with code {code}: {self.process.log_tail(3)} "
                              f"(full log: {self.process.log_path})")
        runtime.set_status(self.channel, f"done: {done} frames in {self.process.out_dir}")
        if self.on_done is not None:
            self.on_done()
        return True

    def cancel(self) -> None:
        self._end_progress()
        self.process.cancel()
        runtime.set_status(self.channel, "cancelled")


def preview_dir() -> Path:
    return user_dir("previews")


def start_preview_render(*, resolution: int = 384, samples: int = 8, channel: str = "render",
                         on_done: Callable[[Path], None] | None = None) -> Path:
    """Render the viewport's population (as placed and moved) in the channel's warm preview
    worker (a Blender subprocess kept between renders); returns the run folder.

    When it finishes, the frame with its annotations drawn over it appears in the Image Editor
    (image ``FS preview annotated``) and ``on_done(folder)`` is called.
    """
    population = _STATE.get("population")
    if population is None or not scene_objects.people_roots():
        raise ActionError("no people in the scene: press Populate first")
    spec = current_scene()
    furniture, polygons, seats = scene_objects.read_proxies()
    runtime.cancel_task(channel)  # a render still writing here must stop before its folder goes
    root = preview_dir()
    out = root / channel
    if out.exists():
        shutil.rmtree(out)
    working = write_working_copy(spec.root, root / f"{channel}_scene", furniture, polygons, seats)
    config = batch_config(seed=population["seed"], sitting=population["sitting"],
                          standing=population["standing"], backend=population["backend"],
                          pose_library=population["pose_library"], resolution=resolution, samples=samples,
                          scene_dir=str(working.root))
    batch.prepare_run_folder(out, config)
    overrides = out / "people.json"
    overrides.write_text(json.dumps(scene_objects.people_overrides()), encoding="utf-8")
    worker = preview_worker(channel)

    def finished() -> None:
        frame = load_rendered_frame(out, 0)
        scene_objects.show_image(IMAGE_ANNOTATED, draw_annotations(frame.image, frame.people))
        _STATE["preview_dir"] = out
        if on_done is not None:
            on_done(out)

    try:
        worker.request(out, overrides)
    except PreviewError as exc:
        stop_preview_workers(channel)  # the next render starts a fresh worker
        raise ActionError(str(exc)) from exc
    runtime.start_task(channel, WarmRenderTask(channel, worker, finished))
    return out


class WarmRenderTask:
    """Waits for the warm preview worker's reply to one render request; ``on_done`` on success."""

    def __init__(self, channel: str, worker: WarmWorker, on_done: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self.worker = worker
        self.on_done = on_done
        runtime.set_status(channel, "rendering" + ("" if worker.requests > 1 else " (starting Blender)"))

    def step(self) -> bool:
        reply = self.worker.poll()
        if reply is None:
            elapsed = time.monotonic() - (self.worker.pending or {}).get("sent", time.monotonic())
            runtime.set_status(self.channel, f"rendering ({elapsed:.0f} s)")
            return False
        if not reply.get("ok"):
            raise ActionError(f"preview render failed: {reply.get('error')} (worker log: {self.worker.log_path})")
        runtime.set_status(self.channel, f"done: rendered in {reply['seconds']:.1f} s"
                                         + (" (warm)" if reply.get("warm") else " (cold: Blender and the people built)"))
        if self.on_done is not None:
            self.on_done()
        return True

    def cancel(self) -> None:
        if self.worker.pending is not None:
            stop_preview_workers(self.channel)  # a render cannot be stopped half-way but by ending it
        runtime.set_status(self.channel, "cancelled")


def preview_worker(channel: str) -> WarmWorker:
    """The channel's warm preview worker (started on first use; each channel has its own, so the
    live preview and Render Preview never wait for each other)."""
    workers: dict[str, WarmWorker] = _STATE.setdefault("workers", {})
    worker = workers.get(channel)
    if worker is None or not worker.alive:
        binary = _blender_binary()
        if binary:
            from blender_addon.core.render_cli import blender_script_command

            command = blender_script_command(binary, Path(__file__).with_name("preview_worker.py"))
        else:
            import sys

            command = [sys.executable, "-m", "blender_addon.ui.preview_worker"]
        worker = WarmWorker([*command, "--serve"], preview_dir() / f"{channel}_worker_log.txt")
        workers[channel] = worker
    return worker


def stop_preview_workers(channel: str | None = None) -> None:
    """End the warm preview workers (of one channel, or all)."""
    workers: dict[str, WarmWorker] = _STATE.setdefault("workers", {})
    for name in [channel] if channel is not None else list(workers):
        worker = workers.pop(name, None) if name is not None else None
        if worker is not None:
            worker.close()


def use_preview_frame(folder: str | Path) -> None:
    """Refine Preview works on this render folder (e.g. a frame of a batch run) from now on."""
    load_rendered_frame(Path(folder), 0)  # fails early, with a clear message, if it is not one
    _STATE["preview_dir"] = Path(folder)


def start_batch_render(spec: RenderJobSpec) -> RenderProcess:
    """The render CLI in a subprocess (the same command as headless batch rendering)."""
    process = RenderProcess.for_spec(spec, render_cli_prefix(_blender_binary()))
    runtime.start_task("batch", RenderTask("batch", process))
    return process


def cancel(channel: str) -> bool:
    return runtime.cancel_task(channel)


# ---------------------------------------------------------------------------------------------
# The daemon.


def router() -> MessageRouter:
    client = runtime.client()
    current = _STATE.get("router")
    if current is None or current.client is not client:
        current = MessageRouter(client)
        _STATE["router"] = current
    return current


class HandshakeTask:
    def __init__(self, deadline_s: float) -> None:
        self.view = router().view()
        self.deadline = time.monotonic() + deadline_s
        self.request_id = self.view.send_request(Handshake(client="blender-addon", client_version=ADDON_VERSION))
        runtime.set_status("daemon", f"connecting to {router().client.endpoint} ...")

    def step(self) -> bool:
        try:
            message = self.view.poll_reply()
        except ProtocolError as exc:
            self.cancel()
            raise ActionError(f"daemon unreachable: {exc}") from None
        if message is None:
            if time.monotonic() > self.deadline:
                self.cancel()
                raise ActionError(f"no reply from {router().client.endpoint}; start it with "
                                  "`refiner-daemon serve` or fix the endpoint in the preferences")
            return False
        if isinstance(message, ErrorReply):
            raise ActionError(f"daemon refused the handshake: {message.message}")
        if not isinstance(message, HandshakeReply):
            raise ActionError(f"unexpected reply {type(message).__name__}")
        caps = message.capabilities
        runtime.INFO.update(daemon_version=message.daemon_version, device=caps.device,
                            models=list(caps.models), loaded_models=list(caps.loaded_models))
        runtime.set_status("daemon", f"connected: daemon {message.daemon_version} on {caps.device}, "
                                     f"models {', '.join(caps.models) or 'none'}")
        self.view.forget(self.request_id)
        return True

    def cancel(self) -> None:
        self.view.forget(self.request_id)


def connect(deadline_s: float | None = None) -> None:
    """Ask the daemon for its version, device and models (answer in the status line)."""
    from blender_addon.ui.preferences import daemon_settings

    settings = daemon_settings()
    total = deadline_s if deadline_s is not None else settings.timeout_ms * (settings.retries + 1) / 1000 + 0.5
    runtime.start_task("daemon", HandshakeTask(total))


def _model_name(model: str) -> str:
    if model:
        return model
    models = runtime.INFO.get("models") or []
    if not models:
        raise ActionError("no refiner model chosen and none known: press Connect, or type a model name")
    return str(models[0])


class RefineTask:
    def __init__(self, channel: str, preview: RefinePreview, on_done: Callable[[PreviewResult], None]) -> None:
        self.channel = channel
        self.preview = preview
        self.on_done = on_done

    def step(self) -> bool:
        try:
            result = self.preview.poll()
        except PreviewError as exc:
            raise ActionError(str(exc)) from None
        if result is None:
            return False
        self.on_done(result)
        return True

    def cancel(self) -> None:
        self.preview.cancel()
        runtime.set_status(self.channel, "cancelled")


def start_refine_preview(*, model: str = "", frame_dir: Path | None = None, channel: str = "refine",
                         deadline_s: float | None = None,
                         on_done: Callable[[PreviewResult], None] | None = None) -> None:
    """Crop the last preview render, refine on the daemon, show original | refined."""
    from blender_addon.ui.preferences import daemon_settings

    folder = frame_dir or _STATE.get("preview_dir")
    if folder is None:
        raise ActionError("no preview render yet: press Render Preview first")
    frame = load_rendered_frame(Path(folder), 0)
    settings = daemon_settings()
    deadline = deadline_s if deadline_s is not None else settings.timeout_ms * (settings.retries + 1) / 1000 + 0.5
    preview = RefinePreview(router().view(), frame, _model_name(model), deadline_s=deadline)
    try:
        preview.start()
    except PreviewError as exc:
        raise ActionError(str(exc)) from None
    runtime.set_status(channel, f"refining {len(preview.crops.records)} people ...")

    def finished(result: PreviewResult) -> None:
        started = time.perf_counter()
        show_result(result)
        result.times.display = time.perf_counter() - started
        _STATE["last_result"] = result
        t = result.times
        runtime.set_status(channel, f"refined {len(result.crops.records)} people in {t.total * 1000:.0f} ms "
                                    f"(crop {t.crop * 1000:.0f}, transfer {t.transfer * 1000:.0f}, "
                                    f"refine {t.refine * 1000:.0f}, reinsert {t.reinsert * 1000:.0f}, "
                                    f"display {t.display * 1000:.0f})")
        if on_done is not None:
            on_done(result)

    runtime.start_task(channel, RefineTask(channel, preview, finished))


def show_result(result: PreviewResult) -> None:
    scene_objects.show_image(IMAGE_ORIGINAL, result.frame.image)
    scene_objects.show_image(IMAGE_REFINED, result.refined)
    scene_objects.show_image(IMAGE_COMPARE, side_by_side(result.frame.image, result.refined))


def last_result() -> PreviewResult | None:
    return _STATE.get("last_result")


# ---------------------------------------------------------------------------------------------
# Training jobs.


class JobTask:
    """Start a job, subscribe to its events, show progress and losses; cancel asks the daemon."""

    def __init__(self, kind: str, config: dict[str, Any], deadline_s: float) -> None:
        self.view = router().view()
        self.kind = kind
        self.job_id: str | None = None
        self.deadline_s = deadline_s
        self.last_heard = time.monotonic()
        self.start_id = self.view.send_request(JobStart(kind=kind, config=config))
        runtime.INFO["job"] = {"kind": kind, "state": "starting", "progress": {}}
        runtime.set_job_state("starting")
        runtime.set_status("train", f"starting {kind} ...")

    def _show(self, state: str, progress: dict[str, Any]) -> None:
        runtime.INFO["job"] = {"kind": self.kind, "job_id": self.job_id, "state": state, "progress": progress}
        runtime.set_job_state(state)
        numbers = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in progress.items() if isinstance(v, (int, float)))
        runtime.set_status("train", f"{self.kind} {state}" + (f": {numbers}" if numbers else ""))

    def step(self) -> bool:
        for _ in range(32):  # drain a burst of events, but never for long
            message = self.view.poll_reply()
            if message is None:
                if self.job_id is None and time.monotonic() - self.last_heard > self.deadline_s:
                    raise ActionError("the daemon did not answer the job request; is it running?")
                return False
            self.last_heard = time.monotonic()
            if isinstance(message, ErrorReply):
                raise ActionError(f"daemon refused the job ({message.code}): {message.message}"
                                  + (f"; {message.hint}" if message.hint else ""))
            if isinstance(message, JobStatus):
                job = message.job
                if self.job_id is None:
                    self.job_id = job.job_id
                    self.view.send_request(JobSubscribe(job_id=job.job_id, after_seq=-1))
                self._show(job.state, dict(job.progress))
                if job.finished:
                    return True
            elif isinstance(message, JobProgress):
                self._show(message.state, dict(message.event))
                if message.state in ("succeeded", "failed", "cancelled"):
                    return True
        return False

    def request_cancel(self) -> bool:
        """Ask the daemon to stop the job; the task ends when the job reports cancelled."""
        if self.job_id is None:
            return False
        self.view.send_request(JobCancel(job_id=self.job_id))
        runtime.set_status("train", f"{self.kind}: cancel requested")
        return True

    def cancel(self) -> None:
        """Stop listening (the job itself goes on on the daemon)."""
        for request_id in list(self.view.request_ids):
            self.view.forget(request_id)


def cancel_training() -> bool:
    task = runtime.TASKS.get("train")
    if not isinstance(task, JobTask):
        return False
    return task.request_cancel()


def start_training(kind: str, config: dict[str, Any] | str | Path) -> None:
    """Start a training job on the daemon from a config dict or JSON file."""
    if not isinstance(config, dict):
        path = Path(bpy.path.abspath(str(config)))
        if not path.is_file():
            raise ActionError(f"job config {path} not found; point Job config at a JSON file")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ActionError(f"job config {path} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ActionError(f"job config {path} must hold a JSON object")
    from blender_addon.ui.preferences import daemon_settings

    settings = daemon_settings()
    runtime.start_task("train", JobTask(kind, config, settings.timeout_ms * (settings.retries + 1) / 1000 + 0.5))


def reset() -> None:
    """Forget the runtime state (file load, unregister); warm preview workers end."""
    stop_preview_workers()
    _STATE.update(scene=None, scene_dir=None, router=None, last_result=None)
    _STATE.pop("population", None)
    _STATE.pop("preview_dir", None)
