"""Statistics of the detector experiment: means over seeds, intervals over test frames, and
paired differences between training sets.

A *run* is one detector trained with one detector seed (and, for a refined set, on the output
of one refiner seed) and tested on R_test; :class:`RunCounts` keeps its true positives, false
positives and false negatives per test frame. Two sources of variation are reported apart:

- over seeds: the sample standard deviation (``ddof = 1``) of the runs' F1 scores;
- over test frames: a 95 % percentile bootstrap interval, resampling the test frames with
  replacement and recomputing every run's F1 from the resampled frames' summed counts. The
  same resamples serve every arm, so a paired difference between two arms is bootstrapped on
  the same frames for both.

With a handful of test frames the frame bootstrap has few distinct resamples and its interval
is coarse; it is still the honest statement of how much the number could move on other frames
of the same room. Seeds and frames are reported as they are; nothing is averaged away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refiner_daemon.common.distances import frechet_distance

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class RunCounts:
    """One tested detector: its seeds and per-test-frame ``(tp, fp, fn)`` counts."""

    detector_seed: int
    refiner_seed: int | None
    frames: tuple[str, ...]
    counts: np.ndarray  # (frames, 3): tp, fp, fn

    @classmethod
    def from_per_image(cls, detector_seed: int, refiner_seed: int | None,
                       per_image: Sequence[dict[str, Any]]) -> RunCounts:
        """From ``evaluate_checkpoint``'s ``per_image`` list (``image``, ``true_positives``,
        ``false_positives``, ``false_negatives``)."""
        frames = tuple(str(item["image"]) for item in per_image)
        counts = np.array([[item["true_positives"], item["false_positives"], item["false_negatives"]]
                           for item in per_image], dtype=np.int64)
        return cls(detector_seed, refiner_seed, frames, counts.reshape(-1, 3))

    def key(self) -> tuple[int, int | None]:
        return self.detector_seed, self.refiner_seed


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """F1 over the last-but-one axis' summed ``(tp, fp, fn)``: ``counts[..., frames, 3]`` ->
    ``[...]``. Nothing predicted on nothing to find scores 1, as in ``detector.metrics``."""
    tp, fp, fn = (counts[..., k].sum(axis=-1).astype(float) for k in range(3))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.ones_like(tp), where=denominator > 0)


def precision_recall(counts: np.ndarray) -> tuple[float, float]:
    """Pooled precision and recall of ``(frames, 3)`` counts (``detector.metrics`` conventions:
    1 when there is nothing to divide)."""
    tp, fp, fn = (float(counts[:, k].sum()) for k in range(3))
    return (tp / (tp + fp) if tp + fp else 1.0), (tp / (tp + fn) if tp + fn else 1.0)


def frame_resamples(frames: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(resamples, frames)`` indices of test frames drawn with replacement (seeded)."""
    if frames < 1:
        raise ValueError("the bootstrap needs at least one test frame")
    return np.random.default_rng(seed).integers(0, frames, size=(resamples, frames))


def _check_same_frames(runs: Sequence[RunCounts]) -> tuple[str, ...]:
    if not runs:
        raise ValueError("an arm needs at least one run")
    frames = runs[0].frames
    for run in runs[1:]:
        if run.frames != frames:
            raise ValueError(f"runs were tested on different frames: {frames} vs {run.frames}; "
                             "every run of the experiment must be tested on the same R_test")
    return frames


def _interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def summarise_arm(runs: Sequence[RunCounts], resamples: np.ndarray | None = None) -> dict[str, Any]:
    """Mean F1 over runs, its sample standard deviation over seeds (``ddof = 1``; ``nan`` for a
    single run), a 95 % bootstrap interval of the mean over test frames, pooled precision and
    recall means, and how many ground-truth heads the test frames hold."""
    frames = _check_same_frames(runs)
    stacked = np.stack([run.counts for run in runs])  # (runs, frames, 3)
    f1 = f1_from_counts(stacked)
    if resamples is None:
        resamples = frame_resamples(len(frames))
    boot = f1_from_counts(stacked[:, resamples, :]).mean(axis=0)  # (resamples,)
    precisions, recalls = zip(*(precision_recall(run.counts) for run in runs))
    return {
        "runs": len(runs),
        "f1_mean": float(f1.mean()),
        "f1_std": float(f1.std(ddof=1)) if len(runs) > 1 else float("nan"),
        "f1_ci95": _interval(boot),
        "f1_runs": [round(float(v), 4) for v in f1],
        "precision_mean": float(np.mean(precisions)),
        "recall_mean": float(np.mean(recalls)),
        "heads": int(stacked[0, :, 0].sum() + stacked[0, :, 2].sum()),
        "test_frames": len(frames),
    }


