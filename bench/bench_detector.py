"""Detector inference speed on the CPU at 448x448 against torchvision's SSDlite320-MobileNetV3
(random weights, same input size), and the size of the exported ONNX model.

Both models run in eval mode on the same random frames, batch size 1, with the same thread
count, including their post-processing (our threshold + NMS; SSDlite's built-in one). Targets:
at least as fast as SSDlite, ONNX file at most 10 MB.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision

from bench.report import print_table, write_result
from refiner_daemon.detector.model import HeadDetector, postprocess

INPUT_SIZE = 448
WARMUP = 3
REPEATS = 30
THREADS = 2
BACKBONES_MEASURED = ("mobilenet_v2", "mobilenet_v2_lite")


def interleaved_fps(runs: dict[str, Callable[[torch.Tensor], object]], frames: list[torch.Tensor]
                    ) -> dict[str, tuple[float, float]]:
    """Median and best FPS per model. Each round times every model once, in turn, so a change in
    machine load (this machine is shared) hits all models alike instead of favouring one."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for name, run in runs.items():
            for frame in frames[:WARMUP]:
                run(frame)
        for index in range(REPEATS):
            for name, run in runs.items():
                start = time.perf_counter()
                run(frames[index % len(frames)])
                times[name].append(time.perf_counter() - start)
    return {name: (1.0 / statistics.median(t), 1.0 / min(t)) for name, t in times.items()}


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    frames = [torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE) for _ in range(4)]

    anchors = np.array([[18, 18], [24, 24], [30, 30], [22, 30], [30, 22], [36, 36], [42, 42], [50, 50],
                        [60, 60]], dtype=np.float64)
    variants = {name: HeadDetector(name, anchors, INPUT_SIZE).eval() for name in BACKBONES_MEASURED}

    def runner(model: HeadDetector) -> Callable[[torch.Tensor], object]:
        def run(frame: torch.Tensor) -> object:
            boxes, scores = model(frame)
            return postprocess(boxes, scores, 0.5, 0.4, 64)

        return run

    baseline = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=2).eval()
    # SSDlite resizes inputs to its own size; fix that size to ours so both see 448x448.
    baseline.transform.min_size = (INPUT_SIZE,)
    baseline.transform.max_size = INPUT_SIZE

    def run_baseline(frame: torch.Tensor) -> object:
        return baseline(list(frame))

    runs = {"baseline": run_baseline, **{n: runner(m) for n, m in variants.items()}}
    onnx_folder = tempfile.TemporaryDirectory()
    onnx_runs = onnx_runners(variants, Path(onnx_folder.name))
    measured = interleaved_fps({**runs, **onnx_runs}, frames)
    onnx_folder.cleanup()
    base_fps, base_best = measured["baseline"]

    results: dict[str, dict[str, float | None]] = {}
    rows = []
    for name, model in variants.items():
        onnx_mb = None
        try:
            from refiner_daemon.detector.export import export_onnx

            with tempfile.TemporaryDirectory() as folder:
                onnx_mb = export_onnx(model, Path(folder) / "detector.onnx").stat().st_size / 1e6
        except Exception as exc:  # noqa: BLE001 - the speed numbers are still worth reporting
            print(f"ONNX export of {name} skipped: {exc}")
        fps, best = measured[name]
        results[name] = {"fps_median": fps, "fps_best": best, "gmacs": gmacs(lambda m=model: m(frames[0])),
                         "params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
                         "onnx_size_mb": onnx_mb, "speed_ratio_over_baseline": fps / base_fps}
        rows.append([f"ours ({name})", f"{INPUT_SIZE}x{INPUT_SIZE}", fps, best, results[name]["gmacs"],
                     results[name]["params_millions"], onnx_mb if onnx_mb is not None else "-", fps / base_fps])
    for name in onnx_runs:
        fps, best = measured[name]
        results[name] = {"fps_median": fps, "fps_best": best, "speed_ratio_over_baseline": fps / base_fps}
        rows.append([f"ours ({name})", f"{INPUT_SIZE}x{INPUT_SIZE}", fps, best, "-", "-", "-", fps / base_fps])
    baseline_result = {"fps_median": base_fps, "fps_best": base_best,
                       "gmacs": gmacs(lambda: baseline(list(frames[0]))),
                       "params_millions": sum(p.numel() for p in baseline.parameters()) / 1e6}
    rows.append(["baseline: ssdlite320_mobilenet_v3_large", f"{INPUT_SIZE}x{INPUT_SIZE}", base_fps, base_best,
                 baseline_result["gmacs"], baseline_result["params_millions"], "-", 1.0])
    print_table(f"Detector inference on the CPU ({THREADS} threads, batch 1, with NMS)",
                ["model", "input", "FPS (median)", "FPS (best)", "GMACs", "params (M)", "ONNX MB",
                 "speed ratio"], rows)
    print("targets: speed ratio >= 1 against the baseline, ONNX size <= 10 MB "
          "(the onnxruntime rows run our exported graph, same post-processing; the baseline stays in torch)")
    write_result("detector", {
        "input_size": INPUT_SIZE, "threads": THREADS, "repeats": REPEATS, "cpu_count": os.cpu_count(),
        "ours": results, "baseline_ssdlite320_mobilenet_v3_large": baseline_result,
        "targets": {"speed_ratio_at_least": 1.0, "onnx_size_mb_at_most": 10.0},
    })


def onnx_runners(variants: dict[str, HeadDetector], folder: Path) -> dict[str, Callable[[torch.Tensor], object]]:
    """Our models through ONNX Runtime (the sensor deployment path), when it is installed."""
    try:
        import onnxruntime

        from refiner_daemon.detector.export import export_onnx
    except ImportError:
        return {}
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    runs: dict[str, Callable[[torch.Tensor], object]] = {}
    for name, model in variants.items():
        session = onnxruntime.InferenceSession(str(export_onnx(model, folder / f"{name}.onnx")), options,
                                               providers=["CPUExecutionProvider"])

        def run(frame: torch.Tensor, session: object = session) -> object:
            boxes, scores = session.run(None, {"images": frame.numpy()})  # type: ignore[attr-defined]
            return postprocess(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5, 0.4, 64)

        runs[f"{name}, onnxruntime"] = run
    return runs


def gmacs(run: Callable[[], object]) -> float:
    """Multiply-accumulates of one call, in billions (torch's FLOP counter halved)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 2e9


if __name__ == "__main__":
    main()
