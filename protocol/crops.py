"""Crop geometry both sides agree on: upright person crops and seam-free reinsertion.

Thesis Algorithm 5 cuts a box that starts at a person's head and points toward the image
centre, rotated so the person stands upright; Algorithm 6 rotates each refined crop back and
pastes it under the person's mask. This module implements both with the fixes chapter 5 asks
for (section 5.10): the crop scale can grow so a person's whole mask fits, and overlapping
crops are blended with feathered, normalised weights so no seam appears where crops meet.

Geometry, in one model. Pixel centres sit at integer coordinates, ``x`` is the column and
``y`` the row (in the source frame), ``u`` the column and ``v`` the row (in the crop). A crop
is a similarity transform from crop pixels to source pixels::

    source = head_xy + scale * R(angle_rad) @ (crop - head_anchor)
    R(a) = [[cos a, -sin a],
            [sin a,  cos a]]

so the crop's "down" axis (+v) points along ``(-sin a, cos a)`` in the source: from the head
toward the image centre, which is where the body lies in a ceiling fisheye view. An angle of
0 means the head is straight above the centre and the crop is the source, unrotated. A head
exactly at the image centre has no direction to the centre; it gets angle 0 (body assumed
to extend toward +y, i.e. down the image), a deterministic, documented choice.

``scale`` is source pixels per crop pixel. The crop's area is ``[-0.5, W-0.5] x [-0.5, H-0.5]``
in crop coordinates; ``CropRecord.corners`` are its four corners in source pixels.

Reinsertion blends, for every source pixel ``p`` covered by at least one crop::

    w_i   = mask_i(p) * feather_i(source_to_crop(p))
    alpha = min(1, sum w_i)
    out   = image + alpha * (sum(w_i * crop_i) / sum(w_i) - image)

``feather`` ramps smoothly from 0 at a crop's border to 1 at ``feather_px`` crop pixels
inside it. Where the weights sum to at most 1 this is ``image * (1 - sum w) + sum(w_i crop_i)``,
linear in smooth weights; where they sum to more, a ratio whose denominator is at least 1.
Both are continuous, so there is no step in intensity along any crop border. A pixel with
zero weight (outside every mask it belongs to, or outside every crop) is copied, bit for bit.
Crop pixels that were padded because the crop reached past the image border carry no image
data: reinsertion leaves them out of the interpolation, and their weight fades out smoothly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

DEFAULT_CROP_SIZE: tuple[int, int] = (128, 128)
# The head sits on the crop's vertical centre line, a quarter of the height from the top:
# a top-down view shows little above the head, and much body below it.
DEFAULT_HEAD_ANCHOR_FRACTION: tuple[float, float] = (0.5, 0.25)
DEFAULT_FEATHER_PX: float = 10.0
# Below this distance (source px) from the image centre the direction to it is undefined.
CENTRE_TOLERANCE_PX: float = 1e-6


class CropError(ValueError):
    """Bad input to cropping or reinsertion; the message names the problem and the fix."""


@dataclass(frozen=True)
class CropRecord:
    """Everything needed to map between one crop and its source frame, exactly.

    ``image_size`` and ``crop_size`` are (width, height). ``head_xy`` and ``center_xy`` are
    source pixels; ``head_anchor`` is the head's position in crop pixels. ``corners`` are the
    crop area's corners TL, TR, BR, BL in source pixels. ``outside_fraction`` is the share of
    crop pixels whose source position lies outside the image (those are padded).
    ``mask_coverage`` is the share of the person's mask inside the crop, ``None`` when no
    mask was given.
    """

    image_id: str
    image_size: tuple[int, int]
    head_xy: tuple[float, float]
    center_xy: tuple[float, float]
    angle_rad: float
    scale: float
    crop_size: tuple[int, int]
    head_anchor: tuple[float, float]
    corners: tuple[tuple[float, float], ...]
    outside_fraction: float
    mask_coverage: float | None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise CropError(f"CropRecord.scale must be a positive finite number, got {self.scale}")
        if not math.isfinite(self.angle_rad):
            raise CropError(f"CropRecord.angle_rad must be finite, got {self.angle_rad}")
        for name in ("image_size", "crop_size"):
            value = getattr(self, name)
            if len(value) != 2 or any(int(v) != v or v <= 0 for v in value):
                raise CropError(f"CropRecord.{name} must be two positive integers, got {value}")
        if len(self.corners) != 4:
            raise CropError(f"CropRecord.corners must hold 4 points, got {len(self.corners)}")

    @property
    def matrix(self) -> np.ndarray:
        """2x2 linear part of crop -> source: ``scale * R(angle_rad)``."""
        cos_a, sin_a = math.cos(self.angle_rad), math.sin(self.angle_rad)
        return self.scale * np.array([[cos_a, -sin_a], [sin_a, cos_a]])

    def crop_to_source(self, pts: np.ndarray) -> np.ndarray:
        """Map crop pixel coordinates ``(..., 2)`` as (u, v) to source (x, y)."""
        pts = np.asarray(pts, dtype=np.float64)
        offset = pts - np.asarray(self.head_anchor)
        return np.asarray(self.head_xy) + offset @ self.matrix.T

    def source_to_crop(self, pts: np.ndarray) -> np.ndarray:
        """Map source pixel coordinates ``(..., 2)`` as (x, y) to crop (u, v); inverse of
        :meth:`crop_to_source`."""
        pts = np.asarray(pts, dtype=np.float64)
        cos_a, sin_a = math.cos(self.angle_rad), math.sin(self.angle_rad)
        rotation = np.array([[cos_a, -sin_a], [sin_a, cos_a]])
        # The inverse of scale * R is R^T / scale; for row vectors that is (p @ R) / scale.
        return np.asarray(self.head_anchor) + ((pts - np.asarray(self.head_xy)) @ rotation) / self.scale

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return {
            "image_id": self.image_id,
            "image_size": [int(v) for v in self.image_size],
            "head_xy": [float(v) for v in self.head_xy],
            "center_xy": [float(v) for v in self.center_xy],
            "angle_rad": float(self.angle_rad),
            "scale": float(self.scale),
            "crop_size": [int(v) for v in self.crop_size],
            "head_anchor": [float(v) for v in self.head_anchor],
            "corners": [[float(x), float(y)] for x, y in self.corners],
            "outside_fraction": float(self.outside_fraction),
            "mask_coverage": None if self.mask_coverage is None else float(self.mask_coverage),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropRecord:
        """Rebuild a record from :meth:`to_dict`'s output; names missing or unknown keys."""
        if not isinstance(data, dict):
            raise CropError(f"CropRecord.from_dict needs a dict, got {type(data).__name__}")
        expected = {f.name for f in fields(cls)}
        missing = sorted(expected - data.keys())
        unknown = sorted(data.keys() - expected)
        if missing or unknown:
            raise CropError(
                f"not a CropRecord dict: missing keys {missing}, unknown keys {unknown}; "
                f"expected exactly {sorted(expected)}"
            )
        try:
            return cls(
                image_id=str(data["image_id"]),
                image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
                head_xy=(float(data["head_xy"][0]), float(data["head_xy"][1])),
                center_xy=(float(data["center_xy"][0]), float(data["center_xy"][1])),
                angle_rad=float(data["angle_rad"]),
                scale=float(data["scale"]),
                crop_size=(int(data["crop_size"][0]), int(data["crop_size"][1])),
                head_anchor=(float(data["head_anchor"][0]), float(data["head_anchor"][1])),
                corners=tuple((float(x), float(y)) for x, y in data["corners"]),
                outside_fraction=float(data["outside_fraction"]),
                mask_coverage=None if data["mask_coverage"] is None else float(data["mask_coverage"]),
            )
        except (TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, CropError):
                raise
            raise CropError(f"CropRecord dict has a malformed value: {exc}") from exc


