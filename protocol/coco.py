"""COCO run-length encoding of binary masks (the uncompressed form COCO calls ``counts``).

Runs are counted over the mask in column-major (Fortran) order, starting with a run of
zeros, exactly as pycocotools does for its uncompressed RLE, so other COCO tools read it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RLEError(ValueError):
    """An RLE dict that cannot describe a mask of its declared size."""


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode a 2-D boolean (or 0/1) mask as ``{"size": [h, w], "counts": [...]}``."""
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    # Positions where the value changes, bracketed by the start and the end.
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts  # COCO runs always start with zeros
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Decode ``rle_encode``'s output back into a boolean mask of shape ``size``."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise RLEError(f"not an uncompressed COCO RLE dict ({exc}); expected size and counts") from exc
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != height * width:
        raise RLEError(
            f"RLE counts sum to {int(counts.sum()) if counts.ndim == 1 else '?'}, "
            f"but size {height}x{width} needs {height * width}"
        )
    values = np.arange(counts.size) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def rle_area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels, without decoding."""
    return int(sum(rle["counts"][1::2]))
