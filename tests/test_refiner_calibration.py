"""Feature-term calibration (issue 13): every preset's feature terms are a stated share of the
generator objective at calibration and change the generator's gradient measurably."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refiner_daemon.refiner import losses as L
from refiner_daemon.refiner.data import CropFolder
from refiner_daemon.refiner.perceptual import PerceptualWeightsMissing, build_extractor
from refiner_daemon.refiner.presets import PRESETS
from refiner_daemon.refiner.training import RefinerConfig, RefinerTrainer

torch.set_num_threads(2)
SIZE = 32
FEATURE_PRESETS = sorted(name for name, p in PRESETS.items()
                         if any(getattr(p.weights, t) > 0 for t in L.FEATURE_TERMS))


def _write(folder: Path, n: int, seed: int, shift: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        img = np.zeros((SIZE, SIZE, 3), np.float32) + np.array([90, 110, 130])
        cx, cy = rng.uniform(10, 22, 2)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(4, 9) ** 2] = (60, 80, 200)
        img += np.array(shift) + rng.normal(0, 4, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calib")
    _write(root / "s", 8, 1, (0, 0, 0))
    _write(root / "r", 8, 2, (70, 20, -50))
    return root / "s", root / "r"


@pytest.fixture(scope="module")
def extractors() -> dict[tuple[str, ...], object]:
    cache: dict[tuple[str, ...], object] = {}
    try:
        for layers in {PRESETS[name].feature_layers for name in FEATURE_PRESETS}:
            cache[layers] = build_extractor("mobilenet_v2", layers)
    except PerceptualWeightsMissing as exc:  # pragma: no cover - weights ship with the venv
        pytest.skip(str(exc))
    return cache


def _trainer(preset: str, domains: tuple[Path, Path], tmp_path: Path, extractors: dict,
             **changes: object) -> RefinerTrainer:
    cfg = RefinerConfig.from_dict({
        "run_dir": str(tmp_path), "synthetic_dir": str(domains[0]), "real_dir": str(domains[1]),
        "preset": preset, "epochs": 1, "batch_size": 2, "crop_size": (SIZE, SIZE), "width": 4,
        "disc_width": 4, "n_blocks": 1, "attention_width": 4, "pool_size": 4,
        "perceptual": "mobilenet_v2", "progress": False, "tensorboard": False, "amp": False,
        **changes})
    trainer = RefinerTrainer(cfg, steps_per_epoch=4,
                             extractor=extractors[PRESETS[preset].feature_layers])
    if trainer.weights.mean_feature > 0:
        trainer.compute_mean_features(CropFolder(domains[0], (SIZE, SIZE)),
                                      CropFolder(domains[1], (SIZE, SIZE)))
    return trainer


def _batch(domains: tuple[Path, Path]) -> tuple[torch.Tensor, torch.Tensor]:
    s, r = CropFolder(domains[0], (SIZE, SIZE)), CropFolder(domains[1], (SIZE, SIZE))
    return s.batch([0, 1], [False, False]), r.batch([0, 1], [False, False])


def test_calibration_scales_split_the_share_by_lambda() -> None:
    raw = {"adversarial": 2.0, "cycle_pixel": 0.3, "cycle_feature": 40.0, "identity_feature": 10.0}
    lambdas = {"adversarial": 1.0, "cycle_pixel": 10.0, "cycle_feature": 1e-5,
               "identity_feature": 5e-6}
    cal = L.calibrate_feature_scales(raw, lambdas, 0.2)
    other = 2.0 + 3.0
    assert cal["other"] == pytest.approx(other)
    weighted = {n: lambdas[n] * cal["scales"][n] * raw[n] for n in cal["scales"]}
    assert sum(weighted.values()) / (other + sum(weighted.values())) == pytest.approx(0.2)
    assert weighted["cycle_feature"] == pytest.approx(2 * weighted["identity_feature"])
    assert cal["terms"]["cycle_feature"]["share"] + cal["terms"]["identity_feature"]["share"] \
        == pytest.approx(0.2)


@pytest.mark.parametrize("preset", FEATURE_PRESETS)
def test_feature_terms_change_the_generator_gradient(preset: str, domains: tuple[Path, Path],
                                                     tmp_path: Path, extractors: dict) -> None:
    trainer = _trainer(preset, domains, tmp_path, extractors)
    torch.manual_seed(0)
    with torch.no_grad():  # "+S" generators start as the identity, where distances are 0
        for param in list(trainer.G.parameters()) + list(trainer.F.parameters()):
            param.add_(torch.randn_like(param) * 0.05)
    x, y = _batch(domains)
    cal = trainer.calibrate(x, y)
    share = PRESETS[preset].feature_share
    assert share > 0 and cal["share"] == share and not cal["unmeasurable"]
    measured = sum(cal["terms"][n]["share"] for n in cal["scales"])
    assert measured == pytest.approx(share, rel=1e-6)

    terms = trainer.generator_losses(trainer.forward(x, y, epoch=0))
    params = [p for p in trainer.G.parameters() if p.requires_grad]
    with_features = sum(trainer.term_weight(n) * v for n, v in terms.items())
    without = sum(trainer.term_weight(n) * v for n, v in terms.items()
                  if n not in L.FEATURE_TERMS)
    g_with = torch.cat([g.flatten() for g in torch.autograd.grad(with_features, params,
                                                                  retain_graph=True)])
    g_without = torch.cat([g.flatten() for g in torch.autograd.grad(without, params)])
    change = float((g_with - g_without).norm() / g_with.norm())
    assert change >= 0.01, f"{preset}: feature terms change G's gradient by {change:.2%} only"


def test_calibration_is_checkpointed_and_logged(domains: tuple[Path, Path], tmp_path: Path,
                                                extractors: dict) -> None:
    trainer = _trainer("C_CPCFIF", domains, tmp_path, extractors)
    x, y = _batch(domains)
    losses = trainer.train_step(x, y, 0)  # calibrates on its first batch when not done before
    assert trainer.feature_calibration is not None
    for name in ("adversarial", "cycle_pixel", "cycle_feature", "identity_feature"):
        assert f"weighted/{name}" in losses and f"share/{name}" in losses
    assert sum(losses[k] for k in losses if k.startswith("share/")) == pytest.approx(1.0)
    state = trainer.state_dict(1)
    other = _trainer("C_CPCFIF", domains, tmp_path, extractors)
    other.load_state_dict(state)
    assert other.feature_scales == trainer.feature_scales
    assert not other.needs_calibration()
    off = _trainer("C_CPCFIF", domains, tmp_path, extractors, feature_share=0.0)
    assert not off.needs_calibration() and off.term_weight("cycle_feature") == 1e-5
