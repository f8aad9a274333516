"""Anchor shapes from the training set's head boxes (k-means on width and height, with
1 - IoU as the distance, so big and small boxes weigh alike), and the anchor grid they tile.
"""

from __future__ import annotations

import numpy as np


def shape_iou(shapes_a: np.ndarray, shapes_b: np.ndarray) -> np.ndarray:
    """IoU of (w, h) shapes placed on a common centre: (len(a), len(b))."""
    a = np.asarray(shapes_a, np.float64).reshape(-1, 2)
    b = np.asarray(shapes_b, np.float64).reshape(-1, 2)
    overlap = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
    return overlap / (a[:, None].prod(-1) + b[None, :].prod(-1) - overlap)


def kmeans_anchor_shapes(shapes: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """``k`` anchor (w, h) shapes clustering ``shapes`` (N, 2), sorted by area.

    Seeded k-means++ start with the 1 - IoU distance, then Lloyd steps with the median of each
    cluster (robust to a few odd boxes). With fewer distinct shapes than ``k`` the missing
    anchors are scaled copies of the found ones, so the network always has ``k`` per cell.
    """
    shapes = np.asarray(shapes, np.float64).reshape(-1, 2)
    shapes = shapes[(shapes > 0).all(axis=1)]
    if len(shapes) == 0:
        raise ValueError("no head boxes with positive size to compute anchors from; "
                         "check the training set's annotations")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    rng = np.random.default_rng(seed)
    distinct = np.unique(shapes, axis=0)
    found = min(k, len(distinct))
    centres = [distinct[rng.integers(len(distinct))]]
    while len(centres) < found:
        distance = 1.0 - shape_iou(distinct, np.array(centres)).max(axis=1)
        if distance.sum() <= 0:
            break
        centres.append(distinct[rng.choice(len(distinct), p=distance / distance.sum())])
    centres_array = np.array(centres)
    for _ in range(iterations):
        assignment = shape_iou(shapes, centres_array).argmax(axis=1)
        updated = np.array([np.median(shapes[assignment == j], axis=0) if (assignment == j).any()
                            else centres_array[j] for j in range(len(centres_array))])
        if np.allclose(updated, centres_array):
            break
        centres_array = updated
    result = list(centres_array)
    scales = [0.75, 1.33, 0.5, 1.75]
    index = 0
    while len(result) < k:  # too few distinct shapes: add scaled variants around the clusters
        result.append(centres_array[index % len(centres_array)] * scales[(index // len(centres_array)) % 4])
        index += 1
    anchors = np.array(result[:k])
    return anchors[np.argsort(anchors.prod(axis=1), kind="stable")]


def anchor_grid(shapes: np.ndarray, grid_height: int, grid_width: int, stride: float) -> np.ndarray:
    """All anchors as (grid_h * grid_w * k, 4) ``[cx, cy, w, h]``; order: row, column, shape
    (matching the network's output layout)."""
    shapes = np.asarray(shapes, np.float64).reshape(-1, 2)
    ys, xs = np.meshgrid((np.arange(grid_height) + 0.5) * stride, (np.arange(grid_width) + 0.5) * stride,
                         indexing="ij")
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 1, 2).repeat(len(shapes), axis=1)
    sizes = np.broadcast_to(shapes, centres.shape)
    return np.concatenate([centres, sizes], axis=-1).reshape(-1, 4)
