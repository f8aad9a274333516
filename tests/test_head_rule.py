"""One head definition for every domain: detector head boxes come from each person's rotated
box by the same rule for rendered and real sets, and on rendered frames, where the exact 3D head
is known, the rule is checked against it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocol.annotations import (
    HEAD_BOX_SCALE,
    head_from_rbox,
    head_rule_agreement,
    image_centre,
    load_rendered_coco,
)
from refiner_daemon.detector.config import DatasetSpec
from refiner_daemon.detector.data import load_samples

ROOT = Path(__file__).resolve().parents[1]


def _write_pair(folder: Path, rbox: list[float]) -> tuple[Path, Path]:
    """The same person as a rendered annotation (with an exact head far from the rule's) and as
    a CEPDOF annotation."""
    rendered, real = folder / "rendered", folder / "real"
    for folder_ in (rendered, real):
        folder_.mkdir()
        Image.new("RGB", (400, 400)).save(folder_ / "f.png")
    image = {"id": 1, "file_name": "f.png", "width": 400, "height": 400}
    (rendered / "coco.json").write_text(json.dumps({
        "images": [image], "categories": [],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1], "rbox": rbox,
                         "head_point": [310.0, 90.0], "head_bbox": [305, 85, 10, 10],
                         "keypoints": [310.0, 90.0, 2], "head_in_view": True}]}))
    (real / "annotations.json").write_text(json.dumps({
        "images": [image], "categories": [], "annotations": [{"image_id": 1, "bbox": rbox}]}))
    return rendered, real


def test_detector_boxes_follow_one_rule_in_both_domains(tmp_path: Path) -> None:
    rbox = [300.0, 120.0, 40.0, 90.0, 30.0]
    rendered, real = _write_pair(tmp_path, rbox)
    (synthetic,) = load_samples(DatasetSpec(str(rendered)))
    (cepdof,) = load_samples(DatasetSpec(str(real)))
    np.testing.assert_allclose(synthetic.head_boxes, cepdof.head_boxes)
    _, (x, y, w, h) = head_from_rbox(tuple(rbox), image_centre(400, 400))
    np.testing.assert_allclose(synthetic.head_boxes[0], [x, y, x + w, y + h])
    assert w == pytest.approx(HEAD_BOX_SCALE * 40.0)


def test_rendered_people_whose_head_is_out_of_view_have_no_head_box(tmp_path: Path) -> None:
    rendered, _ = _write_pair(tmp_path, [300.0, 120.0, 40.0, 90.0, 30.0])
    data = json.loads((rendered / "coco.json").read_text())
    data["annotations"][0]["head_in_view"] = False
    (rendered / "coco.json").write_text(json.dumps(data))
    (sample,) = load_samples(DatasetSpec(str(rendered)))
    assert sample.head_boxes.shape == (0, 4)


@pytest.mark.slow
@pytest.mark.blender
def test_rule_finds_rendered_heads(tmp_path: Path) -> None:
    """Rendered frames (seeds other than those the rule's numbers were measured on): the rule's
    head point lies within a head-box side of the exact head for most people, and its box
    overlaps the projected head sphere's box. Sitting people seen from above are where the
    rule is weakest (their box does not say where the head is); docs/detector.md quotes the
    measured numbers."""
    pytest.importorskip("bpy")
    from blender_addon.bl import cli_entry, humans
    from blender_addon.core.render_cli import Backend, run

    try:
        humans.data_root()
    except humans.HumanDataError as exc:
        pytest.skip(f"MakeHuman data missing: {exc}")
    code = run(["--scene", str(ROOT / "scenes" / "sample_office"), "--count", "3", "--seed", "23",
                "--preset", "fast", "--resolution", "320", "--samples", "4", "--sitting", "2,3",
                "--standing", "1,2", "--workers", "0", "--threads", "2", "--no-progress",
                "--out", str(tmp_path)],
               Backend(cli_entry.worker_command, cli_entry.render_in_process))
    assert code == 0
    agreement = head_rule_agreement(load_rendered_coco(tmp_path))
    print({k: v for k, v in agreement.items() if k != "ious"})
    assert agreement["heads"] >= 6
    assert agreement["offset_median_box_sides"] < 0.75
    assert agreement["iou_median"] > 0.2


def test_sitting_people_near_square_boxes_put_the_head_outward_of_the_box_centre() -> None:
    from protocol.annotations import NEAR_SQUARE_HEAD_OFFSET

    centre = (199.5, 199.5)
    for angle in (0.0, 30.0, 75.0):  # the box's own axes say nothing about the head
        head, box = head_from_rbox((299.5, 199.5, 50.0, 55.0, angle), centre)
        np.testing.assert_allclose(head, (299.5 + NEAR_SQUARE_HEAD_OFFSET * 50, 199.5), atol=1e-9)
        assert box[2] == pytest.approx(HEAD_BOX_SCALE * 50)
