"""Soft person masks without Blender: Cryptomatte ids and coverage decoding, the coverage PNG
format, the mask_mode setting, and pasting a refined crop back with coverage as alpha."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import batch
from blender_addon.core.render_cli import build_parser, config_from_args
from blender_addon.core.soft_masks import (
    cryptomatte_id,
    hard_people_coverage,
    murmurhash3_32,
    people_coverage,
    person_coverage,
    rank_passes,
)
from protocol.coverage import (
    CoverageError,
    coverage_png_bytes,
    coverage_to_uint8,
    read_coverage,
    soft_mask_path,
)
from protocol.crops import crop_person, reinsert

ROOT = Path(__file__).resolve().parents[1]

# Names and ids from the Cryptomatte manifest of a Blender 5.0.1 render of the sample office
# (the EXR header "cryptomatte/<key>/manifest"): what Blender itself hashed.
BLENDER_MANIFEST = {
    "holdout_meeting_table": 0x380CA1BB,
    "holdout_desk_north": 0xCB133E31,
    "holdout_desk_south": 0x3F2EC45E,
    "holdout_cabinet": 0x084BD4F6,
    "holdout_shelf": 0x079BFAB5,
    "rig_panel_0_0": 0x72E96333,
    "rig_panel_0_1": 0x13C17D71,
    "rig_panel_0_2": 0xBA04E03A,
    "rig_panel_1_0": 0xD7EAA2A7,
    "rig_panel_1_1": 0xB524660B,
}


def test_cryptomatte_ids_match_blenders_manifest() -> None:
    for name, expected in BLENDER_MANIFEST.items():
        got = int(np.array([cryptomatte_id(name)]).view(np.uint32)[0])
        assert got == expected, (name, hex(got), hex(expected))


def test_ids_whose_hash_has_an_extreme_exponent_are_nudged_to_normal_floats() -> None:
    nudged = 0
    for number in range(4000):
        name = f"person_{number}_root"
        raw = murmurhash3_32(name.encode())
        value = cryptomatte_id(name)
        assert np.isfinite(value) and (value == 0 or abs(value) >= np.finfo(np.float32).tiny), name
        bits = int(np.array([value]).view(np.uint32)[0])
        if (raw >> 23) & 0xFF in (0, 0xFF):
            assert bits == raw ^ (1 << 23)
            nudged += 1
        else:
            assert bits == raw
    assert nudged > 0  # about 2 in 256 names: the branch was exercised


def _ranks(pairs: list[list[tuple[float, float]]]) -> list[np.ndarray]:
    """One-pixel-high ranks from per-pixel lists of (id, coverage) pairs."""
    depth = max(len(p) for p in pairs)
    depth += depth % 2
    out = []
    for rank in range(depth // 2):
        array = np.zeros((1, len(pairs), 4), np.float32)
        for x, pixel in enumerate(pairs):
            for slot in (0, 1):
                if 2 * rank + slot < len(pixel):
                    array[0, x, 2 * slot:2 * slot + 2] = pixel[2 * rank + slot]
        out.append(array)
    return out


def test_person_coverage_sums_the_persons_ids_over_every_rank() -> None:
    body, hair, other = (float(cryptomatte_id(n)) for n in ("p1_root", "p1_hair", "p2_root"))
    ranks = _ranks([
        [(body, 0.5), (other, 0.25), (hair, 0.25)],  # the person's two assets in two ranks
        [(other, 1.0)],
        [(body, 0.75)],  # the rest of this pixel is the empty film
        [(0.0, 0.0)],
    ])
    coverage = person_coverage(ranks, [cryptomatte_id("p1_root"), cryptomatte_id("p1_hair")])
    np.testing.assert_allclose(coverage[0], [0.75, 0.0, 0.75, 0.0])
    both = people_coverage(ranks, {1: ["p1_root"], 2: ["p2_root"]})
    np.testing.assert_allclose(both[2][0], [0.25, 1.0, 0.0, 0.0])


def test_rank_passes_orders_ranks_and_refuses_a_render_without_cryptomatte() -> None:
    a = np.zeros((2, 2, 4), np.float32)
    b = np.ones((2, 2, 4), np.float32)
    ranks = rank_passes({"CryptoAsset01": b, "Combined": a, "CryptoAsset00": a})
    assert [float(r.sum()) for r in ranks] == [0.0, 16.0]  # CryptoAsset00 first
    with pytest.raises(ValueError, match="use_pass_cryptomatte_asset.*hard"):
        rank_passes({"Combined": a})
    with pytest.raises(ValueError, match="CryptoAsset00.*id, coverage"):
        rank_passes({"CryptoAsset00": a[..., :3]})


def test_hard_people_coverage_is_the_instance_mask() -> None:
    ids = np.array([[0, 1], [2, 1]], np.uint16)
    coverage = hard_people_coverage(ids, [1, 2])
    np.testing.assert_array_equal(coverage[1], [[0, 1], [0, 1]])
    assert coverage[2].dtype == np.float32 and coverage[2].sum() == 1


def test_coverage_png_round_trips_within_half_a_step(tmp_path: Path) -> None:
    coverage = np.array([[0.0, 1.0, 0.5], [0.1, 0.999, 0.002]], np.float32)
    path = tmp_path / soft_mask_path("000007", 3)
    assert soft_mask_path("000007", 3) == "soft_masks/000007_3.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(coverage_png_bytes(coverage))
    back = read_coverage(path, (2, 3))
    assert back.dtype == np.float32
    assert np.abs(back - coverage).max() <= 0.5 / 255 + 1e-7
    assert back[0, 0] == 0.0 and back[0, 1] == 1.0  # exact at the ends
    with pytest.raises(CoverageError, match="is 3x2, but its image is 4x2"):
        read_coverage(path, (2, 4))
    with pytest.raises(CoverageError, match="missing; re-render"):
        read_coverage(tmp_path / "nope.png")
    with pytest.raises(CoverageError, match=r"\[0, 1\]"):
        coverage_to_uint8(np.array([[1.5]]))


def test_mask_mode_setting_and_cli_flags() -> None:
    assert batch.RenderSettings().mask_mode == "soft"
    with pytest.raises(batch.BatchError, match="mask_mode must be one of .*'soft', 'hard'.*'fuzzy'"):
        batch.RenderSettings(mask_mode="fuzzy")
    base = ["--scene", str(ROOT / "scenes" / "sample_office"), "--count", "1", "--out", "x",
            "--human-backend", "proxy"]
    parser = build_parser()
    assert config_from_args(parser.parse_args(base)).render.mask_mode == "soft"
    assert config_from_args(parser.parse_args([*base, "--hard-masks"])).render.mask_mode == "hard"
    assert config_from_args(parser.parse_args([*base, "--mask-mode", "hard"])).render.mask_mode == "hard"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--hard-masks", "--mask-mode", "soft"])
    # Saved in run_config.json and read back.
    config = config_from_args(parser.parse_args([*base, "--hard-masks"]))
    assert batch.BatchConfig.from_dict(config.to_dict()).render.mask_mode == "hard"


def test_reinsert_with_coverage_alpha_blends_the_edge_and_leaves_the_rest() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    hard = np.zeros((64, 64), bool)
    hard[24:40, 28:36] = True
    # Coverage: 1 on the person, a one-pixel ring of partial coverage around it, 0 elsewhere.
    coverage = hard.astype(np.float32)
    ring = np.zeros_like(hard)
    ring[23:41, 27:37] = True
    ring &= ~hard
    coverage[ring] = np.linspace(0.1, 0.9, int(ring.sum()), dtype=np.float32)
    crop, record = crop_person(image, (32.0, 24.0), size=(32, 32), mask=hard, scale=1.0,
                               fit_margin_px=0.0)
    refined = np.full_like(crop, 200)

    soft_out = reinsert(image, [refined], [record], [coverage], feather_px=0.0)
    expected = np.rint(image + coverage[..., None] * (200.0 - image))
    assert np.abs(soft_out.astype(float) - expected).max() <= 1.0
    assert (soft_out[hard] == 200).all()
    untouched = coverage == 0
    np.testing.assert_array_equal(soft_out[untouched], image[untouched])
    changed = (soft_out != image).any(axis=2)
    assert (changed & ~hard).sum() > 0.8 * ring.sum()  # the edge band is blended ...
    assert not (changed & ~hard & ~ring).any()  # ... and nothing beyond it

    hard_out = reinsert(image, [refined], [record], [hard], feather_px=0.0)
    assert not ((hard_out != image).any(axis=2) & ~hard).any()  # the hard cut stops at the mask


def test_a_run_started_before_mask_mode_existed_still_resumes(tmp_path: Path) -> None:
    config = batch.BatchConfig(scene=str(ROOT / "scenes" / "sample_office"), count=2,
                               human_backend="proxy")
    written = config.to_dict()
    del written["render"]["mask_mode"]  # run_config.json as the renderer wrote it before
    (tmp_path / batch.RUN_CONFIG).write_text(json.dumps({"config": written}), encoding="utf-8")
    batch.prepare_run_folder(tmp_path, config)  # the default (soft) is what that run gets
    assert batch.load_run_config(tmp_path).render.mask_mode == "soft"
    hard = dataclasses.replace(config, render=dataclasses.replace(config.render, mask_mode="hard"))
    with pytest.raises(batch.BatchError, match="differs in: render"):
        batch.prepare_run_folder(tmp_path, hard)
