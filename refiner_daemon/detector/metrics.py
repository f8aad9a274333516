"""Numbers that judge a detector: IoU, detection matching, precision / recall / F1 and the
confidence threshold chosen on validation. (Distances between feature sets, Fréchet and KID,
live in :mod:`refiner_daemon.common.distances`.)

Boxes are numpy arrays of shape (N, 4) in corner form ``[x0, y0, x1, y1]`` (pixels). Everything
here is numpy only, so the maths is testable on hand-made cases without a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, w, h]`` (top-left corner plus size) to ``[x0, y0, x1, y1]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two sets of ``xyxy`` boxes: shape (len(a), len(b))."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0.0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - overlap
    return np.where(union > 0, overlap / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class DetectionCounts:
    """True positives, false positives and missed ground truths, with the scores they imply."""

    true_positives: int
    false_positives: int
    false_negatives: int

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
        )

    @property
    def precision(self) -> float:
        predicted = self.true_positives + self.false_positives
        # No prediction at all is not a wrong prediction: precision 1 by convention, and the
        # missing detections are charged to recall.
        return self.true_positives / predicted if predicted else 1.0

    @property
    def recall(self) -> float:
        actual = self.true_positives + self.false_negatives
        return self.true_positives / actual if actual else 1.0

    @property
    def f1(self) -> float:
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 2 * self.true_positives / denominator if denominator else 1.0

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall, "f1": self.f1}


def match_detections(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    gt_boxes: np.ndarray,
    iou_threshold: float = 0.5,
) -> DetectionCounts:
    """Greedy matching in order of falling score: a prediction is a true positive when its IoU
    with a not-yet-matched ground truth exceeds ``iou_threshold`` (strictly, as in the thesis's
    "IoU > tau"); each ground truth is matched at most once."""
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(pred_scores, dtype=np.float64).reshape(-1), kind="stable")
    ious = box_iou(pred_boxes[order], gt_boxes)
    matched = np.zeros(len(gt_boxes), dtype=bool)
    true_positives = 0
    for row in ious:
        candidates = np.where(matched, -1.0, row)
        if candidates.size and candidates.max() > iou_threshold:
            matched[int(candidates.argmax())] = True
            true_positives += 1
    return DetectionCounts(true_positives, len(pred_boxes) - true_positives, len(gt_boxes) - true_positives)


@dataclass(frozen=True)
class ImageDetections:
    """One image's predictions (boxes ``xyxy`` and scores) and its ground-truth boxes."""

    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    gt_boxes: np.ndarray


def evaluate_at_threshold(
    images: Sequence[ImageDetections], confidence_threshold: float, iou_threshold: float = 0.5
) -> DetectionCounts:
    """Counts over a whole set, keeping only predictions scoring at least the threshold."""
    total = DetectionCounts(0, 0, 0)
    for image in images:
        keep = np.asarray(image.pred_scores).reshape(-1) >= confidence_threshold
        total = total + match_detections(
            np.asarray(image.pred_boxes).reshape(-1, 4)[keep],
            np.asarray(image.pred_scores).reshape(-1)[keep],
            image.gt_boxes,
            iou_threshold,
        )
    return total


def choose_confidence_threshold(
    images: Sequence[ImageDetections],
    iou_threshold: float = 0.5,
    candidates: Sequence[float] | None = None,
) -> tuple[float, DetectionCounts]:
    """The confidence threshold with the best F1 on ``images`` (a validation set) and its counts.

    Candidates default to every distinct predicted score (the only places F1 can change) thinned
    to at most 200 quantiles; ties go to the higher threshold, which gives the leaner detector.
    """
    if candidates is None:
        scores = np.unique(np.concatenate(
            [np.asarray(i.pred_scores, dtype=np.float64).reshape(-1) for i in images] or [np.zeros(0)]
        ))
        if scores.size > 200:
            scores = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, 200)))
        candidates = scores.tolist() or [0.5]
    best_threshold, best_counts = float(candidates[0]), None
    for threshold in sorted(candidates):
        counts = evaluate_at_threshold(images, float(threshold), iou_threshold)
        if best_counts is None or counts.f1 >= best_counts.f1:
            best_threshold, best_counts = float(threshold), counts
    assert best_counts is not None
    return best_threshold, best_counts
