"""Unpaired crop folders for refiner training, and a deterministic batch order.

A crop folder is ``<dir>/crops/*.png`` when that subfolder exists (the layout written by
``protocol.crop_dataset``), otherwise the image files directly in ``<dir>``. Images are converted
to RGB, resized to the training crop size when they differ, and scaled to [-1, 1].

Batches are a pure function of (seed, step): epoch ``e`` shuffles each domain with a generator
seeded by (seed, e, domain), so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from refiner_daemon.common.images import IMAGE_SUFFIXES, list_images  # noqa: F401  (public here too)

_CACHE_LIMIT_BYTES = 1 << 30  # decoded crops kept in memory up to 1 GiB per domain


def list_crop_files(folder: str | Path) -> list[Path]:
    """Sorted image files of a crop folder; a clear error when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"crop folder {root} does not exist; point it at a folder of "
                                "crops or at a crop dataset (with a crops/ subfolder)")
    source = root / "crops" if (root / "crops").is_dir() else root
    return list_images(source, what="crop folder")


def load_crop(path: Path, crop_size: tuple[int, int], channels: int = 3) -> np.ndarray:
    """One crop as uint8 (H, W, channels) at ``crop_size`` = (height, width); 1 channel: grey."""
    with Image.open(path) as image:
        image = image.convert("RGB" if channels == 3 else "L")
        if image.size != (crop_size[1], crop_size[0]):
            image = image.resize((crop_size[1], crop_size[0]), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).reshape(crop_size[0], crop_size[1], channels).copy()


def uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1].

    Arrays decoded from the wire are read-only views over the received frames; torch cannot
    wrap those without a warning, and ``.float()`` copies anyway, so convert in numpy first.
    """
    if not images.flags.writeable:
        return torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2).div_(127.5).sub_(1.0)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, rounded."""
    scaled = (images.detach().float().clamp(-1, 1) + 1.0) * 127.5
    return scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class CropFolder:
    """The crops of one domain, decoded on first use and cached."""

    def __init__(self, folder: str | Path, crop_size: tuple[int, int], channels: int = 3) -> None:
        self.files = list_crop_files(folder)
        self.crop_size = crop_size
        self.channels = channels
        per_image = crop_size[0] * crop_size[1] * channels
        self._cache: dict[int, np.ndarray] | None = (
            {} if per_image * len(self.files) <= _CACHE_LIMIT_BYTES else None)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        crop = load_crop(self.files[index], self.crop_size, self.channels)
        if self._cache is not None:
            self._cache[index] = crop
        return crop

    def batch(self, indices: list[int], flips: list[bool]) -> torch.Tensor:
        crops = np.stack([self[i][:, ::-1] if flip else self[i] for i, flip in zip(indices, flips)])
        return uint8_to_tensor(np.ascontiguousarray(crops))


class UnpairedBatches:
    """Deterministic unpaired (x, y) batches indexed by global step.

    An epoch is ``min(|X|, |Y|) // batch_size`` steps (at least one), following §3.5.1's
    "epochs counted over min(|cS|, |cR|)".

    In distributed training ``batch_size`` is the global batch and :meth:`batch` returns only
    process ``rank``'s contiguous share of it (``world_size`` shares), so the processes together
    see exactly the batches of one process with that batch size.
    """

    def __init__(self, x: CropFolder, y: CropFolder, *, batch_size: int, seed: int,
                 flip: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} does not split evenly over {world_size} "
                             "processes; make it per-process batch x number of processes")
        if min(len(x), len(y)) < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the smaller domain "
                             f"({len(x)} synthetic, {len(y)} real crops); lower batch_size")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seed = seed
        self.flip = flip
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = max(1, min(len(x), len(y)) // batch_size)
        self._orders: dict[int, tuple[list[int], list[bool], list[int], list[bool]]] = {}

    def _order(self, epoch: int) -> tuple[list[int], list[bool], list[int], list[bool]]:
        if epoch not in self._orders:
            self._orders = {}  # keep only the current epoch
            result = []
            for domain, folder in enumerate((self.x, self.y)):
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 2 + domain)
                perm = torch.randperm(len(folder), generator=gen).tolist()
                flips = (torch.rand(len(folder), generator=gen) < 0.5).tolist()
                result += [perm, [bool(f) and self.flip for f in flips]]
            self._orders[epoch] = (result[0], result[1], result[2], result[3])
        return self._orders[epoch]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, within = divmod(step, self.steps_per_epoch)
        x_perm, x_flip, y_perm, y_flip = self._order(epoch)
        share = self.batch_size // self.world_size
        lo = within * self.batch_size + self.rank * share
        hi = lo + share
        return (self.x.batch(x_perm[lo:hi], x_flip[lo:hi]),
                self.y.batch(y_perm[lo:hi], y_flip[lo:hi]))
