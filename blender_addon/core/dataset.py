"""Frame annotations and dataset files, in numpy: no Blender needed.

From a render's passes (instance ids of the visible people, each person's unoccluded mask)
and the 3D head centres, ``annotate_people`` derives per person: the person box (axis
aligned, of the visible mask), a rotated box ``[cx, cy, w, h, angle_deg]`` in the CEPDOF
convention (h along the body's long axis, angle clockwise in the image), the head point
(fisheye projection of the 3D head centre), the head box (projection of a head-sized
sphere), visibility (visible / unoccluded pixels) and COCO RLE masks.

Dataset folder (see docs/dataset_format.md)::

    images/<frame>.png   masks/<frame>.png (uint16 instance ids)   frames/<frame>.json
    soft_masks/<frame>_<instance>.png (8-bit coverage of one person; protocol.coverage)
    coco.json (rebuilt from frames/*.json)   run_config.json

Pixel convention: (0, 0) is the top-left corner of the image; pixel centres are at +0.5.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blender_addon.core.fisheye import CyclesCameraSettings, FisheyeCamera
from protocol.coco import rle_encode
from protocol.coverage import coverage_png_bytes
from protocol.fileio import atomic_write_bytes, atomic_write_json

CATEGORIES = [{"id": 1, "name": "person", "keypoints": ["head"], "skeleton": []}]
COCO_FILE = "coco.json"


# ---------------------------------------------------------------------------------------------
# Colour and compositing.


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    srgb = np.asarray(srgb, dtype=np.float32)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(np.asarray(linear, dtype=np.float32), 0.0, None)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def load_photo_linear(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The room photo resized to ``size`` (w, h), as linear float RGB (H, W, 3)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        if rgb.size != tuple(size):
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        return srgb_to_linear(np.asarray(rgb, dtype=np.float32) / 255.0)


def composite_over_photo(combined_rgba: np.ndarray, shadow_catcher: np.ndarray | None,
                         photo_linear: np.ndarray) -> np.ndarray:
    """People over the photo, with their shadows: ``C + (1 - a) * photo * shadow``.

    ``combined_rgba`` is Cycles' premultiplied Combined pass of a transparent film (the
    shadow catcher and holdouts are transparent in it); ``shadow_catcher`` is Cycles' Shadow
    Catcher pass, the factor by which the people darken what the catcher floor receives.
    Returns 8-bit sRGB (H, W, 3).
    """
    rgb, alpha = combined_rgba[..., :3], combined_rgba[..., 3:4]
    background = photo_linear
    if shadow_catcher is not None:
        background = background * np.clip(shadow_catcher[..., :3], 0.0, 1.0)
    linear = rgb + (1.0 - np.clip(alpha, 0.0, 1.0)) * background
    return (np.clip(linear_to_srgb(linear), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Geometry of one person's annotation.


def mask_bbox(mask: np.ndarray) -> list[float]:
    """``[x, y, w, h]`` of the pixels set in ``mask`` (pixel edges, COCO)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def mask_rbox(mask: np.ndarray, image_center: tuple[float, float]) -> list[float]:
    """Rotated box ``[cx, cy, w, h, angle_deg]`` around the mask's pixels (CEPDOF convention).

    The box's h axis is the mask's principal axis; the angle is the clockwise rotation of that
    axis from image-up, in (-90, 90]. The box covers every pixel square of the mask.
    ``image_center`` breaks the tie for round blobs: their long axis is taken radial, which is
    how an upright person looks through a ceiling fisheye.
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [0.0, 0.0, 0.0, 0.0, 0.0]
    points = np.stack([xs + 0.5, ys + 0.5], axis=1).astype(np.float64)
    mean = points.mean(axis=0)
    centred = points - mean
    cov = centred.T @ centred / max(1, len(points))
    eigvals, eigvecs = np.linalg.eigh(cov)
    axis = eigvecs[:, 1]
    if eigvals[1] - eigvals[0] < 1e-3 * max(eigvals[1], 1e-9):
        radial = mean - np.asarray(image_center, dtype=np.float64)
        norm = np.linalg.norm(radial)
        axis = radial / norm if norm > 1e-9 else np.array([0.0, 1.0])
    across = np.array([-axis[1], axis[0]])
    # Pixel squares: the corners reach half a pixel past the centres in x and y.
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    along = centred @ axis
    side = centred @ across
    reach_along = np.abs(corners @ axis).max()
    reach_side = np.abs(corners @ across).max()
    a_min, a_max = along.min() - reach_along, along.max() + reach_along
    s_min, s_max = side.min() - reach_side, side.max() + reach_side
    centre = mean + axis * (a_min + a_max) / 2 + across * (s_min + s_max) / 2
    # Image coordinates have y down: "up" is (0, -1); clockwise angle of the axis from up.
    angle = math.degrees(math.atan2(axis[0], -axis[1]))
    if angle > 90:
        angle -= 180
    elif angle <= -90:
        angle += 180
    return [float(centre[0]), float(centre[1]), float(s_max - s_min), float(a_max - a_min), float(angle)]


def sphere_points(center: np.ndarray, radius: float, n: int = 200) -> np.ndarray:
    """Points spread evenly over a sphere (golden spiral)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    r = np.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * k
    return np.asarray(center)[None, :] + radius * np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def head_box(camera: FisheyeCamera, settings: CyclesCameraSettings, head: np.ndarray,
             radius: float) -> list[float]:
    """``[x, y, w, h]`` of a head-sized sphere's projection, clipped to the image."""
    pixels, _ = camera.project(sphere_points(head, radius), settings)
    x0 = float(np.clip(pixels[:, 0].min(), 0, camera.width))
    y0 = float(np.clip(pixels[:, 1].min(), 0, camera.height))
    x1 = float(np.clip(pixels[:, 0].max(), 0, camera.width))
    y1 = float(np.clip(pixels[:, 1].max(), 0, camera.height))
    return [x0, y0, x1 - x0, y1 - y0]


