"""Refine a whole rendered dataset: crop every person, refine the crops, paste them back.

``refine_dataset(in_dir, out_dir, refine_fn, identity, config)`` reads a rendered dataset
(``docs/dataset_format.md``: ``coco.json``, ``images/``, ``masks/``, ``frames/``,
``run_config.json``) and writes a refined copy:

- every person with a mask is cut upright by the one crop rule every domain shares
  (``protocol.crop_dataset.fit_region``: head from the rotated box, scale fitted to it;
  ``protocol.crops.crop_person``),
  all crops of a frame go to ``refine_fn`` in one call, and each refined crop is blended back
  under that person's own mask (``protocol.crops.reinsert``): with the person's soft mask
  (``soft_masks/``, anti-aliased coverage as alpha, ``protocol.coverage``) where the dataset
  has one, else with the hard mask (datasets rendered before soft masks). Pixels that no
  person covers at all stay bit-identical to the input;
- annotations are copied byte for byte (``coco.json``, ``masks/``, ``soft_masks/``,
  ``frames/``, ``run_config.json``): the refiner never moves a person, so they stay valid;
- ``refiner.json`` records what refined the images (model, sha256, config, daemon version,
  endpoint, crop size, date), ``refine_report.json`` what was done (frames, people, skips).

``refine_fn`` maps uint8 crops (N, H, W, 3) to refined crops of the same shape: the CLI
passes one that talks to a daemon (``protocol.transport.Client.refine``); tests and scripts
can pass ``lambda crops: service.refine(model, crops).images`` to run in-process. While
``refine_fn`` works on one frame, worker threads cut the next frame and encode and write the
previous one.

Resumable: a frame whose refined image exists is skipped (images are written atomically, so
one that exists is complete), but only when ``OUT_DIR/refiner.json`` names the same model,
weights and crop settings; otherwise the run is refused rather than mixing two refiners in one
dataset. Every write is atomic; ``coco.json`` is copied last and marks the dataset complete.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from protocol.annotations import (
    RENDERED_COCO_FILE,
    AnnotationError,
    ImageAnnotations,
    load_rendered_coco,
)
from protocol.coverage import CoverageError
from protocol.crop_dataset import DEFAULT_FIT, FIT_MODES, fit_region
from protocol.crops import DEFAULT_FEATHER_PX, CropError, CropRecord, crop_person, reinsert
from protocol.datacheck import check_images
from protocol.fileio import atomic_write_bytes, atomic_write_json

RefineFn = Callable[[np.ndarray], np.ndarray]

REFINER_RECORD = "refiner.json"
REPORT_FILE = "refine_report.json"
# Files copied beside the images, byte for byte, when the input has them.
DATASET_FILES = ("run_config.json",)
# Keys of refiner.json that must match for a run to continue an existing output folder.
RESUME_KEYS = ("model", "model_sha256", "config")
SUPPORTED_MODES = ("RGB", "RGBA")


class BatchRefineError(Exception):
    """The dataset cannot be refined as asked; the message says what to do."""


@dataclass(frozen=True)
class BatchRefineConfig:
    """How crops are cut and pasted back (saved in ``refiner.json``).

    crop_size: side of the square crops sent to the refiner (even). fit: what the crop scale
    fits (``protocol.crop_dataset.FIT_MODES``; the refiner must be trained on crops cut the
    same way). fit_margin_px: the fitted region is kept this far inside the crop border.
    feather_px: width of the blend ramp at each crop's border during reinsertion. min_scale:
    source pixels per crop pixel at least (1: never upsample).
    """

    crop_size: int = 128
    fit_margin_px: float = DEFAULT_FEATHER_PX
    feather_px: float = DEFAULT_FEATHER_PX
    min_scale: float = 1.0
    fit: str = DEFAULT_FIT

    def __post_init__(self) -> None:
        if not isinstance(self.crop_size, int) or isinstance(self.crop_size, bool) \
                or self.crop_size < 4 or self.crop_size % 2:
            raise ValueError(f"BatchRefineConfig.crop_size must be an even int >= 4, "
                             f"got {self.crop_size!r}")
        for name in ("fit_margin_px", "feather_px"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"BatchRefineConfig.{name} must be >= 0, got "
                                 f"{getattr(self, name)!r}")
        if not float(self.min_scale) > 0:
            raise ValueError(f"BatchRefineConfig.min_scale must be > 0, got {self.min_scale!r}")
        if self.fit not in FIT_MODES:
            raise ValueError(f"BatchRefineConfig.fit {self.fit!r} unknown; valid: {sorted(FIT_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RefinerIdentity:
    """Which refiner did the work: written to ``refiner.json``."""

    model: str
    model_sha256: str
    daemon_version: str = ""
    endpoint: str = ""  # "in-process" when no daemon was involved


@dataclass
class RefineSummary:
    """What one ``refine_dataset`` call did."""

    frames_total: int = 0
    frames_refined: int = 0
    frames_skipped_done: int = 0  # refined by an earlier run
    people_refined: int = 0
    people_skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def refiner_record(identity: RefinerIdentity, config: BatchRefineConfig) -> dict[str, Any]:
    """The content of ``refiner.json``."""
    return {"model": identity.model, "model_sha256": identity.model_sha256,
            "config": config.to_dict(), "crop_size": [config.crop_size, config.crop_size],
            "daemon_version": identity.daemon_version, "endpoint": identity.endpoint,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _check_resumable(out_dir: Path, record: dict[str, Any]) -> None:
    """Refuse to continue a folder that another refiner (or other crop settings) started."""
    path = out_dir / REFINER_RECORD
    if not path.exists():
        return
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BatchRefineError(f"{path} is unreadable ({exc}); delete {out_dir} or pick "
                               "another output folder") from None
    different = [key for key in RESUME_KEYS if existing.get(key) != record[key]]
    if different:
        described = ", ".join(f"{key}: {existing.get(key)!r} there, {record[key]!r} now"
                              for key in different)
        raise BatchRefineError(
            f"{out_dir} was refined by another refiner or with other settings ({described}); "
            "refusing to mix them in one dataset. Use a new output folder, or delete this one "
            "to start over")


def _read_rgb(path: Path) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The image's RGB pixels, its alpha channel (RGBA images) and its PIL mode."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode not in SUPPORTED_MODES:
                raise BatchRefineError(f"{path} is a {mode} image; the refiner needs 8-bit RGB "
                                       "or RGBA frames, as the renderer writes")
            pixels = np.asarray(image)
    except OSError as exc:
        raise BatchRefineError(f"cannot read {path}: {exc}") from None
    if mode == "RGBA":
        return np.ascontiguousarray(pixels[:, :, :3]), pixels[:, :, 3], mode
    return pixels, None, mode


def _png_bytes(rgb: np.ndarray, alpha: np.ndarray | None) -> bytes:
    pixels = rgb if alpha is None else np.dstack([rgb, alpha])
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _copy_file(source: Path, target: Path) -> None:
    """Byte-for-byte atomic copy (skipped when the target already holds the same bytes)."""
    data = source.read_bytes()
    if target.exists() and target.read_bytes() == data:
        return
    atomic_write_bytes(target, data)


def _relative_output(in_dir: Path, out_dir: Path, path: Path) -> Path:
    try:
        return out_dir / path.resolve().relative_to(in_dir.resolve())
    except ValueError:
        raise BatchRefineError(f"{path} lies outside {in_dir}; a rendered dataset keeps its "
                               "images inside its folder") from None


@dataclass
class _PreparedFrame:
    """One frame read and cut: what the refiner needs and what reinsertion needs after it."""

    image: ImageAnnotations
    pixels: np.ndarray
    alpha: np.ndarray | None
    crops: list[np.ndarray]
    records: list[CropRecord]
    masks: list[np.ndarray]
    skipped: list[dict[str, Any]]


def _cut_people(pixels: np.ndarray, image: ImageAnnotations, config: BatchRefineConfig
                ) -> tuple[list[np.ndarray], list[CropRecord], list[np.ndarray],
                           list[dict[str, Any]]]:
    """Every person's upright crop (the shared crop rule), with the people that cannot be cut.
    Reinsertion blends under each person's own mask (soft where there is one), whatever the
    crop was fitted to."""
    crops: list[np.ndarray] = []
    records: list[CropRecord] = []
    masks: list[np.ndarray] = []
    skipped: list[dict[str, Any]] = []
    size = (config.crop_size, config.crop_size)
    for index, person in enumerate(image.persons):
        mask = person.mask
        if mask is None or not mask.any():
            skipped.append({"image_id": image.image_id, "person_index": index,
                            "reason": "no visible mask"})
            continue
        try:
            region = fit_region(person, image.width, image.height, config.fit)
            crop, record = crop_person(pixels, person.head_xy, size=size, mask=region,
                                       image_id=image.image_id, min_scale=config.min_scale,
                                       scale=config.min_scale if config.fit == "none" else None,
                                       fit_margin_px=config.fit_margin_px)
        except CropError as exc:  # e.g. a head outside the image
            skipped.append({"image_id": image.image_id, "person_index": index,
                            "reason": str(exc)})
            continue
        try:
            soft = person.soft_mask(mask.shape)
        except CoverageError as exc:
            raise BatchRefineError(f"frame {image.image_id}, person {index}: {exc}") from None
        crops.append(crop)
        records.append(record)
        masks.append(soft if soft is not None else mask)
    return crops, records, masks, skipped


def _refine_crops(crops: list[np.ndarray], refine_fn: RefineFn) -> np.ndarray:
    batch = np.stack(crops)
    refined = np.asarray(refine_fn(batch))
    if refined.shape != batch.shape or refined.dtype != np.uint8:
        raise BatchRefineError(f"the refiner returned {refined.dtype} {refined.shape} for "
                               f"crops {batch.shape}; it must return uint8 crops of the input "
                               "shape")
    return refined


def refine_frame(pixels: np.ndarray, image: ImageAnnotations, refine_fn: RefineFn,
                 config: BatchRefineConfig) -> tuple[np.ndarray, int, list[dict[str, Any]]]:
    """Refine every person of one frame: returns the new pixels, how many people were
    refined, and the people skipped with their reasons."""
    crops, records, masks, skipped = _cut_people(pixels, image, config)
    if not crops:
        return pixels, 0, skipped
    refined = _refine_crops(crops, refine_fn)
    out = reinsert(pixels, list(refined), records, masks, feather_px=config.feather_px)
    return out, len(crops), skipped


def _prepare(image: ImageAnnotations, config: BatchRefineConfig) -> _PreparedFrame:
    pixels, alpha, _ = _read_rgb(image.path)
    if pixels.shape[:2] != (image.height, image.width):
        raise BatchRefineError(
            f"{image.path} is {pixels.shape[1]}x{pixels.shape[0]}, but coco.json says "
            f"{image.width}x{image.height}; the dataset is inconsistent")
    return _PreparedFrame(image, pixels, alpha, *_cut_people(pixels, image, config))


@dataclass
class RefineRun:
    """An output folder opened for refinement: what ``refine_images`` and ``close_run`` need."""

    in_dir: Path
    out_dir: Path
    images: list[ImageAnnotations]
    mask_files: dict[str, str | None]
    record: dict[str, Any]
    config: BatchRefineConfig


def open_run(in_dir: str | Path, out_dir: str | Path, identity: RefinerIdentity,
             config: BatchRefineConfig | None = None) -> RefineRun:
    """Check the input and the output folder and write ``refiner.json`` (first run only)."""
    config = config or BatchRefineConfig()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not (in_dir / RENDERED_COCO_FILE).is_file():
        raise BatchRefineError(f"{in_dir} has no {RENDERED_COCO_FILE}; point IN_DIR at a "
                               "rendered dataset folder (docs/dataset_format.md)")
    if out_dir.resolve() == in_dir.resolve():
        raise BatchRefineError("OUT_DIR must differ from IN_DIR: the input stays untouched")
    images = load_rendered_coco(in_dir)
    # Every frame checked before any work: a truncated or missing frame stops the run here,
    # named, rather than an hour in (protocol.datacheck: no pixel decoding, so it is fast).
    _, bad = check_images([image.path for image in images], skip_bad=True)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BatchRefineError(f"{bad[0].reason}, {bad[0].path}{more}; re-render or restore that "
                               "frame: a refined set keeps every frame of its input")
    record = refiner_record(identity, config)
    _check_resumable(out_dir, record)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / REFINER_RECORD).exists():
        atomic_write_json(out_dir / REFINER_RECORD, record)
    return RefineRun(in_dir, out_dir, images, mask_files(in_dir), record, config)


def mask_files(in_dir: Path) -> dict[str, str | None]:
    """Image id (as a string) -> its mask file, from the input's coco.json."""
    coco = json.loads((in_dir / RENDERED_COCO_FILE).read_text(encoding="utf-8"))
    return {str(entry.get("id")): entry.get("mask_file") for entry in coco["images"]}


