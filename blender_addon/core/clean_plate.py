"""A clean plate (the empty room) from frames that have people in them: ``make-plate``.

Many rooms are never empty, so the empty-room photo that a scene needs cannot be taken. This
module builds it from ordinary frames of the sensor:

1. Each frame's people are masked: from annotations (rotated person boxes, enlarged by a
   quarter), or, where there are none, from the frames' own disagreement (a pixel that differs
   from the per-pixel median of all frames by more than a robust threshold is someone passing).
2. The per-pixel median over the frames where the pixel is not masked.
3. Pixels that no frame shows (someone sat there all the time) are filled by a patch-based
   completion (coarse-to-fine PatchMatch with patch voting, after Wexler et al. 2007 and
   Barnes et al. 2009, in numpy): holes are filled by copying whole patches of the room's
   own texture, so carpet stays carpet instead of becoming a smudge. OpenCV's Telea or
   Navier-Stokes inpainting is the fallback (``method="telea"``/``"ns"``) and initialises the
   coarsest level.

The share of pixels inpainted is reported, over the whole image and over the image circle.
The plate reads only the frames it is given: pass training frames only (see
``core.cepdof_scene.LUNCH3_SPLITS``), never validation or test frames.

Command line::

    python -m blender_addon.core.clean_plate --frames a.jpg b.jpg c.jpg \
        [--annotations annotations.json] --out out/plate.png [--report out/plate.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from protocol.annotations import rbox_mask

INPAINT_METHODS = ("patchmatch", "telea", "ns")
# Person boxes are enlarged by this factor (both sides) before masking: annotators draw tight
# boxes and shadows, hair and chair legs stick out.
BOX_GROWTH = 1.25


class PlateError(ValueError):
    """Frames or masks that cannot make a plate; the message says what to change."""


@dataclass
class PlateResult:
    """The plate (H, W, 3 uint8), which pixels were inpainted, and the numbers that matter."""

    plate: np.ndarray
    inpainted: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Masks.


def masks_from_rboxes(rboxes_per_frame: Sequence[Sequence[Sequence[float]]], width: int, height: int,
                      growth: float = BOX_GROWTH) -> np.ndarray:
    """(F, H, W) bool: each frame's rotated person boxes ``[cx, cy, w, h, angle_deg]``, grown."""
    masks = np.zeros((len(rboxes_per_frame), height, width), dtype=bool)
    for index, rboxes in enumerate(rboxes_per_frame):
        for cx, cy, w, h, angle in rboxes:
            masks[index] |= rbox_mask((cx, cy, w * growth, h * growth, angle), width, height)
    return masks


def masks_from_disagreement(frames: np.ndarray, threshold: float | None = None,
                            min_threshold: float = 12.0, grow_px: int | None = None) -> np.ndarray:
    """(F, H, W) bool: pixels that disagree with the per-pixel median of the frames.

    The difference is the channel mean of ``|frame - median|`` after a small blur (JPEG noise).
    The threshold defaults to 4 robust standard deviations of that difference over the whole
    stack (1.4826 * its median absolute value), and at least ``min_threshold`` grey levels. The
    mask is then closed, cleaned of specks and grown so that a person's soft edges go too.
    People who never move are part of the median and cannot be found this way: annotate them.
    """
    stack = np.asarray(frames, dtype=np.float32)
    median = np.median(stack, axis=0)
    height, width = stack.shape[1:3]
    sigma = max(1.0, min(height, width) / 512.0)
    diff = np.abs(stack - median[None]).mean(axis=3)
    diff = np.stack([ndimage.gaussian_filter(d, sigma) for d in diff])
    if threshold is None:
        threshold = max(min_threshold, 4.0 * 1.4826 * float(np.median(diff)))
    grow = grow_px if grow_px is not None else max(1, round(min(height, width) / 128))
    structure = np.ones((3, 3), dtype=bool)
    masks = np.zeros(diff.shape, dtype=bool)
    for index, d in enumerate(diff):
        mask = d > threshold
        mask = ndimage.binary_opening(mask, structure)
        mask = ndimage.binary_closing(mask, structure, iterations=grow)
        masks[index] = ndimage.binary_dilation(mask, structure, iterations=grow)
    return masks


