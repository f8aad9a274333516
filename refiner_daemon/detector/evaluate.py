"""Evaluate detector checkpoints: precision, recall and F1 at IoU > tau over a confidence
threshold chosen on validation (stored in the checkpoint), written as JSON per checkpoint.

    python -m refiner_daemon.detector.evaluate runs/det/best.pt --data ../shared/data/real/cepdof_lunch3
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from protocol.annotations import HEAD_BOX_SCALE
from protocol.cli import run_main
from protocol.datacheck import BadFile
from protocol.fileio import atomic_write_json
from refiner_daemon.detector.config import DatasetSpec
from refiner_daemon.detector.data import HeadDataset, collate, load_samples
from refiner_daemon.detector.metrics import (
    ImageDetections,
    choose_confidence_threshold,
    evaluate_at_threshold,
)
from refiner_daemon.detector.model import HeadDetector, load_checkpoint, predict

# Detections below this score are never kept when collecting: the threshold search starts here.
MIN_SCORE = 0.01


@torch.no_grad()
def collect_detections(model: HeadDetector, dataset: HeadDataset, batch_size: int = 8,
                       device: str | torch.device = "cpu", nms_iou: float = 0.4,
                       max_detections: int = 64) -> list[ImageDetections]:
    """Every image's detections scoring at least ``MIN_SCORE`` (after NMS) and its ground truth,
    in input-pixel coordinates (IoU is unchanged by the uniform resize of square frames)."""
    results: list[ImageDetections] = []
    indices = list(range(len(dataset)))
    for start in range(0, len(indices), batch_size):
        images, gt_boxes = collate([dataset[i] for i in indices[start:start + batch_size]])
        for (boxes, scores), gt in zip(
                predict(model, images.to(device), MIN_SCORE, nms_iou, max_detections), gt_boxes):
            results.append(ImageDetections(boxes.cpu().numpy(), scores.cpu().numpy(), gt.numpy()))
    return results


def evaluate_checkpoint(checkpoint: str | Path, datasets: Sequence[DatasetSpec | str], *,
                        confidence_threshold: float | None = None, iou_threshold: float | None = None,
                        output_json: str | Path | None = None, device: str = "cpu",
                        batch_size: int = 8) -> dict[str, Any]:
    """Test one checkpoint on ``datasets``. The confidence threshold defaults to the one chosen
    on validation when the checkpoint was kept (Algorithm 3, lines 8-9); IoU tau defaults to the
    training config's. Also reports the best threshold on this set, for information only."""
    model, payload = load_checkpoint(checkpoint, device)
    config = payload.get("config", {})
    tau = float(iou_threshold if iou_threshold is not None else config.get("iou_threshold", 0.5))
    threshold = float(confidence_threshold if confidence_threshold is not None
                      else payload.get("confidence_threshold", 0.5))
    specs = [DatasetSpec.coerce(d) for d in datasets]
    samples = [s for spec in specs for s in load_samples(spec, float(config.get("head_box_scale", HEAD_BOX_SCALE)))]
    dataset = HeadDataset(samples, model.input_size, augmentation=None, cache=False)
    detections = collect_detections(model, dataset, batch_size, device, float(config.get("nms_iou", 0.4)),
                                    int(config.get("max_detections", 64)))
    counts = evaluate_at_threshold(detections, threshold, tau)
    oracle_threshold, oracle_counts = choose_confidence_threshold(detections, tau)
    result = {
        "checkpoint": str(checkpoint),
        "datasets": [spec.path for spec in specs],
        "images": len(samples),
        "epoch": payload.get("epoch"),
        "seed": config.get("seed"),
        "iou_threshold": tau,
        "confidence_threshold": threshold,
        **counts.to_dict(),
        "oracle_threshold_on_this_set": {"threshold": oracle_threshold, **oracle_counts.to_dict()},
        "per_image": [
            {"image": sample.image_path.name, "ground_truths": len(d.gt_boxes),
             **evaluate_at_threshold([d], threshold, tau).to_dict()}
            for sample, d in zip(samples, detections)
        ],
    }
    if output_json is not None:
        atomic_write_json(output_json, result)
    return result


def main(argv: list[str] | None = None) -> int:
    """The evaluation command under ``protocol.cli.run_main`` (one-line errors, exit 2)."""
    return run_main(_main, argv, prog="detector-evaluate")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.detector.evaluate",
        description="Precision, recall and F1 (IoU > tau) of detector checkpoints on a test set. "
                    "The confidence threshold is the one chosen on validation during training.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m refiner_daemon.detector.evaluate runs/det/best.pt --data ../shared/data/real/cepdof_lunch3\n"
               "  python -m refiner_daemon.detector.evaluate runs/*/best.pt --data out/test_set --iou 0.5 "
               "--out results/\n"
               "Writes <checkpoint stem>.<run folder>.eval.json per checkpoint into --out "
               "(default: beside each checkpoint).")
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files written by training (best.pt)")
    parser.add_argument("--data", action="append", required=True,
                        help="test dataset folder (coco.json or CEPDOF annotations.json); repeatable")
    parser.add_argument("--images", nargs="*", default=None, help="only these image file names")
    parser.add_argument("--iou", type=float, default=None, help="IoU tau (default: the training config's)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="confidence threshold (default: the one chosen on validation)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable, truncated or missing images instead of "
                             "stopping; they are listed in each result JSON")
    args = parser.parse_args(argv)
    specs = [DatasetSpec(path=d, images=args.images) for d in args.data]
    # Check every input before the first (slow) evaluation; nothing is written on bad input.
    for checkpoint in map(Path, args.checkpoints):
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist; pass a best.pt "
                                    "or last.pt written by python -m refiner_daemon.detector.train")
    bad: list[BadFile] = []
    for spec in specs:
        good = load_samples(spec, skip_bad=args.skip_bad, bad=bad)
        if bad and args.skip_bad:
            spec.images = [s.image_path.name for s in good]
    if bad:
        print(f"skipped {len(bad)} bad images (listed in the result JSON)", file=sys.stderr)
    for checkpoint in map(Path, args.checkpoints):
        target = (args.out / f"{checkpoint.stem}.{checkpoint.parent.name}.eval.json" if args.out
                  else checkpoint.with_suffix(".eval.json"))
        result = evaluate_checkpoint(checkpoint, specs, confidence_threshold=args.threshold,
                                     iou_threshold=args.iou, device=args.device)
        if bad:
            result["skipped_bad_files"] = [b.to_dict() for b in bad]
        atomic_write_json(target, result)
        summary = {k: result[k] for k in ("epoch", "seed", "confidence_threshold", "precision", "recall", "f1")}
        print(f"{checkpoint}: {json.dumps(summary)} -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


