"""Detection and distribution metrics on hand-made cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from refiner_daemon.common.distances import (
    frechet_distance,
    frechet_distance_gaussians,
    kernel_inception_distance,
    kid_subset_size,
    mmd_squared_unbiased,
)
from refiner_daemon.detector.metrics import (
    DetectionCounts,
    ImageDetections,
    box_iou,
    choose_confidence_threshold,
    evaluate_at_threshold,
    match_detections,
    xywh_to_xyxy,
)


def test_iou_hand_cases() -> None:
    a = np.array([[0, 0, 2, 2]])
    assert box_iou(a, a)[0, 0] == pytest.approx(1.0)
    assert box_iou(a, [[2, 2, 4, 4]])[0, 0] == 0.0  # touching corners
    assert box_iou(a, [[1, 0, 3, 2]])[0, 0] == pytest.approx(2 / 6)  # half overlap: 2 / (4 + 4 - 2)
    assert box_iou(a, [[0.5, 0.5, 1.5, 1.5]])[0, 0] == pytest.approx(1 / 4)  # contained
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 1)
    np.testing.assert_allclose(xywh_to_xyxy([[1, 2, 3, 4]]), [[1, 2, 4, 6]])


def test_matching_counts_duplicates_misses_and_strict_threshold() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]])
    predictions = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [80, 80, 90, 90]])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    counts = match_detections(predictions, scores, gt, 0.5)
    # The duplicate of the first head and the box in empty space are false positives; the third
    # head is missed.
    assert counts == DetectionCounts(2, 2, 1)
    assert counts.precision == pytest.approx(0.5)
    assert counts.recall == pytest.approx(2 / 3)
    assert counts.f1 == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    # IoU exactly 0.5 is not "> 0.5": [0,0,10,10] vs [0,0,10,20] has IoU 100/200.
    assert match_detections([[0, 0, 10, 20]], [1.0], [[0, 0, 10, 10]], 0.5).true_positives == 0
    # Greedy by score: the higher-scoring of two candidates takes the ground truth.
    assert match_detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.1, 0.9], [[0, 0, 10, 10]]) == DetectionCounts(1, 1, 0)


def test_empty_cases_have_defined_scores() -> None:
    none = DetectionCounts(0, 0, 0)
    assert (none.precision, none.recall, none.f1) == (1.0, 1.0, 1.0)
    missed = match_detections(np.zeros((0, 4)), np.zeros(0), [[0, 0, 5, 5]])
    assert (missed.precision, missed.recall, missed.f1) == (1.0, 0.0, 0.0)


def test_threshold_chosen_on_validation_drops_low_scoring_false_positives() -> None:
    images = [
        ImageDetections(np.array([[0, 0, 10, 10], [40, 40, 50, 50]]), np.array([0.9, 0.3]),
                        np.array([[0, 0, 10, 10]])),
        ImageDetections(np.array([[5, 5, 15, 15]]), np.array([0.6]), np.array([[5, 5, 15, 15]])),
    ]
    threshold, counts = choose_confidence_threshold(images)
    assert 0.3 < threshold <= 0.6
    assert counts == DetectionCounts(2, 0, 0)
    assert evaluate_at_threshold(images, 0.0) == DetectionCounts(2, 1, 0)
    assert evaluate_at_threshold(images, 0.95) == DetectionCounts(0, 0, 2)


def test_frechet_distance_is_zero_for_identical_sets() -> None:
    features = np.random.default_rng(0).normal(size=(50, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_form_for_gaussians() -> None:
    # 1-D: N(0, 1) vs N(3, 4): 3^2 + 1 + 4 - 2 * sqrt(1 * 4) = 10.
    assert frechet_distance_gaussians(np.zeros(1), np.eye(1), np.full(1, 3.0), 4 * np.eye(1)) == pytest.approx(10.0)
    # Commuting covariances: sum over eigen-directions of (sqrt(a) - sqrt(b))^2, rotation-invariant.
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cov_a = rotation @ np.diag([1.0, 9.0]) @ rotation.T
    cov_b = rotation @ np.diag([4.0, 1.0]) @ rotation.T
    mean_b = np.array([1.0, 2.0])
    expected = 5.0 + (1 - 2) ** 2 + (3 - 1) ** 2
    assert frechet_distance_gaussians(np.zeros(2), cov_a, mean_b, cov_b) == pytest.approx(expected)
    # From samples, the estimate converges to the closed form.
    rng = np.random.default_rng(1)
    a = rng.multivariate_normal(np.zeros(2), cov_a, size=40000)
    b = rng.multivariate_normal(mean_b, cov_b, size=40000)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("sizes", [(28, 633), (633, 28), (5, 5), (40, 60)])
def test_frechet_distance_from_few_samples_equals_the_covariance_formula(sizes: tuple[int, int]) -> None:
    # Fewer samples than dimensions (as 28 real crops in 1280-d features): the sample-space
    # formula must give the covariance formula's number.
    rng = np.random.default_rng(3)
    dims = 64
    a = rng.normal(size=(sizes[0], dims)) @ rng.normal(size=(dims, dims)) * 0.3
    b = rng.normal(1.0, 2.0, size=(sizes[1], dims))
    expected = frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    # (The eigen route clips rounding-negative eigenvalues of rank-deficient covariances: 1e-7.)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_unbiased_on_a_known_case() -> None:
    # With the linear kernel k(x, y) = <x, y>, the population MMD^2 is |mu_a - mu_b|^2 exactly.
    # Average the estimator over many tiny samples (n = 4): the unbiased one hits it, while the
    # biased one (keeping k(x, x)) is off by tr(cov_a)/n + tr(cov_b)/n = 1.
    rng = np.random.default_rng(2)
    shift = np.array([1.0, -0.5])
    linear = {"degree": 1, "gamma": 1.0, "coef0": 0.0}
    unbiased, biased = [], []
    for _ in range(4000):
        a = rng.normal(size=(4, 2))
        b = rng.normal(size=(4, 2)) + shift
        unbiased.append(mmd_squared_unbiased(a, b, **linear))
        biased.append(float(((a.mean(0) - b.mean(0)) ** 2).sum()))
    assert np.mean(unbiased) == pytest.approx(1.25, abs=0.06)
    assert np.mean(biased) == pytest.approx(2.25, abs=0.1)


def test_kid_of_one_distribution_is_near_zero_and_grows_with_shift() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(60, 16)), rng.normal(size=(60, 16))
    same, _ = kernel_inception_distance(a, b, subsets=20, subset_size=40)
    shifted, _ = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=40)
    assert abs(same) < 0.02
    assert shifted > 10 * abs(same) + 0.05


def test_kid_subsets_are_smaller_than_the_set_so_the_spread_is_real() -> None:
    # Subsets as large as the set are permutations of it: every subset gives the same MMD^2
    # and the std is 0. Half-size subsets give a spread that says how noisy the number is.
    assert kid_subset_size(60, 80) == 30
    assert kid_subset_size(5000, 4000) == 1000
    assert kid_subset_size(3, 100) == 2 and kid_subset_size(2, 2) == 2
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(60, 16)), rng.normal(size=(70, 16)) + 0.5
    mean, std = kernel_inception_distance(a, b, subsets=10)
    assert 0.0 < std < mean
    # A set against itself: two disjoint halves per draw, so about 0 (a shared sample's own
    # k(x, x) in the cross term would pull it far below 0), with a spread around it.
    own, own_std = kernel_inception_distance(a, a, subsets=20, seed=1)
    assert abs(own) < 0.1 * mean and own_std > 0.0
    with pytest.raises(ValueError, match="at least 2 members"):
        kernel_inception_distance(a, b, subset_size=1)


def test_feature_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="equal width"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
