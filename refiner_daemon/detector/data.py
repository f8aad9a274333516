"""Head-box datasets for the detector: readers for rendered COCO sets and CEPDOF real frames,
a torch ``Dataset`` that resizes to the network's square input, and augmentation that respects
the fisheye geometry (rotation about the image centre, flips, photometric jitter).

Head boxes are numpy ``(N, 4)`` arrays in corner form ``[x0, y0, x1, y1]``, in pixels of the
original image until :class:`HeadDataset` scales them to the input size.

CEPDOF annotates whole people with rotated boxes ``[cx, cy, w, h, angle_deg]`` (angle clockwise
in image coordinates). Looking down through a fisheye lens the head is the end of the box's long
axis farther from the image centre; the head point comes from ``protocol.annotations``, the same
estimate the crops use. The head box is a square of side ``head_box_scale`` times the short
side (``protocol.annotations.HEAD_BOX_SCALE`` by default, measured on rendered heads seen from
above). Rendered sets go through the same rule from their own rotated person boxes, so both
domains define a head the same way (``protocol.annotations`` explains why).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from protocol.annotations import (
    HEAD_BOX_SCALE,
    AnnotationError,
    ImageAnnotations,
    head_from_rbox,
    image_centre,
)
from protocol.annotations import load_cepdof as read_cepdof
from protocol.annotations import load_rendered_coco as read_rendered_coco
from protocol.datacheck import BadFile, check_images
from refiner_daemon.detector.config import DatasetSpec


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class HeadSample:
    """One image and its head boxes (``xyxy``, original pixels)."""

    image_path: Path
    width: int
    height: int
    head_boxes: np.ndarray


def cepdof_head_box(person_box: Sequence[float], image_width: int, image_height: int,
                    head_box_scale: float = HEAD_BOX_SCALE) -> np.ndarray:
    """The head square (``xyxy``) of one rotated person box ``[cx, cy, w, h, angle_deg]`` by the
    one head rule of every domain (``protocol.annotations.head_from_rbox``)."""
    rbox = tuple(float(v) for v in person_box[:5])
    _, (x, y, w, h) = head_from_rbox(rbox, image_centre(image_width, image_height), head_box_scale)
    return np.array([x, y, x + w, y + h])


def _head_samples(images: list[ImageAnnotations], head_box_scale: float) -> list[HeadSample]:
    """Head boxes of every person by the one head rule: the same function, the same size rule
    and the same units (source pixels) for rendered and real sets. Rendered people whose head
    lies outside the image circle have no head to find and are left out."""
    samples = []
    for image in images:
        boxes = []
        for person in image.persons:
            if person.head_in_view is False:
                continue
            if person.rbox is not None:
                boxes.append(cepdof_head_box(person.rbox, image.width, image.height, head_box_scale))
            elif person.head_box is not None:  # a rendered set written before rotated boxes
                x, y, w, h = person.head_box
                boxes.append(np.array([x, y, x + w, y + h]))
        samples.append(HeadSample(image.path, image.width, image.height,
                                  np.array(boxes, dtype=np.float64).reshape(-1, 4)))
    return samples


def load_cepdof(folder: Path, head_box_scale: float = HEAD_BOX_SCALE) -> list[HeadSample]:
    """Read a CEPDOF folder (``annotations.json`` plus the frames) into head samples, through
    the shared reader ``protocol.annotations.load_cepdof``."""
    try:
        return _head_samples(read_cepdof(folder), head_box_scale)
    except AnnotationError as exc:
        raise DatasetError(str(exc)) from exc


def load_rendered_coco(folder: Path, head_box_scale: float = HEAD_BOX_SCALE) -> list[HeadSample]:
    """Read a rendered set (``coco.json``) into head samples, through the shared reader
    ``protocol.annotations.load_rendered_coco``: head boxes from each person's rotated box, by
    the same rule as real frames (not the renderer's projected head sphere)."""
    try:
        images = read_rendered_coco(folder)
    except AnnotationError as exc:
        raise DatasetError(str(exc)) from exc
    # Rendered sets keep frames in images/; some list bare file names.
    images = [replace(image, path=folder / "images" / image.path.name)
              if not image.path.exists() and (folder / "images" / image.path.name).exists()
              else image for image in images]
    return _head_samples(images, head_box_scale)


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise DatasetError(f"{path} not found: a dataset folder needs coco.json (rendered) "
                           "or annotations.json (CEPDOF)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON: {exc}") from exc


def load_samples(spec: DatasetSpec, head_box_scale: float = HEAD_BOX_SCALE, *,
                 skip_bad: bool = False, bad: list[BadFile] | None = None) -> list[HeadSample]:
    """The samples one :class:`DatasetSpec` names: format detected from the folder's files,
    narrowed to ``spec.images`` and then to ``spec.limit`` after a seeded shuffle.

    Every image is checked first (``protocol.datacheck.check_image``: missing, empty,
    truncated, not an image): a bad one raises ``BadDataError`` naming it, or with
    ``skip_bad`` is left out and appended to ``bad``."""
    folder = Path(spec.path)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist; pass a folder with coco.json "
                           "(a rendered set) or annotations.json (CEPDOF frames)")
    if (folder / "coco.json").exists():
        samples = load_rendered_coco(folder, head_box_scale)
    elif (folder / "annotations.json").exists():
        samples = load_cepdof(folder, head_box_scale)
    else:
        raise DatasetError(f"{folder} has neither coco.json (rendered set) nor annotations.json (CEPDOF)")
    if spec.images is not None:
        by_name = {s.image_path.name: s for s in samples}
        missing = [name for name in spec.images if Path(name).name not in by_name]
        if missing:
            raise DatasetError(f"{folder}: images {missing[:5]} not in the dataset")
        samples = [by_name[Path(name).name] for name in spec.images]
    if spec.limit is not None:
        order = np.random.default_rng(spec.seed).permutation(len(samples))
        samples = [samples[i] for i in order[: spec.limit]]
    good, bad_files = check_images([s.image_path for s in samples], skip_bad=skip_bad,
                                   what=f"images listed in {folder}")
    if bad is not None:
        bad.extend(bad_files)
    if bad_files:
        keep = set(good)
        samples = [s for s in samples if s.image_path in keep]
    return samples


