"""Readers for the two annotation formats the crop pipeline starts from.

* ``load_cepdof(folder)``: a CEPDOF-style folder (``annotations.json``: COCO-like, one rotated
  person box ``bbox = [cx, cy, w, h, angle_degrees]`` per person). CEPDOF annotates people,
  not heads.
* ``load_rendered_coco(folder)``: our renderer's ``coco.json`` with head points, head boxes,
  rotated boxes and uncompressed-RLE person masks.
* ``load_annotations(folder)`` picks the reader by the file it finds.

One head rule for every domain. A detector trained on rendered heads and scored on real ones
must see heads defined the same way on both sides, and a refiner must see the same framing.
So ``PersonAnnotation.head_xy`` and ``head_box`` come from :func:`head_from_rbox` for every
person that has a rotated box, real or rendered: the head point at the outer end of the box's
long axis (``HEAD_DEPTH`` x the short side in from the end farther from the image centre), the
head box a square of ``HEAD_BOX_SCALE`` x the box's short side around it. The
renderer's exact head (the projected 3D head centre and head sphere) is kept beside it as
``rendered_head_xy`` / ``rendered_head_box``, to check the rule against
(``tests/test_head_rule.py``); it is used as the head only for a rendered person without a
rotated box.

Rotated-box convention (checked by drawing the boxes on the CEPDOF frames): the box's corners
are ``c + R(angle) @ (+-w/2, +-h/2)`` with ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` in image
coordinates (x right, y down); a positive angle turns the box clockwise on screen.

Both readers return :class:`ImageAnnotations` per image, each with a tuple of
:class:`PersonAnnotation`. Masks stay RLE-encoded until asked for (``person.mask``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.coco import RLEError, rle_decode
from protocol.coverage import read_coverage

CEPDOF_FILE = "annotations.json"
RENDERED_COCO_FILE = "coco.json"
HEAD_FROM_RBOX = "estimated_from_rbox"
HEAD_ANNOTATED = "annotated"
# The head rule's two numbers, as fractions of the person box's short side (measured on
# rendered people, where the 3D head is known; see head_from_rbox): the head box's side, and
# how far in from the box's outer end the head's centre lies. One pair for every domain.
HEAD_BOX_SCALE = 0.34
HEAD_DEPTH = 0.17
NEAR_SQUARE_HEAD_OFFSET = 0.38
# Below this long/short side ratio a rotated person box has no reliable long axis.
NEAR_SQUARE_RATIO = 1.25


class AnnotationError(ValueError):
    """An annotation file that cannot be read; the message names the file and the field."""


@dataclass(frozen=True, eq=False)
class PersonAnnotation:
    """One person in one image. ``head_xy`` in source pixels; boxes ``[x, y, w, h]``;
    ``rbox`` ``[cx, cy, w, h, angle_degrees]``; ``segmentation`` an uncompressed COCO RLE of
    the visible person mask or ``None``. ``head_source`` says whether the head was annotated
    or estimated from the rotated box (the one head rule, see the module docstring);
    ``rendered_head_xy``/``rendered_head_box`` hold a rendered person's exact head and
    ``head_in_view`` whether it lies inside the image circle (``None`` for real people)."""

    head_xy: tuple[float, float]
    head_box: tuple[float, float, float, float] | None
    rbox: tuple[float, float, float, float, float] | None
    bbox: tuple[float, float, float, float] | None
    segmentation: dict[str, Any] | None
    person_id: int | None
    visibility: float | None
    head_source: str
    rendered_head_xy: tuple[float, float] | None = None
    rendered_head_box: tuple[float, float, float, float] | None = None
    head_in_view: bool | None = None
    head_visible: bool | None = None  # rendered: the head's own pixel shows this person (COCO v = 2)
    # Rendered: the person's anti-aliased coverage PNG (protocol.coverage); None in sets
    # rendered before soft masks existed, and in real sets.
    soft_mask_path: Path | None = None

    @property
    def mask(self) -> np.ndarray | None:
        """The full-frame boolean person mask (decoded on each access), or ``None``."""
        return None if self.segmentation is None else rle_decode(self.segmentation)

    def soft_mask(self, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The person's anti-aliased coverage, float32 (H, W) in [0, 1], or ``None`` where the
        dataset has no soft masks (use ``mask`` then). ``shape`` (height, width): the image's,
        checked against the file. Raises ``protocol.coverage.CoverageError`` for a named file
        that is missing or does not fit."""
        return None if self.soft_mask_path is None else read_coverage(self.soft_mask_path, shape)


