"""The experiment's statistics: sample standard deviation over seeds, bootstrap intervals over
test frames, paired differences matched by seed."""

from __future__ import annotations

import numpy as np
import pytest

from refiner_daemon.evaluation.statistics import (
    RunCounts,
    f1_from_counts,
    frame_resamples,
    paired_difference,
    summarise_arm,
)

FRAMES = ("a.jpg", "b.jpg", "c.jpg", "d.jpg")


def _run(detector_seed: int, counts: list[list[int]], refiner_seed: int | None = None) -> RunCounts:
    return RunCounts(detector_seed, refiner_seed, FRAMES, np.array(counts))


def test_f1_from_summed_counts() -> None:
    counts = np.array([[3, 1, 2], [4, 0, 0]])  # tp 7, fp 1, fn 2
    assert f1_from_counts(counts) == pytest.approx(14 / 17)
    assert f1_from_counts(np.zeros((2, 3))) == 1.0  # nothing to find, nothing found


def test_from_per_image_reads_evaluate_checkpoint_output() -> None:
    run = RunCounts.from_per_image(3, 1, [
        {"image": "x.jpg", "true_positives": 2, "false_positives": 1, "false_negatives": 0},
        {"image": "y.jpg", "true_positives": 0, "false_positives": 0, "false_negatives": 5}])
    assert run.frames == ("x.jpg", "y.jpg") and run.key() == (3, 1)
    np.testing.assert_array_equal(run.counts, [[2, 1, 0], [0, 0, 5]])


def test_arm_summary_uses_sample_std_and_frame_bootstrap() -> None:
    runs = [_run(0, [[5, 0, 0]] * 4), _run(1, [[3, 2, 2]] * 4)]
    summary = summarise_arm(runs)
    f1 = np.array([1.0, 6 / 10])
    assert summary["f1_mean"] == pytest.approx(f1.mean())
    assert summary["f1_std"] == pytest.approx(f1.std(ddof=1))
    # Identical frames: every resample gives the same mean, so the interval is a point.
    assert summary["f1_ci95"] == pytest.approx([f1.mean(), f1.mean()])
    assert summary["heads"] == 4 * 5 and summary["test_frames"] == 4


def test_bootstrap_interval_widens_with_frame_to_frame_spread() -> None:
    steady = summarise_arm([_run(0, [[3, 1, 1]] * 4)])
    spread = summarise_arm([_run(0, [[5, 0, 0], [0, 5, 5], [5, 0, 0], [0, 5, 5]])])
    assert steady["f1_ci95"][1] - steady["f1_ci95"][0] == pytest.approx(0)
    low, high = spread["f1_ci95"]
    assert low < spread["f1_mean"] < high and high - low > 0.3
    assert np.isnan(steady["f1_std"])  # one run: no spread over seeds to report


def test_paired_difference_matches_seeds_and_shares_resamples() -> None:
    better = [_run(s, [[4, 0, 1], [2, 1, 3], [5, 0, 0], [1, 2, 4]], refiner_seed=r)
              for s in (0, 1) for r in (0, 1)]
    worse = [_run(s, [[3, 1, 2], [1, 2, 4], [4, 1, 1], [0, 3, 5]]) for s in (0, 1, 7)]
    result = paired_difference(better, worse, frame_resamples(4, seed=1))
    assert result["pairs"] == 4  # each refined run meets the R_train run of its detector seed
    expected = float(f1_from_counts(better[0].counts) - f1_from_counts(worse[0].counts))
    assert result["f1_diff_mean"] == pytest.approx(expected)
    low, high = result["f1_diff_ci95"]
    assert 0 < low <= result["f1_diff_mean"] <= high  # better on every frame: interval above 0
    assert result["share_of_pairs_a_better"] == 1.0


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="different frames"):
        summarise_arm([_run(0, [[1, 0, 0]] * 4),
                       RunCounts(1, None, ("x",) * 4, np.ones((4, 3), int))])
    with pytest.raises(ValueError, match="share no seeds"):
        paired_difference([_run(0, [[1, 0, 0]] * 4)], [_run(5, [[1, 0, 0]] * 4)])


def test_fd_differences_separate_a_closer_set_and_not_a_twin() -> None:
    from refiner_daemon.evaluation.statistics import fd_differences

    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 1.0, size=(30, 16))
    far = rng.normal(1.5, 1.0, size=(200, 16))
    twin = rng.normal(1.5, 1.0, size=(200, 16))  # the baseline's distribution, other draws
    near = rng.normal(0.3, 1.0, size=(200, 16))
    result = fd_differences({"far": far, "twin": twin, "near": near}, reference, "far", resamples=200, seed=1)
    sets = result["sets"]
    assert result["reference_crops"] == 30 and result["reference_groups"] == 30 and sets["near"]["crops"] == 200
    assert sets["near"]["fd_diff_ci95"][1] < 0 and sets["near"]["share_closer_than_baseline"] > 0.99
    low, high = sets["twin"]["fd_diff_ci95"]
    assert low < 0 < high
    # A single FD's basic interval is for the populations' distance: FD from samples reads
    # high, so the interval lies below the observed value, never above it.
    for entry in sets.values():
        assert entry["fd_ci95"][0] < entry["fd"]
    assert sets["near"]["fd_diff"] == pytest.approx(sets["near"]["fd"] - sets["far"]["fd"])
    assert "fd_diff" not in sets["far"]
    with pytest.raises(ValueError, match="baseline 'x'"):
        fd_differences({"far": far}, reference, "x", resamples=2)
    with pytest.raises(ValueError, match="at least 2"):
        fd_differences({"far": far}, reference, "far", resamples=0)


def test_fd_differences_resample_reference_groups_whole() -> None:
    """Ten near-copies of each of three real people: resampled one by one they look like 30
    independent samples and the interval is too narrow; resampled by person it widens."""
    from refiner_daemon.evaluation.statistics import fd_differences

    rng = np.random.default_rng(4)
    people = rng.normal(0.0, 1.0, size=(3, 8))
    reference = np.repeat(people, 10, axis=0) + rng.normal(0, 0.05, size=(30, 8))
    groups = np.repeat(np.arange(3), 10)
    sets = {"a": rng.normal(0.5, 1.0, size=(150, 8)), "b": rng.normal(0.0, 1.0, size=(150, 8))}
    by_crop = fd_differences(sets, reference, "a", resamples=300, seed=2)
    by_person = fd_differences(sets, reference, "a", resamples=300, seed=2, reference_groups=groups)
    assert by_person["reference_groups"] == 3

    def width(result: dict) -> float:
        low, high = result["sets"]["b"]["fd_ci95"]
        return high - low

    assert width(by_person) > 1.5 * width(by_crop)
    with pytest.raises(ValueError, match="3 labels for 30"):
        fd_differences(sets, reference, "a", resamples=2, reference_groups=np.arange(3))
