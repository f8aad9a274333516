"""Crop geometry and reinsertion: exact inverses, where pixels land, identity round trips,
no seams between overlapping crops, and clear errors on bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol.crops import (
    CropError,
    CropRecord,
    body_angle,
    crop_mask,
    crop_person,
    reinsert,
)

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _record(head, angle, scale, size=(64, 48), anchor=(31.5, 12.0)) -> CropRecord:
    return CropRecord(
        image_id="x", image_size=(500, 400), head_xy=head, center_xy=(249.5, 199.5),
        angle_rad=angle, scale=scale, crop_size=size, head_anchor=anchor,
        corners=((0.0, 0.0),) * 4, outside_fraction=0.0, mask_coverage=None,
    )


def _smooth_image(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [128 + 60 * np.sin(xs / 17.0) + 50 * np.cos(ys / 23.0),
                40 + 0.5 * xs + 0.3 * ys,
                200 - 0.4 * ys + 20 * np.sin((xs + ys) / 31.0)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def _disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2


# ----------------------------------------------------------------------------- geometry


@FAST
@given(
    head=st.tuples(st.floats(0, 499), st.floats(0, 399)),
    angle=st.floats(-math.pi, math.pi),
    scale=st.floats(0.25, 8.0),
    pts=st.lists(st.tuples(st.floats(-300, 300), st.floats(-300, 300)), min_size=1, max_size=8),
)
def test_crop_to_source_and_back_are_inverses(head, angle, scale, pts) -> None:
    record = _record(head, angle, scale)
    points = np.array(pts)
    np.testing.assert_allclose(record.source_to_crop(record.crop_to_source(points)), points,
                               atol=1e-8)
    np.testing.assert_allclose(record.crop_to_source(record.source_to_crop(points)), points,
                               atol=1e-8)
    # A similarity: distances scale by exactly `scale`.
    if len(points) >= 2:
        src = record.crop_to_source(points)
        np.testing.assert_allclose(np.linalg.norm(src[1] - src[0]),
                                   scale * np.linalg.norm(points[1] - points[0]), rtol=1e-9,
                                   atol=1e-9)


def test_record_survives_json() -> None:
    image = _smooth_image(120, 140)
    _, record = crop_person(image, (30.2, 100.7), size=(32, 32), mask=_disk((120, 140), (30, 105), 8), fit_margin_px=3,
                            image_id="frame_7")
    restored = CropRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert restored == record
    points = np.array([[0.0, 0.0], [31.0, 17.5]])
    np.testing.assert_array_equal(restored.crop_to_source(points), record.crop_to_source(points))


def test_from_dict_names_missing_and_unknown_keys() -> None:
    data = _record((10.0, 10.0), 0.3, 1.0).to_dict()
    del data["scale"]
    data["zoom"] = 2
    with pytest.raises(CropError, match=r"missing keys \['scale'\].*unknown keys \['zoom'\]"):
        CropRecord.from_dict(data)


def test_head_above_centre_gives_an_unrotated_window_with_zero_padding() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
    # Head straight above the centre, on a half-pixel column so the default anchor (63.5, 32)
    # lands on whole source pixels: x = u - 13, y = v - 12.
    crop, record = crop_person(image, (50.5, 20.0), size=(128, 128), center_xy=(50.5, 60.0))
    assert record.angle_rad == 0.0 and record.scale == 1.0
    expected = np.zeros_like(crop)
    expected[12:112, 13:113] = image
    np.testing.assert_array_equal(crop, expected)
    assert record.outside_fraction == pytest.approx(1 - 100 * 100 / 128 ** 2)
    np.testing.assert_allclose(record.corners, [(-13.5, -12.5), (114.5, -12.5), (114.5, 115.5),
                                                (-13.5, 115.5)])


def test_head_at_the_centre_gets_the_documented_orientation() -> None:
    assert body_angle((99.5, 99.5), (99.5, 99.5)) == 0.0
    image = np.zeros((200, 200), dtype=np.float64)
    image[129, 99] = 1.0  # 30 px below the centre pixel column 99
    crop, record = crop_person(image, (99.0, 99.0), size=(64, 64), center_xy=(99.0, 99.0))
    assert record.angle_rad == 0.0
    v, u = np.unravel_index(np.argmax(crop), crop.shape)
    assert (u, v) == (31, 16 + 30) or (u, v) == (32, 16 + 30)


@pytest.mark.parametrize("direction_deg", [0, 45, 90, 135, 180, 225, 270, 315])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_marked_body_point_lands_where_expected(direction_deg: int, scale: float) -> None:
    """The head sits at angle ``direction_deg`` around the centre (axes and all four
    quadrants). A blob 24 px toward the centre and 10 px to the person's crop-right must
    appear 24/scale px below and 10/scale px right of the head anchor, upright."""
    size = 301
    centre = np.array([150.0, 150.0])
    phi = math.radians(direction_deg)
    head = centre + 100 * np.array([math.cos(phi), math.sin(phi)])
    toward_centre = (centre - head) / np.linalg.norm(centre - head)
    # A proper rotation (no mirror) in y-down image coordinates: crop +u is crop +v turned
    # by -90 degrees, i.e. (d_y, -d_x) for body direction d.
    crop_right = np.array([toward_centre[1], -toward_centre[0]])
    blob_centre = head + 24 * toward_centre + 10 * crop_right
    ys, xs = np.mgrid[0:size, 0:size]
    image = np.exp(-((xs - blob_centre[0]) ** 2 + (ys - blob_centre[1]) ** 2) / (2 * 2.5 ** 2))
    crop, record = crop_person(image, tuple(head), size=(96, 96), scale=scale)
    vs, us = np.mgrid[0:96, 0:96]
    weights = crop / crop.sum()
    found = np.array([(us * weights).sum(), (vs * weights).sum()])
    expected = np.array(record.head_anchor) + np.array([10.0, 24.0]) / scale
    np.testing.assert_allclose(found, expected, atol=0.15)
    np.testing.assert_allclose(record.source_to_crop(blob_centre), expected, atol=1e-9)


# ----------------------------------------------------------------------------- coverage


def test_mask_fit_covers_the_whole_mask_inside_the_margin() -> None:
    shape = (300, 300)
    mask = np.zeros(shape, dtype=bool)
    mask[40:60, 140:160] = True          # head
    mask[55:170, 120:180] = True         # body, toward the centre
    _, fixed = crop_person(np.zeros(shape), (150, 50), size=(64, 64), scale=1.0, mask=mask)
    # Angle 0, scale 1: the crop spans x in [150 - 32, 150 + 32), y in [50 - 16, 50 + 48).
    in_window = mask[34:98, 118:182].sum()
    assert fixed.mask_coverage == pytest.approx(in_window / mask.sum())
    assert fixed.mask_coverage < 0.6
    _, fitted = crop_person(np.zeros(shape), (150, 50), size=(64, 64), mask=mask,
                            fit_margin_px=6)
    assert fitted.mask_coverage == 1.0 and fitted.scale > 1.5
    in_crop = crop_mask(mask, fitted)
    rows, cols = np.nonzero(in_crop > 0)
    assert rows.min() >= 5 and cols.min() >= 5 and rows.max() <= 58 and cols.max() <= 58
    # The fit is tight: the lowest body row reaches the bottom margin.
    assert rows.max() >= 55
    # The crop-space mask has the right area (px shrink by scale^2).
    assert (in_crop >= 0.5).sum() == pytest.approx(mask.sum() / fitted.scale ** 2, rel=0.08)


def test_max_scale_caps_the_fit_and_coverage_reports_the_cut() -> None:
    mask = np.zeros((300, 300), dtype=bool)
    mask[40:280, 120:180] = True
    _, record = crop_person(np.zeros((300, 300)), (150, 50), size=(64, 64), mask=mask,
                            max_scale=2.0)
    assert record.scale == 2.0
    assert 0.3 < record.mask_coverage < 1.0


# ----------------------------------------------------------------------------- reinsertion


@FAST
@given(
    people=st.lists(st.tuples(st.floats(10, 245), st.floats(10, 245), st.floats(4, 24)),
                    min_size=1, max_size=4),
    fit=st.booleans(),
)
def test_identity_refiner_round_trip(people, fit) -> None:
    image = _smooth_image(256, 256)
    crops, records, masks = [], [], []
    for x, y, radius in people:
        mask = _disk(image.shape[:2], (x, y + radius * 0.8), radius)
        crop, record = crop_person(image, (x, y), size=(64, 64), mask=mask if fit else None,
                                   fit_margin_px=4)
        crops.append(crop)
        records.append(record)
        masks.append(mask)
    out = reinsert(image, crops, records, masks)
    union = np.logical_or.reduce(masks)
    assert out.dtype == image.dtype and out.shape == image.shape
    np.testing.assert_array_equal(out[~union], image[~union])
    error = np.abs(out.astype(int) - image.astype(int))[union]
    assert error.max() <= 6 and error.mean() <= 1.0


@FAST
@given(
    head=st.tuples(st.floats(60, 100), st.floats(60, 100)),
    scale=st.floats(0.5, 2.0),
    gradient=st.tuples(st.floats(-2, 2), st.floats(-2, 2)),
)
def test_identity_round_trip_is_exact_on_a_linear_image(head, scale, gradient) -> None:
    """Bilinear sampling and the symmetric box prefilter reproduce a linear image exactly,
    so crop + reinsert must too (wherever the crop stays inside the frame)."""
    ys, xs = np.mgrid[0:160, 0:160].astype(np.float64)
    image = 500 + gradient[0] * xs + gradient[1] * ys
    crop, record = crop_person(image, head, size=(32, 32), scale=scale)
    corners = np.array(record.corners)
    assume(corners.min() > 2 and corners.max() < 157)
    # Only where the crop has full weight: in its outermost half pixel reinsertion samples
    # with edge clamping, which is not linear (and weighted by a near-zero feather).
    uv = record.source_to_crop(np.stack([xs, ys], axis=-1))
    mask = _disk(image.shape, head, 12) & (uv.min(axis=-1) >= 0) & (uv[..., 0] <= 31) & (
        uv[..., 1] <= 31)
    out = reinsert(image, [crop], [record], [mask])
    np.testing.assert_allclose(out[mask], image[mask], atol=1e-9)
    np.testing.assert_array_equal(out[~mask], image[~mask])


def test_crops_touching_the_border_reinsert_cleanly() -> None:
    image = _smooth_image(128, 160)
    heads = [(2.0, 64.0), (157.0, 3.0), (80.0, 126.0)]
    masks = [_disk((128, 160), head, 10) for head in heads]
    crops, records = zip(*(crop_person(image, head, size=(40, 40)) for head in heads))
    assert all(record.outside_fraction > 0.1 for record in records)
    out = reinsert(image, list(crops), list(records), masks)
    union = np.logical_or.reduce(masks)
    np.testing.assert_array_equal(out[~union], image[~union])
    assert np.abs(out.astype(int) - image.astype(int))[union].max() <= 4


def test_refined_values_land_under_the_own_mask_only() -> None:
    image = np.full((100, 100, 3), 50, dtype=np.uint8)
    mask_a = _disk((100, 100), (30, 40), 10)
    mask_b = _disk((100, 100), (45, 40), 10) & ~mask_a
    crop_a, record_a = crop_person(image, (30, 35), size=(64, 64))
    crop_b, record_b = crop_person(image, (45, 35), size=(64, 64))
    out = reinsert(image, [np.full_like(crop_a, 250), np.full_like(crop_b, 0)],
                   [record_a, record_b], [mask_a, mask_b])
    # Each crop covers both people, but each paints only its own person.
    assert (out[mask_a] >= 200).all() and (out[mask_b] <= 50).all()
    assert (out[_disk((100, 100), (38, 40), 5) & mask_b] == 0).all()
    np.testing.assert_array_equal(out[~(mask_a | mask_b)], image[~(mask_a | mask_b)])


def _max_step_inside(out: np.ndarray, mask: np.ndarray) -> float:
    """Largest difference between 4-neighbours that both lie in the mask."""
    dx = np.abs(np.diff(out, axis=1))[mask[:, 1:] & mask[:, :-1]]
    dy = np.abs(np.diff(out, axis=0))[mask[1:] & mask[:-1]]
    return float(max(dx.max(), dy.max()))


@pytest.mark.parametrize("heads", [
    [(100, 30), (170, 100), (60, 150), (120, 120)],
    [(100, 100), (110, 20), (30, 60)],
])
def test_overlapping_crops_leave_no_step_along_crop_borders(heads) -> None:
    """Crops refined to very different constants overlap on one person: the feathered,
    normalised blend changes by at most ~(range x smoothstep slope 1.5 / feather) per pixel,
    while the thesis' hard paste jumps by the full contrast at every crop border."""
    image = np.full((200, 200), 100.0)
    mask = _disk((200, 200), (100, 100), 85)
    levels = [20.0, 180.0, 60.0, 240.0][:len(heads)]
    records = [crop_person(image, head, size=(96, 96), scale=1.0)[1] for head in heads]
    crops = [np.full((96, 96), level) for level in levels]
    contrast = max(levels + [100.0]) - min(levels + [100.0])
    feather = 16.0
    smooth = _max_step_inside(reinsert(image, crops, records, [mask] * len(heads),
                                       feather_px=feather), mask)
    hard = _max_step_inside(reinsert(image, crops, records, [mask] * len(heads),
                                     feather_px=0), mask)
    bound = 2.0 * contrast / feather
    assert smooth <= bound
    assert hard > 2 * bound  # the check can fail: without feathering the seams show


