"""The add-on in background Blender (pip bpy): registration, every operator against the sample
scene, preview render subprocess, refine preview against a real loopback daemon with a tiny
refiner, dead and silent daemons, live preview, batch render with cancel, training jobs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon
from blender_addon.core.scene_format import load_scene

PROJECT = Path(__file__).resolve().parents[1]
SAMPLE_SCENE = PROJECT / "scenes" / "sample_office"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("fsynth_user")
    old = os.environ.get("FISHEYE_SYNTH_USER_DIR")
    os.environ["FISHEYE_SYNTH_USER_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("FISHEYE_SYNTH_USER_DIR", None)
    else:
        os.environ["FISHEYE_SYNTH_USER_DIR"] = old


@pytest.fixture(scope="module")
def scene_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("scenes") / "office"
    shutil.copytree(SAMPLE_SCENE, target)
    return target


@pytest.fixture(scope="module")
def addon(user_dir: Path, scene_copy: Path) -> Iterator[Any]:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    from blender_addon.ui import preferences

    settings = bpy.context.scene.fisheye_synth
    settings.scene_dir = str(scene_copy)
    settings.human_backend = "proxy"
    settings.sitting_min = settings.sitting_max = 2
    settings.standing_min = settings.standing_max = 1
    settings.preview_resolution = 160
    settings.preview_samples = 2
    assert bpy.ops.fsynth.load_scene() == {"FINISHED"}
    yield settings
    preferences.use_settings(None)
    blender_addon.unregister()


def _use_daemon(endpoint: str, timeout_ms: int = 15000, retries: int = 1) -> None:
    # A live daemon answers in well under a second; the generous default only keeps a loaded
    # machine (a busy CI runner) from failing the test on a late reply.
    from blender_addon.ui import preferences

    preferences.use_settings(preferences.DaemonSettings(endpoint=endpoint, timeout_ms=timeout_ms, retries=retries))


class _StepTrainer:
    """A stand-in trainer for the job plumbing: 'losses' that fall, and it honours cancel."""

    kind = "train_refiner"
    run_dir_field = "run_dir"

    def path_fields(self, config: dict[str, Any]) -> list[str]:
        return [str(config["run_dir"])]

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        if int(config.get("steps", 0)) < 1:
            raise ValueError("steps must be >= 1")
        return config

    def run(self, config: dict[str, Any], *, resume: bool, on_progress: Any, should_stop: Any) -> str:
        for step in range(int(config["steps"])):
            if should_stop():
                return str(config["run_dir"])
            on_progress({"step": step, "loss_g": 1.0 / (step + 1), "loss_d": 0.5})
            time.sleep(float(config.get("sleep_s", 0.05)))
        return str(config["run_dir"])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real refiner daemon on loopback with a tiny AGGAN refiner (width 8)."""
    torch = pytest.importorskip("torch")
    from refiner_daemon.refiner.networks import AttentionNet, ResnetGenerator
    from refiner_daemon.refiner.training import ModelSpec, export_refiner
    from refiner_daemon.serve.server import DaemonServer, ServerConfig
    from refiner_daemon.serve.service import RefinerService, ServiceConfig

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("daemon")
    (root / "models").mkdir()
    torch.manual_seed(0)
    spec = ModelSpec(architecture="aggan", width=8, n_blocks=1, attention_width=4, crop_size=(32, 32))
    export_refiner(root / "models" / "tiny.pt", spec, ResnetGenerator(width=8, n_blocks=1), AttentionNet(width=4),
                   name="tiny")
    service = RefinerService(ServiceConfig(models_dir=str(root / "models"), state_dir=str(root / "state"),
                                           device="cpu"), trainers={"train_refiner": _StepTrainer()})
    server = DaemonServer(service, ServerConfig(bind="tcp://127.0.0.1:*", poll_ms=10))
    stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(stop,), daemon=True)
    thread.start()
    yield server.endpoint
    stop.set()
    thread.join(timeout=5)
    server.close()
    service.close()


# ---------------------------------------------------------------------------------------------


def _angle_gap(a_deg: float, b_deg: float) -> float:
    return abs((a_deg - b_deg + 180.0) % 360.0 - 180.0)


def _fsynth_classes() -> list[str]:
    return [name for name in dir(bpy.types) if name.startswith("FSYNTH_")]