def keypoint_visibility(head_in_view: bool, head_pixel_visible: bool) -> int:
    """COCO keypoint flag of the head: 0 when the head is outside the image (outside the image
    circle or the frame; its point is then not a place in the picture), 1 when it is in view but
    the head pixel does not show this person (furniture or another person in front), 2 when the
    head pixel shows this person."""
    if not head_in_view:
        return 0
    return 2 if head_pixel_visible else 1


def annotate_people(
    visible_ids: np.ndarray,
    full_masks: Mapping[int, np.ndarray],
    heads: Mapping[int, np.ndarray],
    camera: FisheyeCamera,
    head_radius_m: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO-style annotations of every person with visible pixels, plus a list of the hidden.

    ``visible_ids`` is the instance-id image (0 = no person); ``full_masks[k]`` is person k's
    unoccluded silhouette; ``heads[k]`` is the 3D head centre. Ordered by instance id.
    The head keypoint's flag follows COCO: 0 for a head outside the image (``head_in_view``
    false), 1 for an occluded head, 2 for a visible one (``keypoint_visibility``).
    """
    settings = camera.cycles_settings()
    image_center = camera.effective_principal_point()
    annotations: list[dict[str, Any]] = []
    hidden: list[dict[str, Any]] = []
    for instance in sorted(heads):
        visible = visible_ids == instance
        # The unoccluded mask must contain the visible one (both come from the same geometry).
        full = np.asarray(full_masks.get(instance, visible), dtype=bool) | visible
        (hx, hy), in_view = (v[0] for v in camera.project(heads[instance], settings))
        area, full_area = int(visible.sum()), int(full.sum())
        if area == 0:
            hidden.append({"instance_id": instance, "unoccluded_area": full_area,
                           "head_point": [float(hx), float(hy)], "head_in_view": bool(in_view)})
            continue
        head_pixel_visible = bool(
            in_view and visible[min(int(hy), camera.height - 1), min(int(hx), camera.width - 1)]
        )
        annotations.append({
            "category_id": 1,
            "instance_id": instance,
            "bbox": mask_bbox(visible),
            "rbox": mask_rbox(visible, image_center),
            "head_point": [float(hx), float(hy)],
            "head_bbox": head_box(camera, settings, heads[instance], head_radius_m),
            "head_in_view": bool(in_view),
            "keypoints": [float(hx), float(hy), keypoint_visibility(bool(in_view), head_pixel_visible)],
            "num_keypoints": 1,
            "segmentation": rle_encode(visible),
            "segmentation_full": rle_encode(full),
            "visibility": float(area / full_area) if full_area else 0.0,
            "area": area,
            "iscrowd": 0,
        })
    return annotations, hidden


# ---------------------------------------------------------------------------------------------
# Files.


def png_bytes(array: np.ndarray) -> bytes:
    """PNG of an 8-bit RGB image or a uint16 id image."""
    if array.dtype == np.uint16:
        image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16))
    else:
        image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.uint16)


def write_frame(out: Path, name: str, image: np.ndarray, instance_ids: np.ndarray,
                record: dict[str, Any], soft_masks: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write image, mask, soft masks (``{relative path: coverage}``, see ``protocol.coverage``),
    then the per-frame JSON (last: its presence marks the frame done)."""
    atomic_write_bytes(out / "images" / f"{name}.png", png_bytes(image))
    atomic_write_bytes(out / "masks" / f"{name}.png", png_bytes(instance_ids.astype(np.uint16)))
    for relative, coverage in (soft_masks or {}).items():
        atomic_write_bytes(out / relative, coverage_png_bytes(coverage))
    return atomic_write_json(out / "frames" / f"{name}.json", record)


