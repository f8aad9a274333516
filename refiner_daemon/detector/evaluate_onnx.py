"""Evaluate an ONNX head detector on annotated frames, with nothing but the .onnx file.

The experiment publishes its detectors as ONNX files so that anyone can test them on their own
ceiling-fisheye frames. :func:`export_with_metadata` writes such a file from a checkpoint and
stores in it what evaluation needs (input size, the confidence threshold chosen on validation,
NMS IoU, the head rule's box scale); :func:`evaluate_onnx` runs it with ONNX Runtime on
CEPDOF-style folders (``annotations.json`` with rotated person boxes) or rendered sets
(``coco.json``), with head boxes from the project's one head rule, and reports precision,
recall and F1 at IoU > tau, per frame too.

    python -m refiner_daemon.detector.evaluate_onnx det.onnx --data FRAMES_DIR [--out result.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol.annotations import HEAD_BOX_SCALE
from protocol.fileio import atomic_write_bytes, atomic_write_json
from refiner_daemon.detector.config import DatasetSpec
from refiner_daemon.detector.data import HeadDataset, collate, load_samples
from refiner_daemon.detector.export import ExportUnavailableError, export_onnx
from refiner_daemon.detector.metrics import ImageDetections, evaluate_at_threshold
from refiner_daemon.detector.model import load_checkpoint, postprocess

METADATA_KEYS = ("input_size", "confidence_threshold", "nms_iou", "max_detections",
                 "iou_threshold", "head_box_scale", "seed", "epoch")


def export_with_metadata(checkpoint: str | Path, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Export a checkpoint to ONNX and store the numbers evaluation needs (and ``extra``, e.g.
    the training arm) in the file's metadata, so the file stands on its own."""
    import onnx

    model, payload = load_checkpoint(checkpoint)
    config = payload.get("config", {})
    path = export_onnx(model, out)
    metadata = {
        "input_size": model.input_size,
        "confidence_threshold": float(payload.get("confidence_threshold", 0.5)),
        "nms_iou": float(config.get("nms_iou", 0.4)),
        "max_detections": int(config.get("max_detections", 64)),
        "iou_threshold": float(config.get("iou_threshold", 0.5)),
        "head_box_scale": float(config.get("head_box_scale", HEAD_BOX_SCALE)),
        "seed": config.get("seed"), "epoch": payload.get("epoch"), **(extra or {}),
    }
    graph = onnx.load(str(path))
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    return atomic_write_bytes(path, graph.SerializeToString())


def read_metadata(session: Any) -> dict[str, Any]:
    """The evaluation numbers stored by :func:`export_with_metadata` (JSON-decoded)."""
    raw = session.get_modelmeta().custom_metadata_map
    return {key: json.loads(value) for key, value in raw.items()}


def evaluate_onnx(onnx_path: str | Path, datasets: Sequence[str | Path], *,
                  confidence_threshold: float | None = None, iou_threshold: float | None = None,
                  batch_size: int = 4) -> dict[str, Any]:
    """Precision, recall and F1 of an ONNX detector on ``datasets`` (totals and per frame).
    Thresholds default to those stored in the file; a file without metadata needs
    ``confidence_threshold`` (the input size is read from the graph)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportUnavailableError("evaluating ONNX needs onnxruntime: pip install onnxruntime") from exc
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} not found; export one with "
                                "python -m refiner_daemon.detector.export CHECKPOINT --out FILE.onnx")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    metadata = read_metadata(session)
    input_size = int(metadata.get("input_size") or session.get_inputs()[0].shape[-1])
    threshold = confidence_threshold if confidence_threshold is not None else metadata.get("confidence_threshold")
    if threshold is None:
        raise ValueError(f"{onnx_path} stores no confidence threshold; pass --threshold")
    tau = float(iou_threshold if iou_threshold is not None else metadata.get("iou_threshold", 0.5))
    samples = [s for folder in datasets
               for s in load_samples(DatasetSpec(str(folder)), float(metadata.get("head_box_scale", HEAD_BOX_SCALE)))]
    dataset = HeadDataset(samples, input_size, augmentation=None, cache=False)
    detections: list[ImageDetections] = []
    for start in range(0, len(dataset), batch_size):
        images, gt_boxes = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        boxes, scores = session.run(["boxes", "scores"], {"images": images.numpy().astype(np.float32)})
        kept = postprocess(torch.from_numpy(boxes), torch.from_numpy(scores), float(threshold),
                           float(metadata.get("nms_iou", 0.4)), int(metadata.get("max_detections", 64)))
        for (b, s), gt in zip(kept, gt_boxes):
            detections.append(ImageDetections(b.numpy(), s.numpy(), gt.numpy()))
    totals = evaluate_at_threshold(detections, float(threshold), tau)
    return {
        "model": str(onnx_path), "datasets": [str(d) for d in datasets], "images": len(samples),
        "confidence_threshold": float(threshold), "iou_threshold": tau, "metadata": metadata,
        **totals.to_dict(),
        "per_image": [{"image": sample.image_path.name, "ground_truths": len(d.gt_boxes),
                       **evaluate_at_threshold([d], float(threshold), tau).to_dict()}
                      for sample, d in zip(samples, detections)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.detector.evaluate_onnx",
        description="Test an ONNX head detector on annotated ceiling-fisheye frames: precision, recall "
                    "and F1 at IoU > tau, with the confidence threshold stored in the file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python -m refiner_daemon.detector.evaluate_onnx docs/experiments/lunch3/models/R_train.onnx \\
      --data ../shared/data/real/cepdof_lunch3
  python -m refiner_daemon.detector.evaluate_onnx det.onnx --data my_frames --out my_result.json
  python -m refiner_daemon.detector.evaluate_onnx --export runs/det/best.pt det.onnx
A frames folder holds annotations.json (CEPDOF style: COCO images plus one rotated person box
[cx, cy, w, h, angle_degrees] per person) or a rendered coco.json; heads follow the project's
head rule (protocol.annotations).""")
    parser.add_argument("model", type=Path, nargs="?", help="the .onnx detector")
    parser.add_argument("--data", action="append", default=[], help="annotated frames folder (repeatable)")
    parser.add_argument("--threshold", type=float, help="confidence threshold (default: stored in the file)")
    parser.add_argument("--iou", type=float, help="IoU tau for a match (default: stored, else 0.5)")
    parser.add_argument("--out", type=Path, help="write the full result (per frame too) as JSON")
    parser.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "ONNX"),
                        help="instead: export a checkpoint with the metadata evaluation needs")
    args = parser.parse_args(argv)
    try:
        if args.export:
            path = export_with_metadata(*args.export)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
            return 0
        if args.model is None or not args.data:
            parser.error("give the .onnx model and at least one --data folder")
        result = evaluate_onnx(args.model, args.data, confidence_threshold=args.threshold,
                               iou_threshold=args.iou)
    except (OSError, ValueError, ExportUnavailableError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.out:
        atomic_write_json(args.out, result)
    print(f"{result['images']} frames, threshold {result['confidence_threshold']:.3f}, IoU > {result['iou_threshold']}: "
          f"precision {result['precision']:.3f}, recall {result['recall']:.3f}, F1 {result['f1']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
