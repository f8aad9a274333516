"""Algorithm 3 pipeline: frame splits, config validation, stages that are not available, and
stages 5-7 end to end on tiny stand-in datasets (tables 4.2-4.6, seeds, repeats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refiner_daemon.detector.toydata import DiscStyle, write_disc_dataset
from refiner_daemon.evaluation.pipeline import (
    PipelineConfig,
    PipelineError,
    Run,
    render_command,
    render_tables,
    run_pipeline,
    split_real_frames,
    stage_render,
    summarise,
)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def test_fraction_split_is_contiguous_and_disjoint() -> None:
    names = [f"f{i:02d}.jpg" for i in range(10)]
    parts = split_real_frames(list(reversed(names)), {"train": 0.6, "val": 0.2, "test": 0.2})
    assert parts == {"train": names[:6], "val": names[6:8], "test": names[8:]}
    tiny = split_real_frames(names[:3], {"train": 0.8, "val": 0.1, "test": 0.1})
    assert [len(v) for v in tiny.values()] == [1, 1, 1]
    seven = split_real_frames(names[:7], {"train": 0.5, "val": 0.25, "test": 0.25})
    assert [len(v) for v in seven.values()] == [3, 2, 2]


def test_split_refuses_mixed_or_empty_parts() -> None:
    names = ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(PipelineError, match="both train and test"):
        split_real_frames(names, {"train": ["a.jpg", "b.jpg"], "val": ["c.jpg"], "test": ["a.jpg"]})
    with pytest.raises(PipelineError, match="test empty"):
        split_real_frames(names, {"train": ["a.jpg"], "val": ["b.jpg"], "test": []})
    with pytest.raises(PipelineError, match="not in the real set"):
        split_real_frames(names, {"train": ["z.jpg"], "val": ["b.jpg"], "test": ["c.jpg"]})
    with pytest.raises(PipelineError, match="too few"):
        split_real_frames(names[:2], {"train": 0.6, "val": 0.2, "test": 0.2})


def test_config_validation_names_the_field(tmp_path: Path) -> None:
    base = {"out_dir": str(tmp_path), "real": str(tmp_path), "synthetic": str(tmp_path)}
    with pytest.raises(PipelineError, match="experiments"):
        PipelineConfig.from_dict({**base, "experiments": ["S", "bogus"]})
    with pytest.raises(PipelineError, match="set by the pipeline"):
        PipelineConfig.from_dict({**base, "detector": {"seed": 3}})
    with pytest.raises(ValueError, match="input_size"):
        PipelineConfig.from_dict({**base, "detector": {"input_size": 50}})
    with pytest.raises(PipelineError, match="mix_refined"):
        PipelineConfig.from_dict({**base, "mix_refined": "D"})
    with pytest.raises(PipelineError, match="synthetic"):
        PipelineConfig.from_dict({"out_dir": "o", "real": "r"})


def test_render_stage_runs_the_batch_renderer_command(tmp_path: Path) -> None:
    command = render_command({"seed": 3, "scene": "scenes/sample_office", "count": 4,
                              "sitting": [1, 2], "denoise": True, "contact_sheet": None}, tmp_path / "S")
    assert command[1:] == ["-m", "blender_addon.bl.cli_entry", "--out", str(tmp_path / "S"),
                           "--seed", "3", "--scene", "scenes/sample_office", "--count", "4",
                           "--sitting", "1,2", "--denoise"]
    config = PipelineConfig.from_dict({"out_dir": str(tmp_path), "real": str(tmp_path),
                                       "render": {"count": 1, "scene": str(tmp_path / "missing")}})
    with pytest.raises(PipelineError, match="stage 1"):
        stage_render(config, tmp_path / "S")


def test_stages_5_to_7_end_to_end(tmp_path: Path) -> None:
    real = write_disc_dataset(tmp_path / "real", images=7, size=64, radius=(5, 7), seed=0)
    synthetic = write_disc_dataset(tmp_path / "S", images=6, size=64, radius=(5, 7), seed=1,
                                   style=DiscStyle(background=0.55, noise=0.02, tint=(1.1, 1.0, 0.8)))
    refined = write_disc_dataset(tmp_path / "S_plus", images=6, size=64, radius=(5, 7), seed=2,
                                 style=DiscStyle(background=0.65, noise=0.06))
    config = PipelineConfig.from_dict({
        "out_dir": str(tmp_path / "exp"), "real": str(real),
        "real_split": {"train": 0.5, "val": 0.25, "test": 0.25},
        "synthetic": str(synthetic),
        "refined": {"X+S": {"path": str(refined)}},
        "mix_ratios": [0, 1],
        "detector": {"epochs": 1, "input_size": 64, "batch_size": 4, "num_anchors": 2, "augment": False,
                     "tensorboard": False},
        "seed": 5, "repeats": 1,
    })
    results = run_pipeline(config)
    out = tmp_path / "exp"
    assert results["seeds"] == [5]
    split = json.loads((out / "real_split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [3, 2, 2]
    tables = results["tables"]
    assert list(tables["4.2"]) == ["S", "R_train"]
    assert list(tables["4.3"]) == ["X+S"] and "4.4" not in tables  # "+S" names a skip connection
    assert list(tables["4.5"]) == ["R_train + S", "R_train + X+S"]
    assert list(tables["4.6"]) == ["R_train + 0x X+S", "R_train + 1x X+S"]
    # 0x is R_train itself; 1x adds |R_train| refined images.
    assert tables["4.6"]["R_train + 0x X+S"] == tables["4.2"]["R_train"]
    assert tables["4.6"]["R_train + 1x X+S"]["train_images"] == 6
    for rows in tables.values():
        for summary in rows.values():
            assert summary["seeds"] == [5] and len(summary["epochs"]) == 1
            assert 0.0 <= summary["f1"]["mean"] <= 1.0 and summary["f1"]["std"] == 0.0
    for runs in results["runs"].values():  # each number was measured with its seed
        assert [r["seed"] for r in runs] == [5]
        for r in runs:
            detail = json.loads((Path(r["checkpoint"]).parent / "test_detail.json").read_text())
            assert detail["seed"] == r["seed"] and detail["f1"] == r["f1"]
            assert {d["image"] for d in detail["per_image"]} == set(split["test"])
    markdown = (out / "tables.md").read_text()
    for title in ("Table 4.2", "Table 4.3", "Table 4.5", "Table 4.6"):
        assert title in markdown
    assert "| [5] |" in markdown
    assert (out / "f1_vs_mix_ratio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A rerun reuses the finished detector runs instead of training again.
    stamp = (out / "detectors" / "S" / "seed5" / "test.json").stat().st_mtime_ns
    assert run_pipeline(config)["tables"] == tables
    assert (out / "detectors" / "S" / "seed5" / "test.json").stat().st_mtime_ns == stamp


def test_stages_2_to_4_make_a_refined_set_and_feed_the_tables(tmp_path: Path) -> None:
    """Crop S and R_train, train a (tiny, two-step) refiner, refine S into S+, train and test a
    detector on it: S+ keeps S's annotations and changes pixels only under the person masks."""
    import numpy as np
    from PIL import Image

    from protocol.coco import rle_decode

    real = write_disc_dataset(tmp_path / "real", images=5, size=64, radius=(6, 8), seed=0,
                              style=DiscStyle(background=0.5))
    synthetic = write_disc_dataset(tmp_path / "S", images=3, size=64, radius=(6, 8), seed=1)
    config = PipelineConfig.from_dict({
        "out_dir": str(tmp_path / "exp"), "real": str(real), "synthetic": str(synthetic),
        "refined": {"C_CP": {"preset": "C_CP"}}, "experiments": ["refined"], "distance_table": True,
        "crops": {"size": [48, 48], "fit_margin_px": 2.0},
        "refiner": {"epochs": 1, "max_steps": 2, "width": 4, "disc_width": 4, "n_blocks": 1, "crop_size": [48, 48],
                    "tensorboard": False, "progress": False, "device": "cpu"},
        "detector": {"epochs": 1, "input_size": 64, "batch_size": 4, "num_anchors": 2, "augment": False,
                     "tensorboard": False},
    })
    results = run_pipeline(config)
    refined = Path(results["refined"]["C_CP"])
    source = json.loads((synthetic / "coco.json").read_text())
    made = json.loads((refined / "coco.json").read_text())
    assert made["annotations"] == source["annotations"]
    record = json.loads((refined / "refiner.json").read_text())
    assert len(record["model_sha256"]) == 64 and record["endpoint"] == "in-process"
    changed_anywhere = False
    for image in source["images"]:
        before = np.asarray(Image.open(synthetic / image["file_name"]).convert("RGB")).astype(int)
        after = np.asarray(Image.open(refined / image["file_name"]).convert("RGB")).astype(int)
        people = np.zeros(before.shape[:2], bool)
        for annotation in source["annotations"]:
            if annotation["image_id"] == image["id"]:
                people |= rle_decode(annotation["segmentation"])
        assert (before[~people] == after[~people]).all()
        changed_anywhere |= bool((before[people] != after[people]).any())
    assert changed_anywhere
    assert list(results["tables"]["4.4"]) == ["C_CP"]  # no skip connection: Table 4.4
    assert (tmp_path / "exp" / "refiners" / "C_CP" / "refiner.pt").is_file()
    distances = results["table_4_1"]["rows"]  # Table 4.1 on the crops
    assert set(distances) == {"S", "R_train", "C_CP"}
    assert distances["S"]["fd_to_S"] == pytest.approx(0.0, abs=1e-6)
    assert distances["R_train"]["fd_to_R_train"] == pytest.approx(0.0, abs=1e-6)
    assert distances["S"]["fd_to_R_train"] > 0.0
    assert "Table 4.1" in (tmp_path / "exp" / "tables.md").read_text()