def build_coco(out: Path) -> dict[str, Any]:
    """Rebuild ``coco.json`` from every ``frames/*.json`` (sorted by frame), atomically."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    next_id = 1
    for path in sorted((out / "frames").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        image_id = int(record["index"])
        images.append({"id": image_id, "file_name": record["image"], "width": record["width"],
                       "height": record["height"], "mask_file": record["mask"]})
        for annotation in record["annotations"]:
            annotations.append({"id": next_id, "image_id": image_id, **annotation})
            next_id += 1
    coco = {
        "info": {"description": "fisheye-synth rendered dataset", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    atomic_write_json(out / COCO_FILE, coco, indent=None)
    return coco


def instance_image(shape: tuple[int, int], masks: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """Paint (id, mask) pairs into one uint16 image (later pairs win)."""
    ids = np.zeros(shape, dtype=np.uint16)
    for instance, mask in masks:
        ids[mask] = instance
    return ids


# ---------------------------------------------------------------------------------------------
# A picture of the annotations, for people to check them by eye.

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def draw_annotations(out: Path, record: dict[str, Any], scale: float = 1.0) -> Image.Image:
    """The frame's image with masks tinted, person boxes (white), rotated boxes (cyan), head
    boxes (yellow) and head points (red)."""
    from PIL import ImageDraw

    image = np.asarray(Image.open(out / record["image"]).convert("RGB"), dtype=np.float32)
    ids = read_mask(out / record["mask"])
    for annotation in record["annotations"]:
        colour = np.array(_PALETTE[annotation["instance_id"] % len(_PALETTE)], dtype=np.float32)
        mask = ids == annotation["instance_id"]
        image[mask] = 0.6 * image[mask] + 0.4 * colour
    canvas = Image.fromarray(image.astype(np.uint8))
    if scale != 1.0:
        canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)),
                               Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(canvas)
    for annotation in record["annotations"]:
        x, y, w, h = (v * scale for v in annotation["bbox"])
        draw.rectangle([x, y, x + w, y + h], outline=(255, 255, 255))
        cx, cy, rw, rh, angle = annotation["rbox"]
        a = math.radians(angle)
        axis = np.array([math.sin(a), -math.cos(a)])
        across = np.array([-axis[1], axis[0]])
        corners = [np.array([cx, cy]) + sa * rh / 2 * axis + sb * rw / 2 * across
                   for sa, sb in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
        draw.polygon([tuple(c * scale) for c in corners], outline=(0, 255, 255))
        hx, hy, hw, hh = (v * scale for v in annotation["head_bbox"])
        draw.rectangle([hx, hy, hx + hw, hy + hh], outline=(255, 230, 0))
        px, py = (v * scale for v in annotation["head_point"])
        draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=(255, 0, 0))
        draw.text((x + 1, y + h + 1), f"{annotation['visibility']:.2f}", fill=(255, 255, 255))
    return canvas


def contact_sheet(out: Path, max_frames: int = 6, columns: int = 3, tile: int = 384) -> Image.Image:
    """The first ``max_frames`` finished frames of a dataset with their annotations drawn."""
    records = [json.loads(p.read_text(encoding="utf-8"))
               for p in sorted((out / "frames").glob("*.json"))[:max_frames]]
    if not records:
        raise FileNotFoundError(f"{out / 'frames'} has no finished frames to show")
    rows = math.ceil(len(records) / columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), (0, 0, 0))
    for number, record in enumerate(records):
        picture = draw_annotations(out, record, tile / max(record["width"], record["height"]))
        sheet.paste(picture, ((number % columns) * tile, (number // columns) * tile))
    return sheet
