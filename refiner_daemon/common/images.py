"""The one image-folder reader: which suffixes count as images, sorted listing, clear errors."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: str | Path, *, recursive: bool = False, what: str = "image folder") -> list[Path]:
    """Image files in ``folder`` (``recursive``: also below it), sorted by path.

    Raises ``FileNotFoundError`` naming the folder when it does not exist or holds no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} does not exist")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    paths = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) {'under' if recursive else 'in'} {folder}")
    return paths