@dataclass(frozen=True)
class ImageAnnotations:
    """One image: where it is on disk, its size, and its people."""

    image_id: str
    path: Path
    width: int
    height: int
    persons: tuple[PersonAnnotation, ...]


def rbox_corners(rbox: tuple[float, ...]) -> np.ndarray:
    """The 4 corners ``(4, 2)`` of a rotated box ``[cx, cy, w, h, angle_degrees]``."""
    cx, cy, w, h, angle_deg = rbox
    a = math.radians(angle_deg)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return np.array([cx, cy]) + local @ rotation.T


def rbox_mask(rbox: tuple[float, ...], width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of the pixels whose centres lie in a rotated box."""
    cx, cy, w, h, angle_deg = rbox
    corners = rbox_corners(rbox)
    mask = np.zeros((height, width), dtype=bool)
    x0 = max(0, math.floor(corners[:, 0].min()))
    x1 = min(width, math.ceil(corners[:, 0].max()) + 1)
    y0 = max(0, math.floor(corners[:, 1].min()))
    y1 = min(height, math.ceil(corners[:, 1].max()) + 1)
    if x0 >= x1 or y0 >= y1:
        return mask
    ys, xs = np.mgrid[y0:y1, x0:x1]
    a = math.radians(angle_deg)
    # Box-local coordinates: project onto the box's own axes.
    local_x = (xs - cx) * math.cos(a) + (ys - cy) * math.sin(a)
    local_y = -(xs - cx) * math.sin(a) + (ys - cy) * math.cos(a)
    mask[y0:y1, x0:x1] = (np.abs(local_x) <= w / 2) & (np.abs(local_y) <= h / 2)
    return mask


def head_from_rbox(rbox: tuple[float, ...], center_xy: tuple[float, float],
                   box_scale: float = HEAD_BOX_SCALE, depth: float = HEAD_DEPTH,
                   ) -> tuple[tuple[float, float], tuple[float, float, float, float]]:
    """The head point and head box ``[x, y, w, h]`` of a rotated person box seen from above:
    the one head rule every domain uses (module docstring).

    The head lies on the box's long axis, ``depth`` x the box's short side in from the end
    farther from the image centre; the head box is a square of ``box_scale`` x the short side
    around it. Both numbers were measured on rendered people, where the exact 3D head is known
    (median 0.17 and 0.34 over 37 visible heads; ``tests/test_head_rule.py`` checks the
    agreement on other frames), and checked by eye on the real CEPDOF frames. Boxes whose sides
    differ by less than ``NEAR_SQUARE_RATIO`` (someone sitting, seen from above) have no telling
    long axis: their head is ``NEAR_SQUARE_HEAD_OFFSET`` x the short side outward from the box
    centre, along the line from the image centre (measured the same way: median 0.38). A box
    centred exactly on the image centre takes the end toward +y of its own long axis.
    """
    cx, cy, w, h, angle_deg = rbox
    a = math.radians(angle_deg)
    local_y = np.array([-math.sin(a), math.cos(a)])
    local_x = np.array([math.cos(a), math.sin(a)])
    outward = np.array([cx - center_xy[0], cy - center_xy[1]])
    short_side = min(w, h)
    radius = float(np.hypot(*outward))
    if max(w, h) < NEAR_SQUARE_RATIO * short_side and radius > 0:
        # Seen from above, a sitting person's box is near square and its axes say nothing
        # about where the head is; the head lies outward from the box centre.
        head = np.array([cx, cy]) + outward / radius * (NEAR_SQUARE_HEAD_OFFSET * short_side)
    else:
        axis, axis_length = (local_y, h) if h >= w else (local_x, w)
        if float(axis @ outward) < 0 or (radius == 0 and axis[1] < 0):
            axis = -axis
        head = np.array([cx, cy]) + axis * (axis_length / 2 - depth * short_side)
    head_xy = (float(head[0]), float(head[1]))
    side = float(box_scale * short_side)
    head_box = (head_xy[0] - side / 2, head_xy[1] - side / 2, side, side)
    return head_xy, head_box


def image_centre(width: int, height: int) -> tuple[float, float]:
    """The centre the head rule measures "outward" from: the middle of the pixel grid."""
    return (width - 1) / 2.0, (height - 1) / 2.0


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AnnotationError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path} is not valid JSON: {exc}") from exc
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{path} needs a list '{key}' (COCO layout)")
    return data


def _numbers(value: Any, count: int, where: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"{where} must be {count} numbers, got {value!r}") from exc
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise AnnotationError(f"{where} must be {count} finite numbers, got {value!r}")
    return numbers


def _box(value: Any, count: int, where: str) -> tuple[float, ...]:
    """A box ``[x, y, w, h]`` or ``[cx, cy, w, h, angle]``: finite numbers, w and h >= 0."""
    numbers = _numbers(value, count, where)
    if numbers[2] < 0 or numbers[3] < 0:
        raise AnnotationError(f"{where} has a negative width or height ({value!r}); fix the "
                              "annotation (w and h are sizes, not corners)")
    return numbers


def _images(data: dict[str, Any], folder: Path, path: Path) -> dict[Any, dict[str, Any]]:
    images: dict[Any, dict[str, Any]] = {}
    for index, entry in enumerate(data["images"]):
        try:
            images[entry["id"]] = {
                "path": folder / str(entry["file_name"]),
                "width": int(entry["width"]),
                "height": int(entry["height"]),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(
                f"{path}: images[{index}] needs id, file_name, width, height ({exc!r})") from exc
    return images


def _group(images: dict[Any, dict[str, Any]], persons: dict[Any, list[PersonAnnotation]]
           ) -> list[ImageAnnotations]:
    return [
        ImageAnnotations(image_id=str(image_id), path=info["path"], width=info["width"],
                         height=info["height"], persons=tuple(persons.get(image_id, [])))
        for image_id, info in images.items()
    ]


def _annotation_image(entry: dict[str, Any], images: dict[Any, Any], where: str) -> Any:
    image_id = entry.get("image_id")
    if image_id not in images:
        raise AnnotationError(f"{where} refers to image_id {image_id!r}, which is not in 'images'")
    return image_id


def load_cepdof(folder: str | Path) -> list[ImageAnnotations]:
    """Read a CEPDOF-style folder (``annotations.json`` beside the frames); heads are
    estimated from the rotated person boxes; there are no masks."""
    folder = Path(folder)
    path = folder / CEPDOF_FILE
    data = _read_json(path)
    images = _images(data, folder, path)
    persons: dict[Any, list[PersonAnnotation]] = {}
    for index, entry in enumerate(data["annotations"]):
        where = f"{path}: annotations[{index}]"
        image_id = _annotation_image(entry, images, where)
        rbox = _box(entry.get("bbox"), 5, f"{where}.bbox [cx, cy, w, h, angle_degrees]")
        info = images[image_id]
        head_xy, head_box = head_from_rbox(rbox, image_centre(info["width"], info["height"]))
        corners = rbox_corners(rbox)
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        person_id = entry.get("person_id")
        persons.setdefault(image_id, []).append(PersonAnnotation(
            head_xy=head_xy, head_box=head_box, rbox=rbox,  # type: ignore[arg-type]
            bbox=(float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])),
            segmentation=None, person_id=None if person_id is None else int(person_id),
            visibility=None, head_source=HEAD_FROM_RBOX,
        ))
    return _group(images, persons)


def load_rendered_coco(folder: str | Path) -> list[ImageAnnotations]:
    """Read our renderer's ``coco.json``: head points, head boxes, rotated and axis-aligned
    person boxes and uncompressed-RLE visible-person masks."""
    folder = Path(folder)
    path = folder / RENDERED_COCO_FILE
    data = _read_json(path)
    images = _images(data, folder, path)
    persons: dict[Any, list[PersonAnnotation]] = {}
    for index, entry in enumerate(data["annotations"]):
        where = f"{path}: annotations[{index}]"
        image_id = _annotation_image(entry, images, where)
        info = images[image_id]
        if "head_point" not in entry:
            raise AnnotationError(f"{where} has no head_point [x, y]; the crop needs one")
        head_xy = _numbers(entry["head_point"], 2, f"{where}.head_point")
        head_box = (_box(entry["head_bbox"], 4, f"{where}.head_bbox")
                    if entry.get("head_bbox") is not None else None)
        rbox = _box(entry["rbox"], 5, f"{where}.rbox") if entry.get("rbox") is not None else None
        bbox = _box(entry["bbox"], 4, f"{where}.bbox") if entry.get("bbox") is not None else None
        segmentation = entry.get("segmentation")
        if isinstance(segmentation, dict):
            size = segmentation.get("size")
            if list(size or []) != [info["height"], info["width"]]:
                raise AnnotationError(
                    f"{where}.segmentation has size {size}, but the image is "
                    f"[{info['height']}, {info['width']}] (height, width)")
            if isinstance(segmentation.get("counts"), str):
                raise AnnotationError(
                    f"{where}.segmentation is compressed RLE; this reader needs the "
                    "uncompressed form (a list of counts) that protocol.coco writes")
        elif segmentation:
            raise AnnotationError(f"{where}.segmentation must be an uncompressed RLE dict")
        else:
            segmentation = None
        visibility = entry.get("visibility")
        instance_id = entry.get("instance_id")
        if rbox is not None:
            rule_xy, rule_box = head_from_rbox(rbox, image_centre(info["width"], info["height"]))
            source = HEAD_FROM_RBOX
        else:  # an older set without rotated boxes: the exact head is all there is
            rule_xy, rule_box, source = head_xy, head_box, HEAD_ANNOTATED  # type: ignore[assignment]
        in_view = entry.get("head_in_view")
        soft_mask = entry.get("soft_mask")
        if soft_mask is not None and not isinstance(soft_mask, str):
            raise AnnotationError(f"{where}.soft_mask must be a path relative to {folder}, "
                                  f"got {soft_mask!r}")
        keypoints = entry.get("keypoints")
        head_visible = (bool(keypoints[2] == 2) if isinstance(keypoints, list) and len(keypoints) >= 3
                        else None)
        persons.setdefault(image_id, []).append(PersonAnnotation(
            head_xy=rule_xy, head_box=rule_box, rbox=rbox, bbox=bbox,  # type: ignore[arg-type]
            segmentation=segmentation,
            person_id=None if instance_id is None else int(instance_id),
            visibility=None if visibility is None else float(visibility),
            head_source=source,
            rendered_head_xy=head_xy,  # type: ignore[arg-type]
            rendered_head_box=head_box,  # type: ignore[arg-type]
            head_in_view=None if in_view is None else bool(in_view),
            head_visible=head_visible,
            soft_mask_path=None if soft_mask is None else folder / soft_mask,
        ))
    return _group(images, persons)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``[x, y, w, h]`` boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def head_rule_agreement(images: list[ImageAnnotations]) -> dict[str, Any]:
    """How well the one head rule (from the rotated box) matches the renderer's exact heads,
    over every rendered person whose head is visible (COCO v = 2): the IoU of the rule's head
    box with the projected head sphere's box, and the distance between the head points in
    units of the rule's box side. Real sets have no exact heads and give ``heads == 0``."""
    ious, offsets = [], []
    for image in images:
        for person in image.persons:
            if (person.head_visible is not True or person.rendered_head_box is None
                    or person.head_source != HEAD_FROM_RBOX or person.head_box is None):
                continue
            ious.append(box_iou(person.head_box, person.rendered_head_box))
            exact = np.asarray(person.rendered_head_xy)
            offsets.append(float(np.hypot(*(np.asarray(person.head_xy) - exact)) / person.head_box[2]))
    values = np.asarray(ious, dtype=float)
    return {
        "heads": int(values.size),
        "iou_median": float(np.median(values)) if values.size else float("nan"),
        "share_iou_at_least_0_5": float((values >= 0.5).mean()) if values.size else float("nan"),
        "offset_median_box_sides": float(np.median(offsets)) if offsets else float("nan"),
        "ious": [round(float(v), 4) for v in values],
    }


def load_annotations(folder: str | Path) -> tuple[str, list[ImageAnnotations]]:
    """Read whichever format ``folder`` holds; returns ``(format_name, images)`` with
    ``format_name`` ``"rendered_coco"`` or ``"cepdof"``."""
    folder = Path(folder)
    if (folder / RENDERED_COCO_FILE).is_file():
        return "rendered_coco", load_rendered_coco(folder)
    if (folder / CEPDOF_FILE).is_file():
        return "cepdof", load_cepdof(folder)
    raise AnnotationError(
        f"{folder} holds neither {RENDERED_COCO_FILE} (a rendered dataset) nor {CEPDOF_FILE} "
        "(a CEPDOF-style folder)")


__all__ = [
    "HEAD_BOX_SCALE", "HEAD_DEPTH", "AnnotationError", "ImageAnnotations", "PersonAnnotation", "RLEError",
    "box_iou", "head_from_rbox", "head_rule_agreement", "image_centre",
    "load_annotations", "load_cepdof", "load_rendered_coco", "rbox_corners", "rbox_mask",
]
