"""Export a detector checkpoint to ONNX for ceiling sensors, and check that ONNX Runtime gives
the same boxes as torch.

The ONNX graph maps float RGB ``images`` (B, 3, S, S) in [0, 1] to ``boxes`` (B, A, 4, ``xyxy``
in input pixels) and ``scores`` (B, A); thresholding and NMS run on the host (see
:func:`refiner_daemon.detector.model.postprocess`), which keeps the graph to plain operators.

    python -m refiner_daemon.detector.export runs/det/best.pt --out det.onnx --check
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protocol.fileio import atomic_write_bytes
from refiner_daemon.detector.metrics import box_iou
from refiner_daemon.detector.model import HeadDetector, load_checkpoint, postprocess


class ExportUnavailableError(RuntimeError):
    """onnx / onnxruntime are not installed."""


def export_onnx(model: HeadDetector, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` (eval mode, batch size dynamic) as ONNX, atomically."""
    try:
        import onnx
    except ImportError as exc:
        raise ExportUnavailableError("ONNX export needs the onnx package: pip install onnx") from exc
    model = model.eval()
    example = torch.rand(1, 3, model.input_size, model.input_size)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.export")
    # The TorchScript-based exporter needs only onnx (the dynamo one needs onnxscript too); its
    # deprecation and tracer warnings are expected here (the anchor count is a constant).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), str(temporary), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["boxes", "scores"],
                          dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}})
    onnx.checker.check_model(str(temporary))
    data = temporary.read_bytes()
    temporary.unlink()
    return atomic_write_bytes(path, data)


def compare_onnx_with_torch(model: HeadDetector, onnx_path: str | Path, images: torch.Tensor,
                            confidence_threshold: float = 0.3, nms_iou: float = 0.4,
                            max_detections: int = 64) -> dict[str, Any]:
    """Run both on ``images`` and compare raw outputs and final boxes after the same NMS.

    Returns the largest absolute differences, the detection counts, and the smallest IoU between
    matched boxes (1.0 means identical detections)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportUnavailableError("the ONNX check needs onnxruntime: pip install onnxruntime") from exc
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_boxes, onnx_scores = session.run(None, {"images": images.numpy().astype(np.float32)})
    with torch.no_grad():
        torch_boxes, torch_scores = model.eval()(images)
    torch_final = postprocess(torch_boxes, torch_scores, confidence_threshold, nms_iou, max_detections)
    onnx_final = postprocess(torch.from_numpy(onnx_boxes), torch.from_numpy(onnx_scores),
                             confidence_threshold, nms_iou, max_detections)
    counts_equal = all(len(a[0]) == len(b[0]) for a, b in zip(torch_final, onnx_final))
    worst_iou = 1.0
    for (boxes_t, _), (boxes_o, _) in zip(torch_final, onnx_final):
        if len(boxes_t) and len(boxes_o):
            worst_iou = min(worst_iou, float(box_iou(boxes_t.numpy(), boxes_o.numpy()).max(axis=1).min()))
    return {
        "max_abs_box_difference_px": float(np.abs(onnx_boxes - torch_boxes.numpy()).max()),
        "max_abs_score_difference": float(np.abs(onnx_scores - torch_scores.numpy()).max()),
        "detections_torch": [len(b) for b, _ in torch_final],
        "detections_onnx": [len(b) for b, _ in onnx_final],
        "same_detection_counts": counts_equal,
        "worst_matched_iou": worst_iou,
    }


def main(argv: list[str] | None = None) -> int:
    """The export command under ``protocol.cli.run_main`` (one-line errors, exit 2)."""
    from protocol.cli import run_main

    return run_main(_main, argv, prog="detector-export")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.detector.export",
        description="Export a detector checkpoint to ONNX (boxes and scores per anchor; NMS on the host).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m refiner_daemon.detector.export runs/det/best.pt --out det.onnx\n"
               "  python -m refiner_daemon.detector.export runs/det/best.pt --out det.onnx --check\n"
               "--check runs ONNX Runtime and torch on random images and prints how far they differ.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check", action="store_true", help="compare ONNX Runtime with torch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, payload = load_checkpoint(args.checkpoint)
    path = export_onnx(model, args.out, args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.check:
        generator = torch.Generator().manual_seed(args.seed)
        images = torch.rand(2, 3, model.input_size, model.input_size, generator=generator)
        threshold = float(payload.get("confidence_threshold", 0.3))
        print(json.dumps(compare_onnx_with_torch(model, path, images, threshold), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
