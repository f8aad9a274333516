"""Furniture proxies catch the people's shadows: the same frame rendered with shadow-catching
proxies and with plain holdouts has identical masks (occlusion unchanged) and darker pixels
on the furniture next to the people."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")

from PIL import Image

from blender_addon.bl import cli_entry, scene_build
from blender_addon.core.dataset import linear_to_srgb, load_photo_linear
from blender_addon.core.render_cli import Backend, run
from blender_addon.core.scene_format import load_scene

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[1]


def _render(out: Path) -> tuple[np.ndarray, np.ndarray]:
    code = run(["--scene", str(ROOT / "scenes" / "sample_office"), "--count", "1", "--seed", "3",
                "--human-backend", "proxy", "--preset", "fast", "--resolution", "160", "--samples", "8",
                "--hard-masks", "--workers", "0", "--threads", "2", "--no-progress", "--out", str(out)],
               Backend(cli_entry.worker_command, cli_entry.render_in_process))
    assert code == 0
    image = np.asarray(Image.open(out / "images" / "000000.png")).astype(int)
    return image, np.asarray(Image.open(out / "masks" / "000000.png"))


def test_furniture_catches_shadows_and_still_hides_people(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catching, catching_mask = _render(tmp_path / "catching")
    monkeypatch.setattr(scene_build, "add_furniture_proxies",
                        functools.partial(scene_build.add_furniture_proxies, catch_shadows=False))
    plain, plain_mask = _render(tmp_path / "plain")
    assert (catching_mask == plain_mask).all()  # the same people, hidden by the same furniture
    # Where the plain render is the bare photo (furniture holdouts, walls: no catcher there),
    # the shadow-catching furniture may only darken it: shadows, never light.
    photo = load_photo_linear(load_scene(ROOT / "scenes" / "sample_office").photo_path, (160, 160))
    photo_srgb = (np.clip(linear_to_srgb(photo), 0, 1) * 255 + 0.5).astype(int)
    bare = (plain == photo_srgb).all(axis=-1)
    change = (catching - plain).mean(axis=-1)[bare]
    assert bare.sum() > 5000
    # Never lighter by more than the rounding to 8 bits (one level in one channel).
    assert (change <= 1 / 3 + 1e-9).all()
    assert (change < -2).sum() > 100  # the people's shadows on the tables, desks and cabinet
