"""The crop dataset on disk: layout, records that invert the crops exactly, masks, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocol.coco import rle_encode
from protocol.crop_dataset import CropDatasetConfig, build_crop_dataset, main
from protocol.crops import CropRecord, crop_mask, reinsert

SIZE = (160, 120)  # width, height


def _frame() -> np.ndarray:
    ys, xs = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float64)
    rgb = [100 + 50 * np.sin(xs / 15.0), 80 + 0.6 * ys, 150 + 40 * np.cos((xs - ys) / 20.0)]
    return np.clip(np.stack(rgb, axis=-1), 0, 255).astype(np.uint8)


def _person(head: tuple[float, float], toward: tuple[float, float]) -> np.ndarray:
    """A head disk plus a body capsule from the head toward ``toward``."""
    ys, xs = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float64)
    head_arr, end = np.array(head), np.array(toward)
    axis = end - head_arr
    t = np.clip(((xs - head[0]) * axis[0] + (ys - head[1]) * axis[1]) / (axis @ axis), 0, 1)
    dist = np.hypot(xs - head[0] - t * axis[0], ys - head[1] - t * axis[1])
    return dist <= 6


@pytest.fixture()
def rendered(tmp_path: Path) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    folder = tmp_path / "render"
    (folder / "images").mkdir(parents=True)
    frame = _frame()
    Image.fromarray(frame).save(folder / "images" / "000001.png")
    heads = [(30.0, 20.0), (140.0, 90.0), (90.0, 15.0)]
    masks = [_person(head, (0.6 * head[0] + 0.4 * 79.5, 0.6 * head[1] + 0.4 * 59.5))
             for head in heads]
    masks.append(np.zeros(frame.shape[:2], dtype=bool))  # fully occluded: must be skipped
    heads.append((60.0, 60.0))
    annotations = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
         "head_point": list(head), "head_bbox": [head[0] - 4, head[1] - 4, 8, 8],
         "segmentation": rle_encode(mask), "iscrowd": 0, "instance_id": k}
        for k, (head, mask) in enumerate(zip(heads, masks))
    ]
    coco = {"images": [{"id": 1, "file_name": "images/000001.png", "width": SIZE[0],
                        "height": SIZE[1]}],
            "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
    (folder / "coco.json").write_text(json.dumps(coco))
    return folder, frame, masks


def test_build_writes_crops_masks_and_invertible_records(rendered, tmp_path: Path) -> None:
    folder, frame, masks = rendered
    out = tmp_path / "crops"
    summary = build_crop_dataset(folder, out, CropDatasetConfig(size=(48, 48), fit_margin_px=4),
                                 progress=False)
    assert summary["crops"] == 3 and summary["persons"] == 4
    assert summary["skipped"][0]["person_index"] == 3 and "empty" in summary["skipped"][0]["reason"]
    data = json.loads((out / "records.json").read_text())
    assert data["source_format"] == "rendered_coco" and data["config"]["size"] == [48, 48]
    assert json.loads((out / "config.json").read_text())["fit"] == "rbox"
    assert [item["crop_file"] for item in data["items"]] == [
        "crops/000001_0.png", "crops/000001_1.png", "crops/000001_2.png"]
    crops, records = [], []
    for item, mask in zip(data["items"], masks):
        crop = np.asarray(Image.open(out / item["crop_file"]))
        record = CropRecord.from_dict(item["record"])
        assert crop.shape == (48, 48, 3) and record.mask_coverage == 1.0
        assert item["image_file"] == "images/000001.png"
        written = np.asarray(Image.open(out / item["mask_file"]))
        expected = np.rint(crop_mask(mask, record) * 255).astype(np.uint8)
        np.testing.assert_array_equal(written, expected)
        crops.append(crop)
        records.append(record)
    # The records on disk invert the crops: an unchanged crop goes back where it came from.
    out_frame = reinsert(frame, crops, records, masks[:3])
    union = np.logical_or.reduce(masks[:3])
    np.testing.assert_array_equal(out_frame[~union], frame[~union])
    assert np.abs(out_frame.astype(int) - frame.astype(int))[union].max() <= 8


def test_fixed_scale_mode_cuts_at_min_scale(rendered, tmp_path: Path) -> None:
    folder, _, _ = rendered
    build_crop_dataset(folder, tmp_path / "fixed", CropDatasetConfig(size=(32, 32), fit="none"),
                       progress=False)
    items = json.loads((tmp_path / "fixed" / "records.json").read_text())["items"]
    assert [item["record"]["scale"] for item in items] == [1.0, 1.0, 1.0]
    # Coverage is still reported; at scale 1 a 32 px crop cuts the longer bodies.
    coverages = [item["record"]["mask_coverage"] for item in items]
    assert all(0 < c <= 1 for c in coverages) and min(coverages) < 1


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="size must be two positive even"):
        CropDatasetConfig(size=(127, 128))
    with pytest.raises(ValueError, match=r"fit 'box' unknown; valid: \['mask', 'none', 'rbox'\]"):
        CropDatasetConfig(fit="box")
    with pytest.raises(ValueError, match="max_scale"):
        CropDatasetConfig(min_scale=2.0, max_scale=1.0)


def test_cli_builds_and_teaches(rendered, tmp_path: Path, capsys) -> None:
    folder, _, _ = rendered
    sheet = tmp_path / "sheet.jpg"
    code = main([str(folder), str(tmp_path / "cli"), "--size", "48", "--quiet",
                 "--fit-margin", "4", "--contact-sheet", str(sheet)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 crops from 4 persons" in printed and "skipped" in printed
    with Image.open(sheet) as image:
        assert image.format == "JPEG" and image.size == (3 * 48 + 2 * 2, 48)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), str(tmp_path / "x"), "--quiet"]) == 2
    assert "neither coco.json" in capsys.readouterr().err
    assert main([str(folder), str(tmp_path / "y"), "--size", "47", "--quiet"]) == 2
    assert "even" in capsys.readouterr().err


def test_one_crop_rule_frames_rendered_and_real_people_alike(tmp_path: Path) -> None:
    """A rendered person and a real (CEPDOF) person with the same rotated box get the same
    crop: same head point, angle and scale, although the rendered one also carries an exact
    3D head and a mask that is smaller than the box (the refiner's two domains must be framed
    by one rule)."""
    frame = _frame()
    rbox = [120.0, 80.0, 14.0, 40.0, -35.0]
    rendered, real = tmp_path / "rendered", tmp_path / "real"
    (rendered / "images").mkdir(parents=True)
    real.mkdir()
    Image.fromarray(frame).save(rendered / "images" / "f.png")
    Image.fromarray(frame).save(real / "f.png")
    image = {"id": 1, "width": SIZE[0], "height": SIZE[1]}
    mask = _person((128.0, 66.0), (112.0, 92.0))
    (rendered / "coco.json").write_text(json.dumps({
        "images": [{**image, "file_name": "images/f.png"}], "categories": [],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1], "rbox": rbox,
                         "head_point": [129.0, 63.0], "head_bbox": [126, 60, 6, 6],
                         "segmentation": rle_encode(mask), "instance_id": 1}]}))
    (real / "annotations.json").write_text(json.dumps({
        "images": [{**image, "file_name": "f.png"}], "categories": [],
        "annotations": [{"image_id": 1, "bbox": rbox, "person_id": 1}]}))
    records = []
    for source in (rendered, real):
        build_crop_dataset(source, tmp_path / f"crops_{source.name}", CropDatasetConfig(size=(48, 48)),
                           progress=False)
        (item,) = json.loads((tmp_path / f"crops_{source.name}" / "records.json").read_text())["items"]
        records.append(CropRecord.from_dict(item["record"]))
    synthetic, real_record = records
    assert synthetic.head_xy == pytest.approx(real_record.head_xy)
    assert synthetic.angle_rad == pytest.approx(real_record.angle_rad)
    assert synthetic.scale == pytest.approx(real_record.scale)
