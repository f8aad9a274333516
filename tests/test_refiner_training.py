"""Refiner training and inference: gradient flow, resume, learning a toy mapping, export, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refiner_daemon.refiner import perceptual
from refiner_daemon.refiner.data import CropFolder, list_crop_files
from refiner_daemon.refiner.inference import MAX_MEAN_ABS_DIFF, Refiner
from refiner_daemon.refiner.networks import ResnetGenerator
from refiner_daemon.refiner.train import main as cli_main
from refiner_daemon.refiner.training import (
    ModelSpec,
    RefinerConfig,
    RefinerTrainer,
    cpu_has_native_bf16,
    export_refiner,
    train_refiner,
)

torch.set_num_threads(2)
SIZE = 32
SHIFT = (70, 20, -50)  # the real domain's colour cast


def _write_domain(folder: Path, n: int, seed: int, shift: tuple[int, int, int]) -> None:
    """Blue discs on a grey-blue background; the real domain adds a warm colour cast."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        img = np.zeros((SIZE, SIZE, 3), np.float32) + np.array([90, 110, 130])
        cx, cy = rng.uniform(10, 22, 2)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(4, 9) ** 2
        img[inside] = (60, 80, 200)
        img += np.array(shift) + rng.normal(0, 4, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def domains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("toy")
    _write_domain(root / "synthetic" / "crops", 16, 1, (0, 0, 0))  # crop-dataset layout
    _write_domain(root / "real", 16, 2, SHIFT)                     # plain folder of images
    return root / "synthetic", root / "real"


def _cfg(run_dir: Path, domains: tuple[Path, Path], **changes: object) -> RefinerConfig:
    values: dict[str, object] = {
        "run_dir": str(run_dir), "synthetic_dir": str(domains[0]), "real_dir": str(domains[1]),
        "preset": "C_CP+S", "epochs": 4, "batch_size": 4, "crop_size": (SIZE, SIZE), "width": 8, "disc_width": 8,
        "n_blocks": 1, "attention_width": 4, "pool_size": 8, "progress": False, "tensorboard": False,
        "checkpoint_every": 1000, "amp": False}
    values.update(changes)
    return RefinerConfig.from_dict(values)


def _toy_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 3, SIZE, SIZE, generator=gen) * 2 - 1,
            torch.rand(2, 3, SIZE, SIZE, generator=gen) * 2 - 1)


def _params(module: torch.nn.Module | None) -> list[torch.Tensor]:
    assert module is not None
    return list(module.parameters())


def test_crop_folder_layouts(domains: tuple[Path, Path], tmp_path: Path) -> None:
    assert len(list_crop_files(domains[0])) == 16  # <dir>/crops/*.png
    assert len(list_crop_files(domains[1])) == 16  # images directly in <dir>
    with pytest.raises(FileNotFoundError, match="no images"):
        list_crop_files(tmp_path)
    crop = CropFolder(domains[1], (16, 24))[0]  # resized to (height, width)
    assert crop.shape == (16, 24, 3) and crop.dtype == np.uint8


def test_config_validation_names_the_field(tmp_path: Path, domains: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="RefinerConfig.batch_size"):
        _cfg(tmp_path, domains, batch_size=0)
    with pytest.raises(ValueError, match="RefinerConfig.crop_size"):
        _cfg(tmp_path, domains, crop_size=(30, 32))
    with pytest.raises(ValueError, match="RefinerConfig.preset.*valid.*C_CP"):
        _cfg(tmp_path, domains, preset="nope")
    with pytest.raises(ValueError, match="unknown loss weight"):
        _cfg(tmp_path, domains, loss_weights={"cycle_pixle": 1.0})
    with pytest.raises(ValueError, match="unknown refiner config field"):
        RefinerConfig.from_dict({"run_dir": "a", "synthetic_dir": "b", "real_dir": "c", "epoch": 1})
    cfg = _cfg(tmp_path, domains)
    assert RefinerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_skip_generators_at_init_make_reconstruction_losses_zero(
        tmp_path: Path, domains: tuple[Path, Path]) -> None:
    cfg = _cfg(tmp_path, domains, preset="C_CPCFIP+S",
               loss_weights={"identity_feature": 1e-5, "disc_feature_cycle": 1e-5,
                             "mean_feature": 1e-5}, feature_layers=["pool1"])
    trainer = RefinerTrainer(cfg, steps_per_epoch=4)
    x, y = _toy_batch(0)
    trainer.compute_mean_features(CropFolder(domains[0], (SIZE, SIZE)),
                                  CropFolder(domains[1], (SIZE, SIZE)))
    terms = trainer.generator_losses(trainer.forward(x, y, epoch=0))
    # Both generators are the identity, so every cyclic and identity term is exactly zero...
    for name in ("cycle_pixel", "identity_pixel", "cycle_feature", "identity_feature",
                 "disc_feature_cycle"):
        assert float(terms[name].detach()) == 0.0, name
    # ...while the adversarial and mean-feature terms are not.
    assert float(terms["adversarial"].detach()) > 0 and float(terms["mean_feature"].detach()) > 0
    trainer.train_step(x, y, 0)  # after one update the generators change the image
    terms = trainer.generator_losses(trainer.forward(x, y, epoch=0))
    assert float(terms["identity_pixel"].detach()) > 0 and float(terms["cycle_pixel"].detach()) > 0