def image_circle_mask(width: int, height: int, circle: tuple[float, float, float] | None) -> np.ndarray:
    """(H, W) bool: pixel centres inside the image circle ``(cx, cy, r)``; all True for None."""
    if circle is None:
        return np.ones((height, width), dtype=bool)
    cx, cy, r = circle
    ys, xs = np.mgrid[0:height, 0:width]
    return (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r * r


# ---------------------------------------------------------------------------------------------
# Masked median.


def masked_median(frames: np.ndarray, masks: np.ndarray, rows_per_chunk: int = 128
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median over the frames where the pixel is not masked.

    Returns (median (H, W, C) float32 with 0 where no frame shows the pixel, holes (H, W) bool).
    Sorting with masked values pushed to +inf is much faster than ``np.nanmedian``.
    """
    frames = np.asarray(frames)
    count, height, width = frames.shape[:3]
    if masks.shape != (count, height, width):
        raise PlateError(f"masks have shape {masks.shape}, frames need {(count, height, width)}")
    channels = frames.shape[3]
    out = np.zeros((height, width, channels), dtype=np.float32)
    seen = (~masks).sum(axis=0)
    for y0 in range(0, height, rows_per_chunk):
        y1 = min(height, y0 + rows_per_chunk)
        block = frames[:, y0:y1].astype(np.float32)
        block[masks[:, y0:y1]] = np.inf
        block.sort(axis=0)
        n = seen[y0:y1]
        lo = np.clip((n - 1) // 2, 0, count - 1)
        hi = np.clip(n // 2, 0, count - 1)
        a = np.take_along_axis(block, lo[None, :, :, None].repeat(channels, 3), axis=0)[0]
        b = np.take_along_axis(block, hi[None, :, :, None].repeat(channels, 3), axis=0)[0]
        med = (a + b) / 2.0
        med[n == 0] = 0.0
        out[y0:y1] = med
    return out, seen == 0


# ---------------------------------------------------------------------------------------------
# Patch-based completion.


def _downsample(image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Halve an image averaging only valid pixels; a coarse pixel is valid if any fine one is."""
    h2, w2 = image.shape[0] // 2, image.shape[1] // 2
    img = image[: h2 * 2, : w2 * 2].reshape(h2, 2, w2, 2, -1)
    val = valid[: h2 * 2, : w2 * 2].reshape(h2, 2, w2, 2, 1).astype(np.float32)
    weight = val.sum(axis=(1, 3))
    mean = (img * val).sum(axis=(1, 3)) / np.maximum(weight, 1e-6)
    return mean.astype(np.float32), weight[..., 0] > 0


class _Level:
    """One pyramid level: image, hole, source region and the PatchMatch state."""

    def __init__(self, image: np.ndarray, hole: np.ndarray, region: np.ndarray, radius: int) -> None:
        self.image, self.hole, self.region, self.r = image, hole, region, radius
        structure = np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool)
        # A source patch must lie inside the region, away from the hole and the borders.
        bad = ndimage.binary_dilation(hole | ~region, structure)
        source = ~bad
        source[:radius] = source[-radius:] = False
        source[:, :radius] = source[:, -radius:] = False
        self.source = source
        # Targets: patch centres whose patch touches the hole (and stays inside the image).
        target = ndimage.binary_dilation(hole, structure)
        target[:radius] = target[-radius:] = False
        target[:, :radius] = target[:, -radius:] = False
        self.target = target
        self.ty, self.tx = np.nonzero(target)
        self.sy_all, self.sx_all = np.nonzero(source)
        # Sources are looked for near the hole: a hole in the carpet copies carpet, not the
        # wall across the room (smooth walls otherwise win against a smooth first guess).
        depth = float(ndimage.distance_transform_edt(hole).max()) if hole.any() else 0.0
        self.window = int(max(3 * depth, 8 * radius, 16))
        offsets = np.arange(-radius, radius + 1)
        self.oy, self.ox = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))

    def patches(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return self.image[ys[:, None] + self.oy[None], xs[:, None] + self.ox[None]]

    def distance(self, target_patches: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
        diff = target_patches - self.patches(sy, sx)
        return np.einsum("npc,npc->n", diff, diff)

    def random_sources(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.integers(0, len(self.sy_all), count)
        return self.sy_all[pick], self.sx_all[pick]

    def local_sources(self, ty: np.ndarray, tx: np.ndarray, rng: np.random.Generator,
                      tries: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """A random valid source within the window of each target (global where none is)."""
        height, width = self.hole.shape
        sy, sx = self.random_sources(len(ty), rng)
        todo = np.ones(len(ty), dtype=bool)
        for _ in range(tries):
            n = int(todo.sum())
            if n == 0:
                break
            cy = np.clip(ty[todo] + rng.integers(-self.window, self.window + 1, n), 0, height - 1)
            cx = np.clip(tx[todo] + rng.integers(-self.window, self.window + 1, n), 0, width - 1)
            ok = self.source[cy, cx]
            index = np.nonzero(todo)[0][ok]
            sy[index], sx[index] = cy[ok], cx[ok]
            todo[index] = False
        return sy, sx


def _consider(level: _Level, target_patches: np.ndarray, ty: np.ndarray, tx: np.ndarray,
              by: np.ndarray, bx: np.ndarray, best: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> None:
    """Replace matches (by, bx, best: updated in place) by candidates (cy, cx) that are closer
    and within the level's window around the targets (ty, tx)."""
    height, width = level.hole.shape
    ok = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
    ok &= (np.abs(cy - ty) <= level.window) & (np.abs(cx - tx) <= level.window)
    cy, cx = np.where(ok, cy, by), np.where(ok, cx, bx)
    ok &= level.source[cy, cx]
    if not ok.any():
        return
    d = np.full(len(cy), np.inf)
    d[ok] = level.distance(target_patches[ok], cy[ok], cx[ok])
    better = d < best
    by[better], bx[better], best[better] = cy[better], cx[better], d[better]


def _patchmatch_level(level: _Level, ny: np.ndarray, nx: np.ndarray, iterations: int,
                      rng: np.random.Generator, chunk: int = 40000) -> tuple[np.ndarray, np.ndarray]:
    """Improve the nearest-neighbour field (ny, nx per target) and re-vote the hole pixels."""
    height, width = level.hole.shape
    for iteration in range(iterations):
        field_y = np.zeros((height, width), dtype=np.int64)
        field_x = np.zeros((height, width), dtype=np.int64)
        grid_y, grid_x = np.mgrid[0:height, 0:width]
        field_y[:], field_x[:] = grid_y, grid_x  # known pixels map onto themselves
        field_y[level.ty, level.tx], field_x[level.ty, level.tx] = ny, nx
        for start in range(0, len(level.ty), chunk):
            ty, tx = level.ty[start:start + chunk], level.tx[start:start + chunk]
            tp = level.patches(ty, tx)
            by, bx = ny[start:start + chunk].copy(), nx[start:start + chunk].copy()
            best = level.distance(tp, by, bx)

            # Propagation: a neighbour's match, shifted back by the step to that neighbour
            # (alternating scan direction as in PatchMatch, all targets at once).
            step = 1 if iteration % 2 == 0 else -1
            for dy, dx in ((step, 0), (0, step), (2 * step, 0), (0, 2 * step)):
                py, px = np.clip(ty - dy, 0, height - 1), np.clip(tx - dx, 0, width - 1)
                _consider(level, tp, ty, tx, by, bx, best, field_y[py, px] + dy, field_x[py, px] + dx)
            # Random search in shrinking windows around the current match.
            radius = level.window
            while radius >= 1:
                _consider(level, tp, ty, tx, by, bx, best, by + rng.integers(-radius, radius + 1, len(by)),
                          bx + rng.integers(-radius, radius + 1, len(bx)))
                radius //= 2
            # A fresh random source now and then escapes poor local minima.
            ry, rx = level.local_sources(ty, tx, rng)
            _consider(level, tp, ty, tx, by, bx, best, ry, rx)
            ny[start:start + chunk], nx[start:start + chunk] = by, bx
        _vote(level, ny, nx)
    return ny, nx


def _vote(level: _Level, ny: np.ndarray, nx: np.ndarray) -> None:
    """Each hole pixel becomes the mean of what the patches covering it propose."""
    height, width = level.hole.shape
    channels = level.image.shape[2]
    acc = np.zeros((height * width, channels), dtype=np.float64)
    weight = np.zeros(height * width, dtype=np.float64)
    for oy, ox in zip(level.oy, level.ox):
        qy, qx = level.ty + oy, level.tx + ox
        inside = level.hole[qy, qx]
        if not inside.any():
            continue
        flat = qy[inside] * width + qx[inside]
        values = level.image[ny[inside] + oy, nx[inside] + ox]
        np.add.at(weight, flat, 1.0)
        for c in range(channels):
            acc[:, c] += np.bincount(flat, weights=values[:, c], minlength=height * width)
    filled = weight > 0
    image = level.image.reshape(-1, channels)
    image[filled] = (acc[filled] / weight[filled, None]).astype(np.float32)


def texture_energy(image: np.ndarray, hole: np.ndarray, radius: int, gain: float = 2.0) -> np.ndarray:
    """Local standard deviation of the brightness over known pixels (x ``gain``), (H, W)."""
    grey = np.asarray(image, dtype=np.float32)[..., :3].mean(axis=2)
    known = (~hole).astype(np.float32)
    size = 2 * radius + 1
    weight = ndimage.uniform_filter(known, size)
    mean = ndimage.uniform_filter(grey * known, size) / np.maximum(weight, 1e-6)
    square = ndimage.uniform_filter(grey * grey * known, size) / np.maximum(weight, 1e-6)
    energy = np.sqrt(np.maximum(square - mean * mean, 0.0)) * gain
    energy[hole] = 0.0
    return energy.astype(np.float32)


def patch_inpaint(image: np.ndarray, hole: np.ndarray, region: np.ndarray | None = None, *,
                  patch: int = 7, work_side: int = 256, iterations: int = 6, seed: int = 0
                  ) -> np.ndarray:
    """Fill ``hole`` in ``image`` (H, W, C) with patches copied from ``region`` minus the hole.

    Coarse to fine: the coarsest level (holes a few patches wide) starts from the nearest known
    pixels;
    each level runs PatchMatch (propagation + random search) and patch voting, and hands its
    nearest-neighbour field up. Levels above ``work_side`` pixels are not searched: the field is
    upsampled and each hole pixel copies its source pixel directly, so full-resolution texture
    is copied, not averaged.
    """
    if patch % 2 == 0 or patch < 3:
        raise PlateError(f"patch must be odd and >= 3, got {patch}")
    rng = np.random.default_rng(seed)
    radius = patch // 2
    image = np.asarray(image, dtype=np.float32).copy()
    hole = np.asarray(hole, dtype=bool)
    region = np.ones(hole.shape, dtype=bool) if region is None else np.asarray(region, dtype=bool)
    if not hole.any():
        return image
    if not (region & ~hole).any():
        raise PlateError("nothing outside the hole to copy texture from")
    # A texture-energy channel (local standard deviation of the brightness at full
    # resolution): at coarse levels carpet and a plain door have the same mean colour, and
    # only this channel tells them apart, so carpet holes are filled with carpet.
    channels = image.shape[2]
    image = np.concatenate([image, texture_energy(image, hole, radius)[..., None]], axis=2)
    # Pyramid: halve until the largest hole is a few patches across or the image is small.
    images, holes, regions = [image], [hole], [region & ~hole | hole]
    while min(images[-1].shape[:2]) > 8 * patch:
        distance = ndimage.distance_transform_edt(holes[-1])
        if distance.max() <= 2 * patch and max(images[-1].shape[:2]) <= work_side:
            break
        img, known = _downsample(images[-1], ~holes[-1])
        reg = _downsample(regions[-1].astype(np.float32)[..., None], np.ones(holes[-1].shape, bool))[0][..., 0] > 0.5
        images.append(img)
        holes.append(~known)
        regions.append(reg)
    # Coarsest level: each hole pixel starts as its nearest known pixel (not a smooth
    # diffusion fill: a smooth first guess is best matched by smooth walls, not by carpet).
    coarse = images[-1]
    _, (iy, ix) = ndimage.distance_transform_edt(holes[-1], return_indices=True)
    coarse[holes[-1]] = coarse[iy[holes[-1]], ix[holes[-1]]]
    ny = nx = None
    previous: _Level | None = None
    for depth in range(len(images) - 1, -1, -1):
        img, hl, reg = images[depth], holes[depth], regions[depth]
        if previous is not None:
            # Upsample the coarser solution into this level's hole.
            up = np.repeat(np.repeat(previous.image, 2, axis=0), 2, axis=1)
            pad_y, pad_x = img.shape[0] - up.shape[0], img.shape[1] - up.shape[1]
            up = np.pad(up, ((0, pad_y), (0, pad_x), (0, 0)), mode="edge")
            img[hl] = up[hl]
        level = _Level(img, hl, reg, radius)
        if len(level.sy_all) == 0:
            raise PlateError("no complete patch outside the hole; use a smaller patch")
        if previous is None or ny is None:
            ny, nx = level.local_sources(level.ty, level.tx, rng)
        else:
            # Coarse field -> this level: double the source, keep the sub-pixel phase.
            coarse_y = np.clip(level.ty // 2, 0, previous.hole.shape[0] - 1)
            coarse_x = np.clip(level.tx // 2, 0, previous.hole.shape[1] - 1)
            field_y = np.zeros(previous.hole.shape, dtype=np.int64)
            field_x = np.zeros(previous.hole.shape, dtype=np.int64)
            gy, gx = np.mgrid[0:previous.hole.shape[0], 0:previous.hole.shape[1]]
            field_y[:], field_x[:] = gy, gx
            field_y[previous.ty, previous.tx], field_x[previous.ty, previous.tx] = ny, nx
            ny = field_y[coarse_y, coarse_x] * 2 + level.ty % 2
            nx = field_x[coarse_y, coarse_x] * 2 + level.tx % 2
            bad = ~level.source[np.clip(ny, 0, hl.shape[0] - 1), np.clip(nx, 0, hl.shape[1] - 1)]
            bad |= (ny >= hl.shape[0]) | (nx >= hl.shape[1])
            ry, rx = level.local_sources(level.ty[bad], level.tx[bad], rng)
            ny[bad], nx[bad] = ry, rx
        if max(img.shape[:2]) <= work_side:
            ny, nx = _patchmatch_level(level, ny, nx, iterations, rng)
        else:
            # Too big to search: copy each hole pixel's source pixel (sharp texture).
            inside = hl[level.ty, level.tx]
            img[level.ty[inside], level.tx[inside]] = img[ny[inside], nx[inside]]
            # Hole pixels within the border margin have no target entry: keep the upsampled value.
        previous = level
    return images[0][..., :channels]


def opencv_inpaint(image: np.ndarray, hole: np.ndarray, method: str = "telea") -> np.ndarray:
    """OpenCV's diffusion inpainting (the fallback): smooth, no texture."""
    import cv2

    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    radius = max(3, round(min(hole.shape) / 256))
    img8 = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    return cv2.inpaint(img8, hole.astype(np.uint8), radius, flag).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The plate.


def make_plate(frames: np.ndarray, masks: np.ndarray | None = None, *,
               circle: tuple[float, float, float] | None = None, method: str = "patchmatch",
               patch: int = 7, work_side: int = 256, seed: int = 0) -> PlateResult:
    """The clean plate of ``frames`` (F, H, W, 3 uint8).

    ``masks`` (F, H, W bool, True = a person) come from annotations
    (:func:`masks_from_rboxes`); without them the frames' disagreement is used
    (:func:`masks_from_disagreement`). ``circle`` (cx, cy, r) restricts inpainting sources to
    the image circle and the reported share to it.
    """
    if method not in INPAINT_METHODS:
        raise PlateError(f"unknown inpainting method {method!r}; valid: {', '.join(INPAINT_METHODS)}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or len(frames) < 1:
        raise PlateError(f"frames must be (F, H, W, 3), got shape {frames.shape}")
    started = time.perf_counter()
    mask_source = "annotations"
    if masks is None:
        mask_source = "disagreement"
        masks = masks_from_disagreement(frames)
    median, hole = masked_median(frames, np.asarray(masks, dtype=bool))
    height, width = hole.shape
    region = image_circle_mask(width, height, circle)
    hole &= region | ~region.any()
    if method == "patchmatch" and hole.any():
        filled = patch_inpaint(median, hole, region, patch=patch, work_side=work_side, seed=seed)
    elif hole.any():
        filled = opencv_inpaint(median, hole, method)
    else:
        filled = median
    plate = np.clip(np.rint(filled), 0, 255).astype(np.uint8)
    report = {
        "frames": len(frames),
        "size": [int(width), int(height)],
        "mask_source": mask_source,
        "masked_share_per_frame": [round(float(m.mean()), 5) for m in masks],
        "inpainted_share": round(float(hole.mean()), 5),
        "inpainted_share_of_circle": round(float(hole[region].mean()), 5),
        "inpainted_pixels": int(hole.sum()),
        "method": method,
        "circle": None if circle is None else [round(float(v), 2) for v in circle],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return PlateResult(plate=plate, inpainted=hole, report=report)


def load_frames(paths: Sequence[str | Path]) -> np.ndarray:
    """Read frames as one (F, H, W, 3) uint8 array; all must have the same size."""
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise PlateError(f"frames differ in size: {sorted(sizes)}; use frames of one sensor")
    return np.stack(arrays)


def rboxes_for_frames(annotations_json: str | Path, frame_paths: Sequence[str | Path]
                      ) -> list[list[list[float]]]:
    """The rotated person boxes of each frame, read from a CEPDOF-style ``annotations.json``
    (matched by file name). A frame absent from the file raises: unannotated people would
    leak into the plate."""
    data = json.loads(Path(annotations_json).read_text(encoding="utf-8"))
    by_name = {str(img["file_name"]): img["id"] for img in data["images"]}
    boxes: dict[Any, list[list[float]]] = {}
    for entry in data["annotations"]:
        boxes.setdefault(entry["image_id"], []).append([float(v) for v in entry["bbox"]])
    result = []
    for path in frame_paths:
        name = Path(path).name
        if name not in by_name:
            raise PlateError(f"{name} is not in {annotations_json}; annotate it or leave out "
                             "--annotations to mask by disagreement")
        result.append(boxes.get(by_name[name], []))
    return result


def save_plate(result: PlateResult, out: str | Path, report_path: str | Path | None = None) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.plate).save(out, quality=95) if out.suffix.lower() in (".jpg", ".jpeg") \
        else Image.fromarray(result.plate).save(out)
    Image.fromarray((result.inpainted * 255).astype(np.uint8)).save(out.with_name(out.stem + "_inpainted.png"))
    if report_path is not None:
        Path(report_path).write_text(json.dumps(result.report, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Under ``protocol.cli.run_main``: one-line errors (exit 2), --debug for the traceback,
    exit 128 + N on SIGTERM/SIGINT/SIGHUP."""
    from protocol.cli import run_main

    return run_main(_main, argv, prog="make-plate")


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make-plate", description="Clean plate (empty room) from frames with people in them.")
    parser.add_argument("--frames", nargs="+", required=True,
                        help="the frames to use (training frames only, never evaluation frames)")
    parser.add_argument("--annotations", type=Path,
                        help="CEPDOF-style annotations.json with the frames' person boxes "
                             "(default: mask people by the frames' disagreement)")
    parser.add_argument("--growth", type=float, default=BOX_GROWTH,
                        help=f"person box enlargement (default {BOX_GROWTH})")
    parser.add_argument("--circle", type=float, nargs=3, metavar=("CX", "CY", "R"),
                        help="image circle; default: found from the frames (core.camera_fit)")
    parser.add_argument("--method", choices=INPAINT_METHODS, default="patchmatch")
    parser.add_argument("--work-side", type=int, default=256,
                        help="largest pyramid level that is searched; finer levels copy the found patches (default 256 px)")
    parser.add_argument("--out", type=Path, required=True, help="plate image (.png or .jpg)")
    parser.add_argument("--report", type=Path, help="JSON report (default: beside --out)")
    args = parser.parse_args(argv)
    try:
        frames = load_frames(args.frames)
        masks = None
        if args.annotations:
            rboxes = rboxes_for_frames(args.annotations, args.frames)
            masks = masks_from_rboxes(rboxes, frames.shape[2], frames.shape[1], args.growth)
        circle = tuple(args.circle) if args.circle else None
        if circle is None:
            from blender_addon.core.camera_fit import find_image_circle

            circle = find_image_circle(frames).as_tuple()
        result = make_plate(frames, masks, circle=circle, method=args.method,
                            work_side=args.work_side)
    except PlateError as exc:
        print(f"make-plate: {exc}", file=sys.stderr)
        return 2
    report = args.report or args.out.with_suffix(".json")
    save_plate(result, args.out, report)
    r = result.report
    print(f"plate {args.out}: {r['frames']} frames, masks from {r['mask_source']}, "
          f"inpainted {100 * r['inpainted_share']:.2f}% of the image "
          f"({100 * r['inpainted_share_of_circle']:.2f}% of the image circle) by {r['method']} "
          f"in {r['seconds']} s; report {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
