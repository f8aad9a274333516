"""Gap report: discrepancy maps find a planted anomaly, histogram distances, PCA, the linear
real-vs-synthetic probe, and the whole HTML report on tiny image sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refiner_daemon.common.features import MobileNetFeatures
from refiner_daemon.evaluation.gap_report import (
    GapReportConfig,
    GapReportError,
    build_gap_report,
    build_reference_bank,
    cross_validated_accuracy,
    discrepancy_map,
    histogram_emd,
    pca_2d,
)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def _write_images(folder: Path, count: int, seed: int, size: int = 64, patch: bool = False,
                  level: float = 0.5) -> list[Path]:
    """Smooth noise images; ``patch`` plants a saturated red-and-white checker in the lower right."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        coarse = rng.normal(level, 0.15, (size // 8, size // 8, 3))
        pixels = np.kron(coarse, np.ones((8, 8, 1))) + rng.normal(0, 0.03, (size, size, 3))
        if patch:
            checker = (np.indices((16, 16)).sum(0) // 2 % 2)[..., None]
            pixels[40:56, 40:56] = checker * np.array([1.0, 1.0, 1.0]) + (1 - checker) * np.array([1.0, 0.0, 0.0])
        path = folder / f"{index:03d}.png"
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def test_discrepancy_map_marks_the_planted_patch(tmp_path: Path) -> None:
    reference = _write_images(tmp_path / "real", 6, seed=0)
    odd = _write_images(tmp_path / "odd", 1, seed=9, patch=True)[0]
    extractor = MobileNetFeatures()
    bank = build_reference_bank(extractor, reference, 64, "middle", torch.device("cpu"))
    from refiner_daemon.common.features import load_image

    fmap = extractor(load_image(odd, 64)[None], ["middle"])["middle"][0]
    heat = discrepancy_map(fmap, bank)  # 4 x 4 cells of 16 px; the patch covers cell (2..3, 2..3)
    assert heat.shape == (4, 4)
    assert np.unravel_index(heat.argmax(), heat.shape) in {(2, 2), (2, 3), (3, 2), (3, 3)}
    assert heat[2:, 2:].mean() > 1.5 * heat[:2, :2].mean()
    # A reference image scored against the other reference images sits near the unit.
    own = discrepancy_map(extractor(load_image(reference[0], 64)[None], ["middle"])["middle"][0], bank, 0)
    assert 0.3 < float(np.median(own)) < 3.0


def test_histogram_emd_and_pca_on_known_data() -> None:
    a = np.zeros(64)
    a[10] = 1.0
    b = np.zeros(64)
    b[20] = 1.0
    assert histogram_emd(a, a) == 0.0
    assert histogram_emd(a, b) == pytest.approx(10 / 64)  # all mass moved ten bins
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=200), [3.0, 1.0, 0.0]) + rng.normal(0, 0.01, (200, 3))
    projected, explained = pca_2d(line)
    assert projected.shape == (200, 2)
    assert explained[0] > 0.6 and explained[0] > 5 * explained[1]


def test_linear_probe_accuracy_separable_versus_identical() -> None:
    rng = np.random.default_rng(0)
    separable = np.concatenate([rng.normal(0, 1, (20, 5)), rng.normal(4, 1, (20, 5))])
    labels = np.repeat([0, 1], 20)
    assert cross_validated_accuracy(separable, labels, folds=4, seed=0) >= 0.95
    same = rng.normal(0, 1, (40, 5))
    assert cross_validated_accuracy(same, labels, folds=4, seed=0) < 0.8