def refine_images(in_dir: Path, out_dir: Path, images: list[ImageAnnotations],
                  masks: dict[str, str | None], refine_fn: RefineFn, config: BatchRefineConfig,
                  *, progress: bool = True) -> RefineSummary:
    """Refine ``images`` (a subset of the dataset, or all of it) into ``out_dir``: frames
    whose refined image exists are skipped; each refined frame's image, mask and frame JSON
    are written (atomically, the JSON last). Several callers may work on disjoint subsets of
    one output folder at once (the Ray engine's actors); ``close_run`` finishes it."""
    summary = RefineSummary(frames_total=len(images))
    started = time.perf_counter()

    def finish_frame(image: ImageAnnotations, encoded: bytes | None) -> None:
        """Write the refined image, then the frame's annotations; the frame JSON comes last,
        as the renderer writes it, so its presence still means "this frame is complete"."""
        if encoded is not None:
            atomic_write_bytes(_relative_output(in_dir, out_dir, image.path), encoded)
        mask_file = masks.get(image.image_id)
        if mask_file and (in_dir / mask_file).is_file():
            _copy_file(in_dir / mask_file, out_dir / mask_file)
        for person in image.persons:
            if person.soft_mask_path is not None and person.soft_mask_path.is_file():
                _copy_file(person.soft_mask_path,
                           _relative_output(in_dir, out_dir, person.soft_mask_path))
        frame_json = in_dir / "frames" / f"{image.path.stem}.json"
        if frame_json.is_file():
            _copy_file(frame_json, out_dir / "frames" / frame_json.name)

    todo = []
    for image in images:
        if _relative_output(in_dir, out_dir, image.path).exists():
            summary.frames_skipped_done += 1
            finish_frame(image, None)
        else:
            todo.append(image)
    # A three-stage pipeline: while the refiner works on frame k, a worker reads and cuts
    # frame k+1 and another encodes and writes frame k-1 (PNG encoding costs more than
    # cutting on a 1024x1024 frame). numpy, zlib and the socket release the GIL there.
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
        next_frame: Future[_PreparedFrame] | None = (
            reader.submit(_prepare, todo[0], config) if todo else None)
        writing: Future[None] | None = None
        for index in tqdm(range(len(todo)), desc="refine", unit="frame", disable=not progress):
            assert next_frame is not None
            frame = next_frame.result()
            next_frame = (reader.submit(_prepare, todo[index + 1], config)
                          if index + 1 < len(todo) else None)
            pixels = frame.pixels
            if frame.crops:
                refined = _refine_crops(frame.crops, refine_fn)
                pixels = reinsert(pixels, list(refined), frame.records, frame.masks,
                                  feather_px=config.feather_px)
            if writing is not None:
                writing.result()  # at most one frame waits to be written; errors surface here
            writing = writer.submit(
                lambda image, rgb, alpha: finish_frame(image, _png_bytes(rgb, alpha)),
                frame.image, pixels, frame.alpha)
            summary.frames_refined += 1
            summary.people_refined += len(frame.crops)
            summary.people_skipped.extend(frame.skipped)
        if writing is not None:
            writing.result()
    summary.seconds = time.perf_counter() - started
    return summary


