"""The one torch.load: tensors and plain values only (``weights_only=True``), clear errors.

Used for refiner files, detector checkpoints, training resume states and backbone weights. A
missing file raises ``FileNotFoundError`` and an unreadable one :class:`CheckpointError` (a
``ValueError``), both naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A file that exists but is not a loadable torch checkpoint (corrupt, truncated, pickled code)."""


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``; ``what`` names the file in error messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, wrong format, pickled objects beyond plain values
        raise CheckpointError(f"{path} is not a loadable {what}: {exc}") from exc
