"""The people contact sheet: crops cut by the one crop rule, seeded, one labelled block per
dataset; clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from broken_datasets import good_cepdof, good_coco
from PIL import Image

from protocol.cli import CliError
from protocol.crop_dataset import CropDatasetConfig, build_crop_dataset
from refiner_daemon.evaluation.crop_sheet import draw_sheet, main, sample_crops


def test_crops_are_the_crop_rules_and_seeded(tmp_path: Path) -> None:
    source = good_cepdof(tmp_path / "real")
    config = CropDatasetConfig(size=(64, 64))
    crops = sample_crops(source, 3, config, seed=1)
    assert len(crops) == 3 and crops[0].shape == (64, 64, 3)
    again = sample_crops(source, 3, config, seed=1)
    assert all((a == b).all() for a, b in zip(crops, again, strict=True))
    # every sampled crop is one of the crops build_crop_dataset cuts from the same data
    build_crop_dataset(source, tmp_path / "all", config, progress=False)
    reference = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "all" / "crops").glob("*.png"))]
    assert all(any((crop == r).all() for r in reference) for crop in crops)
    assert len(sample_crops(source, 100, config)) == len(reference)  # all of them when fewer


def test_sheet_has_a_block_per_dataset(tmp_path: Path) -> None:
    real = good_cepdof(tmp_path / "real")
    rendered = good_coco(tmp_path / "rendered")
    out = tmp_path / "sheet.png"
    assert main([f"real={real}", f"rendered={rendered}", "--count", "5", "--columns", "4",
                 "--out", str(out)]) == 0
    sheet = Image.open(out)
    # 5 crops in rows of 4: two rows per block, two blocks, 64 px tiles with 2 px gaps
    assert sheet.size == (90 + 4 * 66, 2 * (2 * 66 + 4))
    tiles = {"a": [np.zeros((8, 8, 3), np.uint8)] * 3}
    assert draw_sheet(tiles, columns=3).size == (90 + 3 * 10, 10 + 4)


def test_bad_input_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"x={tmp_path / 'missing'}", "--out", str(tmp_path / "s.png")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["no-label", "--out", str(tmp_path / "s.png")])
    assert exit_info.value.code == 2 and "LABEL=PATH" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "annotations.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(CliError, match="no annotated people"):
        sample_crops(tmp_path / "empty", 3, CropDatasetConfig())
    assert not (tmp_path / "s.png").exists()
