"""The detector's validated configuration: what to train on, the network, the schedule.

Every field is checked up front in ``__post_init__`` and errors name the field. The config is
saved as ``config.json`` beside each run's checkpoints, and ``from_dict(to_dict())`` round-trips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from protocol.annotations import HEAD_BOX_SCALE


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and a fix."""


@dataclass
class DatasetSpec:
    """One annotated image folder, optionally narrowed to some of its images.

    ``path`` holds either ``coco.json`` (rendered sets: head boxes given) or ``annotations.json``
    (CEPDOF: rotated person boxes, head boxes derived). ``images`` keeps only those file names
    (how real frames are split into train / val / test without mixing frames); ``limit`` keeps the
    first ``limit`` images after a seeded shuffle (how the k-times-R_train mixes are sized).
    """

    path: str
    images: list[str] | None = None
    limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"dataset path must be a non-empty string, got {self.path!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise ConfigError(f"dataset limit must be a non-negative integer, got {self.limit!r}")
        if self.images is not None:
            self.images = [str(name) for name in self.images]

    @classmethod
    def coerce(cls, value: DatasetSpec | str | dict[str, Any]) -> DatasetSpec:
        if isinstance(value, DatasetSpec):
            return value
        if isinstance(value, (str, Path)):
            return cls(path=str(value))
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                raise ConfigError(f"unknown dataset keys {sorted(unknown)}; valid: path, images, limit, seed")
            return cls(**value)
        raise ConfigError(f"a dataset is a path or a dict with 'path', got {type(value).__name__}")


@dataclass
class DetectorConfig:
    """Everything one detector training run needs (Algorithm 3, lines 7-8)."""

    train: list[DatasetSpec]
    val: list[DatasetSpec]
    out_dir: str
    backbone: str = "mobilenet_v2"
    weights: str | None = None  # backbone weights file; None: the backbone's default source
    pretrained: bool = True  # False trains the backbone from scratch, explicitly
    input_size: int = 448
    num_anchors: int = 9
    # Fixed anchors ``[[w, h], ...]`` in input pixels (e.g. one set fitted on the union of an
    # experiment's training sets); None fits them by k-means on this run's training boxes.
    anchor_shapes: list[list[float]] | None = None
    epochs: int = 30
    # A budget in optimizer steps instead: epochs become ceil(min_steps / steps per epoch) when
    # that is more, so a 5-frame set trains as many steps as a 500-frame one (arms compared
    # fairly) instead of 5 / batch_size steps per epoch.
    min_steps: int | None = None
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    confidence_loss: str = "bce"  # "l2" is SqueezeDet's original; see model.squeezedet_loss
    iou_threshold: float = 0.5  # tau: a detection counts when IoU > tau
    nms_iou: float = 0.4
    max_detections: int = 64
    augment: bool = True
    rotation: bool = True  # about the image centre, any angle: the fisheye view is rotation-symmetric
    flips: bool = True
    photometric: float = 0.2  # strength of brightness / contrast / saturation jitter, 0 disables
    # Head square side as a fraction of the person box's short side, for every domain
    # (protocol.annotations' head rule).
    head_box_scale: float = HEAD_BOX_SCALE
    cache_images: bool = True
    device: str = "auto"
    resume: bool = False
    tensorboard: bool = True
    num_threads: int = 0  # 0: leave torch's default
    # Under torchrun: BatchNorm statistics over the whole global batch (as one process with that
    # batch would compute them). False: each process normalises by its own share, which is much
    # faster on the CPU (gloo: two all-reduces per BatchNorm layer and step) but not equivalent.
    sync_batchnorm: bool = True

    def __post_init__(self) -> None:
        self.train = [DatasetSpec.coerce(d) for d in _as_list(self.train, "train")]
        self.val = [DatasetSpec.coerce(d) for d in _as_list(self.val, "val")]
        if not self.train:
            raise ConfigError("train: give at least one training dataset folder")
        if not self.val:
            raise ConfigError("val: give at least one validation dataset (checkpoints are chosen on it)")
        if not self.out_dir:
            raise ConfigError("out_dir: give a folder for checkpoints and logs")
        from refiner_daemon.detector.model import BACKBONES  # late: keeps config import light

        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone {self.backbone!r} unknown; valid: {sorted(BACKBONES)}")
        _positive_int(self, "input_size", "num_anchors", "epochs", "batch_size", "max_detections")
        if self.min_steps is not None and (not isinstance(self.min_steps, int) or self.min_steps < 1):
            raise ConfigError(f"min_steps must be a positive integer or null, got {self.min_steps!r}")
        if self.input_size % 32:
            raise ConfigError(f"input_size must be a multiple of 32, got {self.input_size}")
        for name in ("learning_rate", "head_box_scale"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("iou_threshold", "nms_iou"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ConfigError(f"{name} must lie in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.photometric <= 1.0:
            raise ConfigError(f"photometric must lie in [0, 1], got {self.photometric}")
        if not isinstance(self.sync_batchnorm, bool):
            raise ConfigError(f"sync_batchnorm must be true or false, got {self.sync_batchnorm!r}")
        if self.confidence_loss not in ("bce", "l2"):
            raise ConfigError(f"confidence_loss must be bce or l2, got {self.confidence_loss!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.anchor_shapes is not None:
            shapes = self.anchor_shapes
            if (len(shapes) != self.num_anchors
                    or not all(len(s) == 2 and all(float(v) > 0 for v in s) for s in shapes)):
                raise ConfigError(f"anchor_shapes must be {self.num_anchors} (num_anchors) positive "
                                  f"[w, h] pairs, got {shapes!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
        missing = {"train", "val", "out_dir"} - set(data)
        if missing:
            raise ConfigError(f"missing config keys {sorted(missing)}")
        return cls(**data)


def _as_list(value: Any, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, Path, dict, DatasetSpec)):
        return [value]
    raise ConfigError(f"{name}: expected a dataset or a list of datasets, got {type(value).__name__}")


def _positive_int(config: DetectorConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


__all__ = ["ConfigError", "DatasetSpec", "DetectorConfig"]
