"""Build the crop dataset a refiner trains on, from a rendered or a CEPDOF-style folder.

Output layout (every file written atomically)::

    OUT/crops/<image-stem>_<k>.png   upright person crop k of that image (RGB)
    OUT/masks/<image-stem>_<k>.png   crop-space person mask (8-bit, 255 = person); only
                                     where the source has real person masks (rendered data)
    OUT/records.json                 source, format, config and one item per crop: file
                                     names and the CropRecord dict that inverts the crop
    OUT/config.json                  the CropDatasetConfig used

The crop rule, one for every domain (rendered and real), so that a refiner sees the same
framing on both sides of its unpaired training set: the head point and the scale both come
from the person's rotated box. The head follows ``protocol.annotations``'s head rule, and with
``fit="rbox"`` (the default) the scale is the smallest at which the whole rotated box fits
inside the crop (thesis section 5.10 fix: no body cut in half). ``fit="mask"`` fits the
person mask instead where there is one (rendered data only: real sets have no masks, so this
frames the two domains differently; kept for rendered-only work); ``fit="none"`` uses one
fixed scale, ``min_scale`` source px per crop px, as in the thesis. ``mask_coverage`` in each
record reports how much of the fitted region the crop holds.

Run ``python -m protocol.crop_dataset --help`` for the CLI.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from protocol.annotations import PersonAnnotation, load_annotations, rbox_mask
from protocol.cli import run_main
from protocol.crops import DEFAULT_CROP_SIZE, DEFAULT_FEATHER_PX, CropError, crop_mask, crop_person
from protocol.datacheck import BadDataError, check_images
from protocol.fileio import atomic_write_bytes, atomic_write_json

RECORDS_FORMAT_VERSION = 1
FIT_MODES = {
    "rbox": "scale each crop so the person's rotated box fits (the same rule in every domain)",
    "mask": "scale each crop so the person's mask (or, without one, its rotated box) fits",
    "none": "one fixed scale (min_scale) for every crop, as in the thesis",
}
DEFAULT_FIT = "rbox"
CONTACT_SHEET_MAX_BYTES = 400_000


@dataclass(frozen=True)
class CropDatasetConfig:
    """How crops are cut; saved as ``config.json`` beside the dataset."""

    size: tuple[int, int] = DEFAULT_CROP_SIZE
    fit: str = DEFAULT_FIT
    min_scale: float = 1.0
    max_scale: float | None = None
    fit_margin_px: float = DEFAULT_FEATHER_PX
    antialias: bool = True

    def __post_init__(self) -> None:
        if len(self.size) != 2 or any(int(v) != v or v <= 0 or v % 2 for v in self.size):
            raise ValueError(f"CropDatasetConfig.size must be two positive even integers, got {self.size}")
        if self.fit not in FIT_MODES:
            raise ValueError(f"CropDatasetConfig.fit {self.fit!r} unknown; valid: {sorted(FIT_MODES)}")
        if not (math.isfinite(self.min_scale) and self.min_scale > 0):
            raise ValueError(f"CropDatasetConfig.min_scale must be positive, got {self.min_scale}")
        if self.max_scale is not None and not self.max_scale >= self.min_scale:
            raise ValueError(
                f"CropDatasetConfig.max_scale ({self.max_scale}) must be >= min_scale ({self.min_scale})")
        if not (math.isfinite(self.fit_margin_px) and self.fit_margin_px >= 0):
            raise ValueError(
                f"CropDatasetConfig.fit_margin_px must be >= 0, got {self.fit_margin_px}")


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _load_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} listed in the annotations is missing")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError) as exc:  # passed the fast check, failed to decode
        raise BadDataError(f"image cannot be decoded ({exc}), {path}; fix or remove it, or "
                           "pass --skip-bad") from exc


def fit_region(person: PersonAnnotation, width: int, height: int, fit: str = DEFAULT_FIT
               ) -> np.ndarray | None:
    """The full-frame region a person's crop is scaled to fit (the crop rule, module
    docstring): the rotated box with ``fit="rbox"``, the person mask (or the box where there
    is no mask) with ``fit="mask"``. With ``fit="none"`` the caller fixes the scale and the
    box only measures coverage. ``None`` when the person has neither. Every tool that cuts
    person crops (this module, ``batch_refine``, the add-on's preview) frames through here."""
    if fit not in FIT_MODES:
        raise ValueError(f"fit {fit!r} unknown; valid: {sorted(FIT_MODES)}")
    if fit == "mask" and person.segmentation is not None:
        return person.mask
    if person.rbox is not None:
        return rbox_mask(person.rbox, width, height)
    return person.mask


def build_crop_dataset(
    source: str | Path,
    out: str | Path,
    config: CropDatasetConfig = CropDatasetConfig(),
    *,
    progress: bool = True,
    contact_sheet: str | Path | None = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Cut every annotated person in ``source`` into ``out`` (layout in the module
    docstring). Returns a summary: counts, skipped persons with reasons, output paths.

    Every image with people is checked before anything is written (``protocol.datacheck``):
    a missing, empty, truncated or non-image file raises ``BadDataError`` naming it; with
    ``skip_bad`` such images are left out and listed in ``records.json``
    (``skipped_bad_files``)."""
    source, out = Path(source), Path(out)
    source_format, images = load_annotations(source)
    good, bad_files = check_images([image.path for image in images if image.persons],
                                   skip_bad=skip_bad, what=f"images listed in {source}")
    if bad_files:
        keep = set(good)
        images = [image for image in images if not image.persons or image.path in keep]
    atomic_write_json(out / "config.json", {"source": str(source), **asdict(config)})
    items: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    sheet_tiles: list[np.ndarray] = []
    total = sum(len(image.persons) for image in images)
    bar = tqdm(total=total, desc="cropping", unit="person", disable=not progress)
    for image in images:
        if not image.persons:
            continue
        pixels = _load_rgb(image.path)
        for index, person in enumerate(image.persons):
            bar.update(1)
            name = f"{image.path.stem}_{index}.png"
            region = fit_region(person, image.width, image.height, config.fit)
            try:
                crop, record = crop_person(
                    pixels, person.head_xy, size=config.size, image_id=image.image_id,
                    mask=region, scale=config.min_scale if config.fit == "none" else None,
                    min_scale=config.min_scale, max_scale=config.max_scale,
                    fit_margin_px=config.fit_margin_px, antialias=config.antialias,
                )
            except CropError as exc:
                skipped.append({"image_id": image.image_id, "person_index": index, "reason": str(exc)})
                continue
            atomic_write_bytes(out / "crops" / name, _png_bytes(crop))
            mask_file = None
            person_mask = person.mask
            if person_mask is not None:
                crop_space = crop_mask(person_mask, record, antialias=config.antialias)
                mask_file = f"masks/{name}"
                atomic_write_bytes(out / mask_file,
                                   _png_bytes(np.rint(crop_space * 255).astype(np.uint8)))
            if contact_sheet is not None:
                sheet_tiles.append(crop)
            items.append({
                "crop_file": f"crops/{name}",
                "mask_file": mask_file,
                "image_file": str(image.path.relative_to(source)),
                "person_index": index,
                "person_id": person.person_id,
                "head_source": person.head_source,
                "record": record.to_dict(),
            })
    bar.close()
    atomic_write_json(out / "records.json", {
        "format_version": RECORDS_FORMAT_VERSION,
        "source": str(source),
        "source_format": source_format,
        "config": asdict(config),
        "items": items,
        "skipped": skipped,
        "skipped_bad_files": [b.to_dict() for b in bad_files],
    })
    summary: dict[str, Any] = {
        "source_format": source_format, "images": len(images), "persons": total,
        "crops": len(items), "skipped": skipped, "records": str(out / "records.json"),
        "skipped_bad_files": [b.to_dict() for b in bad_files],
    }
    if contact_sheet is not None:
        summary["contact_sheet"] = str(write_contact_sheet(sheet_tiles, contact_sheet))
    return summary


def write_contact_sheet(
    crops: Sequence[np.ndarray],
    path: str | Path,
    *,
    columns: int = 10,
    anchor_fraction: tuple[float, float] | None = (0.5, 0.25),
    max_bytes: int = CONTACT_SHEET_MAX_BYTES,
) -> Path:
    """Tile ``crops`` (equal-size RGB arrays) into one JPEG under ``max_bytes``, marking the
    expected head position with a small red cross so a glance shows heads on target."""
    if not crops:
        raise ValueError("no crops to put on a contact sheet")
    tile_h, tile_w = crops[0].shape[:2]
    if any(c.shape[:2] != (tile_h, tile_w) for c in crops):
        raise ValueError("contact sheet crops must all have the same size")
    columns = max(1, min(columns, len(crops)))
    rows = math.ceil(len(crops) / columns)
    gap = 2
    sheet = Image.new("RGB", (columns * (tile_w + gap) - gap, rows * (tile_h + gap) - gap), "white")
    draw = ImageDraw.Draw(sheet)
    for index, crop in enumerate(crops):
        x = (index % columns) * (tile_w + gap)
        y = (index // columns) * (tile_h + gap)
        tile = crop if crop.ndim == 3 else np.repeat(crop[:, :, None], 3, axis=2)
        sheet.paste(Image.fromarray(tile.astype(np.uint8)), (x, y))
        if anchor_fraction is not None:
            ax = x + (tile_w - 1) * anchor_fraction[0]
            ay = y + tile_h * anchor_fraction[1]
            draw.line([(ax - 3, ay), (ax + 3, ay)], fill=(255, 0, 0))
            draw.line([(ax, ay - 3), (ax, ay + 3)], fill=(255, 0, 0))
    for quality in (85, 75, 65, 50, 35):
        buffer = io.BytesIO()
        sheet.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= max_bytes:
            return atomic_write_bytes(path, buffer.getvalue())
    raise ValueError(f"contact sheet of {len(crops)} crops does not fit in {max_bytes} bytes; "
                     "write fewer crops per sheet")


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}") from exc
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """The crop command under ``protocol.cli.run_main`` (one-line errors, exit 2)."""
    return run_main(_main, argv, prog="crop_dataset")


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protocol.crop_dataset",
        description="Cut upright person crops (head near the top, body toward the image "
                    "centre) from an annotated fisheye dataset: the refiner's training input.",
        epilog="""examples:
  # real CEPDOF-style frames (annotations.json, rotated person boxes):
  python -m protocol.crop_dataset ../shared/data/real/cepdof_lunch3 out/crops_real --size 128
  # the same, plus a contact sheet to check by eye that everyone stands upright:
  python -m protocol.crop_dataset ../shared/data/real/cepdof_lunch3 out/crops_real \\
      --contact-sheet out/crops_real/contact_sheet.jpg
  # a rendered dataset (coco.json with head points and masks), thesis-style fixed scale:
  python -m protocol.crop_dataset out/render_001 out/crops_synth --size 128 --fit none

SRC holds either coco.json (rendered) or annotations.json (CEPDOF). OUT gets crops/,
masks/ (rendered data only), records.json and config.json.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="dataset folder with coco.json or annotations.json")
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--size", type=_size, default=DEFAULT_CROP_SIZE,
                        help="crop size N or WxH, even (default 128)")
    parser.add_argument("--fit", choices=sorted(FIT_MODES), default=DEFAULT_FIT,
                        help="; ".join(f"{k}: {v}" for k, v in FIT_MODES.items()))
    parser.add_argument("--min-scale", type=float, default=1.0,
                        help="smallest scale, source px per crop px (default 1)")
    parser.add_argument("--max-scale", type=float, default=None,
                        help="largest scale; people bigger than this are cut (default: none)")
    parser.add_argument("--fit-margin", type=float, default=DEFAULT_FEATHER_PX,
                        help="crop px kept free around the fitted person (default %(default)s)")
    parser.add_argument("--no-antialias", action="store_true",
                        help="plain bilinear sampling even when downscaling")
    parser.add_argument("--contact-sheet", type=Path, default=None,
                        help="also write all crops tiled into this JPEG (< 400 KB)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out missing, empty, truncated or non-image files instead of "
                             "stopping; they are listed in records.json (skipped_bad_files)")
    args = parser.parse_args(argv)
    config = CropDatasetConfig(size=args.size, fit=args.fit, min_scale=args.min_scale,
                               max_scale=args.max_scale, fit_margin_px=args.fit_margin,
                               antialias=not args.no_antialias)
    summary = build_crop_dataset(args.source, args.out, config, progress=not args.quiet,
                                 contact_sheet=args.contact_sheet, skip_bad=args.skip_bad)
    print(f"{summary['crops']} crops from {summary['persons']} persons in {summary['images']} "
          f"{summary['source_format']} images -> {summary['records']}")
    for entry in summary["skipped"]:
        print(f"skipped {entry['image_id']} person {entry['person_index']}: {entry['reason']}")
    if summary["skipped_bad_files"]:
        print(f"skipped {len(summary['skipped_bad_files'])} bad images (listed in "
              f"{summary['records']})", file=sys.stderr)
    if "contact_sheet" in summary:
        print(f"contact sheet: {summary['contact_sheet']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