def test_register_unregister_twice_leaves_nothing_behind() -> None:
    from blender_addon.ui import runtime

    handlers_before = len(bpy.app.handlers.load_pre), len(bpy.app.handlers.depsgraph_update_post)
    for _ in range(2):
        blender_addon.register()
        assert "FSYNTH_PT_main" in _fsynth_classes() and "FSYNTH_OT_populate" in _fsynth_classes()
        assert hasattr(bpy.context.scene, "fisheye_synth")
        assert bpy.context.scene.fisheye_synth.human_backend == "mpfb2"
        bpy.context.window_manager.fisheye_synth_runtime.live_enabled = True  # starts a handler and a timer
        assert bpy.app.timers.is_registered(runtime.tick)
        blender_addon.unregister()
        assert _fsynth_classes() == []
        assert not hasattr(bpy.types.Scene, "fisheye_synth")
        assert not hasattr(bpy.types.WindowManager, "fisheye_synth_runtime")
        assert not bpy.app.timers.is_registered(runtime.tick)
        assert runtime.TASKS == {}
        assert (len(bpy.app.handlers.load_pre), len(bpy.app.handlers.depsgraph_update_post)) == handlers_before


def test_register_refuses_an_older_blender_and_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from blender_addon.bl import registration
    from blender_addon.core.blender_version import UnsupportedBlenderError

    assert registration.running_version() >= (5, 0, 0)  # the pip bpy this suite runs on
    monkeypatch.setattr(registration, "running_version", lambda: (4, 2, 3))
    with pytest.raises(UnsupportedBlenderError, match=r"needs Blender 5\.0\.0 or newer, but this is Blender 4\.2\.3"):
        blender_addon.register()
    assert _fsynth_classes() == []
    assert not hasattr(bpy.types.Scene, "fisheye_synth")


def test_operators_have_tooltips_and_undo_where_they_edit(addon: Any) -> None:
    from blender_addon.ui import operators

    for cls in operators.classes:
        assert cls.__doc__ and len(cls.__doc__.strip()) > 20, cls.__name__
    for cls in (operators.FSYNTH_OT_populate, operators.FSYNTH_OT_reroll, operators.FSYNTH_OT_load_scene):
        assert {"REGISTER", "UNDO"} <= cls.bl_options


class _IdleTask:
    """A background task that never finishes on its own (for state and poll checks)."""

    def step(self) -> bool:
        return False

    def cancel(self) -> None:
        pass


def test_runtime_state_lives_on_the_window_manager_not_the_scene(addon: Any) -> None:
    from blender_addon.ui import panel_sketch, properties, runtime

    state = bpy.context.window_manager.fisheye_synth_runtime
    runtime_names = set(properties.FSYNTH_PG_runtime.__annotations__)
    assert {"live_enabled", "display_mode", "batch_running", "batch_progress", "batch_status",
            "train_state"} <= runtime_names
    scene_names = set(addon.bl_rna.properties.keys())
    assert not runtime_names & scene_names  # the saved, undoable scene settings hold none of it
    runtime.start_task("batch", _IdleTask())
    try:
        runtime.set_status("batch", "rendering 4/10")
        runtime.set_progress("batch", 0.4)
        assert state.batch_running and state.batch_status == "rendering 4/10"
        assert state.batch_progress == pytest.approx(0.4)
        for scene in bpy.data.scenes:  # nothing of it reached a scene's stored properties
            stored = scene.fisheye_synth.keys() if hasattr(scene.fisheye_synth, "keys") else []
            assert not set(stored) & runtime_names
            assert not any("rendering 4/10" == str(v) for v in scene.fisheye_synth.values())
        # The panel shows a progress bar with a Cancel button instead of the Batch Render button.
        render_panel = next(item for label, item in panel_sketch.record_panels(bpy.context) if label == "Render")

        def texts(item: Any) -> list[str]:
            return [item.text] + [t for child in item.children for t in texts(child)]

        shown = texts(render_panel)
        assert any(t.startswith("[40 %] Batch") for t in shown), shown
        assert "Batch Render" not in shown
    finally:
        runtime.cancel_task("batch")
    assert not state.batch_running and state.batch_progress == 0.0
    assert "Batch Render" in texts(next(i for label, i in panel_sketch.record_panels(bpy.context)
                                        if label == "Render"))