def test_soft_float_masks_blend_proportionally() -> None:
    image = np.full((80, 80), 100, dtype=np.uint8)
    crop, record = crop_person(image, (40, 20), size=(64, 64))
    soft = np.zeros((80, 80), dtype=np.float32)
    soft[35:45, 35:45] = 0.25
    out = reinsert(image, [np.full_like(crop, 200)], [record], [soft])
    assert (out[35:45, 35:45] == 125).all()


# ----------------------------------------------------------------------------- errors


def test_head_outside_the_image_is_rejected() -> None:
    with pytest.raises(CropError, match=r"outside the 64x48 image"):
        crop_person(np.zeros((48, 64)), (70.0, 10.0), size=(16, 16))
    with pytest.raises(CropError, match="finite"):
        crop_person(np.zeros((48, 64)), (float("nan"), 10.0), size=(16, 16))


@pytest.mark.parametrize("size, message", [
    ((0, 128), "positive"), ((128, -2), "positive"), ((127, 128), "even"),
    ((128, 65), "even"), ((12.5, 12), "positive integers"), ("big", "integers"),
])
def test_bad_crop_sizes_are_rejected(size, message) -> None:
    with pytest.raises(CropError, match=message):
        crop_person(np.zeros((48, 64)), (30, 10), size=size)


