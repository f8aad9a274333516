"""The scene format: the bundled sample loads; broken files fail naming the file and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blender_addon.core.scene_format import SceneFormatError, load_scene

SAMPLE = Path(__file__).resolve().parents[1] / "scenes" / "sample_office"


def test_sample_scene_loads_and_fits_its_photo() -> None:
    scene = load_scene(SAMPLE)
    assert scene.photo_size == (1024, 1024)
    assert scene.lens.kind == "kannala_brandt" and any(scene.lens.coefficients)
    assert len(scene.seats) >= 5 and scene.furniture
    camera = scene.camera_for(None)
    assert camera.cycles_settings().fit_report["max_error_px"] < 0.5
    # Every seat and the whole floor region are in view of the lens.
    seats = np.array([[s.position[0], s.position[1], s.height_m] for s in scene.seats])
    floor = np.array([[x, y, 0.0] for poly in scene.floor_polygons for x, y in poly])
    for points in (seats, floor):
        _, visible = camera.project(points)
        assert visible.all()
    assert (SAMPLE / "empty_room.jpg").stat().st_size < 1_500_000


def test_opencv_calibration_is_converted(tmp_path: Path) -> None:
    data = _sample_copy(tmp_path)
    data["camera"]["lens"] = {"model": "opencv_fisheye", "K": [[330, 0, 511.5], [0, 330, 511.5], [0, 0, 1]],
                              "D": [-0.03, 0.004, -0.0005, 0.00002]}
    scene = _write_and_load(tmp_path, data)
    assert scene.lens.kind == "kannala_brandt" and scene.lens.focal_px == 330
    assert scene.principal_point_px == (512.0, 512.0)  # OpenCV's integer centres + 0.5


def _sample_copy(tmp_path: Path) -> dict[str, Any]:
    shutil.copy(SAMPLE / "empty_room.jpg", tmp_path / "empty_room.jpg")
    return json.loads((SAMPLE / "scene.json").read_text())


def _write_and_load(tmp_path: Path, data: Any) -> Any:
    (tmp_path / "scene.json").write_text(json.dumps(data) if not isinstance(data, str) else data)
    return load_scene(tmp_path)


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    target = data
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("camera.height_m", -1.0, r"camera\.height_m: must be > 0"),
    ("camera.height_m", _DELETE, r"camera\.height_m: is missing"),
    ("camera.lens.model", "fisheye", r"camera\.lens\.model: unknown model 'fisheye'; valid: equidistant"),
    ("camera.lens.coefficients", [0.1], r"camera\.lens\.coefficients: must be a list of 4 numbers"),
    ("camera.lens.focal_px", "330", r"camera\.lens\.focal_px: must be a finite number"),
    ("camera.principal_point_px", [5000.0, 10.0], r"camera\.principal_point_px: principal point .* outside"),
    ("photo", "missing.jpg", r"photo: names 'missing.jpg' but .* does not exist"),
    ("format_version", 7, r"format_version: must be 1"),
    ("floor.polygons", [[[0, 0], [1, 1]]], r"floor\.polygons\[0\]: must be a list of at least 3"),
    ("furniture.0.size", [1.0, -2.0, 1.0], r"furniture\[0\]\.size: all sizes must be > 0"),
    ("furniture.1.holdout", "yes", r"furniture\[1\]\.holdout: must be true or false"),
    ("seats.0.height_m", 3.5, r"seats\[0\]\.height_m: seat height 3.5 m is not below the camera"),
    ("seats.2.facing_deg", None, r"seats\[2\]\.facing_deg: must be a finite number"),
])
def test_bad_fields_are_named(tmp_path: Path, path: str, value: Any, message: str) -> None:
    data = _sample_copy(tmp_path)
    _set(data, path, value)
    with pytest.raises(SceneFormatError, match=message) as info:
        _write_and_load(tmp_path, data)
    assert str(tmp_path / "scene.json") in str(info.value)


def test_occupancy_is_optional_and_checked(tmp_path: Path) -> None:
    data = _sample_copy(tmp_path)
    assert _write_and_load(tmp_path, data).occupancy is None
    seats = len(data["seats"])
    data["occupancy"] = {"sitting": [1, seats], "standing": [0, 2]}
    scene = _write_and_load(tmp_path, data)
    assert scene.occupancy is not None and scene.occupancy.sitting == (1, seats)
    assert scene.to_dict()["occupancy"] == {"sitting": [1, seats], "standing": [0, 2]}
    for bad, message in (({"sitting": [3, 1], "standing": [0, 0]}, r"occupancy\.sitting: must be \[MIN, MAX\]"),
                         ({"sitting": [0, 1.5], "standing": [0, 0]}, "whole numbers"),
                         ({"sitting": [0, seats + 1], "standing": [0, 0]}, f"the scene has {seats} seats"),
                         ({"sitting": [0, 1]}, r"occupancy\.standing: is missing")):
        data["occupancy"] = bad
        with pytest.raises(SceneFormatError, match=message):
            _write_and_load(tmp_path, data)


def test_duplicate_furniture_names_are_rejected(tmp_path: Path) -> None:
    data = _sample_copy(tmp_path)
    data["furniture"][1]["name"] = data["furniture"][0]["name"]
    with pytest.raises(SceneFormatError, match=r"furniture\[1\]\.name: duplicate name"):
        _write_and_load(tmp_path, data)


def test_unreadable_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(SceneFormatError, match="no scene file here.*make_sample_scene"):
        load_scene(tmp_path)
    _sample_copy(tmp_path)
    with pytest.raises(SceneFormatError, match="not valid JSON"):
        _write_and_load(tmp_path, "{not json")
    data = _sample_copy(tmp_path)
    (tmp_path / "empty_room.jpg").write_bytes(b"not an image")
    with pytest.raises(SceneFormatError, match="photo: .* is not a readable image"):
        _write_and_load(tmp_path, data)
