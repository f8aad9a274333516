"""Tiny stand-in datasets in the rendered-set format (``coco.json`` + ``images/``): dark discs
("heads") on a noisy background. Tests and smoke runs use them where no rendered set exists;
``style`` changes the look (background brightness, noise, tint) so two sets differ in
appearance like synthetic and real data, while the geometry stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from protocol.coco import rle_encode
from protocol.fileio import atomic_write_bytes, atomic_write_json


@dataclass(frozen=True)
class DiscStyle:
    background: float = 0.7  # mean grey level of the background, 0-1
    noise: float = 0.08  # per-pixel noise standard deviation
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain
    disc_level: float = 0.15  # grey level of the heads


def write_disc_dataset(folder: str | Path, images: int = 8, size: int = 128, heads: tuple[int, int] = (1, 3),
                       radius: tuple[int, int] = (7, 11), seed: int = 0, style: DiscStyle = DiscStyle()) -> Path:
    """Write ``images`` PNGs with 1-3 non-overlapping discs each and their head boxes."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    coco_images, annotations = [], []
    for image_id in range(images):
        pixels = np.clip(rng.normal(style.background, style.noise, (size, size, 3)) * np.array(style.tint), 0, 1)
        canvas = Image.fromarray((pixels * 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        placed: list[tuple[float, float, float]] = []
        for _ in range(int(rng.integers(heads[0], heads[1] + 1))):
            for _attempt in range(50):
                r = float(rng.integers(radius[0], radius[1] + 1))
                cx, cy = rng.uniform(r + 2, size - r - 2, 2)
                if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 4) ** 2 for x, y, q in placed):
                    placed.append((float(cx), float(cy), r))
                    break
        level = int(style.disc_level * 255)
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        for cx, cy, r in placed:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(level, level, level))
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r  # the "person" is its head here
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "head_point": [cx, cy], "head_bbox": [cx - r, cy - r, 2 * r, 2 * r],
                                "bbox": [cx - r, cy - r, 2 * r, 2 * r], "segmentation": rle_encode(mask)})
        name = f"images/{image_id:05d}.png"
        buffer = _png_bytes(canvas)
        atomic_write_bytes(folder / name, buffer)
        coco_images.append({"id": image_id, "file_name": name, "width": size, "height": size})
    atomic_write_json(folder / "coco.json", {"images": coco_images, "annotations": annotations,
                                             "categories": [{"id": 1, "name": "person"}]})
    return folder


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
