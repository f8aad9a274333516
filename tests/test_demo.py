"""The demo end to end at its smallest: two frames rendered, cropped, a refiner trained for a
few steps, served by a real daemon process, the dataset refined through it, a summary written.
This is the chain `make demo` runs, so a broken stage boundary fails here first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refiner_daemon import demo


@pytest.mark.slow
def test_demo_runs_the_whole_chain(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--frames", "2", "--train-steps", "3"]) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["background_untouched"] is True
    assert "STAND-IN" in summary["target_domain"]
    assert set(summary["timings_s"]) >= {"render", "train refiner", "refine via daemon"}
    colours = summary["person_colour"]
    assert set(colours) == {"render", "refined", "target"}
    assert colours["render"] != colours["refined"], "the refiner must change the people"

    rendered = json.loads((out / "render" / "coco.json").read_text())
    refined = json.loads((out / "refined" / "coco.json").read_text())
    assert refined["annotations"] == rendered["annotations"], "annotations must be untouched"
    record = json.loads((out / "refined" / "refiner.json").read_text())
    assert record["model"] == "demo" and len(record["model_sha256"]) == 64

    # Pixels: only people change, and the background is copied bit for bit.
    for image in rendered["images"]:
        before = np.asarray(Image.open(out / "render" / image["file_name"]).convert("RGB"))
        after = np.asarray(Image.open(out / "refined" / image["file_name"]).convert("RGB"))
        people = np.asarray(Image.open(out / "render" / image["mask_file"])) > 0
        soft = list((out / "render" / "soft_masks").glob(f"{Path(image['file_name']).stem}_*.png"))
        assert soft, "the demo renders anti-aliased masks"
        for path in soft:  # refined people are blended under coverage, a pixel past the hard mask
            people |= np.asarray(Image.open(path)) > 0
        assert np.array_equal(before[~people], after[~people])
    assert (out / "summary.md").read_text().count("![") >= 4
    assert (out / "commands.sh").read_text().count("refiner_daemon.cli refine") == 1


def test_demo_refuses_a_real_folder_without_annotations(tmp_path: Path, capsys) -> None:
    assert demo.main(["--out", str(tmp_path / "o"), "--real", str(tmp_path)]) == 1
    assert "neither annotations.json" in capsys.readouterr().err


def test_standin_dataset_keeps_annotations_and_degrades_only_the_people(tmp_path: Path) -> None:
    source = tmp_path / "render"
    (source / "images").mkdir(parents=True)
    (source / "masks").mkdir()
    rng = np.random.default_rng(0)
    frame = rng.uniform(60, 180, (64, 64, 3)).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 10:26] = 1
    mask[44:60, 30:60] = 2
    Image.fromarray(frame).save(source / "images" / "000000.png")
    Image.fromarray(mask).save(source / "masks" / "000000.png")
    coco = {"images": [{"id": 0, "file_name": "images/000000.png", "width": 64, "height": 64,
                        "mask_file": "masks/000000.png"}], "annotations": [], "categories": []}
    (source / "coco.json").write_text(json.dumps(coco))

    target = demo.make_standin_dataset(source, tmp_path / "standin", seed=1)
    written = json.loads((target / "coco.json").read_text())
    assert written["images"] == coco["images"]
    assert "STAND-IN" in written["info"]["description"]
    pixels = np.asarray(Image.open(target / "images" / "000000.png")).astype(int)
    assert np.array_equal(pixels[mask == 0], frame[mask == 0]), "the background must stay as rendered"
    for person in (1, 2):
        assert np.abs(pixels[mask == person] - frame[mask == person]).mean() > 3, f"person {person} unchanged"
    assert np.array_equal(np.asarray(Image.open(target / "masks" / "000000.png")), mask)
