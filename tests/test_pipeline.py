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
    seed_pairs,
    split_real_frames,
    stage_render,
    summarise,
)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def test_fraction_split_is_contiguous_disjoint_and_gapped() -> None:
    names = [f"f{i:02d}.jpg" for i in range(10)]
    parts = split_real_frames(list(reversed(names)), {"train": 0.6, "val": 0.2, "test": 0.2})
    assert parts == {"train": names[:6], "val": names[6:8], "test": names[8:]}
    # A gap of one frame between the parts: near-duplicate neighbours never straddle a split.
    gapped = split_real_frames(names, {"train": 0.5, "val": 0.2, "test": 0.3}, gap=1)
    assert gapped == {"train": names[:4], "val": names[5:7], "test": names[8:]}
    tiny = split_real_frames(names[:3], {"train": 0.8, "val": 0.1, "test": 0.1})
    assert [len(v) for v in tiny.values()] == [1, 1, 1]
    seven = split_real_frames(names[:7], {"train": 0.5, "val": 0.25, "test": 0.25})
    assert [len(v) for v in seven.values()] == [3, 2, 2]


def test_split_refuses_mixed_empty_or_adjacent_parts() -> None:
    names = ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(PipelineError, match="both train and test"):
        split_real_frames(names, {"train": ["a.jpg", "b.jpg"], "val": ["c.jpg"], "test": ["a.jpg"]})
    with pytest.raises(PipelineError, match="test empty"):
        split_real_frames(names, {"train": ["a.jpg"], "val": ["b.jpg"], "test": []})
    with pytest.raises(PipelineError, match="not in the real set"):
        split_real_frames(names, {"train": ["z.jpg"], "val": ["b.jpg"], "test": ["c.jpg"]})
    with pytest.raises(PipelineError, match="too few"):
        split_real_frames(names[:2], {"train": 0.6, "val": 0.2, "test": 0.2})
    with pytest.raises(PipelineError, match="train and val frames are 1 apart"):
        split_real_frames(names + ["d.jpg", "e.jpg"],
                          {"train": ["a.jpg"], "val": ["b.jpg"], "test": ["e.jpg"]}, gap=1)


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
    with pytest.raises(PipelineError, match="stage 2"):
        stage_render(config, tmp_path)


