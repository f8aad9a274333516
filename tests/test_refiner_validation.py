"""The refiner must do no harm (issue 22): validation FD/KID, the head check, checkpoint
selection and the assessment gate, on small generated crop folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refiner_daemon.common.distances import frechet_distance as frechet_distance_reference
from refiner_daemon.refiner import validation as V
from refiner_daemon.refiner.training import RefinerConfig, train_refiner, validation_summary

torch.set_num_threads(2)
SIZE = 32
WARM = np.array([60, 25, -45])  # the real domain's colour cast


def _people(folder: Path, n: int, seed: int, shift: np.ndarray, size: int = SIZE) -> None:
    """'Persons' on grey: a head disc at the crop rule's head anchor, a body ellipse below it,
    in random colours; the real domain is the same with a warm colour cast."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32) + 120
        body = ((xx - 0.5) / rng.uniform(0.15, 0.25)) ** 2 + ((yy - 0.62) / 0.3) ** 2 < 1
        img[body] = rng.uniform(30, 220, 3)
        head = (xx - 0.5) ** 2 + (yy - 0.25) ** 2 < rng.uniform(0.08, 0.12) ** 2
        img[head] = rng.uniform(60, 200, 3)
        img += shift + rng.normal(0, 3, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("val")
    _people(root / "s_train" / "crops", 12, 1, np.zeros(3))
    _people(root / "r_train", 12, 2, WARM)
    _people(root / "s_val" / "crops", 24, 3, np.zeros(3))
    _people(root / "r_val", 24, 4, WARM)
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def features() -> V.CropFeatures:
    return V.CropFeatures("cpu")


def test_fast_frechet_distance_equals_the_reference() -> None:
    rng = np.random.default_rng(0)
    for n, m, d in ((7, 9, 40), (30, 25, 8)):
        a, b = rng.normal(size=(n, d)), rng.normal(0.3, 1.5, size=(m, d))
        assert V.frechet_distance(a, b) == pytest.approx(frechet_distance_reference(a, b),
                                                         rel=1e-6)


def test_head_ssim_ignores_colour_and_catches_noise(folders: dict[str, Path]) -> None:
    crops, _ = V.load_crops(folders["s_val"])
    shifted = np.clip(crops.astype(int) + WARM, 0, 255).astype(np.uint8)
    noisy = np.clip(crops + np.random.default_rng(0).normal(0, 60, crops.shape), 0, 255
                    ).astype(np.uint8)
    assert V.head_structure_ssim(crops, crops).min() == pytest.approx(1.0)
    assert V.head_structure_ssim(crops, shifted).mean() > 0.9
    assert V.head_structure_ssim(crops, noisy).mean() < V.HEAD_SSIM_THRESHOLD


def _colour_shift(crops: np.ndarray) -> np.ndarray:
    return np.clip(crops.astype(int) + WARM, 0, 255).astype(np.uint8)


def _noise(crops: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.clip(crops + rng.normal(0, 70, crops.shape), 0, 255).astype(np.uint8)


def test_assessment_passes_a_colour_shift_and_fails_noise(folders: dict[str, Path],
                                                          features: V.CropFeatures,
                                                          tmp_path: Path) -> None:
    good = V.assess_refiner(_colour_shift, folders["s_val"], folders["r_val"], bootstrap=100,
                            out_dir=tmp_path, features=features)
    assert good["passes"], good["reasons"]
    assert good["fd_refined"] < good["fd_raw"] and good["fd_diff_ci95"][1] < 0
    assert good["head_ssim"] > 0.9 and Path(good["contact_sheet"]).is_file()
    for key in ("fd_raw", "fd_refined", "fd_diff", "fd_diff_ci95", "kid_raw", "kid_refined",
                "head_ssim", "head_threshold", "passes", "reasons", "contact_sheet"):
        assert key in good
    json.dumps(good)

    bad = V.assess_refiner(_noise, folders["s_val"], folders["r_val"], bootstrap=100,
                           out_dir=tmp_path, features=features)
    assert not bad["passes"]
    assert any("heads are damaged" in r for r in bad["reasons"])
    identity = V.assess_refiner(lambda c: c, folders["s_val"], folders["r_val"], bootstrap=50,
                                out_dir=tmp_path, features=features)
    assert not identity["passes"] and identity["fd_diff"] == pytest.approx(0.0, abs=1e-9)


def test_training_keeps_the_checkpoint_with_the_lowest_validation_fd(
        folders: dict[str, Path], features: V.CropFeatures, tmp_path: Path) -> None:
    cfg = RefinerConfig.from_dict({
        "run_dir": str(tmp_path / "run"), "synthetic_dir": str(folders["s_train"]),
        "real_dir": str(folders["r_train"]), "preset": "C_CP+S", "epochs": 4, "batch_size": 4,
        "crop_size": (SIZE, SIZE), "width": 8, "disc_width": 8, "n_blocks": 1,
        "progress": False, "tensorboard": False, "amp": False, "lr": 2e-3,
        "val_synthetic_dir": str(folders["s_val"]), "val_real_dir": str(folders["r_val"]),
        "val_every": 2, "val_max_crops": 16})
    final = train_refiner(cfg)  # 3 steps per epoch, 12 steps: validation at 2, 4, ..., 12
    summary = validation_summary(cfg.run_dir)
    assert summary is not None
    history = summary["history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8, 10, 12]
    assert all(Path(h["contact_sheet"]).is_file() for h in history)
    assert len({round(h["fd"], 9) for h in history}) == len(history)
    ok = [h for h in history if not h["harmful"]]
    best = min(ok, key=lambda h: h["fd"])
    assert summary["best"]["step"] == best["step"]
    assert summary["best"]["fd"] == pytest.approx(best["fd"])
    # model_best.pt is that step's generator: scoring it again gives the recorded FD.
    validator = V.Validator(folders["s_val"], folders["r_val"], crop_size=(SIZE, SIZE),
                            max_crops=16, seed=0, features=features)
    rescored, _, _ = validator.evaluate(V.as_refine_fn(summary["best"]["model"])[0])
    assert rescored["fd"] == pytest.approx(best["fd"], rel=1e-3, abs=1e-3)
    record = torch.load(final, weights_only=True)["config"]["training"]
    assert record["validation_best"]["step"] == best["step"]