def test_every_operator_polls(addon: Any) -> None:
    from blender_addon.ui import operators, runtime

    for cls in operators.classes:
        assert "poll" in vars(cls), f"{cls.__name__} has no poll()"
    # Disabled while its job runs, with the reason as the error; enabled again after.
    assert bpy.ops.fsynth.batch_render.poll() and not bpy.ops.fsynth.train_cancel.poll()
    assert not bpy.ops.fsynth.cancel.poll()  # nothing to cancel
    runtime.start_task("train", _IdleTask())
    runtime.start_task("batch", _IdleTask())
    try:
        assert not bpy.ops.fsynth.batch_render.poll() and not bpy.ops.fsynth.train.poll()
        assert bpy.ops.fsynth.train_cancel.poll() and bpy.ops.fsynth.cancel.poll()
        with pytest.raises(RuntimeError, match="a batch render is running; cancel it first"):
            bpy.ops.fsynth.batch_render()
    finally:
        runtime.cancel_task("train")
        runtime.cancel_task("batch")
    assert bpy.ops.fsynth.batch_render.poll() and bpy.ops.fsynth.train.poll()
    # Without a loaded room, the buttons that need one are greyed out.
    loaded = addon.loaded_scene_dir
    addon.loaded_scene_dir = ""
    try:
        for op in (bpy.ops.fsynth.populate, bpy.ops.fsynth.reroll, bpy.ops.fsynth.render_preview,
                   bpy.ops.fsynth.batch_render, bpy.ops.fsynth.save_scene, bpy.ops.fsynth.show_alignment,
                   bpy.ops.fsynth.add_proxy):
            assert not op.poll(), op
        with pytest.raises(RuntimeError, match="no room loaded"):
            bpy.ops.fsynth.populate()
    finally:
        addon.loaded_scene_dir = loaded
    assert bpy.ops.fsynth.populate.poll()


def test_default_people_counts_are_thesis_table_7_2(addon: Any) -> None:
    """Table 7.2: U(1, 5) sitting and U(0, 4) standing people per image."""
    from blender_addon.core.placement import PlacementConfig

    rna = addon.bl_rna.properties
    assert (rna["sitting_min"].default, rna["sitting_max"].default) == (1, 5)
    assert (rna["standing_min"].default, rna["standing_max"].default) == (0, 4)
    assert PlacementConfig().sitting_range == (1, 5) and PlacementConfig().standing_range == (0, 4)


def test_load_scene_builds_fisheye_camera_with_photo_and_proxies(addon: Any, scene_copy: Path) -> None:
    from blender_addon.ui import scene_objects

    spec = load_scene(scene_copy)
    camera = bpy.context.scene.camera
    assert camera.data.type == "PANO" and camera.data.panorama_type.startswith("FISHEYE")
    background = camera.data.background_images[0]
    assert background.image.name == scene_objects.PHOTO_IMAGE
    assert tuple(background.image.size) == spec.photo_size
    furniture, polygons, seats = scene_objects.read_proxies()
    assert sorted(f.name for f in furniture) == sorted(f.name for f in spec.furniture)
    by_name = {f.name: f for f in spec.furniture}
    for item in furniture:
        assert np.allclose(item.center, by_name[item.name].center, atol=1e-5)
        assert np.allclose(item.size, by_name[item.name].size, atol=1e-5)
        assert _angle_gap(item.yaw_deg, by_name[item.name].yaw_deg) < 1e-4
    assert np.allclose(np.array(polygons[0]), np.array(spec.floor_polygons[0]), atol=1e-5)
    seat_by_name = {s.name: s for s in spec.seats}
    for seat in seats:
        assert _angle_gap(seat.facing_deg, seat_by_name[seat.name].facing_deg) < 1e-3
        assert seat.height_m == pytest.approx(seat_by_name[seat.name].height_m, abs=1e-6)