def test_detector_arms_end_to_end(tmp_path: Path) -> None:
    real = write_disc_dataset(tmp_path / "real", images=8, size=64, radius=(5, 7), seed=0)
    synthetic = write_disc_dataset(tmp_path / "S", images=6, size=64, radius=(5, 7), seed=1,
                                   style=DiscStyle(background=0.55, noise=0.02, tint=(1.1, 1.0, 0.8)))
    refined = write_disc_dataset(tmp_path / "S_plus", images=6, size=64, radius=(5, 7), seed=2,
                                 style=DiscStyle(background=0.65, noise=0.06))
    settings = {
        "out_dir": str(tmp_path / "exp"), "real": str(real),
        "real_split": {"train": 0.5, "val": 0.2, "test": 0.3}, "split_gap": 1,
        "synthetic": str(synthetic),
        "refined": {"X+S": {"path": str(refined)}},
        "experiments": ["S", "R_train", "refined", "R_train+S", "R_train+refined", "mix"],
        "mix_ratios": [0, 1], "gap": False,
        "detector": {"epochs": 1, "input_size": 64, "batch_size": 4, "num_anchors": 2, "augment": False,
                     "tensorboard": False},
        "detector_seeds": [5, 6],
    }
    results = run_pipeline(PipelineConfig.from_dict(settings))
    out = tmp_path / "exp"
    split = json.loads((out / "real_split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [3, 1, 2] and split["gap"] == 1
    assert split["heads"]["test"] == sum(a["test"]["heads"] for a in results["arms"][:1])
    # One anchor set for every arm, fitted on the union of the training sets and saved.
    anchors = json.loads((out / "anchors.json").read_text())
    assert anchors["anchor_shapes"] == results["anchors"] and len(results["anchors"]) == 2
    for runs in results["runs"].values():
        for run in runs:
            config = json.loads((Path(run["checkpoint"]).parent / "config.json").read_text())
            assert config["anchor_shapes"] == results["anchors"]
    arms = {arm["name"]: arm for arm in results["arms"]}
    assert list(arms) == ["S", "R_train", "X+S", "R_train + S", "R_train + X+S"]
    # Each run's (refiner seed, detector seed); a refined set given as a folder has one refiner.
    assert arms["S"]["seed_pairs"] == [[None, 5], [None, 6]] and arms["X+S"]["seed_pairs"] == [[5, 5], [5, 6]]
    for arm in arms.values():
        test = arm["test"]
        assert arm["detector_seeds"] == [5, 6] and test["runs"] == 2
        assert {"f1_mean", "f1_std", "f1_ci95", "precision_mean", "recall_mean", "heads"} <= set(test)
        low, high = test["f1_ci95"]
        assert low <= high and 0.0 <= test["f1_mean"] <= 1.0
    assert [(p["a"], p["b"]) for p in results["paired"]] == [
        ("R_train + S", "R_train"), ("X+S", "S"), ("R_train + X+S", "R_train + S"),
        ("R_train + X+S", "R_train")]
    assert all(p["pairs"] == 2 for p in results["paired"])
    tables = results["tables"]
    assert list(tables["4.2"]) == ["S", "R_train"] and list(tables["4.3"]) == ["X+S"]
    assert list(tables["4.6"]) == ["R_train + 0x X+S", "R_train + 1x X+S"]
    for runs in results["runs"].values():  # each number was measured with its seed, on R_test
        for r in runs:
            detail = json.loads((Path(r["checkpoint"]).parent / "test_detail.json").read_text())
            assert detail["seed"] == r["seed"] and detail["f1"] == r["f1"]
            assert {d["image"] for d in detail["per_image"]} == set(split["test"])
    markdown = (out / "tables.md").read_text()
    for title in ("Arms on R_test", "Paired differences", "Table 4.2", "Table 4.6"):
        assert title in markdown
    # A rerun reuses every finished stage; a changed detector config trains new detectors
    # in new folders and leaves the old ones alone.
    marker = next((out / "detectors").glob("S_rNone_d5-*")) / "stage.json"
    stamp = marker.stat().st_mtime_ns
    assert run_pipeline(PipelineConfig.from_dict(settings))["arms"] == results["arms"]
    assert marker.stat().st_mtime_ns == stamp
    changed = {**settings, "experiments": ["S"],
               "detector": {**settings["detector"], "learning_rate": 5e-4}}
    run_pipeline(PipelineConfig.from_dict(changed))
    assert len(list((out / "detectors").glob("S_rNone_d5-*"))) == 2
    assert marker.stat().st_mtime_ns == stamp


def test_an_existing_refined_set_needs_no_synthetic_set(tmp_path: Path) -> None:
    real = write_disc_dataset(tmp_path / "real", images=6, size=64, radius=(5, 7), seed=0)
    refined = write_disc_dataset(tmp_path / "S_plus", images=4, size=64, radius=(5, 7), seed=2)
    results = run_pipeline(PipelineConfig.from_dict({
        "out_dir": str(tmp_path / "exp"), "real": str(real), "split_gap": 0,
        "real_split": {"train": 0.5, "val": 0.25, "test": 0.25},
        "refined": {"X": {"path": str(refined)}}, "experiments": ["refined"], "gap": False,
        "detector": {"epochs": 1, "input_size": 64, "batch_size": 4, "num_anchors": 2,
                     "augment": False, "tensorboard": False}}))
    assert [arm["name"] for arm in results["arms"]] == ["X"] and results["synthetic"] is None


def _refiner_experiment(tmp_path: Path, **overrides) -> dict:
    real = write_disc_dataset(tmp_path / "real", images=7, size=64, radius=(6, 8), seed=0,
                              style=DiscStyle(background=0.5))
    synthetic = write_disc_dataset(tmp_path / "S", images=5, size=64, radius=(6, 8), seed=1)
    return {
        "out_dir": str(tmp_path / "exp"), "real": str(real), "synthetic": str(synthetic),
        "real_split": {"train": 0.5, "val": 0.25, "test": 0.25}, "split_gap": 0,
        "synthetic_val_frames": 2,
        "refined": {"C_CP": {"preset": "C_CP"}}, "experiments": ["refined"],
        "crops": {"size": [48, 48], "fit_margin_px": 2.0},
        "refiner": {"epochs": 1, "max_steps": 2, "width": 4, "disc_width": 4, "n_blocks": 1, "crop_size": [48, 48],
                    "tensorboard": False, "progress": False, "device": "cpu", "val_every": 1},
        "detector": {"epochs": 1, "input_size": 64, "batch_size": 4, "num_anchors": 2, "augment": False,
                     "tensorboard": False},
        "detector_seeds": [0], "refiner_seeds": [0], **overrides,
    }


def test_refiner_stages_make_a_refined_set_and_gate_it(tmp_path: Path) -> None:
    """Crop S, S_val, R_train and R_val, train a (tiny, two-step) refiner, gate it, refine S
    into S+ and train and test a detector on it: S+ keeps S's annotations and changes pixels only
    under the person masks. A two-step refiner does not beat S on R_val: the gate stops the run
    with its numbers, and --allow-harmful-refiner runs it marked."""
    import numpy as np
    from PIL import Image

    from protocol.coco import rle_decode
    from refiner_daemon.evaluation.pipeline import RefinerGateError

    settings = _refiner_experiment(tmp_path)
    with pytest.raises(RefinerGateError, match="fails the gate.*FD to R_val.*allow-harmful-refiner"):
        run_pipeline(PipelineConfig.from_dict(settings))
    results = run_pipeline(PipelineConfig.from_dict({**settings, "allow_harmful_refiner": True}))
    synthetic = Path(settings["synthetic"])
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
    (refiner,) = results["refiners"]["C_CP"]
    assert refiner["harmful"] and refiner["gate"]["passes"] is False and refiner["gate"]["reasons"]
    # The checkpoint the arm used: the best evaluation on R_val, or the last step without one.
    chosen = refiner["checkpoint"]
    assert chosen["file"] == ("model_best.pt" if chosen["best_on_r_val"] else "refiner.pt")
    assert "## Refiners" in (tmp_path / "exp" / "tables.md").read_text()
    (arm,) = results["arms"]
    assert arm["name"] == "C_CP" and arm["harmful_refiner"] and arm["refiner_seeds"] == [0]
    assert "(harmful refiner)" in (tmp_path / "exp" / "tables.md").read_text()
    assert list(results["tables"]["4.4"]) == ["C_CP"]  # no skip connection: Table 4.4


def test_seed_design_crosses_or_pairs_refiner_and_detector_seeds() -> None:
    assert seed_pairs([0, 1], [5, 6], "cross") == [(0, 5), (0, 6), (1, 5), (1, 6)]
    assert seed_pairs([0, 1], [5, 6], "paired") == [(0, 5), (1, 6)]
    # Arms without a refined set run every detector seed under either design.
    assert seed_pairs([None], [5, 6], "paired") == [(None, 5), (None, 6)]
    base = {"out_dir": "x", "real": "r", "synthetic": "s", "experiments": ["S"]}
    with pytest.raises(PipelineError, match="needs as many"):
        PipelineConfig.from_dict({**base, "seed_design": "paired", "refiner_seeds": [0, 1, 2],
                                  "detector_seeds": [0, 1]})
    with pytest.raises(PipelineError, match=r"seed_design 'diagonal' unknown; valid: \['cross', 'paired'\]"):
        PipelineConfig.from_dict({**base, "seed_design": "diagonal"})


def test_repeats_are_reported_as_mean_and_sample_std_with_their_seeds() -> None:
    runs = [Run("S", seed, epoch, p, r, f, f, 0.5, 10, "x") for seed, epoch, p, r, f in
            [(0, 3, 0.8, 0.6, 0.7), (1, 5, 1.0, 0.8, 0.9)]]
    summary = summarise(runs)
    assert summary["seeds"] == [0, 1] and summary["epochs"] == [3, 5]
    sample_std = 0.1 * 2 ** 0.5  # ddof = 1
    assert summary["f1"] == pytest.approx({"mean": 0.8, "std": sample_std})
    markdown = render_tables({"seeds": [0, 1], "tables": {"4.2": {"S": summary}}})
    assert f"| S | 3, 5 | 0.900 ± {sample_std:.3f} | 0.700 ± {sample_std:.3f} | 0.800 ± {sample_std:.3f} |" in markdown


@pytest.mark.realdata
def test_real_frames_split_without_mixing(cepdof_dir: Path) -> None:
    from refiner_daemon.detector.config import DatasetSpec
    from refiner_daemon.detector.data import image_names, load_samples

    names = image_names(DatasetSpec(str(cepdof_dir)))
    ordered = sorted(names)
    parts = split_real_frames(names, {"train": ordered[:4], "val": ordered[5:6], "test": ordered[7:]}, gap=1)
    heads = {k: sum(len(s.head_boxes) for s in load_samples(DatasetSpec(str(cepdof_dir), images=v)))
             for k, v in parts.items()}
    assert heads == {"train": 28, "val": 7, "test": 21}  # two gap frames (14 heads) left out
