"""Soft person masks on rendered frames (pip bpy, tiny proxy-people renders): the coverage is
fractional only along person edges, 1 inside and 0 outside, agrees with the hard instance mask
at 0.5, costs the image and the annotations nothing, and the refiner pastes with it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")

from blender_addon.bl import cli_entry
from blender_addon.core.dataset import read_mask
from blender_addon.core.render_cli import Backend, run
from protocol.coverage import read_coverage
from refiner_daemon.refiner.batch_refine import BatchRefineConfig, RefinerIdentity, refine_dataset

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[1]
SIZE = 160
# The hard mask is one sample per pixel, drawn anywhere under the 1.5 px pixel filter, so its
# boundary wanders by up to about a pixel; coverage reaches 0.75 px past the true edge.
EDGE_PX = 2


def _render(out: Path, count: int, *extra: str) -> Path:
    code = run(["--scene", str(ROOT / "scenes" / "sample_office"), "--count", str(count),
                "--seed", "5", "--preset", "fast", "--resolution", str(SIZE), "--samples", "16",
                "--human-backend", "proxy", "--workers", "0", "--threads", "2", "--no-progress",
                "--out", str(out), *extra],
               Backend(cli_entry.worker_command, cli_entry.render_in_process))
    assert code == 0
    return out


@pytest.fixture(scope="module")
def soft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(tmp_path_factory.mktemp("soft"), 2)


@pytest.fixture(scope="module")
def hard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render(tmp_path_factory.mktemp("hard"), 1, "--hard-masks")


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Chebyshev dilation: pixels within ``radius`` of a set pixel (square neighbourhood)."""
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def _people(out: Path) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(annotation, hard mask, coverage) of every annotated person of every frame."""
    people = []
    for path in sorted((out / "frames").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        ids = read_mask(out / record["mask"])
        for annotation in record["annotations"]:
            coverage = read_coverage(out / annotation["soft_mask"], ids.shape)
            people.append((annotation, ids == annotation["instance_id"], coverage))
    return people


def test_soft_masks_are_fractional_along_edges_one_inside_zero_outside(soft_dir: Path) -> None:
    people = _people(soft_dir)
    assert len(people) >= 6
    edge_total = edge_fractional = 0
    for annotation, hard, coverage in people:
        name = annotation["soft_mask"]
        fractional = (coverage > 0) & (coverage < 1)
        band = _dilate(hard, EDGE_PX) & _dilate(~hard, EDGE_PX)
        assert fractional.sum() >= 10, name
        assert not (fractional & ~band).any(), f"{name}: fractional coverage away from the edge"
        inside = ~_dilate(~hard, EDGE_PX)
        assert inside.any() and (coverage[inside] == 1).all(), name
        assert (coverage[~_dilate(hard, EDGE_PX + 1)] == 0).all(), name
        # The pixels on either side of the hard boundary.
        edge = _dilate(hard, 1) & _dilate(~hard, 1)
        edge_total += int(edge.sum())
        edge_fractional += int((fractional & edge).sum())
    assert edge_fractional / edge_total > 0.4, (edge_fractional, edge_total)


def test_soft_mask_at_one_half_agrees_with_the_hard_mask(soft_dir: Path) -> None:
    intersection = union = 0
    for annotation, hard, coverage in _people(soft_dir):
        soft = coverage >= 0.5
        inter, uni = int((soft & hard).sum()), int((soft | hard).sum())
        intersection, union = intersection + inter, union + uni
        if hard.sum() >= 150:  # a small person's IoU is mostly its noisy one-sample edge
            assert inter / uni >= 0.95, (annotation["soft_mask"], inter / uni)
    assert intersection / union >= 0.95


def test_hard_masks_are_binary_and_soft_masks_cost_the_image_and_annotations_nothing(
        soft_dir: Path, hard_dir: Path) -> None:
    hard_record = json.loads((hard_dir / "frames" / "000000.json").read_text(encoding="utf-8"))
    soft_record = json.loads((soft_dir / "frames" / "000000.json").read_text(encoding="utf-8"))
    assert (hard_record["mask_mode"], soft_record["mask_mode"]) == ("hard", "soft")
    for annotation, hard, coverage in _people(hard_dir):
        assert set(np.unique(coverage)) <= {0.0, 1.0}
        np.testing.assert_array_equal(coverage == 1, hard)
    # The Cryptomatte pass adds channels, not samples: image and annotations are unchanged.
    for folder in ("images", "masks"):
        assert (hard_dir / folder / "000000.png").read_bytes() == \
            (soft_dir / folder / "000000.png").read_bytes()
    strip = [{k: v for k, v in a.items() if k != "soft_mask"} for a in soft_record["annotations"]]
    assert strip == [{k: v for k, v in a.items() if k != "soft_mask"}
                     for a in hard_record["annotations"]]


def _refine(in_dir: Path, out_dir: Path) -> None:
    # A "refiner" that inverts the crop: every pasted pixel visibly changes.
    refine_dataset(in_dir, out_dir, lambda crops: 255 - crops, RefinerIdentity("invert", "0"),
                   BatchRefineConfig(crop_size=64), progress=False)


def _changed_outside(in_dir: Path, out_dir: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame: pixels changed, union of hard masks, union of coverage > 0."""
    from PIL import Image

    result = []
    for path in sorted((in_dir / "frames").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        before = np.asarray(Image.open(in_dir / record["image"]).convert("RGB"))
        after = np.asarray(Image.open(out_dir / record["image"]).convert("RGB"))
        ids = read_mask(in_dir / record["mask"])
        hard = np.isin(ids, [a["instance_id"] for a in record["annotations"]])
        covered = np.zeros_like(hard)
        for annotation in record["annotations"]:
            if "soft_mask" in annotation:
                covered |= read_coverage(in_dir / annotation["soft_mask"]) > 0
        result.append(((before != after).any(axis=2), hard, covered))
    return result


def test_refiner_pastes_with_the_soft_mask_and_falls_back_to_the_hard_one(
        soft_dir: Path, tmp_path: Path) -> None:
    _refine(soft_dir, tmp_path / "refined")
    outside_total = 0
    for changed, hard, covered in _changed_outside(soft_dir, tmp_path / "refined"):
        outside = changed & ~hard
        outside_total += int(outside.sum())
        assert not (changed & ~covered).any()  # nothing changes where no person covers
        assert not (outside & ~_dilate(hard, EDGE_PX)).any()  # only the edge band, outside
    assert outside_total > 20  # the soft paste does reach past the hard edge
    # Soft masks are annotations: copied with the rest.
    for annotation, _, _ in _people(soft_dir):
        copied = tmp_path / "refined" / annotation["soft_mask"]
        assert copied.read_bytes() == (soft_dir / annotation["soft_mask"]).read_bytes()

    # A dataset from before soft masks: no "soft_mask" keys, no soft_masks/ folder.
    old = tmp_path / "old"
    shutil.copytree(soft_dir, old)
    shutil.rmtree(old / "soft_masks")
    for path in [old / "coco.json", *(old / "frames").glob("*.json")]:
        data = json.loads(path.read_text(encoding="utf-8"))
        for annotation in data["annotations"]:
            del annotation["soft_mask"]
        path.write_text(json.dumps(data), encoding="utf-8")
    _refine(old, tmp_path / "old_refined")
    changed_any = 0
    for changed, hard, _ in _changed_outside(old, tmp_path / "old_refined"):
        assert not (changed & ~hard).any()  # the hard cut
        changed_any += int(changed.sum())
    assert changed_any > 100


def test_a_missing_soft_mask_file_is_named(soft_dir: Path, tmp_path: Path) -> None:
    from refiner_daemon.refiner.batch_refine import BatchRefineError

    broken = tmp_path / "broken"
    shutil.copytree(soft_dir, broken)
    first = min((broken / "soft_masks").glob("*.png"))
    first.unlink()
    with pytest.raises(BatchRefineError, match=f"{first.name} is missing; re-render that frame"):
        _refine(broken, tmp_path / "out")


def test_preview_pastes_with_the_soft_mask_and_falls_back_to_the_hard_one(soft_dir: Path) -> None:
    from blender_addon.core import preview_pipeline as pp

    frame = pp.load_rendered_frame(soft_dir, 0)
    assert sorted(frame.coverage) == sorted(p.instance_id for p in frame.people)
    crops = pp.cut_crops(frame)
    assert len(crops.records) >= 2
    hard = np.isin(frame.instance_ids, list(crops.instance_ids))
    covered = np.zeros_like(hard)
    for instance in crops.instance_ids:
        covered |= frame.coverage[instance] > 0
    soft_out = pp.reinsert_refined(frame, crops, 255 - crops.crops)
    changed = (soft_out != frame.image).any(axis=2)
    assert not (changed & ~covered).any()
    assert (changed & ~hard).sum() > 5
    assert not (changed & ~hard & ~_dilate(hard, EDGE_PX)).any()
    # A frame written before soft masks: the hard cut.
    old = dataclasses.replace(frame, coverage={})
    hard_out = pp.reinsert_refined(old, crops, 255 - crops.crops)
    assert not ((hard_out != frame.image).any(axis=2) & ~hard).any()