def test_repeats_are_reported_as_mean_and_std_with_their_seeds() -> None:
    runs = [Run("S", seed, epoch, p, r, f, f, 0.5, 10, "x") for seed, epoch, p, r, f in
            [(0, 3, 0.8, 0.6, 0.7), (1, 5, 1.0, 0.8, 0.9)]]
    summary = summarise(runs)
    assert summary["seeds"] == [0, 1] and summary["epochs"] == [3, 5]
    assert summary["f1"] == pytest.approx({"mean": 0.8, "std": 0.1})
    assert summary["precision"] == pytest.approx({"mean": 0.9, "std": 0.1})
    markdown = render_tables({"seeds": [0, 1], "tables": {"4.2": {"S": summary}}})
    assert "| S | 3, 5 | 0.900 ± 0.100 | 0.700 ± 0.100 | 0.800 ± 0.100 | 10 | [0, 1] |" in markdown


@pytest.mark.realdata
def test_real_frames_split_without_mixing(cepdof_dir: Path) -> None:
    from refiner_daemon.detector.config import DatasetSpec
    from refiner_daemon.detector.data import image_names, load_samples

    names = image_names(DatasetSpec(str(cepdof_dir)))
    parts = split_real_frames(names, {"train": 0.6, "val": 0.2, "test": 0.2})
    assert [len(parts[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    heads = {k: sum(len(s.head_boxes) for s in load_samples(DatasetSpec(str(cepdof_dir), images=v)))
             for k, v in parts.items()}
    assert sum(heads.values()) == 70
