"""Crop and reinsert 20 people in a 2048x2048 frame, against a full-frame PIL baseline.

Ours (``protocol.crops``) touches only each crop's footprint. The baseline is the plain way
to do the same with an imaging library: per person one ``PIL.Image.transform`` to cut the
crop, one full-frame ``transform`` each for the crop and its coverage to paste it back, and a
full-frame ``Image.composite`` under the person's mask (no feathering). Both run on the same
frame, heads and masks; the table reports the median of several runs and the speed-up, and
checks that both produce nearly the same pixels so the comparison is like for like.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from bench.report import print_table, write_result
from protocol.crops import CropRecord, body_angle, crop_person, reinsert

FRAME = 2048
PEOPLE = 20
CROP = (128, 128)
REPEATS = 3
SEED = 7


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]], list[np.ndarray]]:
    """A textured frame and 20 people: heads around the centre, capsule masks toward it."""
    ys, xs = np.mgrid[0:FRAME, 0:FRAME].astype(np.float32)
    frame = np.stack([128 + 60 * np.sin(xs / 37), 128 + 60 * np.cos(ys / 29),
                      128 + 50 * np.sin((xs + ys) / 53)], axis=-1)
    frame = np.clip(frame + rng.normal(0, 8, frame.shape), 0, 255).astype(np.uint8)
    centre = np.array([(FRAME - 1) / 2] * 2)
    heads, masks = [], []
    for k in range(PEOPLE):
        phi = 2 * math.pi * k / PEOPLE + rng.uniform(-0.1, 0.1)
        radius = rng.uniform(250, 900)
        head = centre + radius * np.array([math.cos(phi), math.sin(phi)])
        feet = head + 70 * (centre - head) / np.linalg.norm(centre - head)
        x0, y0 = np.floor(np.minimum(head, feet) - 25).astype(int)
        x1, y1 = np.ceil(np.maximum(head, feet) + 25).astype(int)
        sub_y, sub_x = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        axis = feet - head
        t = np.clip(((sub_x - head[0]) * axis[0] + (sub_y - head[1]) * axis[1]) / (axis @ axis), 0, 1)
        inside = np.hypot(sub_x - head[0] - t * axis[0], sub_y - head[1] - t * axis[1]) <= 18
        mask = np.zeros((FRAME, FRAME), dtype=bool)
        mask[y0:y1, x0:x1] = inside
        heads.append((float(head[0]), float(head[1])))
        masks.append(mask)
    return frame, heads, masks


def _pil_affine(record: CropRecord, inverse: bool) -> tuple[float, ...]:
    """PIL AFFINE coefficients (output -> input, pixel centres at +0.5) for crop -> source
    (``inverse=False``: used to cut the crop) or source -> crop (to paste it back)."""
    linear = record.matrix
    head = np.asarray(record.head_xy)
    anchor = np.asarray(record.head_anchor)
    if inverse:
        linear = np.linalg.inv(linear)
        head, anchor = anchor, head
    offset = head + 0.5 - linear @ (anchor + 0.5)
    return (linear[0, 0], linear[0, 1], offset[0], linear[1, 0], linear[1, 1], offset[1])


def _geometry(head: tuple[float, float]) -> CropRecord:
    """The same crop geometry ``crop_person`` uses at scale 1, without cutting anything."""
    centre = ((FRAME - 1) / 2, (FRAME - 1) / 2)
    return CropRecord(
        image_id="", image_size=(FRAME, FRAME), head_xy=head, center_xy=centre,
        angle_rad=body_angle(head, centre), scale=1.0, crop_size=CROP,
        head_anchor=((CROP[0] - 1) / 2, CROP[1] / 4), corners=((0.0, 0.0),) * 4,
        outside_fraction=0.0, mask_coverage=None)


def run_ours(frame: np.ndarray, heads, masks, fit: bool) -> np.ndarray:
    crops, records = [], []
    for head, mask in zip(heads, masks):
        crop, record = crop_person(frame, head, size=CROP, mask=mask if fit else None)
        crops.append(crop)
        records.append(record)
    return reinsert(frame, crops, records, masks)


def run_baseline(frame: np.ndarray, heads, masks) -> np.ndarray:
    image = Image.fromarray(frame)
    result = image.copy()
    size = image.size
    for head, mask in zip(heads, masks):
        record = _geometry(head)
        crop = image.transform(CROP, Image.Transform.AFFINE, _pil_affine(record, False),
                               resample=Image.Resampling.BILINEAR)
        back = crop.transform(size, Image.Transform.AFFINE, _pil_affine(record, True),
                              resample=Image.Resampling.BILINEAR)
        covered = Image.new("L", CROP, 255).transform(
            size, Image.Transform.AFFINE, _pil_affine(record, True),
            resample=Image.Resampling.NEAREST)
        paste = Image.fromarray(np.asarray(covered) & (mask.astype(np.uint8) * 255))
        result = Image.composite(back, result, paste)
    return np.asarray(result)


def _median_seconds(work: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    times, output = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        output = work()
        times.append(time.perf_counter() - start)
    assert output is not None
    return statistics.median(times), output


def main() -> None:
    rng = np.random.default_rng(SEED)
    frame, heads, masks = _scene(rng)
    union = np.logical_or.reduce(masks)
    base_s, base_out = _median_seconds(lambda: run_baseline(frame, heads, masks))
    ours_s, ours_out = _median_seconds(lambda: run_ours(frame, heads, masks, fit=False))
    fit_s, fit_out = _median_seconds(lambda: run_ours(frame, heads, masks, fit=True))
    # Like for like: both identity round trips stay close to the frame inside the masks
    # and leave every other pixel untouched.
    diff_ours = float(np.abs(ours_out.astype(int) - frame.astype(int))[union].mean())
    diff_fit = float(np.abs(fit_out.astype(int) - frame.astype(int))[union].mean())
    diff_base = float(np.abs(base_out.astype(int) - frame.astype(int))[union].mean())
    untouched = bool(all(np.array_equal(out[~union], frame[~union])
                         for out in (ours_out, fit_out, base_out)))
    rows = [
        ["baseline: PIL full-frame transform per person", base_s, 1.0, diff_base],
        ["ours: footprint-only crop + feathered reinsert", ours_s, base_s / ours_s, diff_ours],
        ["ours, scale fitted to each mask", fit_s, base_s / fit_s, diff_fit],
    ]
    print_table(f"crop + reinsert {PEOPLE} people, {FRAME}x{FRAME} RGB, {CROP[0]}x{CROP[1]} crops "
                f"(median of {REPEATS})",
                ["method", "seconds", "speed-up", "mean |err| in masks"], rows)
    print(f"pixels outside the masks untouched by all three: {untouched}")
    write_result("crops", {
        "frame": [FRAME, FRAME], "people": PEOPLE, "crop_size": list(CROP), "repeats": REPEATS,
        "baseline": "PIL.Image.transform full-frame paste-back per person + Image.composite",
        "baseline_seconds": base_s, "ours_seconds": ours_s, "ours_fitted_seconds": fit_s,
        "speedup": base_s / ours_s, "speedup_fitted": base_s / fit_s,
        "mean_abs_error_in_masks": {"ours": diff_ours, "ours_fitted": diff_fit,
                                    "baseline": diff_base},
        "outside_masks_untouched": untouched,
    })


if __name__ == "__main__":
    main()
