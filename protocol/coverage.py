"""Soft (anti-aliased) person masks on disk: one 8-bit coverage PNG per person and frame.

A rendered dataset (docs/dataset_format.md) keeps its hard instance-id image ``masks/<frame>.png``
for annotations, and beside it, per visible person, ``soft_masks/<frame>_<instance_id>.png``: a
single-channel 8-bit PNG of the image's size whose value is ``round(255 * coverage)``, coverage
being the fraction of the pixel's (filtered) area that shows this person. Each annotation names
its file in ``"soft_mask"``. One file per person rather than one channel per person in a single
PNG, because PNG holds at most 4 channels and a frame can hold more people; a full-frame plane
that is zero almost everywhere compresses to a few kilobytes.

Both sides read these files: the refiner pastes refined crops back with the coverage as alpha
(``protocol.crops.reinsert`` with a float mask); the Blender preview does the same. Datasets
written before soft masks existed have no ``"soft_mask"`` key, and readers then use the hard
mask (``hard_coverage``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SOFT_MASK_DIR = "soft_masks"
MASK_MODES = ("soft", "hard")
# Coverage at or above this counts as "the person" in the hard masks (COCO RLE, instance ids).
HARD_THRESHOLD = 0.5


class CoverageError(ValueError):
    """A coverage file or array that cannot be a soft mask; the message says what to do."""


def soft_mask_path(frame: str, instance_id: int) -> str:
    """The dataset-relative path of a person's coverage PNG (forward slashes, as JSON keeps it)."""
    return f"{SOFT_MASK_DIR}/{frame}_{int(instance_id)}.png"


def coverage_to_uint8(coverage: np.ndarray) -> np.ndarray:
    """Quantise coverage in [0, 1] to 0..255 (rounded: 0 and 1 stay exact)."""
    coverage = np.asarray(coverage, dtype=np.float32)
    if coverage.ndim != 2:
        raise CoverageError(f"a coverage mask is 2-D (H, W), got shape {coverage.shape}")
    if coverage.size and (not np.isfinite(coverage).all() or coverage.min() < 0 or coverage.max() > 1):
        raise CoverageError("coverage must lie in [0, 1]; clip it before writing")
    return np.rint(coverage * 255.0).astype(np.uint8)


def coverage_png_bytes(coverage: np.ndarray) -> bytes:
    """The PNG bytes of a coverage mask (float in [0, 1], or uint8 already quantised)."""
    array = coverage if coverage.dtype == np.uint8 else coverage_to_uint8(coverage)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def read_coverage(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A coverage PNG as float32 (H, W) in [0, 1]. ``shape`` (height, width), when given, must
    match: a soft mask of another size belongs to another image."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode != "L":
                raise CoverageError(f"{path} is a {image.mode} image; a soft mask is an 8-bit "
                                    "single-channel (L) PNG")
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise CoverageError(f"soft mask {path} is missing; re-render that frame, or remove the "
                            "annotation's \"soft_mask\" key to paste with the hard mask") from None
    except OSError as exc:
        raise CoverageError(f"cannot read soft mask {path}: {exc}") from None
    if shape is not None and array.shape != tuple(shape):
        raise CoverageError(f"soft mask {path} is {array.shape[1]}x{array.shape[0]}, but its image "
                            f"is {shape[1]}x{shape[0]}; the dataset is inconsistent")
    return array.astype(np.float32) / 255.0


def hard_coverage(mask: np.ndarray) -> np.ndarray:
    """A hard mask as coverage: 1.0 on the person, 0.0 elsewhere (the fallback)."""
    return np.asarray(mask, dtype=bool).astype(np.float32)

