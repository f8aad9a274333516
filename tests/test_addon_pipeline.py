"""The add-on's pure glue (no Blender): refine preview state machine over a real loopback
socket, message routing between tasks, reinsertion that leaves the background alone, the
debouncer, render job options, and saving edited scenes."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import preview_pipeline as pp
from blender_addon.core.scene_edit import alignment_overlay, save_scene, updated_document
from blender_addon.core.scene_format import FurnitureProxy, SceneFormatError, load_scene
from protocol.messages import Handshake, HandshakeReply, RefineReply, RefineRequest
from protocol.transport import Client, Server

SAMPLE_SCENE = Path(__file__).resolve().parents[1] / "scenes" / "sample_office"


def _frame() -> pp.RenderedFrame:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    ids = np.zeros((96, 96), np.uint16)
    ids[10:30, 40:52] = 1  # a person near the top, head towards the border
    ids[60:80, 20:34] = 2
    image[ids > 0] = (200, 50, 100)  # flat people on a noisy background
    people = (pp.PersonBoxes(1, (46.0, 12.0), (40, 10, 12, 20), None),
              pp.PersonBoxes(2, (22.0, 78.0), (20, 60, 14, 20), (18.0, 74.0, 8.0, 8.0)))
    return pp.RenderedFrame("f", image, ids, people, (47.5, 47.5))


class _EchoInverter:
    """A test-only ROUTER that answers refine requests with inverted crops after ``delay_s``."""

    def __init__(self, delay_s: float = 0.0, answer: bool = True) -> None:
        self.server = Server("tcp://127.0.0.1:*")
        self.delay_s, self.answer = delay_s, answer
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            incoming = self.server.receive(timeout_ms=20)
            if incoming is None or not self.answer:
                continue
            message = incoming.message
            time.sleep(self.delay_s)
            if isinstance(message, RefineRequest):
                self.server.send(incoming.peer, RefineReply(
                    request_id=message.request_id, model=message.model, model_sha256="0" * 64,
                    images=255 - message.crops, attention=np.full(message.crops.shape[:3], 0.8, np.float32),
                    meta=message.meta, elapsed_ms=1.0))
            elif isinstance(message, Handshake):
                from protocol.messages import Capabilities

                self.server.send(incoming.peer, HandshakeReply(
                    request_id=message.request_id, daemon_version="test", protocol_version=1,
                    capabilities=Capabilities(device="cpu", models=("inv",))))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.server.close()


@pytest.fixture
def echo() -> Iterator[_EchoInverter]:
    server = _EchoInverter()
    yield server
    server.close()


def test_refine_preview_changes_only_people_pixels(echo: _EchoInverter) -> None:
    frame = _frame()
    with Client(echo.server.endpoint, timeout_ms=2000, retries=0) as client:
        result = pp.refine_frame(client, frame, "inv", crop_size=(32, 64), deadline_s=5)
    people = frame.instance_ids > 0
    assert np.array_equal(result.refined[~people], frame.image[~people])
    # Inside each mask, away from its feathered edge, the pixels are the inverted originals.
    assert np.abs(result.refined[20, 46].astype(int) - (55, 205, 155)).max() <= 3
    assert len(result.crops.records) == 2 and result.times.total > 0
    assert result.times.transfer >= 0 and result.times.refine == pytest.approx(0.001)
    attention = result.display_image("attention")
    assert np.array_equal(attention[~people], result.refined[~people])
    assert (attention[people][:, 0].astype(int) >= result.refined[people][:, 0].astype(int)).all()
    with pytest.raises(pp.PreviewError, match="valid"):
        result.display_image("bogus")


def test_router_gives_each_task_its_own_replies(echo: _EchoInverter) -> None:
    frame = _frame()
    with Client(echo.server.endpoint, timeout_ms=2000, retries=0) as client:
        router = pp.MessageRouter(client)
        hello = router.view()
        hello_id = hello.send_request(Handshake(client="t"))
        preview = pp.RefinePreview(router.view(), frame, "inv", crop_size=(32, 64), deadline_s=5)
        preview.start()
        got_hello, result = None, None
        deadline = time.monotonic() + 5
        while (got_hello is None or result is None) and time.monotonic() < deadline:
            result = result or preview.poll()
            got_hello = got_hello or hello.poll_reply()
            time.sleep(0.005)
    assert isinstance(got_hello, HandshakeReply) and got_hello.request_id == hello_id
    assert result is not None


def test_silent_daemon_times_out_within_the_deadline() -> None:
    silent = _EchoInverter(answer=False)
    try:
        with Client(silent.server.endpoint, timeout_ms=5000, retries=0) as client:
            preview = pp.RefinePreview(client, _frame(), "inv", crop_size=(32, 64), deadline_s=0.3)
            preview.start()
            started = time.monotonic()
            with pytest.raises(pp.PreviewError, match="no reply"):
                while preview.poll() is None:
                    time.sleep(0.01)
            assert time.monotonic() - started < 1.0
            assert client.pending == ()  # nothing left to be resent
    finally:
        silent.close()


def test_empty_frame_is_refused_with_a_reason(echo: _EchoInverter) -> None:
    frame = _frame()
    empty = pp.RenderedFrame("e", frame.image, np.zeros_like(frame.instance_ids), frame.people, frame.center_xy)
    with Client(echo.server.endpoint) as client, pytest.raises(pp.PreviewError, match="populate"):
        pp.RefinePreview(client, empty, "inv").start()


def test_debouncer_waits_for_quiet_and_never_fires_while_busy() -> None:
    now = [0.0]
    debouncer = pp.Debouncer(0.5, clock=lambda: now[0])
    assert not debouncer.due()
    debouncer.touch()
    now[0] = 0.3
    debouncer.touch()  # still moving
    now[0] = 0.7
    assert not debouncer.due()
    now[0] = 0.81
    assert not debouncer.due(busy=True) and debouncer.pending
    assert debouncer.due() and not debouncer.due()


def test_render_job_spec_builds_cli_arguments_and_names_bad_fields() -> None:
    spec = pp.RenderJobSpec(scene_dir="scenes/x", out_dir="out/y", count=3, seed=7, preset="fast",
                            resolution=256, sitting=(1, 2), standing=(0, 0), human_backend="proxy",
                            denoise=False, mask_mode="hard", sensor="photo")
    args = spec.arguments()
    assert args[args.index("--sitting") + 1] == "1,2" and "--no-denoise" in args
    assert args[args.index("--mask-mode") + 1] == "hard" and args[args.index("--sensor") + 1] == "photo"
    assert args[args.index("--resolution") + 1] == "256" and args[args.index("--seed") + 1] == "7"
    from blender_addon.core.render_cli import build_parser

    parsed = build_parser().parse_args(args)  # the render CLI accepts exactly these options
    assert parsed.count == 3 and parsed.sitting == (1, 2) and parsed.human_backend == "proxy"
    assert parsed.mask_mode == "hard" and parsed.sensor == "photo" and parsed.workers == "auto"
    assert build_parser().parse_args(pp.RenderJobSpec(scene_dir="s", out_dir="o", workers=3).arguments()).workers == 3
    assert "--sensor" not in pp.RenderJobSpec(scene_dir="s", out_dir="o").arguments()
    with pytest.raises(pp.PreviewError, match="mask_mode"):
        pp.RenderJobSpec(scene_dir="s", out_dir="o", mask_mode="fuzzy")
    with pytest.raises(pp.PreviewError, match="count"):
        pp.RenderJobSpec(scene_dir="s", out_dir="o", count=0)
    with pytest.raises(pp.PreviewError, match="standing"):
        pp.RenderJobSpec(scene_dir="s", out_dir="o", standing=(3, 1))


def test_render_process_reports_failure_and_cancels(tmp_path: Path) -> None:
    import sys

    failing = pp.RenderProcess([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "a", 1)
    while failing.poll() is None:
        time.sleep(0.01)
    assert failing.returncode == 3 and "boom" in failing.log_tail()
    slow = pp.RenderProcess([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b", 1)
    started = time.monotonic()
    slow.cancel()
    assert slow.poll() is not None and slow.cancelled and time.monotonic() - started < 5


def test_save_scene_keeps_unknown_fields_and_restores_on_error(tmp_path: Path) -> None:
    folder = tmp_path / "office"
    shutil.copytree(SAMPLE_SCENE, folder)
    spec = load_scene(folder)
    moved = [FurnitureProxy(f.name, (f.center[0] + 0.1, *f.center[1:]), f.size, f.yaw_deg, f.holdout, f.obstacle)
             for f in spec.furniture]
    saved = save_scene(folder, moved, spec.floor_polygons, spec.seats)
    assert saved.furniture[0].center[0] == pytest.approx(spec.furniture[0].center[0] + 0.1)
    document = json.loads((folder / "scene.json").read_text())
    assert "description" in document and document["camera"] == json.loads(
        (SAMPLE_SCENE / "scene.json").read_text())["camera"]
    before = (folder / "scene.json").read_text()
    broken = [FurnitureProxy("bad", (0, 0, 0.5), (0.0, 1.0, 1.0))]
    with pytest.raises(SceneFormatError, match="size"):
        save_scene(folder, broken, spec.floor_polygons, spec.seats)
    assert (folder / "scene.json").read_text() == before
    with pytest.raises(SceneFormatError, match="unique"):
        updated_document(document, [moved[0], moved[0]], spec.floor_polygons, spec.seats)


def test_alignment_overlay_marks_projected_furniture() -> None:
    spec = load_scene(SAMPLE_SCENE)
    overlay = alignment_overlay(spec, 256)
    camera = spec.camera_for(256)
    table = next(f for f in spec.furniture if f.holdout)
    top_centre = np.array([[table.center[0], table.center[1], table.center[2] + table.size[2] / 2]])
    (x, y), _ = (v[0] for v in camera.project(top_centre, camera.cycles_settings()))
    assert overlay.shape == (camera.height, camera.width, 3)
    from PIL import Image

    with Image.open(spec.photo_path) as photo:
        plain = np.asarray(photo.convert("RGB").resize((camera.width, camera.height), Image.Resampling.BILINEAR))
    changed = np.any(overlay != plain, axis=2)
    # Edges were drawn, but the photo under the middle of the table top is left visible.
    assert changed.mean() > 0.005 and not changed[int(y), int(x)]


FAKE_WORKER = """
import json, sys
for line in sys.stdin:
    request = json.loads(line)
    print("cycles noise that is not a reply", flush=True)
    if request["out"].endswith("die"):
        sys.exit(3)
    print("FSYNTH_PREVIEW " + json.dumps({"ok": True, "warm": True, "seconds": 0.01, "out": request["out"]}), flush=True)
"""


def _reply(worker: pp.WarmWorker, timeout_s: float = 10.0) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = worker.poll()
        if reply is not None:
            return reply
        time.sleep(0.01)
    raise AssertionError("no reply")


def test_warm_worker_client_reads_replies_logs_the_rest_and_notices_death(tmp_path: Path) -> None:
    import sys

    worker = pp.WarmWorker([sys.executable, "-c", FAKE_WORKER], tmp_path / "log.txt")
    try:
        assert worker.poll() is None  # nothing asked, nothing to wait for
        worker.request(tmp_path / "a", None)
        reply = _reply(worker)
        assert reply["ok"] and reply["out"] == str(tmp_path / "a") and reply["round_trip_s"] >= 0
        worker.request(tmp_path / "die", None)
        died = _reply(worker)
        assert not died["ok"] and "exited with code 3" in died["error"]
        assert "cycles noise" in (tmp_path / "log.txt").read_text()  # Blender's output goes to the log
        with pytest.raises(pp.PreviewError, match="exited"):
            worker.request(tmp_path / "b", None)
    finally:
        worker.close()
    assert not worker.alive