def image_names(spec: DatasetSpec) -> list[str]:
    """File names of a dataset's images in annotation order (used to split frames)."""
    return [s.image_path.name for s in load_samples(DatasetSpec(spec.path))]


# --------------------------------------------------------------------------- augmentation


def rotate_boxes_about_centre(boxes: np.ndarray, angle_deg: float, size: int) -> np.ndarray:
    """Rotate box centres by ``angle_deg`` (counter-clockwise on screen, as torchvision's
    ``rotate``) about the centre of a ``size`` x ``size`` image; sizes are kept, because a head
    seen from above is round, so its box barely changes under rotation."""
    if len(boxes) == 0:
        return boxes
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    half_sizes = (boxes[:, 2:] - boxes[:, :2]) / 2.0
    theta = math.radians(angle_deg)
    offset = centres - size / 2.0
    # Counter-clockwise on screen with y pointing down.
    rotated = np.stack([offset[:, 0] * math.cos(theta) + offset[:, 1] * math.sin(theta),
                        -offset[:, 0] * math.sin(theta) + offset[:, 1] * math.cos(theta)], axis=1)
    new_centres = rotated + size / 2.0
    return np.concatenate([new_centres - half_sizes, new_centres + half_sizes], axis=1)


def keep_boxes_inside(boxes: np.ndarray, size: int) -> np.ndarray:
    """Drop boxes whose centre left the image; clip the rest to it."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    inside = ((centres >= 0) & (centres < size)).all(axis=1)
    return np.clip(boxes[inside], 0.0, float(size))


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations to apply; all use the generator they are given (reproducible)."""

    rotation: bool = True
    flips: bool = True
    photometric: float = 0.2

    def __call__(self, image: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, np.ndarray]:
        """``image``: float (3, S, S) in [0, 1]; ``boxes``: xyxy in input pixels."""
        size = image.shape[-1]
        if self.rotation:
            angle = float(rng.uniform(0.0, 360.0))
            image = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)
            boxes = keep_boxes_inside(rotate_boxes_about_centre(boxes, angle, size), size)
        if self.flips and rng.random() < 0.5:
            image = TF.horizontal_flip(image)
            boxes = boxes.copy()
            boxes[:, [0, 2]] = size - boxes[:, [2, 0]]
        if self.flips and rng.random() < 0.5:
            image = TF.vertical_flip(image)
            boxes = boxes.copy()
            boxes[:, [1, 3]] = size - boxes[:, [3, 1]]
        if self.photometric > 0:
            strength = self.photometric
            image = TF.adjust_brightness(image, float(rng.uniform(1 - strength, 1 + strength)))
            image = TF.adjust_contrast(image, float(rng.uniform(1 - strength, 1 + strength)))
            image = TF.adjust_saturation(image, float(rng.uniform(1 - strength, 1 + strength)))
            image = TF.adjust_hue(image, float(rng.uniform(-strength, strength) * 0.1))
        return image.clamp(0.0, 1.0), boxes


# --------------------------------------------------------------------------- torch dataset


def load_resized(path: Path, size: int) -> torch.Tensor:
    """An image as uint8 (3, size, size); non-square images are stretched (fisheye frames are
    square, so this only matters for odd inputs, and the boxes are scaled the same way)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


class HeadDataset(torch.utils.data.Dataset):
    """Samples resized to ``input_size``; returns ``(image float [0,1], boxes float32 (N, 4))``."""

    def __init__(self, samples: Sequence[HeadSample], input_size: int,
                 augmentation: Augmentation | None = None, seed: int = 0, cache: bool = True) -> None:
        if not samples:
            raise DatasetError("the dataset is empty; check the folder and the images / limit selection")
        self.samples = list(samples)
        self.input_size = input_size
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0  # set by the training loop so each epoch draws new augmentations
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def boxes_in_input(self, index: int) -> np.ndarray:
        sample = self.samples[index]
        scale = np.array([self.input_size / sample.width, self.input_size / sample.height] * 2)
        return sample.head_boxes * scale

    def image_uint8(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = load_resized(self.samples[index].image_path, self.input_size)
        if self._cache is not None:
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image_uint8(index).float() / 255.0
        boxes = self.boxes_in_input(index)
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, boxes = self.augmentation(image, boxes, rng)
        return image, torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    images, boxes = zip(*batch)
    return torch.stack(images), list(boxes)