def test_a_scene_with_occupancy_sets_the_people_counts(addon: Any, scene_copy: Path, tmp_path: Path) -> None:
    room = tmp_path / "room"
    shutil.copytree(SAMPLE_SCENE, room)
    document = json.loads((room / "scene.json").read_text())
    document["occupancy"] = {"sitting": [3, 4], "standing": [0, 1]}
    (room / "scene.json").write_text(json.dumps(document))
    counts = (addon.sitting_min, addon.sitting_max, addon.standing_min, addon.standing_max)
    try:
        addon.scene_dir = str(room)
        assert bpy.ops.fsynth.load_scene() == {"FINISHED"}
        assert (addon.sitting_min, addon.sitting_max, addon.standing_min, addon.standing_max) == (3, 4, 0, 1)
        # A room without occupancy: the previous room's counts give way to Table 7.2 ...
        addon.scene_dir = str(scene_copy)
        assert bpy.ops.fsynth.load_scene() == {"FINISHED"}
        assert (addon.sitting_min, addon.sitting_max, addon.standing_min, addon.standing_max) == (1, 5, 0, 4)
        # ... but counts the artist set stay.
        addon.sitting_min = addon.sitting_max = 2
        assert bpy.ops.fsynth.load_scene() == {"FINISHED"}
        assert (addon.sitting_min, addon.sitting_max) == (2, 2)
    finally:  # the module's scene again, and its counts, for the tests after this one
        addon.scene_dir = str(scene_copy)
        assert bpy.ops.fsynth.load_scene() == {"FINISHED"}
        (addon.sitting_min, addon.sitting_max, addon.standing_min, addon.standing_max) = counts


def test_bad_scene_folder_is_reported_not_raised(addon: Any, tmp_path: Path) -> None:
    addon.scene_dir = str(tmp_path)
    try:
        with pytest.raises(RuntimeError, match=r"no scene file here"):
            bpy.ops.fsynth.load_scene()  # an ERROR report becomes a RuntimeError in background mode
    finally:
        addon.scene_dir = addon.loaded_scene_dir


def test_edit_and_save_scene_round_trips(addon: Any, scene_copy: Path) -> None:
    from blender_addon.ui import scene_objects

    before = json.loads((scene_copy / "scene.json").read_text())
    table = bpy.data.objects["meeting_table"]
    table.location.x += 0.25
    table.scale.y = 1.3
    bpy.ops.fsynth.add_proxy(kind="seat")
    assert bpy.ops.fsynth.save_scene() == {"FINISHED"}
    saved = load_scene(scene_copy)
    item = next(f for f in saved.furniture if f.name == "meeting_table")
    assert item.center[0] == pytest.approx(-1.2 + 0.25, abs=1e-5) and item.size[1] == pytest.approx(1.3)
    assert len(saved.seats) == len(before["seats"]) + 1
    after = json.loads((scene_copy / "scene.json").read_text())
    assert after["camera"] == before["camera"] and after["description"] == before["description"]
    # A bad edit (a box squashed to zero width) is refused and leaves the file as it was.
    text = (scene_copy / "scene.json").read_text()
    table.scale.x = 0.0
    with pytest.raises(RuntimeError, match="size"):
        bpy.ops.fsynth.save_scene()
    assert (scene_copy / "scene.json").read_text() == text
    scene_objects.remove_object(bpy.data.objects["seat"])
    table.location.x -= 0.25
    table.scale = (2.4, 1.1, 0.75)
    assert bpy.ops.fsynth.save_scene() == {"FINISHED"}


def test_alignment_overlay_draws_proxies_through_the_lens(addon: Any) -> None:
    from blender_addon.ui import actions, scene_objects

    assert bpy.ops.fsynth.show_alignment() == {"FINISHED"}
    shown = scene_objects.image_pixels(bpy.data.images[actions.IMAGE_ALIGNMENT])
    spec = actions.current_scene()
    camera = spec.camera_for(addon.preview_resolution)
    corner = np.array([[*spec.floor_polygons[0][0], 0.0]])
    (x, y), _ = (v[0] for v in camera.project(corner, camera.cycles_settings()))
    patch = shown[max(0, int(y) - 2):int(y) + 3, max(0, int(x) - 2):int(x) + 3].reshape(-1, 3).astype(int)
    assert np.any((patch[:, 2] > 200) & (patch[:, 0] < 120)), "floor outline (blue) not at the projected corner"


