"""The one place that turns a device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``) into a device."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is ``cuda`` when a GPU is present, else ``cpu``; asking for CUDA without one fails
    with a message saying what to use instead."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use cpu or auto")
    return torch.device(name)
