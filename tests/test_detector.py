"""Head detector: anchors, box coding, NMS, fisheye augmentation geometry, CEPDOF head boxes,
config validation, learning (overfits a handful of images to F1 = 1), resume and ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refiner_daemon.detector.anchors import anchor_grid, kmeans_anchor_shapes
from refiner_daemon.detector.config import ConfigError, DatasetSpec, DetectorConfig
from refiner_daemon.detector.data import (
    Augmentation,
    HeadDataset,
    cepdof_head_box,
    load_samples,
    rotate_boxes_about_centre,
)
from refiner_daemon.detector.evaluate import evaluate_checkpoint
from refiner_daemon.detector.model import (
    HeadDetector,
    WeightsNotFoundError,
    assign_anchors,
    decode_boxes,
    encode_boxes,
    load_checkpoint,
    postprocess,
    squeezedet_loss,
    squeezenet_weights_path,
)
from refiner_daemon.detector.toydata import write_disc_dataset
from refiner_daemon.detector.training import train_detector


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def test_kmeans_recovers_known_anchor_shapes() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([[10.0, 10.0], [20.0, 40.0], [50.0, 25.0]])
    shapes = np.concatenate([t * rng.uniform(0.95, 1.05, size=(40, 2)) for t in truth])
    found = kmeans_anchor_shapes(shapes, 3, seed=1)
    order = np.argsort(truth.prod(1))
    np.testing.assert_allclose(found, truth[order], rtol=0.06)
    # Fewer distinct shapes than k: still k anchors, the found ones among them.
    padded = kmeans_anchor_shapes(np.array([[8.0, 8.0]] * 5), 3)
    assert padded.shape == (3, 2) and any(np.allclose(a, [8, 8]) for a in padded)
    with pytest.raises(ValueError, match="no head boxes"):
        kmeans_anchor_shapes(np.zeros((0, 2)), 3)


def test_anchor_grid_matches_network_layout() -> None:
    grid = anchor_grid(np.array([[4.0, 4.0], [8.0, 8.0]]), 2, 3, stride=16)
    assert grid.shape == (2 * 3 * 2, 4)
    np.testing.assert_allclose(grid[0], [8, 8, 4, 4])
    np.testing.assert_allclose(grid[1], [8, 8, 8, 8])
    np.testing.assert_allclose(grid[2], [24, 8, 4, 4])  # next column
    np.testing.assert_allclose(grid[6], [8, 24, 4, 4])  # next row
    # The network's own anchors follow the same layout (stride = input size / grid size).
    model = HeadDetector("mobilenet_v2", np.array([[4.0, 4.0], [8.0, 8.0]]), 64, pretrained=False)
    np.testing.assert_allclose(model.anchors(2, 2).numpy(), anchor_grid(model.anchor_shapes.numpy(), 2, 2, 32))


def test_box_coding_round_trips_and_assignment_is_unique() -> None:
    anchors = torch.tensor([[10.0, 10.0, 8.0, 8.0], [30.0, 10.0, 16.0, 8.0], [12.0, 12.0, 8.0, 8.0]])
    boxes = torch.tensor([[5.0, 6.0, 15.0, 14.0], [20.0, 4.0, 42.0, 18.0], [7.0, 7.0, 16.0, 17.0]])
    np.testing.assert_allclose(decode_boxes(encode_boxes(boxes, anchors), anchors).numpy(), boxes.numpy(),
                               atol=1e-4)
    # Two heads whose best anchor is the same: the second gets the next best, never a shared one.
    chosen = assign_anchors(torch.tensor([[6.0, 6.0, 14.0, 14.0], [7.0, 7.0, 15.0, 15.0]]), anchors)
    assert len(set(chosen.tolist())) == 2


def test_loss_is_zero_for_perfect_predictions_only() -> None:
    anchors = torch.tensor([[10.0, 10.0, 8.0, 8.0], [30.0, 30.0, 8.0, 8.0]])
    gt = torch.tensor([[6.0, 6.0, 14.0, 14.0]])
    perfect = torch.zeros(1, 2, 5)
    perfect[0, 0, 4], perfect[0, 1, 4] = 30.0, -30.0  # certain at the head, certain elsewhere
    loss, parts = squeezedet_loss(perfect, anchors, [gt], "l2")
    assert parts["bbox"] == pytest.approx(0.0, abs=1e-6) and float(loss) < 1e-6
    wrong = perfect.clone()
    wrong[0, 0, :2] = 0.5
    assert squeezedet_loss(wrong, anchors, [gt], "l2")[1]["bbox"] > 0.1
    with pytest.raises(ValueError, match="valid"):
        squeezedet_loss(perfect, anchors, [gt], "hinge")


def test_nms_threshold_and_limit() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40], [60, 60, 70, 70]]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.2]])
    (kept_boxes, kept_scores), = postprocess(boxes, scores, confidence_threshold=0.5, nms_iou=0.4,
                                             max_detections=10)
    # The near-duplicate (IoU 0.82) is suppressed by the higher score; the low score is dropped.
    np.testing.assert_allclose(kept_scores.numpy(), [0.9, 0.7])
    np.testing.assert_allclose(kept_boxes[0].numpy(), [0, 0, 10, 10])
    (loose, _), = postprocess(boxes, scores, 0.5, nms_iou=0.9, max_detections=10)
    assert len(loose) == 3  # IoU 0.82 < 0.9: both kept
    (limited, _), = postprocess(boxes, scores, 0.0, 0.4, max_detections=2)
    assert len(limited) == 2


def test_rotation_augmentation_moves_boxes_with_the_pixels() -> None:
    size = 64
    image = torch.ones(3, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (44.0, 20.0)
    disc = (xx + 0.5 - centre[0]) ** 2 + (yy + 0.5 - centre[1]) ** 2 < 25
    image[:, disc] = 0.0
    boxes = np.array([[centre[0] - 5, centre[1] - 5, centre[0] + 5, centre[1] + 5]])
    augmentation = Augmentation(rotation=True, flips=True, photometric=0.0)
    for seed in range(4):
        rotated, moved = augmentation(image, boxes, np.random.default_rng(seed))
        # Only inside the inscribed circle: rotation fills the corners with black.
        inside = (xx + 0.5 - size / 2) ** 2 + (yy + 0.5 - size / 2) ** 2 < (size / 2 - 2) ** 2
        dark = (rotated[0] < 0.5) & inside
        pixel_centre = np.array([xx[dark].float().mean() + 0.5, yy[dark].float().mean() + 0.5])
        box_centre = (moved[0, :2] + moved[0, 2:]) / 2
        assert np.abs(pixel_centre - box_centre).max() < 1.0, (seed, pixel_centre, box_centre)
    # 90 degrees counter-clockwise on screen sends a point right of centre to above it.
    turned = rotate_boxes_about_centre(np.array([[50.0, 30.0, 54.0, 34.0]]), 90.0, 64)
    np.testing.assert_allclose((turned[0, :2] + turned[0, 2:]) / 2, [32.0, 12.0], atol=1e-9)


def test_cepdof_head_is_the_outer_end_of_the_long_axis() -> None:
    # A person lying along x right of the image centre: the head is at the right end.
    box = cepdof_head_box([700, 500, 40, 200, 90.0], 1000, 1000, head_box_scale=0.5)
    # HEAD_DEPTH (0.17) x the short side in from the outer end.
    np.testing.assert_allclose((box[:2] + box[2:]) / 2, [700 + 100 - 0.17 * 40, 500], atol=1e-9)
    assert box[2] - box[0] == pytest.approx(20.0)
    # The same person left of the centre: the head flips to the left end.
    box = cepdof_head_box([300, 500, 40, 200, 90.0], 1000, 1000, head_box_scale=0.5)
    np.testing.assert_allclose((box[:2] + box[2:]) / 2, [300 - 100 + 0.17 * 40, 500], atol=1e-9)


@pytest.mark.realdata
def test_cepdof_heads_lie_outside_their_body_centres(cepdof_dir: Path) -> None:
    samples = load_samples(DatasetSpec(str(cepdof_dir)))
    assert len(samples) == 10 and sum(len(s.head_boxes) for s in samples) == 70
    annotations = json.loads((cepdof_dir / "annotations.json").read_text())["annotations"]
    first = [a["bbox"] for a in annotations if a["image_id"] == "Lunch3_000001"]
    heads = samples[0].head_boxes
    for body, head in zip(first, heads):
        head_centre = (head[:2] + head[2:]) / 2
        assert np.linalg.norm(head_centre - 1024) >= np.linalg.norm(np.array(body[:2]) - 1024)
        assert (head >= 0).all() and (head <= 2048).all()


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    base = {"train": [str(tmp_path)], "val": [str(tmp_path)], "out_dir": str(tmp_path / "run")}
    for bad, field in [({"backbone": "vgg"}, "backbone"), ({"input_size": 100}, "input_size"),
                       ({"iou_threshold": 1.5}, "iou_threshold"), ({"epochs": 0}, "epochs"),
                       ({"bogus": 1}, "bogus")]:
        with pytest.raises(ConfigError, match=field):
            DetectorConfig.from_dict({**base, **bad})
    config = DetectorConfig.from_dict(base)
    assert DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_squeezenet_without_weights_fails_clearly_unless_from_scratch(tmp_path: Path) -> None:
    if squeezenet_weights_path().exists():
        pytest.skip("SqueezeNet weights are present on this machine")
    with pytest.raises(WeightsNotFoundError, match="from-scratch"):
        HeadDetector("squeezenet", np.ones((2, 2)) * 10, 64, pretrained=True)
    model = HeadDetector("squeezenet", np.ones((2, 2)) * 10, 64, pretrained=False)
    boxes, scores = model.eval()(torch.rand(1, 3, 64, 64))
    assert boxes.shape[-1] == 4 and boxes.shape[1] == scores.shape[1] > 0


def test_detector_overfits_a_handful_of_images(tmp_path: Path) -> None:
    """Proof that it learns: two small images, train = val, F1 reaches 1.0 and the kept
    checkpoint reproduces it in a separate evaluation. Training stops as soon as it gets there
    (``should_stop``); 30 epochs is only the cap."""
    data = write_disc_dataset(tmp_path / "discs", images=2, size=96, radius=(8, 10), seed=0)
    assert sum(len(s.head_boxes) for s in load_samples(DatasetSpec(str(data)))) >= 3
    config = DetectorConfig(train=[str(data)], val=[str(data)], out_dir=str(tmp_path / "run"), input_size=96,
                            num_anchors=3, epochs=30, batch_size=2, learning_rate=1e-3, augment=False,
                            tensorboard=False, seed=0)
    events: list[dict] = []
    best = train_detector(config, on_progress=events.append,
                          should_stop=lambda: any(e.get("val", {}).get("f1") == 1.0 for e in events))
    steps = [e for e in events if "losses" in e]
    assert {"step", "total_steps", "epoch", "losses", "eta_s"} <= set(steps[0])
    assert steps[-1]["losses"]["total"] < steps[0]["losses"]["total"]
    assert max(e["val"]["f1"] for e in events if "val" in e) == 1.0
    result = evaluate_checkpoint(best, [str(data)])
    assert result["f1"] == 1.0 and result["precision"] == 1.0 and result["recall"] == 1.0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert result["epoch"] == max(history, key=lambda h: h["val"]["f1"])["epoch"]


def test_resume_continues_where_training_stopped(tmp_path: Path) -> None:
    data = write_disc_dataset(tmp_path / "discs", images=2, size=64, seed=1)
    base = {"train": [str(data)], "val": [str(data)], "out_dir": str(tmp_path / "run"), "input_size": 64,
            "num_anchors": 2, "batch_size": 2, "tensorboard": True, "seed": 3, "photometric": 0.1}
    train_detector(DetectorConfig(**base, epochs=1))
    resumed = train_detector(DetectorConfig(**base, epochs=2, resume=True))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert resumed.name == "best.pt" and (tmp_path / "run" / "tensorboard").is_dir()
    _, payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["epochs_completed"] == 2 and payload["config"]["seed"] == 3


def test_onnx_export_gives_the_same_boxes(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from refiner_daemon.detector.export import compare_onnx_with_torch, export_onnx

    torch.manual_seed(0)
    model = HeadDetector("mobilenet_v2", np.array([[12.0, 12.0], [20.0, 20.0]]), 64).eval()
    with torch.no_grad():  # make some anchors confident so the comparison covers real detections
        model.convdet.bias.view(2, 5)[:, 4] = 0.0
    path = export_onnx(model, tmp_path / "det.onnx")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    report = compare_onnx_with_torch(model, path, images, confidence_threshold=0.3)
    assert report["max_abs_box_difference_px"] < 1e-3 and report["max_abs_score_difference"] < 1e-4
    assert report["same_detection_counts"] and sum(report["detections_torch"]) > 0
    assert report["worst_matched_iou"] > 0.999


def test_dataset_narrowing_and_bad_folders(tmp_path: Path) -> None:
    data = write_disc_dataset(tmp_path / "d", images=5, size=32, heads=(1, 1), radius=(3, 4), seed=2)
    assert len(load_samples(DatasetSpec(str(data), limit=3))) == 3
    chosen = load_samples(DatasetSpec(str(data), images=["00004.png", "00001.png"]))
    assert [s.image_path.name for s in chosen] == ["00004.png", "00001.png"]
    dataset = HeadDataset(chosen, 64)
    image, boxes = dataset[0]
    assert image.shape == (3, 64, 64) and boxes.shape == (1, 4)
    np.testing.assert_allclose(boxes.numpy(), chosen[0].head_boxes * 2)
    with pytest.raises(ValueError, match="neither coco.json"):
        load_samples(DatasetSpec(str(tmp_path)))
    with pytest.raises(ValueError, match="not in the dataset"):
        load_samples(DatasetSpec(str(data), images=["nope.png"]))


def test_min_steps_gives_small_sets_the_same_step_budget(tmp_path: Path) -> None:
    """Two images at batch 2 are one step per epoch: min_steps=3 trains 3 epochs, so an arm
    with few real frames gets as many optimizer steps as one with many."""
    data = write_disc_dataset(tmp_path / "discs", images=2, size=64, seed=5)
    config = DetectorConfig(train=[str(data)], val=[str(data)], out_dir=str(tmp_path / "run"), input_size=64,
                            num_anchors=2, epochs=1, min_steps=3, batch_size=2, augment=False,
                            tensorboard=False)
    events: list[dict] = []
    train_detector(config, on_progress=events.append)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert max(e["step"] for e in events if "losses" in e) == 3 == events[-1]["total_steps"]
    with pytest.raises(ConfigError, match="min_steps"):
        DetectorConfig(train=[str(data)], val=[str(data)], out_dir=str(tmp_path / "r2"), min_steps=0)
