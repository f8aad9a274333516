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
long axis, the head box a square of ``HEAD_BOX_SCALE`` x the box's short side around it. The
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

CEPDOF_FILE = "annotations.json"
RENDERED_COCO_FILE = "coco.json"
HEAD_FROM_RBOX = "estimated_from_rbox"
HEAD_ANNOTATED = "annotated"
# Side of the head square as a fraction of the person box's short side: seen from above a
# head is roughly half to two thirds of the shoulder width. One number for every domain.
HEAD_BOX_SCALE = 0.6
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

    @property
    def mask(self) -> np.ndarray | None:
        """The full-frame boolean person mask (decoded on each access), or ``None``."""
        return None if self.segmentation is None else rle_decode(self.segmentation)


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
                   box_scale: float = HEAD_BOX_SCALE,
                   ) -> tuple[tuple[float, float], tuple[float, float, float, float]]:
    """The head point and head box ``[x, y, w, h]`` of a rotated person box seen from above:
    the one head rule every domain uses (module docstring).

    The head is at the end of the box's long axis farther from the image centre, half the
    box's short side in from that end; the head box is a square of ``box_scale`` x the short
    side around it (an estimate: checked against rendered 3D heads in
    ``tests/test_head_rule.py``, not a head annotation). A box centred exactly
    on the image centre takes the end toward +y of the box's own long axis. Boxes whose
    sides differ by less than ``NEAR_SQUARE_RATIO`` use the box axis closest to the radial
    direction and put the head a quarter of that side in from its outer end (checked by eye
    on a CEPDOF person leaning over a table).
    """
    cx, cy, w, h, angle_deg = rbox
    a = math.radians(angle_deg)
    local_y = np.array([-math.sin(a), math.cos(a)])
    local_x = np.array([math.cos(a), math.sin(a)])
    outward = np.array([cx - center_xy[0], cy - center_xy[1]])
    short_side = min(w, h)
    if max(w, h) >= NEAR_SQUARE_RATIO * short_side:
        axis, axis_length = (local_y, h) if h >= w else (local_x, w)
        offset = axis_length / 2 - short_side / 2
    else:
        # A near-square box (someone leaning over a table) has no telling long axis, and
        # half the short side in from the end would put the head at the box centre. Take
        # the axis closest to the radial direction and put the head a quarter of the way in.
        aligned_x = abs(float(local_x @ outward)) >= abs(float(local_y @ outward))
        axis, axis_length = (local_x, w) if aligned_x else (local_y, h)
        offset = axis_length / 4
    if float(axis @ outward) < 0:
        axis = -axis
    head = np.array([cx, cy]) + axis * offset
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
        rbox = _numbers(entry.get("bbox"), 5, f"{where}.bbox [cx, cy, w, h, angle_degrees]")
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
        head_box = (_numbers(entry["head_bbox"], 4, f"{where}.head_bbox")
                    if entry.get("head_bbox") is not None else None)
        rbox = _numbers(entry["rbox"], 5, f"{where}.rbox") if entry.get("rbox") is not None else None
        bbox = _numbers(entry["bbox"], 4, f"{where}.bbox") if entry.get("bbox") is not None else None
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
        persons.setdefault(image_id, []).append(PersonAnnotation(
            head_xy=rule_xy, head_box=rule_box, rbox=rbox, bbox=bbox,  # type: ignore[arg-type]
            segmentation=segmentation,
            person_id=None if instance_id is None else int(instance_id),
            visibility=None if visibility is None else float(visibility),
            head_source=source,
            rendered_head_xy=head_xy,  # type: ignore[arg-type]
            rendered_head_box=head_box,  # type: ignore[arg-type]
            head_in_view=None if in_view is None else bool(in_view),
        ))
    return _group(images, persons)


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
    "HEAD_BOX_SCALE", "AnnotationError", "ImageAnnotations", "PersonAnnotation", "RLEError",
    "head_from_rbox", "image_centre",
    "load_annotations", "load_cepdof", "load_rendered_coco", "rbox_corners", "rbox_mask",
]