def test_discriminators_frozen_during_generator_step(tmp_path: Path,
                                                     domains: tuple[Path, Path]) -> None:
    trainer = RefinerTrainer(_cfg(tmp_path, domains, preset="D"), steps_per_epoch=4)
    x, y = _toy_batch(1)
    outputs = trainer.forward(x, y, epoch=0)
    d_before = [p.detach().clone() for p in _params(trainer.D_X) + _params(trainer.D_Y)]
    trainer.generator_step(outputs, epoch=0)
    assert all(p.grad is None for p in _params(trainer.D_X) + _params(trainer.D_Y))
    assert all(torch.equal(a, b) for a, b in
               zip(d_before, _params(trainer.D_X) + _params(trainer.D_Y)))
    assert all(p.grad is not None for p in _params(trainer.G) + _params(trainer.F))
    g_grads = [p.grad.clone() for p in _params(trainer.G)]
    g_weights = [p.detach().clone() for p in _params(trainer.G)]
    trainer.discriminator_step(outputs)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _params(trainer.D_Y))
    # The discriminator step touches neither the generator's gradients nor its weights.
    assert all(torch.equal(a, p.grad) for a, p in zip(g_grads, _params(trainer.G)))
    assert all(torch.equal(a, p) for a, p in zip(g_weights, _params(trainer.G)))


def test_attention_trains_before_switch_and_is_frozen_after(tmp_path: Path,
                                                            domains: tuple[Path, Path]) -> None:
    trainer = RefinerTrainer(_cfg(tmp_path, domains, preset="A", switch_epoch=1),
                             steps_per_epoch=2)
    x, y = _toy_batch(2)
    before = [p.detach().clone() for p in _params(trainer.A_X)]
    losses = trainer.train_step(x, y, step=0)  # epoch 0 < switch
    assert 0 < losses["attention_mean"] < 1
    assert any(not torch.equal(a, p) for a, p in zip(before, _params(trainer.A_X)))
    after_switch = [p.detach().clone() for p in _params(trainer.A_X) + _params(trainer.A_Y)]
    g_before = [p.detach().clone() for p in _params(trainer.G)]
    trainer.train_step(x, y, step=2)  # epoch 1 == switch
    assert all(torch.equal(a, p) for a, p in
               zip(after_switch, _params(trainer.A_X) + _params(trainer.A_Y)))
    assert all(p.grad is None for p in _params(trainer.A_X))
    assert any(not torch.equal(a, p) for a, p in zip(g_before, _params(trainer.G)))
    # After the switch the discriminator sees thresholded foregrounds: zero where a <= tau.
    out = trainer.last_outputs
    background = (out["att_x"] <= trainer.cfg.tau).expand_as(out["d_fake_y"])
    assert torch.all(out["d_fake_y"][background] == 0)
    assert torch.all(out["d_real_y"][(out["att_y"] <= trainer.cfg.tau).expand_as(y)] == 0)


def test_cpu_mixed_precision_where_native(tmp_path: Path, domains: tuple[Path, Path]) -> None:
    """amp=True uses bfloat16 autocast on a CPU with native bf16 and plain fp32 elsewhere."""
    trainer = RefinerTrainer(_cfg(tmp_path, domains, preset="C_CP", amp=True), steps_per_epoch=4)
    assert trainer.amp == cpu_has_native_bf16()
    x, y = _toy_batch(5)
    losses = trainer.train_step(x, y, 0)
    assert all(np.isfinite(v) for v in losses.values())
    if trainer.amp:
        assert trainer.last_outputs["fake_y"].dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.G.parameters())  # master weights


