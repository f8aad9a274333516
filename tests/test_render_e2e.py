"""End to end: a few small frames of the sample office with MakeHuman people, rendered by the
CLI in this process; masks, boxes, head points, the image and coco.json must agree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bpy")

from blender_addon.bl import cli_entry
from blender_addon.core.dataset import linear_to_srgb, load_photo_linear, read_mask
from blender_addon.core.render_cli import Backend, run
from protocol.coco import rle_decode

pytestmark = pytest.mark.blender

ROOT = Path(__file__).resolve().parents[1]
SIZE = 160


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from blender_addon.bl import humans

    try:
        humans.data_root()
    except humans.HumanDataError as exc:
        pytest.skip(f"MakeHuman data missing: {exc}")
    out = tmp_path_factory.mktemp("e2e")
    code = run(["--scene", str(ROOT / "scenes" / "sample_office"), "--count", "3", "--seed", "5",
                "--preset", "fast", "--resolution", str(SIZE), "--samples", "4", "--sitting", "2,3",
                "--standing", "1,2", "--workers", "0", "--threads", "2", "--no-progress",
                "--out", str(out)],
               Backend(cli_entry.worker_command, cli_entry.render_in_process))
    assert code == 0
    return out


def _rbox_contains(rbox: list[float], xs: np.ndarray, ys: np.ndarray) -> bool:
    cx, cy, w, h, angle = rbox
    a = math.radians(angle)
    axis = np.array([math.sin(a), -math.cos(a)])  # h axis, clockwise from image-up
    across = np.array([-axis[1], axis[0]])
    rel = np.stack([xs + 0.5 - cx, ys + 0.5 - cy], 1)
    return bool((np.abs(rel @ axis) <= h / 2 + 1e-6).all() and (np.abs(rel @ across) <= w / 2 + 1e-6).all())


def test_annotations_agree_with_masks_and_image(dataset_dir: Path) -> None:
    coco = json.loads((dataset_dir / "coco.json").read_text())
    assert [im["id"] for im in coco["images"]] == [0, 1, 2]
    assert coco["categories"][0]["keypoints"] == ["head"]
    photo = (linear_to_srgb(load_photo_linear(ROOT / "scenes/sample_office/empty_room.jpg", (SIZE, SIZE))) * 255)
    people = 0
    for image in coco["images"]:
        ids = read_mask(dataset_dir / image["mask_file"])
        rgb = np.asarray(__import__("PIL.Image").Image.open(dataset_dir / image["file_name"]), dtype=np.float32)
        assert rgb.shape == (SIZE, SIZE, 3) and ids.shape == (SIZE, SIZE)
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert sorted(a["instance_id"] for a in annotations) == sorted(set(np.unique(ids)) - {0})
        anywhere = np.zeros((SIZE, SIZE), bool)
        for a in annotations:
            people += 1
            visible = rle_decode(a["segmentation"])
            full = rle_decode(a["segmentation_full"])
            assert np.array_equal(visible, ids == a["instance_id"])
            assert not (visible & ~full).any()
            assert a["area"] == visible.sum() and a["visibility"] == pytest.approx(visible.sum() / full.sum())
            ys, xs = np.nonzero(visible)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert _rbox_contains(a["rbox"], xs, ys)
            assert a["rbox"][2] * a["rbox"][3] <= 1.01 * (a["bbox"][2] * a["bbox"][3]) + 4 * SIZE
            hx, hy = a["head_point"]
            bx, by, bw, bh = a["head_bbox"]
            assert bx <= hx <= bx + bw and by <= hy <= by + bh
            assert a["keypoints"][:2] == [hx, hy]
            # COCO flag: 0 head outside the image, 1 in view but hidden, 2 the head pixel shows them.
            if not a["head_in_view"]:
                assert a["keypoints"][2] == 0
            else:
                assert a["keypoints"][2] == (2 if ids[int(hy), int(hx)] == a["instance_id"] else 1)
            # The projected head lands on the person's unoccluded silhouette.
            fys, fxs = np.nonzero(full)
            assert np.hypot(fxs + 0.5 - hx, fys + 0.5 - hy).min() <= 1.5
            # The person changed the photo where they are visible.
            assert np.abs(rgb[visible] - photo[visible]).mean() > 8
            anywhere |= full
        # Far from every person the photo shows through (shadows may darken some of it).
        grown = anywhere.copy()
        for shift in range(1, 6):
            grown |= np.roll(anywhere, shift, 0) | np.roll(anywhere, -shift, 0)
            grown |= np.roll(anywhere, shift, 1) | np.roll(anywhere, -shift, 1)
        assert np.median(np.abs(rgb[~grown] - photo[~grown])) < 2.0
    assert people >= 6


def test_frame_json_is_a_replayable_manifest(dataset_dir: Path) -> None:
    record = json.loads((dataset_dir / "frames" / "000001.json").read_text())
    manifest = record["manifest"]
    assert manifest["global_seed"] == 5 and manifest["frame_seed"] > 0
    assert manifest["versions"]["blender"].startswith("5.")
    assert len(manifest["photo_sha256"]) == 64
    recipe = manifest["recipe"]
    assert recipe["index"] == 1 and recipe["people"]
    kinds = [p["kind"] for p in recipe["people"]]
    assert 2 <= kinds.count("sitting") <= 3 and 1 <= kinds.count("standing") <= 2
    for person, made in zip(recipe["people"], manifest["people"]):
        assert person["params"]["phenotype"] and person["pose"]["kind"] == person["kind"]
        assert made["pass_index"] == person["pass_index"]
    assert record["camera"]["cycles"]["panorama_type"] == "FISHEYE_LENS_POLYNOMIAL"
    config = json.loads((dataset_dir / "run_config.json").read_text())["config"]
    assert config["seed"] == 5
    # With the MakeHuman assets found (the default search), every person's outfit is recorded.
    if config["assets"]:
        for made in manifest["people"]:
            assert made["outfit"]["suit"] and made["outfit"]["assets_root"] == config["assets"]
    else:
        assert all(made["outfit"] is None for made in manifest["people"])
