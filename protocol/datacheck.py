"""Fast checks of image files before long work starts, and ``--skip-bad`` bookkeeping.

:func:`check_image` reads a file's header and structure, not its pixels, so a whole dataset
is checked in well under a second per thousand images:

- the file exists, is a regular file and is not empty (0 bytes);
- Pillow recognises its format (``Image.open``: a text file named ``.jpg`` fails here) and
  ``Image.verify()`` passes (PNG: every chunk's CRC up to IEND, so a truncated PNG fails);
- a JPEG ends with its end-of-image marker (``FF D9`` in the last 4 KiB), which a truncated
  JPEG lacks (``verify()`` does not decode JPEG data);
- the image is at least 1x1 pixel.

It does not decode pixel data, so a file whose compressed data is corrupt but complete can
still fail later; the loaders then name the file too. :func:`check_images` checks a list and
either raises :class:`BadDataError` naming the first bad file (and how many there are), or,
with ``skip_bad=True``, returns the good ones and the bad ones as :class:`BadFile` records for
the run's JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

SKIP_BAD_HINT = "fix or remove it, or pass --skip-bad to skip such files"
_JPEG_TAIL = 4096


class BadDataError(ValueError):
    """Unusable input data; the message names the file, what is wrong and how to fix it."""

    def __init__(self, message: str, bad: list[BadFile] | None = None) -> None:
        super().__init__(message)
        self.bad = list(bad or [])


@dataclass(frozen=True)
class BadFile:
    """One file that failed a check, for the run's JSON (``"skipped_bad_files"``)."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_image(path: str | Path) -> str | None:
    """``None`` when ``path`` looks like a complete, readable image, else why not (module
    docstring lists what is checked)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "image file is missing"
    except OSError as exc:
        return f"image file cannot be read ({exc.strerror})"
    if not path.is_file():
        return "not a regular file"
    if stat.st_size == 0:
        return "image file is empty (0 bytes)"
    try:
        with Image.open(path) as image:
            fmt = image.format
            width, height = image.size
            image.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        text = str(exc) or type(exc).__name__
        if "cannot identify image file" in text:
            return "not an image Pillow can read (wrong content for its name?)"
        return f"image file is corrupt or truncated ({text})"
    if width < 1 or height < 1:
        return f"image has no pixels ({width}x{height})"
    if fmt == "JPEG":
        with open(path, "rb") as handle:
            handle.seek(max(0, stat.st_size - _JPEG_TAIL), os.SEEK_SET)
            if b"\xff\xd9" not in handle.read():
                return "JPEG file is truncated (no end-of-image marker)"
    return None


def check_images(paths: Iterable[str | Path], *, skip_bad: bool = False,
                 what: str = "images") -> tuple[list[Path], list[BadFile]]:
    """Check every file in ``paths``. Returns ``(good, bad)``; unless ``skip_bad``, raises
    :class:`BadDataError` naming the first bad file when there is any."""
    good: list[Path] = []
    bad: list[BadFile] = []
    for raw in paths:
        path = Path(raw)
        reason = check_image(path)
        if reason is None:
            good.append(path)
        else:
            bad.append(BadFile(str(path), reason))
    if bad and not skip_bad:
        raise BadDataError(bad_files_message(bad, len(good) + len(bad), what), bad)
    return good, bad


def bad_files_message(bad: list[BadFile], total: int, what: str = "images") -> str:
    """``<reason>, <path>[ (and N more of T <what>)]; <how to fix>``."""
    first = bad[0]
    more = f" (and {len(bad) - 1} more bad of {total} {what})" if len(bad) > 1 else ""
    return f"{first.reason}, {first.path}{more}; {SKIP_BAD_HINT}"


__all__ = ["SKIP_BAD_HINT", "BadDataError", "BadFile", "bad_files_message", "check_image",
           "check_images"]