def test_lr_schedule_constant_then_linear_to_zero(tmp_path: Path,
                                                  domains: tuple[Path, Path]) -> None:
    trainer = RefinerTrainer(_cfg(tmp_path, domains, epochs=10), steps_per_epoch=10)
    assert trainer.lr_factor(0) == 1.0 and trainer.lr_factor(49) == 1.0
    assert trainer.lr_factor(75) == pytest.approx(0.5) and trainer.lr_factor(100) == 0.0


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path,
                                                domains: tuple[Path, Path]) -> None:
    kwargs = {"preset": "A+S", "epochs": 2, "switch_epoch": 1, "pool_size": 2}
    full: list[dict] = []
    train_refiner(_cfg(tmp_path / "full", domains, **kwargs), on_progress=full.append)
    first: list[dict] = []
    stop_after = 3
    train_refiner(_cfg(tmp_path / "split", domains, **kwargs), on_progress=first.append,
                  should_stop=lambda: len(first) >= stop_after)
    assert len(first) == stop_after
    ckpt = tmp_path / "split" / "checkpoints" / "latest.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == stop_after and len(state["pools"]["fake_y"]["images"]) == 2
    with pytest.raises(FileExistsError, match="resume"):
        train_refiner(_cfg(tmp_path / "split", domains, **kwargs))
    with pytest.raises(ValueError, match="lr"):
        train_refiner(_cfg(tmp_path / "split", domains, resume=True, lr=1e-3, **kwargs))
    second: list[dict] = []
    path = train_refiner(_cfg(tmp_path / "split", domains, resume=True, **kwargs),
                         on_progress=second.append)
    resumed = first + second
    assert [p["step"] for p in resumed] == [p["step"] for p in full] == list(range(1, 9))
    for a, b in zip(full, resumed):
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-5, abs=1e-7), a["step"]
    full_refiner = Refiner.load(tmp_path / "full" / "refiner.pt", precision="fp32")
    split_refiner = Refiner.load(path, precision="fp32")
    for key, value in full_refiner.generator.state_dict().items():
        assert torch.allclose(value, split_refiner.generator.state_dict()[key], atol=1e-6), key


