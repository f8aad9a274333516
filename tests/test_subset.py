"""Taking the first N frames of a rendered run (``blender_addon.core.subset``): every file of
those frames, byte for byte, a run config of N frames, coco.json rebuilt, clear refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_addon.core import batch, subset
from blender_addon.core.batch import BatchConfig, BatchError

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "scenes" / "sample_office")


def _run(folder: Path, count: int, rendered: int) -> Path:
    """A run folder of ``count`` frames with the first ``rendered`` written as a worker writes
    them: image, mask and one soft mask per person, then the frame record."""
    batch.prepare_run_folder(folder, BatchConfig(scene=SCENE, count=count, seed=4))
    (folder / "soft_masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(rendered):
        name = batch.frame_name(index)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / "images" / f"{name}.png")
        Image.fromarray(rng.integers(0, 3, (8, 8), dtype=np.uint8)).save(folder / "masks" / f"{name}.png")
        annotations = []
        for person in (1, 2):
            soft = f"soft_masks/{name}_{person}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / soft)
            annotations.append({"instance_id": person, "bbox": [0, 0, 2, 2], "soft_mask": soft})
        record = {"index": index, "frame": name, "image": f"images/{name}.png", "mask": f"masks/{name}.png",
                  "width": 8, "height": 8, "annotations": annotations}
        (folder / "frames" / f"{name}.json").write_text(json.dumps(record))
    return folder


def test_the_first_frames_become_a_run_of_their_own(tmp_path: Path) -> None:
    source = _run(tmp_path / "s", count=6, rendered=6)
    out = tmp_path / "first3"
    coco = subset.subset(source, out, 3)
    assert [image["id"] for image in coco["images"]] == [0, 1, 2] and len(coco["annotations"]) == 6
    assert json.loads((out / "coco.json").read_text()) == coco
    assert batch.load_run_config(out) == replace(batch.load_run_config(source), count=3)
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert kept == sorted(p.relative_to(source).as_posix() for p in source.rglob("*.png")
                          if int(p.stem[:6]) < 3)
    for relative in [*kept, "frames/000002.json"]:
        assert (out / relative).read_bytes() == (source / relative).read_bytes()
        assert (out / relative).stat().st_ino == (source / relative).stat().st_ino  # hard links
    assert not (out / "frames" / "000003.json").exists()
    assert not list(out.rglob(".*.partial"))


def test_copies_on_request_and_a_rerun_finishes_an_interrupted_subset(tmp_path: Path) -> None:
    source = _run(tmp_path / "s", count=4, rendered=4)
    out = tmp_path / "copy"
    subset.subset(source, out, 4, link=False)
    image = out / "images" / "000001.png"
    assert image.stat().st_ino != (source / "images" / "000001.png").stat().st_ino
    (out / "frames" / "000003.json").unlink()  # as if stopped before the last frame's record
    (out / "images" / "000003.png").unlink()
    assert len(subset.subset(source, out, 4, link=False)["images"]) == 4
    assert (out / "images" / "000003.png").read_bytes() == (source / "images" / "000003.png").read_bytes()


def test_bad_requests_are_refused_with_what_to_do(tmp_path: Path) -> None:
    source = _run(tmp_path / "s", count=5, rendered=3)
    with pytest.raises(BatchError, match=r"--first must be in \[1, 5\]"):
        subset.subset(source, tmp_path / "o", 6)
    with pytest.raises(BatchError, match=r"lacks 1 of its first 4 frames \(first: \[3\]\); rerun its render"):
        subset.subset(source, tmp_path / "o", 4)
    with pytest.raises(BatchError, match="is the source run itself"):
        subset.subset(source, source, 2)
    with pytest.raises(BatchError, match="not found; start the run"):
        subset.subset(tmp_path / "nowhere", tmp_path / "o", 2)
    subset.subset(source, tmp_path / "two", 2)
    with pytest.raises(BatchError, match="holds a run of 2 frames, not 3"):
        subset.subset(source, tmp_path / "two", 3)
    other = _run(tmp_path / "other", count=3, rendered=3)
    (other / "run_config.json").write_text((other / "run_config.json").read_text().replace('"seed": 4', '"seed": 9'))
    with pytest.raises(BatchError, match="differs in: seed"):
        subset.subset(source, other, 3)
    (source / "soft_masks" / "000000_2.png").unlink()
    with pytest.raises(BatchError, match="000000_2.png is missing although frame 0's record names it"):
        subset.subset(source, tmp_path / "fresh", 1)


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _run(tmp_path / "s", count=3, rendered=3)
    assert subset.main([str(source), "--first", "2", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "coco.json: 2 images, 4 people" in capsys.readouterr().out
    assert subset.main([str(source), "--first", "0", "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    assert "error: --first must be in [1, 3]" in capsys.readouterr().err