def pair_runs(a: Sequence[RunCounts], b: Sequence[RunCounts]) -> list[tuple[RunCounts, RunCounts]]:
    """Match each run of ``a`` with the run of ``b`` that shares its seeds: both seeds where both
    arms have refiner seeds, else the detector seed (``R_train`` has no refiner)."""
    def key(run: RunCounts, with_refiner: bool) -> tuple[int, int | None]:
        return (run.detector_seed, run.refiner_seed if with_refiner else None)

    with_refiner = all(r.refiner_seed is not None for r in (*a, *b))
    by_key = {key(run, with_refiner): run for run in b}
    pairs = [(run, by_key[key(run, with_refiner)]) for run in a if key(run, with_refiner) in by_key]
    if not pairs:
        raise ValueError("the two arms share no seeds; a paired difference needs matching runs")
    return pairs


def paired_difference(a: Sequence[RunCounts], b: Sequence[RunCounts],
                      resamples: np.ndarray | None = None) -> dict[str, Any]:
    """F1(a) - F1(b) over runs paired by seed and tested on the same frames: the mean paired
    difference and its 95 % bootstrap interval over test frames (the same resampled frames
    for both arms)."""
    pairs = pair_runs(a, b)
    frames = _check_same_frames([run for pair in pairs for run in pair])
    left = np.stack([p[0].counts for p in pairs])
    right = np.stack([p[1].counts for p in pairs])
    diffs = f1_from_counts(left) - f1_from_counts(right)
    if resamples is None:
        resamples = frame_resamples(len(frames))
    boot = (f1_from_counts(left[:, resamples, :]) - f1_from_counts(right[:, resamples, :])).mean(axis=0)
    return {
        "pairs": len(pairs),
        "f1_diff_mean": float(diffs.mean()),
        "f1_diff_std": float(diffs.std(ddof=1)) if len(pairs) > 1 else float("nan"),
        "f1_diff_ci95": _interval(boot),
        "share_of_pairs_a_better": float((diffs > 0).mean()),
    }


# ------------------------------------------------------------------------------ gap intervals

GAP_RESAMPLES = 500


def _basic_interval(observed: float, draws: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    """The basic (reverse percentile) bootstrap interval: ``2 x observed - quantiles``. FD from
    samples reads higher than the distance between the populations, and higher still on a
    resampled set (duplicates shrink its spread), so the draws sit above the observed value;
    reflecting them around it corrects that bias to first order. The interval is for the
    populations' distance and may lie below the observed FD; for a difference of two FDs the
    biases mostly cancel."""
    low, high = _interval(draws, confidence)
    return [float(2 * observed - high), float(2 * observed - low)]


def fd_differences(features: dict[str, np.ndarray], reference: np.ndarray, baseline: str,
                   resamples: int = GAP_RESAMPLES, seed: int = 0,
                   reference_groups: np.ndarray | None = None) -> dict[str, Any]:
    """How far each set's FD to ``reference`` could move, and its difference to ``baseline``'s.

    Every bootstrap draw resamples the reference once, shared by all sets (they are measured
    against the same real people, so that part of the noise is paired), and each set's rows
    independently. With ``reference_groups`` (one label per reference row, e.g. the real
    person), the draw takes whole groups: crops of one person in neighbouring frames are
    near copies, and resampling them one by one would understate the noise. Per set: the FD on
    all rows and its basic bootstrap interval; against the baseline, the observed difference,
    its basic interval and the share of draws in which the set is closer than the baseline.
    """
    if baseline not in features:
        raise ValueError(f"baseline {baseline!r} is not one of the sets {sorted(features)}")
    if resamples < 2:
        raise ValueError(f"resamples must be at least 2 for an interval, got {resamples}")
    groups = np.arange(len(reference)) if reference_groups is None else np.asarray(reference_groups)
    if len(groups) != len(reference):
        raise ValueError(f"reference_groups has {len(groups)} labels for {len(reference)} reference rows")
    members = [np.flatnonzero(groups == label) for label in np.unique(groups)]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in features}
    for _ in range(resamples):
        chosen = rng.integers(0, len(members), len(members))
        real = reference[np.concatenate([members[k] for k in chosen])]
        for name, rows in features.items():
            draws[name].append(frechet_distance(rows[rng.integers(0, len(rows), len(rows))], real))
    values = {name: np.asarray(v) for name, v in draws.items()}
    observed = {name: frechet_distance(rows, reference) for name, rows in features.items()}
    result: dict[str, Any] = {"resamples": resamples, "reference_crops": len(reference),
                              "reference_groups": len(members), "interval": "basic bootstrap, 95 %",
                              "sets": {}}
    for name, rows in features.items():
        entry: dict[str, Any] = {"crops": len(rows), "fd": observed[name],
                                 "fd_ci95": _basic_interval(observed[name], values[name])}
        if name != baseline:
            difference = values[name] - values[baseline]
            observed_difference = observed[name] - observed[baseline]
            entry.update({"fd_diff": observed_difference,
                          "fd_diff_ci95": _basic_interval(observed_difference, difference),
                          "share_closer_than_baseline": float((difference < 0).mean())})
        result["sets"][name] = entry
    return result
