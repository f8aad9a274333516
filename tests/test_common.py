"""refiner_daemon.common: the one device helper, checkpoint loader and image-folder reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from refiner_daemon.common.checkpoints import CheckpointError, load_checkpoint
from refiner_daemon.common.devices import resolve_device
from refiner_daemon.common.images import list_images


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available; use cpu or auto"):
            resolve_device("cuda:0")


def test_load_checkpoint_round_trip_missing_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "step": 3}, path)
    assert load_checkpoint(path)["step"] == 3
    with pytest.raises(FileNotFoundError, match="refiner file .*missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt", what="refiner file")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt is not a loadable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    assert issubclass(CheckpointError, ValueError)


def test_list_images_sorted_recursive_and_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path)
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.webp", "notes.txt"):
        Image.new("RGB", (2, 2)).save(tmp_path / name, format="PNG") if name.endswith(
            ("png", "JPG", "webp")) else (tmp_path / name).write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.JPG", "b.png", "c.webp"]