def test_training_learns_the_toy_mapping(tmp_path: Path, domains: tuple[Path, Path]) -> None:
    """Discs with a colour cast: the refined synthetic set must move toward the real set."""
    cfg = _cfg(tmp_path / "run", domains, epochs=12, lr=3e-3, tensorboard=True, log_every=20,
               image_every=30)
    path = train_refiner(cfg)
    synthetic = np.stack([CropFolder(domains[0], (SIZE, SIZE))[i] for i in range(16)])
    real = np.stack([CropFolder(domains[1], (SIZE, SIZE))[i] for i in range(16)])
    refined = Refiner.load(path, precision="fp32").refine(synthetic).images

    def colour_histograms(images: np.ndarray) -> np.ndarray:
        return np.stack([np.histogram(images[..., c], bins=16, range=(0, 256))[0]
                         for c in range(3)]) / images[..., 0].size

    before = np.abs(colour_histograms(synthetic) - colour_histograms(real)).sum()
    after = np.abs(colour_histograms(refined) - colour_histograms(real)).sum()
    mean_before = np.linalg.norm(synthetic.mean((0, 1, 2)) - real.mean((0, 1, 2)))
    mean_after = np.linalg.norm(refined.mean((0, 1, 2)) - real.mean((0, 1, 2)))
    assert after < 0.65 * before, (before, after)
    assert mean_after < 0.5 * mean_before, (mean_before, mean_after)
    # The run folder holds the config (with the perceptual record) and TensorBoard events.
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["preset"] == "C_CP+S" and record["perceptual_extractor"] is None
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_perceptual_run_records_its_extractor(tmp_path: Path, domains: tuple[Path, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    train_refiner(_cfg(tmp_path, domains, preset="M", epochs=1, max_steps=1,
                       mean_feature_samples=8))
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["perceptual_extractor"]["name"] == "mobilenet_v2"
    assert len(record["perceptual_extractor"]["sha256"]) == 64
    assert record["perceptual_extractor"]["layers"] == ["pool2", "pool5"]
    # Resuming with a different extractor (here: "auto" now resolves to another weights file)
    # would change what the feature losses measure, so it is refused.
    original = perceptual.find_mobilenet_v2_weights()
    assert original is not None
    other = tmp_path / "weights" / "mobilenet_v2-other.pth"
    other.parent.mkdir()
    shutil.copy(original, other)
    monkeypatch.setattr(perceptual, "find_mobilenet_v2_weights", lambda: other)
    with pytest.raises(ValueError, match="perceptual extractor"):
        train_refiner(_cfg(tmp_path, domains, preset="M", epochs=1, max_steps=2,
                           mean_feature_samples=8, resume=True))


def test_export_hash_is_stable_and_loads_weights_only(tmp_path: Path) -> None:
    spec = ModelSpec(width=8, n_blocks=1, skip=False, crop_size=(32, 32))
    torch.manual_seed(3)
    generator = ResnetGenerator(width=8, n_blocks=1)
    path = export_refiner(tmp_path / "tiny.pt", spec, generator, name="tiny")
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["model"]["width"] == 8
    again = export_refiner(tmp_path / "again.pt", spec, generator, name="tiny")
    refiner = Refiner.load(path)
    assert refiner.sha256 == payload["sha256"] == Refiner.load(again).sha256
    assert refiner.name == "tiny" and refiner.crop_size == (32, 32) and refiner.device == "cpu"
    # Any change of the weights changes the hash; a tampered file is refused.
    with torch.no_grad():
        generator.last.bias.add_(0.01)
    assert Refiner.load(export_refiner(tmp_path / "b.pt", spec, generator)).sha256 != refiner.sha256
    payload["generator"]["last.bias"] += 1
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        Refiner.load(tmp_path / "tampered.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        Refiner.load(tmp_path / "missing.pt")


def test_refine_uint8_batches_and_attention(tmp_path: Path) -> None:
    spec = ModelSpec(architecture="aggan", width=8, n_blocks=1, attention_width=4,
                     crop_size=(32, 32))
    torch.manual_seed(4)
    from refiner_daemon.refiner.networks import AttentionNet
    path = export_refiner(tmp_path / "a.pt", spec, ResnetGenerator(width=8, n_blocks=1),
                          AttentionNet(width=4))
    refiner = Refiner.load(path, precision="fp32", max_batch=2)
    crops = np.random.default_rng(0).integers(0, 256, (5, 30, 26, 3), dtype=np.uint8)
    out = refiner.refine(crops)
    assert out.images.shape == crops.shape and out.images.dtype == np.uint8
    assert out.attention is not None and out.attention.shape == (5, 30, 26)
    assert out.attention.dtype == np.float32
    assert 0 <= out.attention.min() and out.attention.max() <= 1
    # Chunked batches give the same result as one crop at a time.
    single = np.concatenate([refiner.refine(crops[i:i + 1]).images for i in range(5)])
    assert np.abs(single.astype(int) - out.images.astype(int)).max() <= 1
    with pytest.raises(TypeError, match="uint8"):
        refiner.refine(crops.astype(np.float32))
    with pytest.raises(ValueError, match="batch axis"):
        refiner.refine(crops[0])


def test_reduced_precision_only_when_close_to_fp32(tmp_path: Path) -> None:
    spec = ModelSpec(width=8, n_blocks=1, crop_size=(32, 32))
    path = export_refiner(tmp_path / "g.pt", spec, ResnetGenerator(width=8, n_blocks=1))
    refiner = Refiner.load(path)  # precision auto
    crops = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = refiner.refine(crops).images
    check = refiner.precision_check
    reference = Refiner.load(path, precision="fp32").refine(crops).images
    diff = np.abs(out.astype(int) - reference.astype(int))
    if check["decided"] == "fp32":
        assert np.array_equal(out, reference)
    else:
        assert check["accepted"] and diff.mean() <= MAX_MEAN_ABS_DIFF + 1e-6


def test_cli_dry_run_prints_the_config(tmp_path: Path, domains: tuple[Path, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--run-dir", str(tmp_path), "--synthetic", str(domains[0]), "--real",
            str(domains[1]), "--preset", "C_CPCF+S", "--crop-size", "64x32",
            "--loss-weight", "cycle_feature=2e-5", "--dry-run"]
    assert cli_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["preset"] == "C_CPCF+S" and printed["crop_size"] == [64, 32]
    assert printed["loss_weights"] == {"cycle_feature": 2e-5}
    assert not (tmp_path / "config.json").exists()
    assert cli_main(argv[:-1] + ["--batch-size", "0", "--dry-run"]) == 2
    assert "RefinerConfig.batch_size" in capsys.readouterr().err
    shutil.rmtree(tmp_path, ignore_errors=True)
