"""What runs between clicks: background tasks polled from one ``bpy.app.timers`` callback.

A task is an object with ``step() -> bool`` (True when finished; it must return within
milliseconds) and ``cancel()``. ``tick`` steps every task, turns exceptions into a status line,
and unregisters itself (returns None) when no task is left, so an idle add-on costs nothing.
Status lines (``STATUS``) are what the panel shows; ``tag_redraw`` refreshes the sidebar.
Each status line, whether a channel's task runs and its progress are mirrored onto the window
manager (``window_manager.fisheye_synth_runtime``, ``properties.FSYNTH_PG_runtime``): runtime
state that is never saved in the .blend nor undone, which the panel and operators' ``poll`` read.

The daemon client lives here too, one per preference set, created lazily; a ZeroMQ connect
never blocks, and every request is answered or times out through ``poll_reply(0)``.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Protocol

import bpy

from blender_addon.ui.preferences import DaemonSettings, daemon_settings

TICK_S = 0.05
STATUS: dict[str, str] = {}
INFO: dict[str, Any] = {}  # last handshake: version, device, models; last job progress


class Task(Protocol):
    def step(self) -> bool: ...

    def cancel(self) -> None: ...


TASKS: dict[str, Task] = {}
_CLIENT: dict[str, Any] = {"key": None, "client": None}


def _state() -> Any:
    from blender_addon.ui.properties import runtime_state

    return runtime_state()


def _mirror(channel: str, suffix: str, value: Any) -> None:
    state = _state()
    name = f"{channel}_{suffix}"
    if state is not None and hasattr(state, name) and getattr(state, name) != value:
        setattr(state, name, value)


def set_status(channel: str, text: str) -> None:
    STATUS[channel] = text
    _mirror(channel, "status", text)
    tag_redraw()


def clear_status(channel: str) -> None:
    STATUS.pop(channel, None)
    _mirror(channel, "status", "")


def set_progress(channel: str, factor: float) -> None:
    """A task's progress (0..1) for the panel's progress bar."""
    _mirror(channel, "progress", float(min(1.0, max(0.0, factor))))


def set_job_state(state: str) -> None:
    """The followed training job's state as the daemon reports it (running, cancelled, ...)."""
    _mirror("train", "state", state)


def _set_running(channel: str, running: bool) -> None:
    _mirror(channel, "running", running)
    if not running:
        _mirror(channel, "progress", 0.0)


def tag_redraw() -> None:
    window_manager = getattr(bpy.context, "window_manager", None)
    for window in getattr(window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "IMAGE_EDITOR"):
                area.tag_redraw()


def start_task(name: str, task: Task) -> None:
    """Run ``task`` in the background (replacing and cancelling one of the same name)."""
    old = TASKS.pop(name, None)
    if old is not None:
        old.cancel()
    TASKS[name] = task
    _set_running(name, True)
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TICK_S)


def cancel_task(name: str) -> bool:
    task = TASKS.pop(name, None)
    if task is None:
        return False
    task.cancel()
    _set_running(name, False)
    tag_redraw()
    return True


def busy(name: str) -> bool:
    return name in TASKS


def tick() -> float | None:
    """The timer callback: step every task once; None (stop) when none is left."""
    for name, task in list(TASKS.items()):
        try:
            finished = task.step()
        except Exception as exc:  # noqa: BLE001  (a task's failure must never kill the timer for the others)
            TASKS.pop(name, None)
            _set_running(name, False)
            set_status(name, f"error: {exc}")
            print(f"fisheye_synth: task {name} failed:\n{traceback.format_exc()}")
            continue
        if finished:
            TASKS.pop(name, None)
            _set_running(name, False)
            tag_redraw()
    if not TASKS:
        return None
    return TICK_S


def run_until_idle(timeout_s: float, names: tuple[str, ...] | None = None) -> bool:
    """Headless: drive ``tick`` until the named tasks (or all) finished; True if they did."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        tick()
        if not any(n in TASKS for n in (names or tuple(TASKS))):
            return True
        time.sleep(0.01)
    return False


def client(settings: DaemonSettings | None = None) -> Any:
    """The daemon client for the current preferences (a new one when they changed)."""
    from protocol.transport import Client, CurveClientKeys

    settings = settings or daemon_settings()
    if _CLIENT["key"] != settings.key() or _CLIENT["client"] is None:
        close_client()
        curve = None
        if settings.server_public_key:
            curve = CurveClientKeys(settings.server_public_key, settings.client_public_key,
                                    settings.client_secret_key)
        _CLIENT["client"] = Client(settings.endpoint, timeout_ms=settings.timeout_ms,
                                   retries=settings.retries, curve=curve)
        _CLIENT["key"] = settings.key()
    return _CLIENT["client"]


def close_client() -> None:
    if _CLIENT["client"] is not None:
        _CLIENT["client"].close()
    _CLIENT.update(key=None, client=None)


def shutdown() -> None:
    """Cancel everything and stop the timer (unregister, file load)."""
    for name in list(TASKS):
        cancel_task(name)
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    close_client()
    STATUS.clear()
    INFO.clear()