# --------------------------------------------------------------------------- validation


def _check_image(image: Any, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise CropError(f"{what} must be a numpy array (H, W) or (H, W, C), got {type(image).__name__}")
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise CropError(f"{what} must have shape (H, W) or (H, W, C) with H, W > 0, got {image.shape}")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer)
                                   or np.issubdtype(image.dtype, np.floating)):
        raise CropError(f"{what} must hold integer or float pixels, got dtype {image.dtype}")
    return image


def _check_crop_size(size: Any) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
        exact = all(int(v) == v for v in size)
    except (TypeError, ValueError) as exc:
        raise CropError(f"crop size must be (width, height) integers, got {size!r}") from exc
    if not exact or width <= 0 or height <= 0:
        raise CropError(f"crop size must be positive integers (width, height), got {size!r}")
    if width % 2 or height % 2:
        # Even sizes keep the head axis exactly on the crop's centre line and let the
        # generator's stride-2 layers halve the crop without remainder.
        raise CropError(
            f"crop size must be even in both dimensions, got {width}x{height}; "
            f"use e.g. {width + width % 2}x{height + height % 2}"
        )
    return width, height


def _check_point(point: Any, name: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError) as exc:
        raise CropError(f"{name} must be an (x, y) pair of numbers, got {point!r}") from exc
    if not (math.isfinite(x) and math.isfinite(y)):
        raise CropError(f"{name} must be finite, got ({x}, {y})")
    return x, y


