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


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A detector trained for 3 epochs on 3 disc images: (its best checkpoint, the data)."""
    root = tmp_path_factory.mktemp("tiny_detector")
    torch.set_num_threads(2)
    data = write_disc_dataset(root / "discs", images=3, size=64, radius=(6, 8), seed=4)
    best = train_detector(DetectorConfig(train=[str(data)], val=[str(data)], out_dir=str(root / "run"),
                                         input_size=64, num_anchors=2, epochs=3, batch_size=2,
                                         augment=False, tensorboard=False, seed=1))
    return Path(best), data


def test_onnx_evaluation_matches_the_checkpoint(tmp_path: Path, tiny_detector: tuple[Path, Path]) -> None:
    from refiner_daemon.detector.evaluate_onnx import evaluate_onnx, export_with_metadata, main

    best, data = tiny_detector
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


def test_publish_exports_each_arms_median_run_within_the_size_budget(
        tmp_path: Path, tiny_detector: tuple[Path, Path]) -> None:
    from refiner_daemon.detector.evaluate_onnx import evaluate_onnx
    from refiner_daemon.evaluation.publish import main, publish

    best, data = tiny_detector
    run = {"checkpoint": str(best), "precision": 0.5, "recall": 0.5}
    results = {
        "arms": [{"name": "R_train", "train_sets": ["r"]},
                 {"name": "R_train + C_CP+S", "train_sets": ["r", "s+"], "harmful_refiner": True}],
        "runs": {"R_train": [{**run, "seed": s, "refiner_seed": None, "f1": f} for s, f in ((0, 0.2), (1, 0.5), (2, 0.4))],
                 "R_train + C_CP+S": [{**run, "seed": s, "refiner_seed": s, "f1": f} for s, f in ((0, 0.3), (1, 0.3))]},
    }
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "results.json").write_text(json.dumps(results))
    (experiment / "tables.md").write_text("# tables\n")
    docs = tmp_path / "docs"
    # Over the budget: an error that lists the sizes, and nothing written.
    from protocol.cli import CliError
    with pytest.raises(CliError, match=r"over the 0.001 MB budget \(models/R_train.onnx"):
        publish(experiment, docs, max_mb=0.001)
    assert not docs.exists()
    index = publish(experiment, docs)
    by_arm = {e["arm"]: e for e in index["models"]}
    assert by_arm["R_train"]["detector_seed"] == 2 and by_arm["R_train"]["test_f1"] == 0.4  # median of 0.2, 0.4, 0.5
    assert by_arm["R_train + C_CP+S"]["file"] == "models/R_train_plus_C_CP_S.onnx"
    assert by_arm["R_train + C_CP+S"]["detector_seed"] == 0  # a tie goes to the lower seed
    assert json.loads((docs / "results.json").read_text()) == results
    assert (docs / "tables.md").read_text() == "# tables\n"
    assert json.loads((docs / "models" / "index.json").read_text())["models"] == index["models"]
    published = evaluate_onnx(docs / "models" / "R_train_plus_C_CP_S.onnx", [data])
    assert published["metadata"]["arm"] == "R_train + C_CP+S" and published["metadata"]["harmful_refiner"] is True
    assert main([str(tmp_path / "nothing"), str(docs)]) == 2
