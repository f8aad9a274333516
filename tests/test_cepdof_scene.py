"""The real room as the stage: a scene built from annotated frames with people in them.

Generated frames (a textured room inside a fisheye circle, people drawn where a known camera
sees them) check the whole build; the real Lunch3 build is a ``realdata`` test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from blender_addon.core import camera_fit as cf
from blender_addon.core import cepdof_scene as cs
from blender_addon.core.clean_plate import rbox_mask
from blender_addon.core.scene_format import load_scene

SIZE, RADIUS = 256, 120.0


def make_room(folder, frames: int = 5, seed: int = 0):
    """Frames of a generated room seen by a known equidistant camera, with five seated people
    who shift a little between frames; returns the true camera."""
    rng = np.random.default_rng(seed)
    truth = cf.camera_from(cf.lens_for("equidistant", 185.0, RADIUS), (SIZE, SIZE), (128.0, 128.0),
                           2.9, (0.0, 0.0))
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    inside = (xs + 0.5 - 128) ** 2 + (ys + 0.5 - 128) ** 2 <= RADIUS**2
    room = np.stack([60 + 40 * (((xs + ys) // 4) % 2), 90 + 0 * xs, 120 + 0 * xs], axis=2).astype(np.uint8)
    room = np.clip(room + rng.integers(0, 25, room.shape), 0, 255).astype(np.uint8)
    room[~inside] = 0
    spots = np.array([[1.0, 0.5], [-1.5, 1.0], [0.5, -2.0], [-2.5, -1.5], [2.5, 2.0]])
    images, annotations = [], []
    for k in range(frames):
        frame = room.copy()
        base = spots + rng.normal(0, 0.05, spots.shape)
        centres, length, width = cf.person_boxes_at(truth, base, cf.PERSON_MODELS["sitting"])
        for pid, (c, ln, w) in enumerate(zip(centres, length, width)):
            dx, dy = (c - 128.0) / max(np.hypot(*(c - 128.0)), 1e-6)
            angle = math.degrees(math.atan2(-dx, dy))  # the box's long side (h) lies radially
            rbox = [float(c[0]), float(c[1]), float(w), float(ln), angle]
            frame[rbox_mask(rbox, SIZE, SIZE)] = (200, 40, 40)
            annotations.append({"image_id": f"room_{k}", "bbox": rbox, "person_id": pid + 1})
        name = f"room_{k}.png"
        Image.fromarray(frame).save(folder / name)
        images.append({"id": f"room_{k}", "file_name": name, "width": SIZE, "height": SIZE})
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return truth


PROXIES = {
    "pixel_width": 128,  # drawn on a half-size view: the build scales them
    "floor_px": [[[30, 30], [98, 30], [98, 98], [30, 98]]],
    "furniture": [{"name": "table", "top_px": [[55, 55], [75, 55], [75, 70], [55, 70]], "top_height_m": 0.74}],
    "chairs": {"fabric_srgb": [0.5, 0.2, 0.2]},
}


def test_scene_is_built_from_training_frames_only(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    truth = make_room(data, frames=6)
    out = tmp_path / "scene"
    train = [f"room_{k}" for k in range(5)]
    scene = cs.build_scene(data, out, train, PROXIES, method="patchmatch")
    document = json.loads((out / "scene.json").read_text())
    report = document["build_report"]
    assert report["train_frames"] == train and report["plate"]["frames"] == 5
    assert 0 < report["plate"]["inpainted_share"] < 0.2
    # The camera the people were drawn with comes back.
    assert scene.camera_position[2] == pytest.approx(truth.position[2], abs=0.15)
    assert scene.principal_point_px[0] == pytest.approx(128.0, abs=1.5)
    assert document["camera"]["lens"]["fov_deg"] == pytest.approx(185.0, abs=6.0)
    # One seat per person, under their heads; the table is a holdout box at its top height.
    assert len(scene.seats) == 5
    # Occupancy: the fewest and most people the training frames showed (all seated here).
    annotations = json.loads((data / "annotations.json").read_text())["annotations"]
    per_frame = [sum(a["image_id"] == frame for a in annotations) for frame in train]
    assert document["occupancy"] == {"sitting": [min(per_frame), max(per_frame)], "standing": [0, 0]}
    assert scene.occupancy is not None and scene.occupancy.sitting == (min(per_frame), max(per_frame))
    assert [f.name for f in scene.furniture] == ["table"]
    # The plate lost the chairs with the people: the scene asks the renderer for them.
    assert scene.chairs is not None and scene.chairs.fabric_srgb == (0.5, 0.2, 0.2)
    assert scene.furniture[0].size[2] == pytest.approx(0.74)
    assert scene.floor_polygons and len(scene.floor_polygons[0]) == 4
    # The photo is the plate: no person colour is left in it.
    photo = np.asarray(Image.open(out / "photo.jpg"))
    assert ((photo[..., 0] > 170) & (photo[..., 1] < 80)).mean() < 0.002
    load_scene(out)  # validates


def test_a_calibrated_camera_is_kept_and_a_missing_frame_is_refused(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_room(data, frames=3)
    camera = {"lens": {"model": "equidistant", "focal_px": 74.3, "fov_deg": 185.0},
              "principal_point_px": [128.0, 128.0], "height_m": 2.9}
    scene = cs.build_scene(data, tmp_path / "scene", ["room_0", "room_1", "room_2"], PROXIES,
                           keep_camera=camera, method="telea")
    assert scene.lens.focal_px == 74.3 and scene.camera_position[2] == 2.9
    with pytest.raises(cs.SceneBuildError, match="room_9"):
        cs.build_scene(data, tmp_path / "other", ["room_0", "room_9"], PROXIES)


def test_splits_are_disjoint_with_gaps() -> None:
    train, val, test = (set(cs.LUNCH3_SPLITS[k]) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    # No held-out frame is the neighbour of a training frame.
    assert all(abs(a - b) > 1 for a in train for b in val | test)
    assert cs.lunch3_ids("val") == ["Lunch3_000007"]


def test_compare_sizes_judges_each_band() -> None:
    real = np.array([[0.3, 100, 50]] * 4 + [[0.6, 200, 80]] * 4)
    rendered = np.array([[0.3, 110, 52]] * 4 + [[0.6, 150, 60]] * 4)
    result = cs.compare_sizes(real, rendered)
    bands = {row["band"]: row for row in result["bands"]}
    assert bands["0.25-0.50 R"]["pass"] is True
    assert bands["0.50-0.75 R"]["pass"] is False
    assert result["pass"] is False


def test_committed_proxies_hold_geometry_only() -> None:
    folder = cs.DEFAULT_PROXIES.parent
    assert sorted(p.name for p in folder.iterdir()) == ["proxies.json"]
    proxies = json.loads(cs.DEFAULT_PROXIES.read_text())
    assert proxies["pixel_width"] == 1024 and proxies["floor_px"] and proxies["furniture"]
    assert set(proxies["chairs"]) == {"fabric_srgb", "frame_srgb"}  # colours, picked off the plate


@pytest.mark.realdata
@pytest.mark.slow
def test_lunch3_scene_builds_from_the_shared_frames(cepdof_dir, tmp_path) -> None:
    out = tmp_path / "cepdof_lunch"
    code = cs.main(["build", "--data", str(cepdof_dir), "--out", str(out)])
    assert code == 0
    scene = load_scene(out)
    report = json.loads((out / "scene.json").read_text())["build_report"]
    assert report["train_frames"] == cs.lunch3_ids("train")
    assert scene.photo_size == (2048, 2048)
    assert 0.05 < report["plate"]["inpainted_share"] < 0.25
    assert report["camera_fit"]["circle"]["radius"] == pytest.approx(1024, abs=15)
    assert 2.0 < scene.camera_position[2] < 4.0
    assert len(scene.seats) == 7 and len(scene.furniture) >= 4


@pytest.mark.slow
@pytest.mark.blender
def test_size_check_renders_the_built_scene(tmp_path) -> None:
    pytest.importorskip("bpy")
    data = tmp_path / "data"
    data.mkdir()
    make_room(data, frames=3)
    out = tmp_path / "scene"
    cs.build_scene(data, out, ["room_0", "room_1", "room_2"], PROXIES)
    result = cs.size_check(out, data, tmp_path / "render", count=1, resolution=128)
    assert result["rendered_frames"] == 1
    assert result["real_frames"] == ["room_0", "room_1", "room_2"]
    assert sum(row["rendered"] for row in result["bands"]) >= 1
    assert result["heads"]["people"] >= 1
    assert (tmp_path / "render" / "size_check.json").is_file()
    assert (tmp_path / "render" / "contact_sheet.jpg").is_file()


def test_fit_camera_command_writes_the_scene_camera(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_room(data, frames=3)
    out = tmp_path / "scene"
    camera = {"lens": {"model": "equisolid", "focal_px": 60.0, "fov_deg": 180.0}, "height_m": 2.0}
    cs.build_scene(data, out, ["room_0", "room_1"], PROXIES, keep_camera=camera, method="telea")
    report = tmp_path / "fit.json"
    code = cf.main(["--data", str(data), "--images", "room_0", "room_1.png", "--scene", str(out),
                    "--report", str(report)])
    assert code == 0
    scene = load_scene(out)
    assert scene.lens.kind == "equidistant"
    assert scene.camera_position[2] == pytest.approx(2.9, abs=0.15)
    fit = json.loads(report.read_text())
    assert fit["people"] == 10 and fit["circle"]["radius"] == pytest.approx(RADIUS, abs=2.0)
    saved = json.loads((out / "scene.json").read_text())
    assert "bands" in saved["calibration_report"]["fit_camera"]
