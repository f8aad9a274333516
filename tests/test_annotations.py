"""Annotation readers: the CEPDOF rotated-box convention, head estimates, our renderer's
coco.json, and errors that name the file and the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from protocol.annotations import (
    HEAD_BOX_SCALE,
    HEAD_DEPTH,
    AnnotationError,
    head_from_rbox,
    load_annotations,
    load_cepdof,
    load_rendered_coco,
    rbox_corners,
    rbox_mask,
)
from protocol.coco import rle_encode


def test_rbox_corners_turn_clockwise_on_screen() -> None:
    # A tall box turned by +90 degrees lies flat; its first corner (local -w/2, -h/2)
    # moves from top-left to top-right, which is clockwise with y pointing down.
    corners = rbox_corners((100.0, 50.0, 20.0, 60.0, 90.0))
    np.testing.assert_allclose(corners, [[130, 40], [130, 60], [70, 60], [70, 40]], atol=1e-9)
    corners = rbox_corners((0.0, 0.0, 2.0, 4.0, 30.0))
    a = math.radians(30)
    np.testing.assert_allclose(corners[2], [math.cos(a) - 2 * math.sin(a),
                                            math.sin(a) + 2 * math.cos(a)], atol=1e-12)


def test_rbox_mask_matches_the_box() -> None:
    mask = rbox_mask((50.0, 40.0, 20.0, 60.0, 90.0), 100, 80)
    assert mask.shape == (80, 100)
    assert mask[40, 50] and mask[40, 78] and mask[32, 50]
    assert not mask[40, 82] and not mask[28, 50]
    assert mask.sum() == pytest.approx(20 * 60, rel=0.05)
    tilted = rbox_mask((50.0, 40.0, 20.0, 60.0, 37.0), 100, 80)
    assert tilted.sum() == pytest.approx(20 * 60, rel=0.05)


@pytest.mark.parametrize("direction_deg", [0, 60, 90, 150, 180, 240, 270, 330])
@pytest.mark.parametrize("box_angle_offset", [0.0, 90.0])
def test_head_is_the_outer_end_of_the_long_axis(direction_deg: int, box_angle_offset: float) -> None:
    centre = (1023.5, 1023.5)
    phi = math.radians(direction_deg)
    box_centre = np.array(centre) + 500 * np.array([math.cos(phi), math.sin(phi)])
    # A person lying along the radial line: local +y (the long side h) radial when the box
    # angle makes (-sin a, cos a) radial. With the offset, w is the long side instead.
    angle = math.degrees(math.atan2(-math.cos(phi), math.sin(phi)))
    if box_angle_offset:
        rbox = (*box_centre, 300.0, 100.0, angle + box_angle_offset)
    else:
        rbox = (*box_centre, 100.0, 300.0, angle)
    head, head_box = head_from_rbox(rbox, centre)
    # HEAD_DEPTH x the short side (100) in from the outer end of the long side (300).
    expected = box_centre + (150 - HEAD_DEPTH * 100) * np.array([math.cos(phi), math.sin(phi)])
    np.testing.assert_allclose(head, expected, atol=1e-6)
    assert head_box[2] == head_box[3] == pytest.approx(HEAD_BOX_SCALE * 100)
    np.testing.assert_allclose([head_box[0] + HEAD_BOX_SCALE * 50, head_box[1] + HEAD_BOX_SCALE * 50],
                               expected, atol=1e-6)


def _write_cepdof(folder: Path, annotations: list[dict]) -> None:
    data = {
        "images": [{"id": "f1", "file_name": "f1.jpg", "width": 400, "height": 300}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}],
    }
    (folder / "annotations.json").write_text(json.dumps(data))


def test_load_cepdof_estimates_heads(tmp_path: Path) -> None:
    _write_cepdof(tmp_path, [
        {"bbox": [300, 150, 40, 120, 90], "image_id": "f1", "person_id": 3, "category_id": 1},
        {"bbox": [100, 60, 40, 80, 0], "image_id": "f1", "person_id": 5, "category_id": 1},
    ])
    (image,) = load_cepdof(tmp_path)
    assert image.image_id == "f1" and image.path == tmp_path / "f1.jpg"
    assert (image.width, image.height) == (400, 300)
    right, top_left = image.persons
    assert right.person_id == 3 and right.head_source == "estimated_from_rbox"
    # Lying horizontally right of the centre (199.5, 149.5): head at the right end.
    np.testing.assert_allclose(right.head_xy, (360.0 - HEAD_DEPTH * 40, 150.0))
    np.testing.assert_allclose(right.bbox, (240.0, 130.0, 120.0, 40.0))
    # Standing above the centre: head at the top end.
    np.testing.assert_allclose(top_left.head_xy, (100.0, 20.0 + HEAD_DEPTH * 40))
    assert right.mask is None and right.segmentation is None


def test_load_cepdof_errors_name_the_field(tmp_path: Path) -> None:
    _write_cepdof(tmp_path, [{"bbox": [1, 2, 3, 4], "image_id": "f1"}])
    with pytest.raises(AnnotationError, match=r"annotations\[0\]\.bbox.*5 finite numbers"):
        load_cepdof(tmp_path)
    _write_cepdof(tmp_path, [{"bbox": [1, 2, 3, 4, 5], "image_id": "nope"}])
    with pytest.raises(AnnotationError, match="image_id 'nope'"):
        load_cepdof(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_cepdof(tmp_path)


def _rendered(folder: Path, masks: list[np.ndarray], **overrides) -> None:
    annotations = []
    for index, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        entry = {
            "id": index + 1, "image_id": 7, "category_id": 1,
            "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
            "rbox": [float(xs.mean()), float(ys.mean()), 10.0, 20.0, 0.0],
            "head_point": [float(xs.mean()), float(ys.min() + 3)],
            "head_bbox": [float(xs.mean() - 3), float(ys.min()), 6.0, 6.0],
            "keypoints": [float(xs.mean()), float(ys.min() + 3), 2],
            "segmentation": rle_encode(mask), "visibility": 0.8, "iscrowd": 0,
            "instance_id": 10 + index,
        }
        entry.update(overrides)
        annotations.append(entry)
    data = {
        "images": [{"id": 7, "file_name": "images/000007.png", "width": 64, "height": 48}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "keypoints": ["head"]}],
    }
    (folder / "coco.json").write_text(json.dumps(data))


def _person_masks() -> list[np.ndarray]:
    first = np.zeros((48, 64), dtype=bool)
    first[5:30, 10:20] = True
    second = np.zeros((48, 64), dtype=bool)
    second[20:44, 40:52] = True
    return [first, second]


def test_load_rendered_coco_reads_heads_boxes_and_masks(tmp_path: Path) -> None:
    masks = _person_masks()
    _rendered(tmp_path, masks)
    (image,) = load_rendered_coco(tmp_path)
    assert image.image_id == "7" and image.path == tmp_path / "images" / "000007.png"
    assert len(image.persons) == 2
    for person, mask in zip(image.persons, masks):
        np.testing.assert_array_equal(person.mask, mask)
        assert person.head_source == "estimated_from_rbox" and person.visibility == 0.8
    first = image.persons[0]
    # The renderer's exact head is kept; the head itself follows the one rule, as for real
    # people: rbox (14.5, 17, 10 x 20, upright) left of and above the centre (31.5, 23.5), so
    # the head is the top end, half the short side (5) in; box 0.6 x 10 = 6 px.
    assert first.rendered_head_xy == (14.5, 8.0)
    assert first.rendered_head_box == (11.5, 5.0, 6.0, 6.0)
    np.testing.assert_allclose(first.head_xy, (14.5, 7.0 + HEAD_DEPTH * 10))
    side = HEAD_BOX_SCALE * 10
    np.testing.assert_allclose(first.head_box, (14.5 - side / 2, 7.0 + HEAD_DEPTH * 10 - side / 2, side, side))
    assert first.person_id == 10 and first.bbox == (10.0, 5.0, 10.0, 25.0)
    assert load_annotations(tmp_path)[0] == "rendered_coco"


def test_load_rendered_coco_errors(tmp_path: Path) -> None:
    masks = _person_masks()
    _rendered(tmp_path, masks, segmentation=rle_encode(np.zeros((10, 10), dtype=bool)))
    with pytest.raises(AnnotationError, match=r"segmentation has size \[10, 10\].*\[48, 64\]"):
        load_rendered_coco(tmp_path)
    _rendered(tmp_path, masks, segmentation={"size": [48, 64], "counts": "abc"})
    with pytest.raises(AnnotationError, match="compressed RLE"):
        load_rendered_coco(tmp_path)
    _rendered(tmp_path, masks, head_point=[1.0])
    with pytest.raises(AnnotationError, match=r"head_point must be 2"):
        load_rendered_coco(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AnnotationError, match="neither coco.json.*nor annotations.json"):
        load_annotations(empty)