def test_populate_reroll_and_mblab_missing(addon: Any) -> None:
    from blender_addon.core.batch import sample_frame_recipe
    from blender_addon.ui import actions, scene_objects

    addon.seed = 5
    assert bpy.ops.fsynth.populate() == {"FINISHED"}
    roots = scene_objects.people_roots()
    assert len(roots) == 3
    recipe = sample_frame_recipe(actions.current_scene(), actions.batch_config(seed=5, sitting=(2, 2),
                                                                                standing=(1, 1), backend="proxy"), 0)
    assert {r.name: tuple(round(v, 5) for v in r.location) for r in recipe.people} == {
        str(o["fsynth_person"]): tuple(round(v, 5) for v in o.location) for o in roots}
    first = {str(o["fsynth_person"]): tuple(o.location) for o in roots}
    assert bpy.ops.fsynth.reroll() == {"FINISHED"}
    assert addon.seed == 6
    second = {str(o["fsynth_person"]): tuple(o.location) for o in scene_objects.people_roots()}
    assert second != first and len(second) == 3
    addon.human_backend = "mblab"
    try:
        with pytest.raises(RuntimeError, match="MB-Lab"):
            bpy.ops.fsynth.populate()
        assert "missing" in addon.mblab_status
        assert len(scene_objects.people_roots()) == 3  # the failed populate changed nothing
        addon.mblab_status = "not checked"
        assert bpy.ops.fsynth.check_mblab() == {"FINISHED"}
        assert addon.mblab_status.startswith("missing: ") and "MB-Lab" in addon.mblab_status
    finally:
        addon.human_backend = "proxy"
    meshes_before = len(bpy.data.meshes)
    assert bpy.ops.fsynth.clear_people() == {"FINISHED"}
    assert scene_objects.people_roots() == [] and scene_objects.PEOPLE_COLLECTION not in bpy.data.collections
    assert len(bpy.data.meshes) < meshes_before  # their meshes went with them, no orphans


def test_dead_and_silent_daemons_fail_fast_and_stop_the_timer(addon: Any) -> None:
    from blender_addon.ui import runtime
    from protocol.transport import Server

    _use_daemon(f"tcp://127.0.0.1:{_free_port()}", timeout_ms=300, retries=1)
    started = time.monotonic()
    assert bpy.ops.fsynth.connect() == {"FINISHED"}  # returns at once, the answer comes by timer
    assert time.monotonic() - started < 0.5
    assert runtime.run_until_idle(5.0)
    assert time.monotonic() - started < 2.0
    assert runtime.STATUS["daemon"].startswith("error:") and "no reply" in runtime.STATUS["daemon"]
    assert runtime.tick() is None and runtime.TASKS == {}
    # A daemon that accepts the connection but never answers: the same bounded wait.
    with Server("tcp://127.0.0.1:*") as silent:
        _use_daemon(silent.endpoint, timeout_ms=300, retries=0)
        started = time.monotonic()
        bpy.ops.fsynth.connect()
        assert runtime.run_until_idle(5.0)
        assert time.monotonic() - started < 1.5
        assert runtime.STATUS["daemon"].startswith("error:")
    assert runtime.tick() is None