def _mask_weights(mask: np.ndarray) -> np.ndarray:
    """Mask values as float32 weights in [0, 1]: bool and integer masks are binary
    (nonzero = person); float masks are soft and must already lie in [0, 1]."""
    if mask.dtype == bool or np.issubdtype(mask.dtype, np.integer):
        return (mask != 0).astype(np.float32)
    if np.issubdtype(mask.dtype, np.floating):
        weights = mask.astype(np.float32, copy=False)
        if weights.size and (not np.isfinite(weights).all() or weights.min() < 0 or weights.max() > 1):
            raise CropError("a float mask must hold values in [0, 1]; threshold or rescale it first")
        return weights
    raise CropError(f"a mask must be bool, integer or float, got dtype {mask.dtype}")


def _check_mask(mask: Any, image_hw: tuple[int, int], what: str = "mask") -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", type(mask).__name__)
        raise CropError(f"{what} must be a 2-D array (H, W) = {image_hw}, got {shape}")
    if mask.shape != image_hw:
        raise CropError(
            f"{what} has shape {mask.shape} but the image is {image_hw} (H, W); "
            "pass the full-frame mask of this person"
        )
    return mask


# --------------------------------------------------------------------------- resampling


def _bilinear_taps(xs: np.ndarray, ys: np.ndarray
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The four integer neighbours ``(ix, iy)`` of each float position and their bilinear
    weights (unclipped: callers decide what lies outside the image)."""
    x0, y0 = np.floor(xs), np.floor(ys)
    fx, fy = xs - x0, ys - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    return [(x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
            (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)]


def _sample_bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, *, clamp: bool,
                     pad_value: float = 0.0) -> np.ndarray:
    """Bilinear samples of ``image`` at float positions; returns ``(N, C)`` float64.

    Outside the image, ``clamp`` repeats the edge pixel; otherwise neighbours outside the
    image count as ``pad_value``. Only the 4 neighbours of each position are read.
    """
    height, width = image.shape[:2]
    pixels = image.reshape(height, width, -1)
    flat = pixels.reshape(height * width, -1)
    result = np.zeros((xs.size, pixels.shape[2]), dtype=np.float64)
    for ix, iy, weight in _bilinear_taps(xs, ys):
        # One flat gather is cheaper than 2-D fancy indexing.
        index = np.clip(iy, 0, height - 1) * width + np.clip(ix, 0, width - 1)
        values = np.take(flat, index, axis=0).astype(np.float64)
        if not clamp:
            outside = (ix < 0) | (ix >= width) | (iy < 0) | (iy >= height)
            values[outside] = pad_value
        result += weight[:, None] * values
    return result


def _sample_bilinear_valid(image: np.ndarray, valid: np.ndarray, xs: np.ndarray, ys: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples that ignore pixels where ``valid`` is False (edge-clamped).

    Returns the samples ``(N, C)``, renormalised over valid neighbours, and the bilinear
    weight those neighbours carry ``(N,)``: 1 far from invalid pixels, falling continuously
    to 0 toward them (samples there are 0).
    """
    height, width = image.shape[:2]
    pixels = image.reshape(height, width, -1)
    result = np.zeros((xs.size, pixels.shape[2]), dtype=np.float64)
    coverage = np.zeros(xs.size, dtype=np.float64)
    for ix, iy, weight in _bilinear_taps(xs, ys):
        iy = np.clip(iy, 0, height - 1)
        ix = np.clip(ix, 0, width - 1)
        weight = weight * valid[iy, ix]
        result += weight[:, None] * pixels[iy, ix].astype(np.float64)
        coverage += weight
    has_data = coverage > 0
    result[has_data] /= coverage[has_data, None]
    return result, coverage


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values back to the image's dtype: rounded and clipped for integer images."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _subsample_offsets(scale: float, antialias: bool) -> np.ndarray:
    """Offsets (crop px) of the ``n x n`` box-filter samples per crop pixel, ``n = ceil(scale)``."""
    subsamples = max(1, math.ceil(scale - 1e-9)) if antialias else 1
    return (np.arange(subsamples) + 0.5) / subsamples - 0.5


def _crop_grid(record: CropRecord) -> np.ndarray:
    width, height = record.crop_size
    us, vs = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack([us.ravel(), vs.ravel()], axis=1)


def valid_crop_pixels(record: CropRecord, *, antialias: bool = True) -> np.ndarray:
    """Boolean (H, W) map of crop pixels computed from image pixels only: none of their
    samples read the padding beyond the image border."""
    width, height = record.image_size
    grid = _crop_grid(record)
    valid = np.ones(len(grid), dtype=bool)
    offsets = _subsample_offsets(record.scale, antialias)
    for du in offsets:
        for dv in offsets:
            src = record.crop_to_source(grid + np.array([du, dv]))
            valid &= ((src[:, 0] >= 0) & (src[:, 0] <= width - 1)
                      & (src[:, 1] >= 0) & (src[:, 1] <= height - 1))
    return valid.reshape(record.crop_size[1], record.crop_size[0])


def _resample_to_crop(source: np.ndarray, record: CropRecord, *, pad_value: float,
                      antialias: bool) -> np.ndarray:
    """Sample ``source`` on the crop's pixel grid; float64 ``(H, W, C)``.

    When a crop pixel covers more than one source pixel (scale > 1) and ``antialias`` is on,
    each crop pixel averages an ``n x n`` grid of samples with ``n = ceil(scale)``: a box
    filter, so downscaled crops do not alias.
    """
    width, height = record.crop_size
    grid = _crop_grid(record)
    offsets = _subsample_offsets(record.scale, antialias)
    channels = source.shape[2] if source.ndim == 3 else 1
    total = np.zeros((height * width, channels), dtype=np.float64)
    for du in offsets:
        for dv in offsets:
            src = record.crop_to_source(grid + np.array([du, dv]))
            total += _sample_bilinear(source, src[:, 0], src[:, 1], clamp=False, pad_value=pad_value)
    total /= offsets.size * offsets.size
    return total.reshape(height, width, channels)


# --------------------------------------------------------------------------- cropping


def body_angle(head_xy: tuple[float, float], center_xy: tuple[float, float]) -> float:
    """Crop rotation for a head: the angle that makes the crop's +v axis point from the head
    toward the image centre. A head at the centre gets 0 (body toward +y)."""
    dx = center_xy[0] - head_xy[0]
    dy = center_xy[1] - head_xy[1]
    if math.hypot(dx, dy) < CENTRE_TOLERANCE_PX:
        return 0.0
    # (-sin a, cos a) must be parallel to (dx, dy).
    return math.atan2(-dx, dy)


def _default_anchor(size: tuple[int, int]) -> tuple[float, float]:
    width, height = size
    fx, fy = DEFAULT_HEAD_ANCHOR_FRACTION
    # (W - 1) * 0.5 is the exact centre line between the two middle columns of an even crop.
    return ((width - 1) * fx, height * fy)


def _mask_points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source (x, y) of every mask pixel with nonzero weight, and those weights; converts
    and scans only the mask's bounding box (a full-frame mask is mostly empty)."""
    nonzero = mask if mask.dtype == bool else mask != 0
    rows = np.flatnonzero(nonzero.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 2)), np.zeros(0)
    cols = np.flatnonzero(nonzero[rows[0]:rows[-1] + 1].any(axis=0))
    window = _mask_weights(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    ys, xs = np.nonzero(window)
    points = np.stack([xs + cols[0], ys + rows[0]], axis=1).astype(np.float64)
    return points, window[ys, xs].astype(np.float64)


def fit_scale(points: np.ndarray, head_xy: tuple[float, float], angle_rad: float,
              size: tuple[int, int], head_anchor: tuple[float, float], margin_px: float) -> float:
    """Smallest scale (source px per crop px) at which every source pixel in ``points``
    lies inside the crop, at least ``margin_px`` crop pixels from its border."""
    width, height = size
    rooms = np.array([
        head_anchor[0] + 0.5 - margin_px,           # left of the head axis
        width - 0.5 - head_anchor[0] - margin_px,   # right
        head_anchor[1] + 0.5 - margin_px,           # above the head
        height - 0.5 - head_anchor[1] - margin_px,  # below
    ])
    if (rooms <= 0).any():
        raise CropError(
            f"a {width}x{height} crop with the head at {head_anchor} leaves no room inside a "
            f"{margin_px}-px margin; use a bigger crop or a smaller margin"
        )
    if points.size == 0:
        return 0.0
    cos_a, sin_a = math.cos(angle_rad), math.sin(angle_rad)
    offsets = (points - np.asarray(head_xy)) @ np.array([[cos_a, -sin_a], [sin_a, cos_a]])
    # A pixel is a unit square; rotated by the angle, it reaches this far along either axis.
    half = 0.5 * (abs(cos_a) + abs(sin_a))
    extents = np.array([
        max(0.0, -offsets[:, 0].min() + half),
        max(0.0, offsets[:, 0].max() + half),
        max(0.0, -offsets[:, 1].min() + half),
        max(0.0, offsets[:, 1].max() + half),
    ])
    return float((extents / rooms).max())


def crop_person(
    image: np.ndarray,
    head_xy: Sequence[float],
    *,
    size: Sequence[int] = DEFAULT_CROP_SIZE,
    center_xy: Sequence[float] | None = None,
    mask: np.ndarray | None = None,
    image_id: str = "",
    scale: float | None = None,
    min_scale: float = 1.0,
    max_scale: float | None = None,
    head_anchor: Sequence[float] | None = None,
    fit_margin_px: float = DEFAULT_FEATHER_PX,
    antialias: bool = True,
    pad_value: float = 0.0,
) -> tuple[np.ndarray, CropRecord]:
    """Cut the upright crop of the person whose head is at ``head_xy`` (thesis Algorithm 5).

    ``image``: (H, W) or (H, W, C), any integer or float dtype; the crop has the same dtype
    and channels. ``size``: crop (width, height), positive and even. ``center_xy``: the point
    the body points to, by default the image centre ``((W-1)/2, (H-1)/2)``.

    Scale: an explicit ``scale`` is used as is. Otherwise, with a ``mask`` (the person's
    full-frame mask) the scale is the smallest one at which the whole mask fits inside the
    crop ``fit_margin_px`` from its border (so reinsertion's feather never cuts the body),
    clamped to ``[min_scale, max_scale]``; without a mask it is ``min_scale`` (1: one
    source pixel per crop pixel, as in the thesis). The fitted crop is resampled to the
    fixed ``size`` with a box prefilter (``antialias``), so the network always sees the same
    input size.

    Crop pixels whose source lies outside the image are ``pad_value``; their share is
    ``record.outside_fraction``. Raises :class:`CropError` on bad input.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    crop_size = _check_crop_size(size)
    head = _check_point(head_xy, "head_xy")
    if not (-0.5 <= head[0] < width - 0.5 and -0.5 <= head[1] < height - 0.5):
        raise CropError(
            f"head_xy {head} lies outside the {width}x{height} image; pixel centres run from "
            f"(0, 0) to ({width - 1}, {height - 1}). Check the annotation's coordinate order (x, y)"
        )
    center = ((width - 1) / 2.0, (height - 1) / 2.0) if center_xy is None else _check_point(
        center_xy, "center_xy")
    anchor = _default_anchor(crop_size) if head_anchor is None else _check_point(
        head_anchor, "head_anchor")
    if not (min_scale > 0 and math.isfinite(min_scale)):
        raise CropError(f"min_scale must be a positive number, got {min_scale}")
    if max_scale is not None and not max_scale >= min_scale:
        raise CropError(f"max_scale ({max_scale}) must be at least min_scale ({min_scale})")
    angle = body_angle(head, center)

    points = point_weights = None
    if mask is not None:
        points, point_weights = _mask_points(_check_mask(mask, (height, width)))
        if points.size == 0:
            raise CropError("the person's mask is empty (fully occluded?); skip this person")

    if scale is not None:
        if not (math.isfinite(scale) and scale > 0):
            raise CropError(f"scale must be a positive number (source px per crop px), got {scale}")
        chosen = float(scale)
    elif points is not None:
        chosen = max(min_scale, fit_scale(points, head, angle, crop_size, anchor, fit_margin_px))
        if max_scale is not None:
            chosen = min(chosen, max_scale)
    else:
        chosen = float(min_scale)

    provisional = CropRecord(
        image_id=image_id, image_size=(width, height), head_xy=head, center_xy=center,
        angle_rad=angle, scale=chosen, crop_size=crop_size, head_anchor=anchor,
        corners=((0.0, 0.0),) * 4, outside_fraction=0.0, mask_coverage=None,
    )
    crop_w, crop_h = crop_size
    corners = provisional.crop_to_source(np.array(
        [[-0.5, -0.5], [crop_w - 0.5, -0.5], [crop_w - 0.5, crop_h - 0.5], [-0.5, crop_h - 0.5]]))
    us, vs = np.meshgrid(np.arange(crop_w, dtype=np.float64), np.arange(crop_h, dtype=np.float64))
    centres = provisional.crop_to_source(np.stack([us.ravel(), vs.ravel()], axis=1))
    outside = ((centres[:, 0] < -0.5) | (centres[:, 0] >= width - 0.5)
               | (centres[:, 1] < -0.5) | (centres[:, 1] >= height - 0.5))
    coverage = None
    if points is not None:
        in_crop = provisional.source_to_crop(points)
        inside = ((in_crop[:, 0] >= -0.5) & (in_crop[:, 0] <= crop_w - 0.5)
                  & (in_crop[:, 1] >= -0.5) & (in_crop[:, 1] <= crop_h - 0.5))
        coverage = float(point_weights[inside].sum() / point_weights.sum())
    record = CropRecord(
        image_id=image_id, image_size=(width, height), head_xy=head, center_xy=center,
        angle_rad=angle, scale=chosen, crop_size=crop_size, head_anchor=anchor,
        corners=tuple((float(x), float(y)) for x, y in corners),
        outside_fraction=float(outside.mean()), mask_coverage=coverage,
    )
    crop = _resample_to_crop(image, record, pad_value=pad_value, antialias=antialias)
    if image.ndim == 2:
        crop = crop[:, :, 0]
    return _to_dtype(crop, image.dtype), record


def crop_mask(mask: np.ndarray, record: CropRecord, *, antialias: bool = True) -> np.ndarray:
    """The person's full-frame mask seen through ``record``'s crop: float32 (H, W) in [0, 1]
    (soft at the mask's edge because of resampling; threshold at 0.5 for a binary mask)."""
    width, height = record.image_size
    weights = _mask_weights(_check_mask(mask, (height, width)))
    sampled = _resample_to_crop(weights, record, pad_value=0.0, antialias=antialias)[:, :, 0]
    return np.clip(sampled, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- reinsertion


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def feather_weights(uv: np.ndarray, crop_size: tuple[int, int], feather_px: float) -> np.ndarray:
    """Weight of each crop position ``(N, 2)``: 0 at and beyond the crop area's border,
    rising smoothly to 1 at ``feather_px`` crop pixels inside it (1 everywhere inside when
    ``feather_px`` is 0, the thesis' hard paste)."""
    width, height = crop_size
    dist_u = np.minimum(uv[:, 0] + 0.5, width - 0.5 - uv[:, 0])
    dist_v = np.minimum(uv[:, 1] + 0.5, height - 0.5 - uv[:, 1])
    if feather_px <= 0:
        return ((dist_u > 0) & (dist_v > 0)).astype(np.float64)
    return _smoothstep(dist_u / feather_px) * _smoothstep(dist_v / feather_px)


def _footprint(record: CropRecord, image_hw: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Integer pixel window (y0, y1, x0, x1), end-exclusive, holding the crop's corners,
    clipped to the image; None when the crop misses the image."""
    corners = np.asarray(record.corners)
    height, width = image_hw
    x0 = max(0, math.floor(corners[:, 0].min()))
    x1 = min(width, math.ceil(corners[:, 0].max()) + 1)
    y0 = max(0, math.floor(corners[:, 1].min()))
    y1 = min(height, math.ceil(corners[:, 1].max()) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _reaches_border(record: CropRecord) -> bool:
    """Whether any box-filter sample of the crop may have read beyond the image border."""
    corners = np.asarray(record.corners)
    width, height = record.image_size
    # Samples lie inside the crop area (the corners); one scale unit of slack is conservative.
    reach = record.scale
    return bool(corners[:, 0].min() < reach or corners[:, 1].min() < reach
                or corners[:, 0].max() > width - 1 - reach
                or corners[:, 1].max() > height - 1 - reach)


def reinsert(
    image: np.ndarray,
    crops: Sequence[np.ndarray],
    records: Sequence[CropRecord],
    masks: Sequence[np.ndarray],
    *,
    feather_px: float = DEFAULT_FEATHER_PX,
) -> np.ndarray:
    """Blend refined ``crops`` back into ``image`` (thesis Algorithm 6, seam-free).

    ``crops[i]`` was cut by ``records[i]`` and may have been refined; ``masks[i]`` is that
    person's own full-frame mask (bool/integer: binary; float: soft in [0, 1]). Each crop
    only changes pixels of its own mask; overlapping crops are averaged with feathered,
    normalised weights (see the module docstring). Pixels with zero total weight keep
    their input values bit for bit. Returns a new array of ``image``'s shape and dtype.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    if not (len(crops) == len(records) == len(masks)):
        raise CropError(
            f"reinsert needs one record and one mask per crop, got {len(crops)} crops, "
            f"{len(records)} records, {len(masks)} masks"
        )
    if not (math.isfinite(feather_px) and feather_px >= 0):
        raise CropError(f"feather_px must be a non-negative number, got {feather_px}")
    channels = image.shape[2] if image.ndim == 3 else 1
    for index, (crop, record, mask) in enumerate(zip(crops, records, masks)):
        if not isinstance(record, CropRecord):
            raise CropError(f"records[{index}] must be a CropRecord, got {type(record).__name__}")
        if tuple(record.image_size) != (width, height):
            raise CropError(
                f"records[{index}] was cut from a {record.image_size[0]}x{record.image_size[1]} "
                f"image, but this image is {width}x{height}"
            )
        _check_image(crop, f"crops[{index}]")
        crop_w, crop_h = record.crop_size
        expected = (crop_h, crop_w) if image.ndim == 2 else (crop_h, crop_w, channels)
        if crop.shape != expected:
            raise CropError(
                f"crops[{index}] has shape {crop.shape}, but its record and the image need "
                f"{expected}; the refiner must return crops of the input size and channels"
            )
        _check_mask(mask, (height, width), f"masks[{index}]")

    # Full-frame accumulators: np.zeros maps untouched pages lazily, so the cost is the
    # crops' footprints, not the frame.
    weighted_sum = np.zeros((height, width, channels), dtype=np.float64)
    weight_sum = np.zeros((height, width), dtype=np.float64)
    windows: list[tuple[int, int, int, int]] = []
    for crop, record, mask in zip(crops, records, masks):
        window = _footprint(record, (height, width))
        if window is None:
            continue
        y0, y1, x0, x1 = window
        weights = _mask_weights(mask[y0:y1, x0:x1]).astype(np.float64)
        ys, xs = np.nonzero(weights)
        if ys.size == 0:
            continue
        uv = record.source_to_crop(np.stack([xs + x0, ys + y0], axis=1).astype(np.float64))
        weight = weights[ys, xs] * feather_weights(uv, record.crop_size, feather_px)
        keep = weight > 0
        if not keep.any():
            continue
        ys, xs, uv, weight = ys[keep], xs[keep], uv[keep], weight[keep]
        if _reaches_border(record):
            # Padded crop pixels carry no image data: leave them out of the interpolation
            # and let the weight fade out continuously toward them.
            values, data_weight = _sample_bilinear_valid(
                crop, valid_crop_pixels(record), uv[:, 0], uv[:, 1])
            weight = weight * data_weight
        else:
            values = _sample_bilinear(crop, uv[:, 0], uv[:, 1], clamp=True)
        # Fancy-index += is safe here: (ys, xs) are unique within one crop.
        weighted_sum[ys + y0, xs + x0] += weight[:, None] * values
        weight_sum[ys + y0, xs + x0] += weight
        windows.append(window)

    out = image.copy()
    out_view = out.reshape(height, width, channels)
    source_view = image.reshape(height, width, channels)
    # Overlapping windows recompute identical values for shared pixels, which is harmless.
    for y0, y1, x0, x1 in windows:
        total = weight_sum[y0:y1, x0:x1]
        ys, xs = np.nonzero(total)
        if ys.size == 0:
            continue
        w = total[ys, xs]
        refined = weighted_sum[y0:y1, x0:x1][ys, xs] / w[:, None]
        original = source_view[y0:y1, x0:x1][ys, xs].astype(np.float64)
        alpha = np.minimum(w, 1.0)[:, None]
        blended = original + alpha * (refined - original)
        out_view[y0 + ys, x0 + xs] = _to_dtype(blended, image.dtype)
    return out
