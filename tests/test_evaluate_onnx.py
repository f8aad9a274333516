"""An ONNX detector evaluated on its own (the experiment publishes its detectors this way) gives
the same counts as the checkpoint it was exported from, with the thresholds stored in the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from refiner_daemon.detector.config import DetectorConfig
from refiner_daemon.detector.evaluate import evaluate_checkpoint
from refiner_daemon.detector.toydata import write_disc_dataset
from refiner_daemon.detector.training import train_detector

pytest.importorskip("onnxruntime")


def test_onnx_evaluation_matches_the_checkpoint(tmp_path: Path) -> None:
    from refiner_daemon.detector.evaluate_onnx import evaluate_onnx, export_with_metadata, main

    torch.set_num_threads(2)
    data = write_disc_dataset(tmp_path / "discs", images=3, size=64, radius=(6, 8), seed=4)
    best = train_detector(DetectorConfig(train=[str(data)], val=[str(data)], out_dir=str(tmp_path / "run"),
                                         input_size=64, num_anchors=2, epochs=3, batch_size=2,
                                         augment=False, tensorboard=False, seed=1))
    expected = evaluate_checkpoint(best, [str(data)])
    onnx_path = export_with_metadata(best, tmp_path / "det.onnx", {"arm": "toy"})
    result = evaluate_onnx(onnx_path, [data])
    assert result["metadata"]["arm"] == "toy" and result["metadata"]["input_size"] == 64
    assert result["confidence_threshold"] == pytest.approx(expected["confidence_threshold"])
    for key in ("true_positives", "false_positives", "false_negatives"):
        assert result[key] == expected[key]
    assert [p["image"] for p in result["per_image"]] == [p["image"] for p in expected["per_image"]]
    assert main([str(onnx_path), "--data", str(data), "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["f1"] == pytest.approx(expected["f1"])
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "missing.onnx"), "--data", str(data)])
    assert stopped.value.code == 2