def test_preview_render_refine_and_live_preview(addon: Any, daemon: str) -> None:
    from blender_addon.core.preview_pipeline import load_rendered_frame
    from blender_addon.ui import actions, live_preview, runtime, scene_objects

    addon.seed = 11
    assert bpy.ops.fsynth.populate() == {"FINISHED"}
    moved = scene_objects.people_roots()[0]
    moved.location.x -= 0.2  # the preview must render people where the artist put them
    moved.rotation_euler.z += 0.5
    bpy.context.view_layer.update()
    assert bpy.ops.fsynth.render_preview() == {"FINISHED"}
    assert runtime.run_until_idle(120.0), runtime.STATUS
    assert runtime.STATUS["render"].startswith("done"), runtime.STATUS
    out = actions.preview_dir() / "render"
    record = json.loads((out / "frames" / "000000.json").read_text())
    rendered = {p["name"]: p for p in record["manifest"]["recipe"]["people"]}[str(moved["fsynth_person"])]
    assert np.allclose(rendered["location"], tuple(moved.location), atol=1e-5)
    assert rendered["heading_rad"] == pytest.approx(moved.rotation_euler.z, abs=1e-5)
    frame = load_rendered_frame(out, 0)
    assert frame.image.shape[:2] == (160, 160) and len(frame.people) >= 1
    annotated = scene_objects.image_pixels(bpy.data.images[actions.IMAGE_ANNOTATED])
    hx, hy = (round(v) for v in frame.people[0].head_xy)
    assert tuple(annotated[hy, hx]) == (255, 0, 0)  # the head point is drawn

    _use_daemon(daemon)
    assert bpy.ops.fsynth.connect() == {"FINISHED"}
    assert runtime.run_until_idle(10.0)
    assert "connected" in runtime.STATUS["daemon"] and "tiny" in runtime.STATUS["daemon"], runtime.STATUS
    addon.model = "tiny"
    assert bpy.ops.fsynth.refine_preview() == {"FINISHED"}
    assert runtime.run_until_idle(30.0)
    assert runtime.STATUS["refine"].startswith("refined"), runtime.STATUS
    refined = scene_objects.image_pixels(bpy.data.images[actions.IMAGE_REFINED])
    original = scene_objects.image_pixels(bpy.data.images[actions.IMAGE_ORIGINAL])
    assert np.array_equal(original, frame.image)
    people = frame.people_pixels()
    assert people.sum() > (frame.instance_ids > 0).sum()  # soft coverage reaches past the hard masks
    assert np.array_equal(refined[~people], frame.image[~people])  # background untouched, bit for bit
    assert np.abs(refined[people].astype(int) - frame.image[people].astype(int)).mean() > 1.0
    compare = bpy.data.images[actions.IMAGE_COMPARE]
    assert tuple(compare.size) == (2 * 160 + 8, 160)

    # Live: moving a person triggers a debounced render + refine shown over the camera view.
    state = bpy.context.window_manager.fisheye_synth_runtime
    addon.live_delay_s = 0.1
    state.display_mode = "refined"
    state.live_enabled = True
    assert live_preview.is_enabled()
    deadline = time.monotonic() + 120
    while "showing" not in runtime.STATUS.get("live", "") and time.monotonic() < deadline:
        runtime.tick()
        time.sleep(0.02)
    assert "showing refined" in runtime.STATUS["live"], runtime.STATUS
    root = scene_objects.people_roots()[0]
    root.location.x += 0.3
    bpy.context.view_layer.update()  # fires depsgraph_update_post
    assert live_preview.debouncer().pending
    live_image = bpy.data.images[live_preview.LIVE_IMAGE]
    camera_images = [b.image.name for b in bpy.context.scene.camera.data.background_images if b.image]
    assert live_preview.LIVE_IMAGE in camera_images
    # Each timer tick stays short while the live round renders and refines.
    longest = 0.0
    deadline = time.monotonic() + 120
    rounds_before = runtime.STATUS["live"]
    runtime.STATUS["live"] = "waiting"  # the handler said "scene changed"; wait for the next "showing"
    while "showing" not in runtime.STATUS.get("live", "") and time.monotonic() < deadline:
        t0 = time.perf_counter()
        runtime.tick()
        longest = max(longest, time.perf_counter() - t0)
        time.sleep(0.02)
    assert "showing" in runtime.STATUS["live"], (rounds_before, runtime.STATUS)
    assert longest < 0.5
    assert "(warm)" in runtime.STATUS["live_render"], runtime.STATUS  # the second round reused the worker
    assert actions.preview_worker("live_render").requests == 2
    state.display_mode = "attention"
    attention = scene_objects.image_pixels(live_image)
    state.display_mode = "synthetic"
    synthetic = scene_objects.image_pixels(live_image)
    assert not np.array_equal(attention, synthetic)
    state.live_enabled = False
    assert not live_preview.is_enabled() and "live" not in runtime.TASKS


