"""Distances between two feature sets: the Fréchet distance and the Kernel Inception Distance.

Numpy only (features are (N, D) arrays), so the maths is testable on hand-made cases without a
network. Used by the gap report, the experiment pipeline and refiner checkpoint selection.
"""

from __future__ import annotations

import numpy as np


def _symmetric_sqrt_trace(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
    """trace(sqrtm(A @ B)) for symmetric positive semi-definite A and B.

    A @ B is similar to sqrt(A) B sqrt(A), which is symmetric PSD, so its square root's trace is
    the sum of the square roots of that matrix's eigenvalues: no general (complex) sqrtm needed.
    """
    eigenvalues_a, eigenvectors_a = np.linalg.eigh(cov_a)
    sqrt_a = (eigenvectors_a * np.sqrt(np.clip(eigenvalues_a, 0.0, None))) @ eigenvectors_a.T
    inner = sqrt_a @ cov_b @ sqrt_a
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance_gaussians(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Fréchet (2-Wasserstein) distance squared between two Gaussians, the formula behind FID:
    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))``."""
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"shape mismatch: means {mean_a.shape} vs {mean_b.shape}, "
                         f"covariances {cov_a.shape} vs {cov_b.shape}")
    distance = float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                     - 2.0 * _symmetric_sqrt_trace(cov_a, cov_b))
    return max(distance, 0.0)  # rounding can leave -1e-12 for identical sets


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (rows are samples).

    With fewer samples than feature dimensions on either side (28 real crops against 1280-d
    features, say) the same number comes from the samples directly, which is what makes
    bootstrapping it affordable: with centred samples ``A`` (n_a x d) and ``B``,
    ``C_a = A^T A / (n_a - 1)`` and ``tr((C_a C_b)^(1/2))`` is the sum of the singular values
    (the nuclear norm) of ``A B^T / sqrt((n_a - 1)(n_b - 1))``, an n_a x n_b matrix.
    """
    a, b = _check_features(features_a, features_b, minimum=2)
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    mean_a, mean_b = a.mean(0), b.mean(0)
    centred_a, centred_b = a - mean_a, b - mean_b
    scale_a, scale_b = len(a) - 1, len(b) - 1
    cross = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum() / np.sqrt(scale_a * scale_b)
    distance = float(((mean_a - mean_b) ** 2).sum() + (centred_a**2).sum() / scale_a
                     + (centred_b**2).sum() / scale_b - 2.0 * cross)
    return max(distance, 0.0)


def _check_features(features_a: np.ndarray, features_b: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be 2-D with equal width, got {a.shape} and {b.shape}")
    if len(a) < minimum or len(b) < minimum:
        raise ValueError(f"need at least {minimum} samples per set, got {len(a)} and {len(b)}; "
                         "add images to the smaller dataset")
    return a, b


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """``(gamma <x, y> + coef0) ** degree``; gamma defaults to 1 / feature width (as in KID)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * x @ y.T + coef0) ** degree


def mmd_squared_unbiased(features_a: np.ndarray, features_b: np.ndarray, degree: int = 3,
                         gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy with a polynomial kernel.

    The within-set sums leave out the diagonal (k(x, x)), which is what makes the estimate
    unbiased: its expectation is the population MMD^2 for any sample size, and it can be negative.
    """
    a, b = _check_features(features_a, features_b, minimum=2)
    m, n = len(a), len(b)
    k_aa = polynomial_kernel(a, a, degree, gamma, coef0)
    k_bb = polynomial_kernel(b, b, degree, gamma, coef0)
    k_ab = polynomial_kernel(a, b, degree, gamma, coef0)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


KID_MAX_SUBSET = 1000


def kid_subset_size(n_a: int, n_b: int, cap: int = KID_MAX_SUBSET) -> int:
    """Members per KID subset: half the smaller set, at most ``cap`` (1000, as in the KID
    paper), at least 2 (the unbiased estimate needs two per set).

    Half, not all: subsets as large as the set are just permutations of it, every subset gives
    the same MMD^2 and the reported spread is always 0. With half-size subsets the spread says
    how much the number moves with the sample, and a set compared with itself splits into two
    disjoint halves (see :func:`kernel_inception_distance`). Sets of 2 or 3 still get 2-member
    subsets (the set itself for a 2-member set, so no spread there)."""
    return max(2, min(cap, min(n_a, n_b) // 2))


def kernel_inception_distance(
    features_a: np.ndarray,
    features_b: np.ndarray,
    subsets: int = 10,
    subset_size: int | None = None,
    seed: int = 0,
    **kernel: float,
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over ``subsets`` random subsets
    (drawn without replacement inside a subset, independently for the two sets).

    ``subset_size`` defaults to :func:`kid_subset_size` (half the smaller set, at most 1000,
    at least 2); a given size is capped at the smaller set's size. A set compared with itself
    (equal arrays) is split: each draw takes two *disjoint* subsets of it, since a sample shared
    by both sides puts its own k(x, x) into the cross term and drags the estimate below 0; so
    the reference against itself reads about 0, as two samples of one distribution should."""
    a, b = _check_features(features_a, features_b, minimum=2)
    size = kid_subset_size(len(a), len(b)) if subset_size is None else min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID subsets need at least 2 members, got subset_size={subset_size}")
    same = a.shape == b.shape and np.array_equal(a, b)
    if same and len(a) >= 4:
        size = min(size, len(a) // 2)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        if same and len(a) >= 4:
            order = rng.permutation(len(a))
            subset_a, subset_b = a[order[:size]], a[order[size:2 * size]]
        else:
            subset_a = a[rng.choice(len(a), size, replace=False)]
            subset_b = b[rng.choice(len(b), size, replace=False)]
        values.append(mmd_squared_unbiased(subset_a, subset_b, **kernel))  # type: ignore[arg-type]
    return float(np.mean(values)), float(np.std(values))
