"""Person crops of several datasets side by side: one labelled row block per dataset, the same
crop rule and size for all, to look at rendered people next to real ones.

Each dataset gives ``count`` people drawn at random (seeded) from all of its annotated people
and cut exactly as the refiner and the gap measures cut them (``protocol.crop_dataset``'s
``fit_region`` and ``crop_person``: upright, head near the top, the rotated box fitted), so the
sheet shows what the models compare. A red cross marks where the head should be.

    python -m refiner_daemon.evaluation.crop_sheet \\
        real=../shared/data/real/cepdof_lunch3 rendered=out/S_office100 --out out/people.png
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from protocol.annotations import load_annotations
from protocol.cli import CliError, run_main
from protocol.crop_dataset import CropDatasetConfig, fit_region
from protocol.crops import CropError, crop_person
from protocol.fileio import atomic_write_bytes
from refiner_daemon.evaluation.compare import labelled_path

LABEL_WIDTH = 90
GAP = 2


def sample_crops(source: Path, count: int, config: CropDatasetConfig, seed: int = 0) -> list[np.ndarray]:
    """Up to ``count`` crops of people drawn at random from ``source`` (all of them when it
    has fewer); people the crop rule cannot cut (no box, no head) are skipped."""
    _, images = load_annotations(source)
    people = [(image, index) for image in images for index in range(len(image.persons))]
    if not people:
        raise CliError(f"{source} has no annotated people")
    order = np.random.default_rng(seed).permutation(len(people))
    crops: list[np.ndarray] = []
    cache: dict[Path, np.ndarray] = {}
    for position in order:
        if len(crops) == count:
            break
        image, index = people[int(position)]
        if image.path not in cache:
            cache.clear()  # one image at a time in memory
            cache[image.path] = np.asarray(Image.open(image.path).convert("RGB"))
        pixels = cache[image.path]
        person = image.persons[index]
        try:
            crop, _ = crop_person(pixels, person.head_xy, size=config.size, image_id=image.image_id,
                                  mask=fit_region(person, image.width, image.height, config.fit),
                                  min_scale=config.min_scale, max_scale=config.max_scale,
                                  fit_margin_px=config.fit_margin_px, antialias=config.antialias)
        except CropError:
            continue
        crops.append(crop)
    return crops


def draw_sheet(rows: dict[str, list[np.ndarray]], columns: int = 12,
               anchor_fraction: tuple[float, float] = (0.5, 0.25)) -> Image.Image:
    """Each label's crops as a block of rows ``columns`` wide, the label at its left."""
    tiles = [crop for crops in rows.values() for crop in crops]
    if not tiles:
        raise CliError("no crops to draw")
    tile_h, tile_w = tiles[0].shape[:2]
    blocks = {label: max(1, -(-len(crops) // columns)) for label, crops in rows.items()}
    height = sum(n * (tile_h + GAP) + 2 * GAP for n in blocks.values())
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * (tile_w + GAP), height), "white")
    draw = ImageDraw.Draw(sheet)
    top = 0
    for label, crops in rows.items():
        draw.text((4, top + 4), f"{label}\n{len(crops)} people", fill="black")
        for i, crop in enumerate(crops):
            x = LABEL_WIDTH + (i % columns) * (tile_w + GAP)
            y = top + (i // columns) * (tile_h + GAP)
            sheet.paste(Image.fromarray(crop.astype(np.uint8)), (x, y))
            ax, ay = x + (tile_w - 1) * anchor_fraction[0], y + tile_h * anchor_fraction[1]
            draw.line([(ax - 2, ay), (ax + 2, ay)], fill=(255, 0, 0))
            draw.line([(ax, ay - 2), (ax, ay + 2)], fill=(255, 0, 0))
        top += blocks[label] * (tile_h + GAP) + 2 * GAP
    return sheet


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.evaluation.crop_sheet",
        description="Person crops of several annotated datasets side by side, cut by the one crop "
                    "rule the refiner and the gap measures use, to compare rendered and real people by eye.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""example:
  python -m refiner_daemon.evaluation.crop_sheet real=../shared/data/real/cepdof_lunch3 \\
      rendered=out/S_office100 --count 24 --out out/people.png""")
    parser.add_argument("datasets", nargs="+", type=labelled_path, metavar="LABEL=FOLDER",
                        help="a dataset folder (coco.json or CEPDOF annotations.json) and its row label")
    parser.add_argument("--out", type=Path, required=True, help="the sheet (PNG or JPEG)")
    parser.add_argument("--count", type=int, default=24, help="people per dataset (default 24)")
    parser.add_argument("--size", type=int, default=64, help="crop size in pixels (default 64)")
    parser.add_argument("--columns", type=int, default=12, help="crops per row (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="which people are drawn (default 0)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.columns < 1:
        raise CliError("--count and --columns must be at least 1")
    config = CropDatasetConfig(size=(args.size, args.size))
    rows = {}
    for label, folder in args.datasets:
        if not folder.is_dir():
            raise CliError(f"{label}: {folder} is not a folder")
        rows[label] = sample_crops(folder, args.count, config, args.seed)
    sheet = draw_sheet(rows, args.columns)
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG" if args.out.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    atomic_write_bytes(args.out, buffer.getvalue())
    print(f"{args.out}: " + ", ".join(f"{label} {len(crops)}" for label, crops in rows.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, prog="crop_sheet")


if __name__ == "__main__":
    raise SystemExit(main())