def test_training_job_progress_and_cancel(addon: Any, daemon: str, tmp_path: Path) -> None:
    from blender_addon.ui import runtime

    _use_daemon(daemon)
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"steps": 200, "sleep_s": 0.02}))
    addon.train_config = str(config)
    assert bpy.ops.fsynth.train() == {"FINISHED"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and runtime.INFO.get("job", {}).get("progress", {}).get("step", -1) < 3:
        runtime.tick()
        time.sleep(0.01)
    progress = runtime.INFO["job"]["progress"]
    assert progress["step"] >= 3 and progress["loss_g"] == pytest.approx(1.0 / (progress["step"] + 1))
    assert "loss_g" in runtime.STATUS["train"]
    assert bpy.ops.fsynth.train_cancel() == {"FINISHED"}
    assert runtime.run_until_idle(15.0, ("train",))
    assert runtime.INFO["job"]["state"] == "cancelled", runtime.INFO
    assert runtime.INFO["job"]["progress"].get("step", 0) < 199


def test_batch_render_runs_the_cli_in_the_background_and_cancels(addon: Any, tmp_path: Path) -> None:
    from blender_addon.ui import runtime

    addon.batch_out = str(tmp_path / "batch")
    addon.batch_count = 40
    addon.batch_sensor = "profile"
    with pytest.raises(RuntimeError, match="camera profile"):
        bpy.ops.fsynth.batch_render()
    addon.batch_sensor = "photo"
    addon.batch_mask_mode = "hard"
    started = time.monotonic()
    assert bpy.ops.fsynth.batch_render() == {"FINISHED"}
    assert time.monotonic() - started < 1.0  # the UI is not blocked by the render
    process = runtime.TASKS["batch"].process
    command = " ".join(process.command)
    assert "blender_addon.bl.cli_entry" in command
    assert "--mask-mode hard" in command and "--sensor photo" in command
    with pytest.raises(RuntimeError, match="running"):
        bpy.ops.fsynth.batch_render()
    time.sleep(0.5)
    assert bpy.ops.fsynth.cancel(channel="batch") == {"FINISHED"}
    assert process.poll() is not None and process.cancelled
    assert runtime.STATUS["batch"] == "cancelled" and "batch" not in runtime.TASKS


def test_rendering_leaves_the_artists_scene_as_it_was(addon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Render settings, view layer passes, world, compositor, objects and collections are the
    same after a preview render as before: from the panel (a subprocess), in this session
    (``render_in_place``), and when the in-session render fails half-way."""
    from blender_addon.bl import render, scene_state
    from blender_addon.core.preview_pipeline import load_rendered_frame
    from blender_addon.ui import actions, preview_worker, runtime

    addon.seed = 3
    assert bpy.ops.fsynth.populate() == {"FINISHED"}
    scene = bpy.context.scene
    # The artist's own setup, which a render must not disturb.
    scene.view_layers.new("artist_layer").use_pass_z = True
    scene.view_layers[0].use_pass_mist = True
    world = bpy.data.worlds.new("artist_world")
    scene.world = world
    group = bpy.data.node_groups.new("artist_compositor", "CompositorNodeTree")
    scene.compositing_node_group = group
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_percentage = 50
    scene.render.film_transparent = False
    scene.cycles.samples = 77
    scene.view_settings.view_transform = "AgX"
    scene.render.image_settings.file_format = "JPEG"
    scene.frame_current = 17

    def changes(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                out += changes(x, y, f"{prefix}{key}.")
            elif x != y:
                out.append(f"{prefix}{key}: {x!r} -> {y!r}")
        return out

    def fingerprint() -> dict[str, Any]:
        found = scene_state.fingerprint(scene)
        # The add-on's result images (FS preview annotated, ...) are its output, not a side effect.
        found["data"]["images"] = [n for n in found["data"]["images"] if not n.startswith("FS ")]
        return found

    before = fingerprint()
    try:
        assert bpy.ops.fsynth.render_preview() == {"FINISHED"}
        assert runtime.run_until_idle(120.0), runtime.STATUS
        assert runtime.STATUS["render"].startswith("done"), runtime.STATUS
        assert fingerprint() == before

        out = actions.preview_dir() / "render"
        overrides = json.loads((out / "people.json").read_text())
        from_subprocess = load_rendered_frame(out, 0)
        record = preview_worker.render_preview(out, overrides, threads=2, in_place=True)
        assert record["annotations"], "the in-session render shows the people"
        in_session = load_rendered_frame(out, 0)
        # The same frame as the subprocess's: the artist's own objects were not rendered with it.
        assert np.array_equal(in_session.instance_ids, from_subprocess.instance_ids)
        assert np.abs(in_session.image.astype(int) - from_subprocess.image.astype(int)).mean() < 2.0
        after = fingerprint()
        assert after == before, changes(before, after)

        def fail(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("render failed half-way")

        monkeypatch.setattr(render.FrameRenderer, "_write", fail)
        with pytest.raises(RuntimeError, match="half-way"):
            preview_worker.render_preview(out, overrides, threads=2, in_place=True)
        after = fingerprint()
        assert after == before, changes(before, after)
    finally:
        scene.view_layers.remove(scene.view_layers["artist_layer"])
        scene.compositing_node_group = None
        bpy.data.node_groups.remove(group)
        bpy.data.worlds.remove(world)
        scene.render.engine = "CYCLES"