def test_gap_report_end_to_end(tmp_path: Path) -> None:
    _write_images(tmp_path / "real", 6, seed=0)
    _write_images(tmp_path / "synthetic", 6, seed=1, patch=True, level=0.7)
    config = GapReportConfig(datasets={"real": str(tmp_path / "real"), "synthetic": str(tmp_path / "synthetic")},
                             out_dir=str(tmp_path / "report"), image_size=64, kid_subsets=5, examples_per_set=2)
    result = build_gap_report(config)
    out = tmp_path / "report"
    for name in ("index.html", "gap_report.json", "config.json", "pca.png", "histograms.png",
                 "classifier_cam.png", "discrepancy.png"):
        assert (out / name).stat().st_size > 0, name
    assert "FD (MobileNetV2)" in (out / "index.html").read_text() or "FID" in result["feature_space_for_distances"]
    distances = result["distances_to_reference"]
    assert distances["real"]["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert distances["synthetic"]["frechet_distance"] > 1.0
    assert distances["synthetic"]["kid"] > abs(distances["real"]["kid"])
    assert result["real_vs_other_classifier"]["synthetic"]["cross_validated_accuracy"] >= 0.9
    assert result["feature_discrepancy"]["synthetic"]["mean"] > result["feature_discrepancy"]["real"]["mean"]
    assert result["histogram_emd_to_reference"]["synthetic"]["grey"] > 0.05
    assert json.loads((out / "gap_report.json").read_text())["reference"] == "real"
    assert result["person_crop_distances"] is None and "plain image folder" in result["person_crop_note"]


def test_gap_report_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(GapReportError, match="at least two"):
        GapReportConfig(datasets={"real": str(tmp_path)}, out_dir=str(tmp_path / "r"))
    with pytest.raises(GapReportError, match="reference"):
        GapReportConfig(datasets={"a": "x", "b": "y"}, out_dir="r", reference="c")


def test_inception_inputs_are_what_torchvisions_weights_expect(tmp_path: Path) -> None:
    """A randomly initialised InceptionV3 saved as a weights file (no download) stands in for
    torchvision's: the network must be built as inception_v3(weights=IMAGENET1K_V1) builds it
    (transform_input on) and fed what the weights' transforms produce."""
    import torchvision
    from torchvision.models import Inception_V3_Weights

    from refiner_daemon.common.features import InceptionFeatures

    torch.manual_seed(0)
    random_net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    weights = tmp_path / "inception_v3_random.pth"
    torch.save(random_net.state_dict(), weights)
    extractor = InceptionFeatures(weights)
    assert extractor.network.transform_input, "torchvision's Inception weights expect transform_input=True"

    images = torch.rand(2, 3, 120, 120)
    # The weights' own transforms, resizing the (square) image straight to 299 instead of
    # 342 + centre crop (a crop would cut the edges of a person crop).
    reference = Inception_V3_Weights.IMAGENET1K_V1.transforms(resize_size=299, crop_size=299)(images)
    prepared = extractor.preprocess(images)
    assert prepared.shape == (2, 3, 299, 299)
    assert torch.allclose(prepared, reference, atol=1e-5)

    seen: list[torch.Tensor] = []
    extractor.network.Conv2d_1a_3x3.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    features = extractor(images)
    assert features.shape == (2, 2048)
    # ImageNet normalisation undone by transform_input: the first layer sees Google's (x - 0.5) / 0.5.
    resized = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", antialias=True)
    assert torch.allclose(seen[0], 2 * resized - 1, atol=1e-4)


def _write_cepdof_set(folder: Path, frames: int, seed: int, people: str, size: int = 160) -> None:
    """A CEPDOF-style set: one shared room (the same background in every set), two people per
    frame as rotated boxes pointing away from the centre, painted per ``people``: "real"
    (textured warm) or "flat" (flat blue)."""
    room = np.kron(np.random.default_rng(100).uniform(0.2, 0.8, (size // 16, size // 16, 3)),
                   np.ones((16, 16, 1)))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(frames):
        pixels = room + rng.normal(0, 0.02, room.shape)
        for k, (cx, cy, w, h) in enumerate([(40, 80 + rng.integers(-8, 9), 50, 20),
                                            (120, 80 + rng.integers(-8, 9), 50, 20)]):
            x0, y0 = int(cx - w / 2), int(cy - h / 2)
            if people == "real":
                paint = rng.uniform(0.35, 0.95, (h, w, 3)) * np.array([1.0, 0.75, 0.6])
            else:
                paint = np.ones((h, w, 3)) * np.array([0.2, 0.3, 0.9])
            pixels[y0:y0 + h, x0:x0 + w] = paint
            annotations.append({"id": len(annotations), "image_id": index,
                                "bbox": [float(cx), float(cy), float(w), float(h), 0.0], "person_id": k})
        name = f"f{index:03d}.png"
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(folder / name)
        images.append({"id": index, "file_name": name, "width": size, "height": size})
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations}))


