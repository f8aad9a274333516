"""Comparing one arm across finished pipeline runs: per-frame counts read back from each
detector's test.json, F1 and paired differences computed from them, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.cli import CliError
from refiner_daemon.evaluation.compare import compare, main, render_markdown

FRAMES = ["a.jpg", "b.jpg"]


def make_run(root: Path, label: str, counts_by_seed: dict[int, list[tuple[int, int, int]]],
             test_frames: list[str] = FRAMES) -> Path:
    """A pipeline out_dir as the pipeline leaves it: results.json, and a test.json beside each
    detector checkpoint with the per-frame counts."""
    out = root / label
    runs = []
    for seed, counts in counts_by_seed.items():
        folder = out / "detectors" / f"S_rNone_d{seed}"
        folder.mkdir(parents=True)
        per_image = [{"image": frame, "true_positives": tp, "false_positives": fp, "false_negatives": fn}
                     for frame, (tp, fp, fn) in zip(test_frames, counts, strict=True)]
        record = {"experiment": "S", "seed": seed, "refiner_seed": None, "f1": 0.0, "per_image": per_image}
        (folder / "test.json").write_text(json.dumps(record))
        (folder / "test_detail.json").write_text(json.dumps({"oracle_threshold_on_this_set": {"f1": 0.5 + 0.1 * seed}}))
        runs.append({"experiment": "S", "seed": seed, "refiner_seed": None, "train_images": 10,
                     "checkpoint": str(folder / "best.pt"), "f1": 0.0})
    results = {"real_split": {"test": test_frames}, "synthetic": f"out/{label}", "runs": {"S": runs},
               "gap": {"sets": {"S": {"fd_person": 100.0 if label == "base" else 80.0, "kid_person": 0.05,
                                      "fd_frame": 40.0, "kid_frame": 0.2}}}}
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_compare_pairs_detectors_by_seed_and_reports_f1_from_frame_counts(tmp_path: Path) -> None:
    # base: seed 0 tp3 fp1 fn1 -> F1 0.75; seed 1 tp1 fp1 fn2 -> 0.4
    base = make_run(tmp_path, "base", {0: [(1, 1, 1), (2, 0, 0)], 1: [(0, 0, 2), (1, 1, 0)]})
    # new: seed 0 tp4 -> 1.0; seed 1 tp2 fn1 -> 0.8
    new = make_run(tmp_path, "new", {0: [(2, 0, 0), (2, 0, 0)], 1: [(1, 0, 1), (1, 0, 0)]})
    result = compare({"base": base, "new": new}, baseline="base")
    rows = {row["label"]: row for row in result["rows"]}
    assert rows["base"]["test"]["f1_runs"] == [0.75, 0.4]
    assert rows["new"]["test"]["f1_mean"] == pytest.approx(0.9)
    assert rows["new"]["gap_to_r_test"]["fd_person"] == 80.0
    assert rows["base"]["oracle_f1_mean"] == pytest.approx(0.55)
    (pair,) = result["paired"]
    assert (pair["a"], pair["b"], pair["pairs"]) == ("new", "base", 2)
    assert pair["f1_diff_mean"] == pytest.approx(0.325)
    assert pair["share_of_pairs_a_better"] == 1.0
    # new is at least as good as base on every resample of the frames, so the interval is >= 0
    low, high = pair["f1_diff_ci95"]
    assert 0.0 <= low < high <= 1.0
    markdown = render_markdown(result)
    assert "| new - base | 2 | +0.325 |" in markdown
    assert "| base | 10 | 0.575 ± 0.247 |" in markdown and "| 0.550 | 100.000 |" in markdown


def test_compare_cli_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_run(tmp_path, "base", {0: [(1, 0, 1), (1, 0, 1)]})
    new = make_run(tmp_path, "new", {0: [(2, 0, 0), (1, 0, 1)]})
    assert main([f"base={base}", f"new={new}", "--out", str(tmp_path / "docs")]) == 0
    written = json.loads((tmp_path / "docs" / "compare.json").read_text())
    assert written["baseline"] == "base" and written["paired"][0]["f1_diff_mean"] > 0
    assert (tmp_path / "docs" / "compare.md").read_text() in capsys.readouterr().out


def test_compare_refuses_runs_tested_on_other_frames(tmp_path: Path) -> None:
    base = make_run(tmp_path, "base", {0: [(1, 0, 0), (1, 0, 0)]})
    other = make_run(tmp_path, "other", {0: [(1, 0, 0), (1, 0, 0)]}, test_frames=["a.jpg", "c.jpg"])
    with pytest.raises(CliError, match="same R_test"):
        compare({"base": base, "other": other}, baseline="base")


def test_compare_names_missing_arm_and_missing_counts(tmp_path: Path) -> None:
    base = make_run(tmp_path, "base", {0: [(1, 0, 0), (1, 0, 0)]})
    with pytest.raises(CliError, match="no arm 'R_train'.*'S'"):
        compare({"base": base}, baseline="base", arm="R_train")
    (base / "detectors" / "S_rNone_d0" / "test.json").unlink()
    with pytest.raises(CliError, match="test.json is missing"):
        compare({"base": base}, baseline="base")
    with pytest.raises(CliError, match="baseline 'x'"):
        compare({"base": base}, baseline="x")


def _gap_stage(run: Path, s_level: float, count: int = 24, real_seed: int = 7) -> None:
    """A finished gap stage as the pipeline leaves it: S and R_test crops with their records."""
    import numpy as np
    from PIL import Image

    stage = run / "gap" / "gap-0123456789ab"
    for name, level, frames, seed in (("S", s_level, ["000000.png"], 1), ("R_test", 0.5, FRAMES + ["other.jpg"], real_seed)):
        folder = stage / "crops" / name
        (folder / "crops").mkdir(parents=True)
        rng = np.random.default_rng(seed)
        items = []
        for index in range(count if name == "S" else 12):
            coarse = rng.normal(level, 0.1, (8, 8, 3))
            pixels = np.clip(np.kron(coarse, np.ones((8, 8, 1))) + rng.normal(0, 0.03, (64, 64, 3)), 0, 1)
            crop = f"crops/c{index}.png"
            Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / crop)
            items.append({"crop_file": crop, "image_file": frames[index % len(frames)], "person_id": index % 4})
        (folder / "records.json").write_text(json.dumps({"items": items}))
    (stage / "gap.json").write_text(json.dumps({"reference": "R_test"}))


def test_gap_intervals_bootstrap_fd_against_the_same_real_crops(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {0: [(1, 1, 1), (1, 0, 1)]}
    base, near = make_run(tmp_path, "base", counts), make_run(tmp_path, "near", counts)
    _gap_stage(base, s_level=0.9)
    _gap_stage(near, s_level=0.55)  # drawn like the real crops: closer
    comparison = compare({"base": base, "near": near}, "base", gap_resamples=60)
    intervals = comparison["gap_intervals"]
    # Only R_test's frames count on the real side: 8 of the 12 crops are from a.jpg and b.jpg,
    # of 4 people, resampled person by person.
    assert intervals["reference_crops"] == 8 and intervals["resamples"] == 60
    assert intervals["reference_groups"] == 4
    entry = intervals["sets"]["near"]
    assert entry["crops"] == 24 and entry["fd"] < intervals["sets"]["base"]["fd"]
    assert entry["fd_diff_ci95"][1] < 0 and entry["share_closer_than_baseline"] == 1.0
    assert entry["fd_diff"] == pytest.approx(entry["fd"] - intervals["sets"]["base"]["fd"])
    assert "fd_diff" not in intervals["sets"]["base"]
    assert "| near | 24 |" in render_markdown(comparison)
    # The features are cached beside the crops and reused: no network runs the second time.
    assert (base / "gap" / "gap-0123456789ab" / "compare_features.npz").is_file()
    from refiner_daemon.common import features

    def no_features(*args: object, **kwargs: object) -> None:
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(features, "pooled_features", no_features)
    assert compare({"base": base, "near": near}, "base", gap_resamples=60)["gap_intervals"] == intervals


def test_gap_intervals_refuse_runs_with_other_real_crops(tmp_path: Path) -> None:
    counts = {0: [(1, 1, 1), (1, 0, 1)]}
    base, other = make_run(tmp_path, "base", counts), make_run(tmp_path, "other", counts)
    _gap_stage(base, s_level=0.9)
    _gap_stage(other, s_level=0.9, real_seed=8)
    with pytest.raises(CliError, match="different R_test crops"):
        compare({"base": base, "other": other}, "base", gap_resamples=10)