def close_run(run: RefineRun, summary: RefineSummary, extra: dict[str, Any] | None = None) -> None:
    """Copy the dataset files, write ``refine_report.json`` (with ``extra``, e.g. the Ray
    engine's tasks), then ``coco.json`` last: its presence marks the refined dataset complete."""
    for name in DATASET_FILES:
        if (run.in_dir / name).is_file():
            _copy_file(run.in_dir / name, run.out_dir / name)
    atomic_write_json(run.out_dir / REPORT_FILE,
                      {"refiner": run.record, **summary.to_dict(), **(extra or {})})
    _copy_file(run.in_dir / RENDERED_COCO_FILE, run.out_dir / RENDERED_COCO_FILE)


def refine_dataset(in_dir: str | Path, out_dir: str | Path, refine_fn: RefineFn,
                   identity: RefinerIdentity, config: BatchRefineConfig | None = None, *,
                   progress: bool = True) -> RefineSummary:
    """Write the refined copy of the rendered dataset ``in_dir`` to ``out_dir`` (see the
    module docstring). Raises ``BatchRefineError`` (or ``AnnotationError`` for a dataset that
    cannot be read) with a message that names the fix."""
    run = open_run(in_dir, out_dir, identity, config)
    summary = refine_images(run.in_dir, run.out_dir, run.images, run.mask_files, refine_fn,
                            run.config, progress=progress)
    close_run(run, summary)
    return summary


__all__ = [
    "AnnotationError", "BatchRefineConfig", "BatchRefineError", "RefineFn", "RefineRun",
    "RefineSummary", "RefinerIdentity", "close_run", "open_run", "refine_dataset", "refine_frame",
    "refine_images", "refiner_record",
]