def test_gap_measures_on_person_crops_and_frames(tmp_path: Path) -> None:
    from refiner_daemon.evaluation.gap import gap_measures

    _write_cepdof_set(tmp_path / "real", 6, seed=0, people="real")
    _write_cepdof_set(tmp_path / "real_again", 6, seed=1, people="real")
    _write_cepdof_set(tmp_path / "flat", 6, seed=2, people="flat")
    sets = {name: tmp_path / name for name in ("real", "real_again", "flat")}
    out = tmp_path / "gap"
    result = gap_measures(sets, "real", out, seed=0, kid_subsets=10)

    assert "MobileNetV2" in result["feature_space"] or "InceptionV3" in result["feature_space"]
    assert set(result) == {*sets, "feature_space"}
    for name in sets:
        row = result[name]
        assert set(row) >= {"crops", "frames", "fd_person", "kid_person", "kid_person_std",
                            "fd_frame", "kid_frame", "kid_frame_std"}
        assert row["crops"] == 12 and row["frames"] == 6
        assert row["kid_person_subset"] == 6 and row["kid_person_std"] > 0.0
    assert result["real"]["fd_person"] == pytest.approx(0.0, abs=1e-6)
    assert result["real"]["fd_frame"] == pytest.approx(0.0, abs=1e-6)
    # People that look different are seen on the crops; another sample of the same people is not.
    flat, again = result["flat"], result["real_again"]
    assert flat["kid_person"] > 3 * abs(again["kid_person"]) and flat["kid_person"] > 0.01
    assert flat["fd_person"] > 2 * again["fd_person"]
    assert json.loads((out / "gap_measures.json").read_text())["flat"]["crops"] == 12

    # Crops are cached: a second call cuts nothing; a changed source is cut again.
    records = out / "crops" / "flat" / "records.json"
    stamp = records.stat().st_mtime_ns
    two = {name: sets[name] for name in ("real", "flat")}
    restricted = gap_measures(two, "real", out, frames={"flat": ["f000.png", "f001.png"]}, kid_subsets=5)
    assert records.stat().st_mtime_ns == stamp
    assert restricted["flat"]["frames"] == 2 and restricted["flat"]["crops"] == 4
    assert restricted["real"]["frames"] == 6
    _write_cepdof_set(tmp_path / "flat", 3, seed=5, people="flat")
    again_result = gap_measures(two, "real", out, kid_subsets=5)
    assert again_result["flat"]["crops"] == 6 and records.stat().st_mtime_ns != stamp


def test_gap_measures_refuse_bad_input(tmp_path: Path) -> None:
    from refiner_daemon.evaluation.gap import GapError, gap_measures

    _write_cepdof_set(tmp_path / "real", 2, seed=0, people="real")
    with pytest.raises(GapError, match="reference"):
        gap_measures({"real": tmp_path / "real"}, "other", tmp_path / "out")
    with pytest.raises(GapError, match="neither"):
        gap_measures({"real": tmp_path / "real", "images": tmp_path}, "real", tmp_path / "out")
    with pytest.raises(GapError, match="not in"):
        gap_measures({"real": tmp_path / "real"}, "real", tmp_path / "out", frames={"real": ["nope.png"]})


def test_gap_report_shows_person_crop_distances(tmp_path: Path) -> None:
    _write_cepdof_set(tmp_path / "real", 4, seed=0, people="real")
    _write_cepdof_set(tmp_path / "flat", 4, seed=2, people="flat")
    config = GapReportConfig(datasets={"real": str(tmp_path / "real"), "flat": str(tmp_path / "flat")},
                             out_dir=str(tmp_path / "report"), image_size=64, kid_subsets=5, examples_per_set=1)
    result = build_gap_report(config)
    people = result["person_crop_distances"]
    assert people["flat"]["crops"] == 8 and people["flat"]["frames"] == 4
    assert people["real"]["fd_person"] == pytest.approx(0.0, abs=1e-6)
    assert people["flat"]["fd_person"] > 1.0 and people["flat"]["kid_person_std"] > 0.0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "distances on person crops" in page and "(people)" in page
    assert (tmp_path / "report" / "person_crops" / "crops" / "flat" / "records.json").is_file()
