"""Annotation maths without Blender: rotated boxes, compositing, head boxes, coco.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core.dataset import (
    annotate_people,
    build_coco,
    composite_over_photo,
    mask_bbox,
    mask_rbox,
    write_frame,
)
from blender_addon.core.fisheye import FisheyeCamera, LensModel
from protocol.coco import rle_decode


def _bar(angle_deg: float, size: int = 101, length: float = 60, width: float = 12) -> np.ndarray:
    """A filled rectangle rotated clockwise by ``angle_deg`` from upright (image y down)."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    a = math.radians(angle_deg)
    axis = np.array([math.sin(a), -math.cos(a)])
    across = np.array([-axis[1], axis[0]])
    rel = np.stack([xs - size / 2, ys - size / 2], -1)
    return (np.abs(rel @ axis) <= length / 2) & (np.abs(rel @ across) <= width / 2)


@pytest.mark.parametrize("angle", [0.0, 30.0, -45.0, 80.0])
def test_rotated_box_follows_cepdof_convention(angle: float) -> None:
    cx, cy, w, h, got = mask_rbox(_bar(angle), (0.0, 0.0))
    assert got == pytest.approx(angle, abs=1.5)
    assert (cx, cy) == pytest.approx((50.5, 50.5), abs=0.6)
    assert h == pytest.approx(60, abs=3) and w == pytest.approx(12, abs=3) and h > w


def test_axis_aligned_box_uses_pixel_edges() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    assert mask_bbox(mask) == [3.0, 2.0, 6.0, 3.0]
    assert mask_bbox(np.zeros((4, 4), bool)) == [0.0, 0.0, 0.0, 0.0]


def test_composite_puts_people_over_the_shadowed_photo() -> None:
    photo = np.full((2, 2, 3), 0.5, np.float32)
    combined = np.zeros((2, 2, 4), np.float32)
    combined[0, 0] = [0.2, 0.2, 0.2, 1.0]  # an opaque person pixel
    catcher = np.ones((2, 2, 3), np.float32)
    catcher[1, 1] = 0.5  # a shadow
    out = composite_over_photo(combined, catcher, photo).astype(int)
    assert out[0, 1].tolist() == [188, 188, 188]  # the photo (linear 0.5 -> sRGB 188)
    assert out[0, 0, 0] == 124  # the person (linear 0.2)
    assert out[1, 1, 0] == 137  # photo darkened by half in linear light (0.25)


def test_annotations_and_coco_round_trip(tmp_path: Path) -> None:
    camera = FisheyeCamera(LensModel("equidistant", 20.0), 64, 64, (32.0, 32.0), 64.0, (0, 0, 2.8))
    ids = np.zeros((64, 64), np.int64)
    ids[30:40, 30:34] = 1
    full = {1: ids == 1}
    full[1][40:44, 30:34] = True  # partly hidden behind furniture
    heads = {1: np.array([0.0, -0.1, 1.2]), 2: np.array([0.5, 0.5, 1.2])}  # 2 is fully hidden
    annotations, hidden = annotate_people(ids, full, heads, camera, 0.11)
    assert [h["instance_id"] for h in hidden] == [2]
    (a,) = annotations
    assert a["visibility"] == pytest.approx(40 / 56)
    assert np.array_equal(rle_decode(a["segmentation"]), ids == 1)
    hx, hy = a["head_point"]
    bx, by, bw, bh = a["head_bbox"]
    assert bx < hx < bx + bw and by < hy < by + bh
    record = {"index": 4, "frame": "000004", "image": "images/000004.png", "mask": "masks/000004.png",
              "width": 64, "height": 64, "annotations": annotations}
    write_frame(tmp_path, "000004", np.zeros((64, 64, 3), np.uint8), ids.astype(np.uint16), record)
    coco = build_coco(tmp_path)
    assert coco["images"][0]["id"] == 4 and coco["annotations"][0]["image_id"] == 4
    assert coco["annotations"][0]["id"] == 1 and coco["categories"][0]["name"] == "person"
    assert json.loads((tmp_path / "coco.json").read_text()) == coco


def test_head_keypoint_flag_is_coco_visibility() -> None:
    """v = 2 visible head, v = 1 head in view but occluded, v = 0 head outside the image."""
    camera = FisheyeCamera(LensModel("equidistant", 20.0), 64, 64, (32.0, 32.0), 64.0, (0, 0, 2.8))
    settings = camera.cycles_settings()
    heads = {1: np.array([0.0, -0.1, 1.2]),   # visible: its head pixel shows person 1
             2: np.array([0.4, 0.3, 1.2]),    # in view, but the head pixel shows person 3 (in front)
             3: np.array([-0.5, 0.4, 1.2]),
             4: np.array([0.0, 0.0, 3.5])}    # above the camera: behind it, outside the image circle
    pixels, in_view = camera.project(np.stack([heads[k] for k in (1, 2, 3, 4)]), settings)
    assert in_view.tolist() == [True, True, True, False]
    ids = np.zeros((64, 64), np.int64)
    (x1, y1), (x2, y2), (x3, y3) = (pixels[i].astype(int) for i in range(3))
    ids[y1 - 2:y1 + 6, x1 - 2:x1 + 2] = 1
    ids[y2 + 2:y2 + 8, x2 - 2:x2 + 2] = 2      # body below the head
    ids[y3 - 2:y3 + 6, x3 - 2:x3 + 2] = 3
    ids[y2 - 1:y2 + 2, x2 - 1:x2 + 2] = 3      # person 3's arm covers person 2's head pixel
    ids[60:63, 0:3] = 4                        # person 4's body reaches into a corner
    full = {k: ids == k for k in (1, 2, 3, 4)}
    full[2][y2 - 1:y2 + 2, x2 - 1:x2 + 2] = True
    annotations, hidden = annotate_people(ids, full, heads, camera, 0.11)
    assert hidden == []
    by_id = {a["instance_id"]: a for a in annotations}
    assert {k: by_id[k]["keypoints"][2] for k in by_id} == {1: 2, 2: 1, 3: 2, 4: 0}
    assert {k: by_id[k]["head_in_view"] for k in by_id} == {1: True, 2: True, 3: True, 4: False}
    # The flag agrees with the fields it summarises, and the reader's head_visible follows it.
    for a in annotations:
        hx, hy = a["head_point"]
        if a["head_in_view"]:
            shows = ids[int(hy), int(hx)] == a["instance_id"]
            assert a["keypoints"][2] == (2 if shows else 1)
        else:
            assert a["keypoints"][2] == 0


def test_head_outside_the_frame_but_inside_the_circle_is_v0() -> None:
    """A portrait frame crops the image circle: a head inside the circle but off the frame is v = 0."""
    camera = FisheyeCamera(LensModel("equidistant", 20.0), 32, 64, (16.0, 32.0), 32.0, (0, 0, 2.8))
    settings = camera.cycles_settings()
    head = np.array([3.0, 0.0, 1.2])
    (hx, _hy), in_view = (v[0] for v in camera.project(head[None], settings))
    theta = math.atan2(3.0, 2.8 - 1.2)
    assert theta < settings.fisheye_fov / 2  # inside the image circle ...
    assert not in_view and hx >= 32  # ... but off the frame sideways
    ids = np.zeros((64, 32), np.int64)
    ids[30:34, 28:32] = 1
    annotations, _ = annotate_people(ids, {1: ids == 1}, {1: head}, camera, 0.11)
    assert annotations[0]["keypoints"][2] == 0 and annotations[0]["head_in_view"] is False