def test_wrong_masks_are_rejected() -> None:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    with pytest.raises(CropError, match=r"shape \(64, 48\) but the image is \(48, 64\)"):
        crop_person(image, (30, 10), size=(16, 16), mask=np.ones((64, 48), dtype=bool))
    with pytest.raises(CropError, match="empty"):
        crop_person(image, (30, 10), size=(16, 16), mask=np.zeros((48, 64), dtype=bool))
    with pytest.raises(CropError, match=r"\[0, 1\]"):
        crop_person(image, (30, 10), size=(16, 16), mask=np.full((48, 64), 2.0))
    crop, record = crop_person(image, (30, 10), size=(16, 16))
    with pytest.raises(CropError, match=r"masks\[0\] has shape"):
        reinsert(image, [crop], [record], [np.ones((48, 63), dtype=bool)])


def test_reinsert_rejects_mismatched_inputs() -> None:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    mask = np.ones((48, 64), dtype=bool)
    crop, record = crop_person(image, (30, 10), size=(16, 16))
    with pytest.raises(CropError, match="one record and one mask per crop"):
        reinsert(image, [crop, crop], [record], [mask])
    with pytest.raises(CropError, match=r"crops\[0\] has shape \(16, 16\).*\(16, 16, 3\)"):
        reinsert(image, [crop[:, :, 0]], [record], [mask])
    with pytest.raises(CropError, match="64x48 image, but this image is 64x50"):
        reinsert(np.zeros((50, 64, 3), dtype=np.uint8), [crop], [record],
                 [np.ones((50, 64), dtype=bool)])
    with pytest.raises(CropError, match="feather_px"):
        reinsert(image, [crop], [record], [mask], feather_px=-1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    crops=st.lists(st.tuples(st.floats(20, 180), st.floats(20, 180), st.floats(0, 255),
                             st.floats(0.7, 1.5)), min_size=1, max_size=5),
)
def test_blend_slope_stays_within_the_feather_bound(crops) -> None:
    """Any number of crops, any angles and scales: between 4-neighbours inside the mask the
    result changes by at most sum_i max|grad w_i| x contrast. A smoothstep rises 1.5x faster
    than a linear ramp and a rotated 2-D feather adds up to sqrt(2), per crop pixel, which
    is ``scale`` source pixels."""
    feather = 12.0
    image = np.full((200, 200), 128.0)
    mask = _disk((200, 200), (100, 100), 90)
    records = [crop_person(image, (x, y), size=(64, 64), scale=scale)[1]
               for x, y, _, scale in crops]
    levels = [level for _, _, level, _ in crops]
    out = reinsert(image, [np.full((64, 64), level) for level in levels], records,
                   [mask] * len(crops), feather_px=feather)
    contrast = max(levels + [128.0]) - min(levels + [128.0])
    bound = sum(1.5 * math.sqrt(2) / (feather * r.scale) for r in records) * contrast
    assert _max_step_inside(out, mask) <= bound + 1e-9


def test_no_crops_returns_an_identical_copy() -> None:
    image = _smooth_image(32, 48)
    out = reinsert(image, [], [], [])
    np.testing.assert_array_equal(out, image)
    assert out is not image
