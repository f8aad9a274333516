"""The warm preview worker: one process answers render requests one after another, keeps its
renderer between them (the second render is warm), renders people where the
overrides put them, survives a bad request, and exits when asked."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("bpy")

from blender_addon.core import batch
from blender_addon.core.batch import BatchConfig, PlacementConfig
from blender_addon.core.preview_pipeline import PreviewError, WarmWorker, load_rendered_frame

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[1]


def _run_folder(out: Path) -> Path:
    render = batch.with_overrides(batch.preset("fast"), resolution=128, samples=2, mask_mode="hard")
    config = BatchConfig(scene=str(ROOT / "scenes" / "sample_office"), count=1, seed=4, preset="fast",
                         render=render, placement=PlacementConfig(sitting_range=(2, 2), standing_range=(1, 1)),
                         human_backend="proxy")
    batch.prepare_run_folder(out, config)
    return out


def _wait(worker: WarmWorker, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = worker.poll()
        if reply is not None:
            return reply
        time.sleep(0.05)
    raise AssertionError(f"no reply in {timeout_s} s: {worker.log_tail()}")


def test_warm_worker_renders_requests_and_keeps_its_renderer(tmp_path: Path) -> None:
    worker = WarmWorker([sys.executable, "-m", "blender_addon.ui.preview_worker", "--serve"],
                        tmp_path / "worker.log")
    try:
        out = _run_folder(tmp_path / "round1")
        worker.request(out, None, threads=2)
        with pytest.raises(PreviewError, match="still rendering"):
            worker.request(out, None)
        first = _wait(worker)
        assert first["ok"] and not first["warm"], first
        frame = load_rendered_frame(out, 0)
        assert len(frame.people) == 3

        # The artist moved one person and deleted another: same config, so a warm render.
        recipe = json.loads((out / "frames" / "000000.json").read_text())["manifest"]["recipe"]
        people = recipe["people"]
        moved = {people[0]["name"]: {"location": [people[0]["location"][0] + 0.5, *people[0]["location"][1:]],
                                     "heading_rad": people[0]["heading_rad"]},
                 people[1]["name"]: {"location": people[1]["location"], "heading_rad": people[1]["heading_rad"]}}
        overrides = tmp_path / "people.json"
        overrides.write_text(json.dumps(moved))
        second_out = _run_folder(tmp_path / "round2")
        worker.request(second_out, overrides, threads=2)
        second = _wait(worker)
        assert second["ok"] and second["warm"], second
        record = json.loads((second_out / "frames" / "000000.json").read_text())["manifest"]["recipe"]
        assert [p["name"] for p in record["people"]] == [people[0]["name"], people[1]["name"]]
        assert record["people"][0]["location"][0] == pytest.approx(people[0]["location"][0] + 0.5)

        worker.request(tmp_path / "not_a_run", None)  # a bad request gets an error, not a dead worker
        bad = _wait(worker)
        assert not bad["ok"] and "not_a_run/run_config.json not found" in bad["error"]
        assert worker.alive
    finally:
        worker.close()
    assert not worker.alive
