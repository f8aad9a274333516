"""The camera model in the renderer: the same frame rendered with and without ``--sensor``
differs on the people only, and the frame's manifest records the draw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")

from PIL import Image

from blender_addon.bl import cli_entry
from blender_addon.core.camera_sensor import SensorProfile, SensorRecipe
from blender_addon.core.dataset import read_mask
from blender_addon.core.render_cli import Backend, run

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[1]
# A strong cast and no JPEG pass, so that everything away from the people must stay bit-identical.
PROFILE = SensorProfile(noise_sigma=2.0, jpeg_quality=None, grey_world=(1.4, 1.0, 0.6))


def _render(out: Path, *extra: str) -> Path:
    code = run(["--scene", str(ROOT / "scenes" / "sample_office"), "--count", "1", "--seed", "3",
                "--human-backend", "proxy", "--preset", "fast", "--resolution", "128", "--samples", "2",
                "--hard-masks", "--workers", "0", "--threads", "2", "--no-progress", "--out", str(out),
                *extra], Backend(cli_entry.worker_command, cli_entry.render_in_process))
    assert code == 0
    return out


def test_sensor_changes_the_people_only_and_is_recorded(tmp_path: Path) -> None:
    profile_path = tmp_path / "sensor.json"
    profile_path.write_text(json.dumps(PROFILE.to_dict()))
    plain = _render(tmp_path / "plain")
    seen = _render(tmp_path / "sensor", "--sensor", str(profile_path))
    a = np.asarray(Image.open(plain / "images" / "000000.png")).astype(int)
    b = np.asarray(Image.open(seen / "images" / "000000.png")).astype(int)
    people = read_mask(plain / "masks" / "000000.png") > 0
    assert people.sum() > 20, "the test frame needs people"
    near = np.zeros_like(people)
    ys, xs = np.nonzero(people)
    for dy in range(-3, 4):  # the blur reaches a few pixels past the mask
        for dx in range(-3, 4):
            near[np.clip(ys + dy, 0, people.shape[0] - 1), np.clip(xs + dx, 0, people.shape[1] - 1)] = True
    assert (a[~near] == b[~near]).all()
    assert np.abs(a[people] - b[people]).mean() > 2.0
    # warmer: red up against blue on the people
    assert (b[people][:, 0] - b[people][:, 2]).mean() > (a[people][:, 0] - a[people][:, 2]).mean() + 5
    record = json.loads((seen / "frames" / "000000.json").read_text())
    sensor = record["manifest"]["sensor"]
    expected = SensorRecipe.sample(PROFILE, record["manifest"]["frame_seed"])
    assert sensor == json.loads(json.dumps(expected.to_dict()))
    assert json.loads((plain / "frames" / "000000.json").read_text())["manifest"]["sensor"] is None
    config = json.loads((seen / "run_config.json").read_text())["config"]
    assert config["sensor"]["grey_world"] == [1.4, 1.0, 0.6]
