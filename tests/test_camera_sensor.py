"""The camera model for rendered people: measured noise, JPEG quality and colour cast; effects
only where people are (apart from the frame's JPEG pass); seeded and recorded; datasets
post-processed into a new folder without touching the source."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_addon.core import dataset
from blender_addon.core.camera_sensor import (
    SensorProfile,
    SensorRecipe,
    apply_sensor,
    apply_to_dataset,
    jpeg_quality,
    main,
    measure_profile,
    noise_sigma,
)
from protocol.cli import CliError

NO_JPEG = SensorProfile(noise_sigma=3.0, jpeg_quality=None, grey_world=(1.2, 1.0, 0.8))


def test_noise_estimate_recovers_added_gaussian_noise_and_ignores_black_borders() -> None:
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(60, 180, 256), (256, 1))  # a plane: the kernel cancels it
    noisy = ramp + rng.normal(0, 4.0, ramp.shape)
    noisy[:, :40] = 0.0  # a fisheye's black surround, which has no noise to find
    assert noise_sigma(noisy) == pytest.approx(4.0, rel=0.15)
    assert noise_sigma(ramp) < 0.05


@pytest.mark.parametrize("quality", [60, 85, 95])
def test_jpeg_quality_is_read_back_from_the_quantisation_tables(quality: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality)
    assert jpeg_quality(Image.open(io.BytesIO(buffer.getvalue()))) == quality
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert jpeg_quality(Image.open(io.BytesIO(png.getvalue()))) is None


def test_measure_profile_finds_the_colour_cast(tmp_path: Path) -> None:
    warm = np.zeros((64, 64, 3), dtype=np.uint8) + np.array([200, 150, 100], dtype=np.uint8)
    Image.fromarray(warm).save(tmp_path / "a.jpg", quality=90)
    profile = measure_profile([tmp_path / "a.jpg"])
    assert profile.jpeg_quality == 90
    red, green, blue = profile.grey_world
    assert red > green > blue and np.mean(profile.grey_world) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(CliError, match="cannot read frame"):
        measure_profile([tmp_path / "missing.jpg"])


def test_effects_land_on_people_only_and_follow_the_recipe() -> None:
    image = np.full((96, 96, 3), 128, dtype=np.uint8)
    coverage = np.zeros((96, 96))
    coverage[30:60, 30:60] = 1.0
    recipe = SensorRecipe(exposure=1.0, white_balance=(1.3, 1.0, 0.7), vignetting=0.2,
                          blur_sigma_px=0.5, noise_sigma=2.0, jpeg_quality=None)
    out = apply_sensor(image, coverage, recipe, seed=3).astype(int)
    far = np.ones((96, 96), dtype=bool)
    far[25:65, 25:65] = False
    assert (out[far] == 128).all()  # away from the person: untouched
    person = out[35:55, 35:55]
    assert person[..., 0].mean() > 140 and person[..., 2].mean() < 115  # tinted warm
    assert person[..., 1].std() > 1.0  # noisy
    assert (apply_sensor(image, coverage, recipe, seed=3) == out).all()  # seeded
    vignetted = apply_sensor(image, np.ones((96, 96)), SensorRecipe(1.0, (1.0, 1.0, 1.0), 0.3, 0.0, 0.0, None), 0)
    assert vignetted[48, 48, 0] == 128 and vignetted[2, 2, 0] < 115  # darker toward the corners
    with pytest.raises(ValueError, match="coverage"):
        apply_sensor(image, coverage[:10], recipe, seed=0)


def test_recipe_is_seeded_keeps_luminance_and_tints_toward_the_cast() -> None:
    a, b = SensorRecipe.sample(NO_JPEG, 7), SensorRecipe.sample(NO_JPEG, 7)
    assert a == b and a != SensorRecipe.sample(NO_JPEG, 8)
    assert a.white_balance[0] > a.white_balance[1] > a.white_balance[2]
    assert float(np.dot(a.white_balance, [0.2126, 0.7152, 0.0722])) == pytest.approx(1.0, abs=1e-3)
    assert 0.8 * 3.0 <= a.noise_sigma <= 1.2 * 3.0


def _tiny_dataset(root: Path) -> Path:
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    ids = np.zeros((32, 32), dtype=np.uint16)
    ids[10:20, 10:20] = 1
    record = {"index": 0, "frame": "000000", "image": "images/000000.png", "mask": "masks/000000.png",
              "width": 32, "height": 32, "annotations": [], "hidden_people": [],
              "manifest": {"frame_seed": 11}}
    dataset.write_frame(root, "000000", image, ids, record)
    dataset.build_coco(root)
    return root


def test_apply_to_dataset_writes_a_new_dataset_and_resumes(tmp_path: Path) -> None:
    source = _tiny_dataset(tmp_path / "S")
    before = (source / "images" / "000000.png").read_bytes()
    profile_path = tmp_path / "sensor.json"
    profile_path.write_text(json.dumps(NO_JPEG.to_dict()))
    assert main(["apply", str(source), "--profile", str(profile_path), "--out", str(tmp_path / "S2")]) == 0
    assert (source / "images" / "000000.png").read_bytes() == before  # the source is never changed
    out = np.asarray(Image.open(tmp_path / "S2" / "images" / "000000.png"))
    assert (out[:5, :5] == 100).all() and out[12:18, 12:18, 0].mean() > 105
    record = json.loads((tmp_path / "S2" / "frames" / "000000.json").read_text())
    assert record["manifest"]["sensor"]["white_balance"] == list(SensorRecipe.sample(NO_JPEG, 11).white_balance)
    assert json.loads((tmp_path / "S2" / "coco.json").read_text())["images"][0]["file_name"] == "images/000000.png"
    assert apply_to_dataset(source, NO_JPEG, tmp_path / "S2") == 0  # done frames are kept
    with pytest.raises(CliError, match="new folder"):
        apply_to_dataset(source, NO_JPEG, source)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(CliError, match="not a sensor profile"):
        SensorProfile.load(bad)
