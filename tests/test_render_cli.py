"""The render CLI's Blender-free parts: validation errors, sharding, seeds, recipes, the worker
pool (recycling, failures, progress) and resume bookkeeping, with a fake renderer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_render_worker import fake_backend

from blender_addon.core import batch
from blender_addon.core.batch import BatchConfig, BatchError, RenderSettings
from blender_addon.core.render_cli import run
from blender_addon.core.scene_format import load_scene

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "scenes" / "sample_office")

def _args(out: Path, *extra: str) -> list[str]:
    return ["--scene", SCENE, "--count", "7", "--out", str(out), "--no-progress", *extra]


def test_bad_requests_fail_with_clear_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--scene", str(tmp_path / "nowhere"), "--count", "2", "--out", str(tmp_path / "o")],
         "no scene file here"),
        (_args(tmp_path / "o", "--sitting", "1,12"), "8 seats but up to 12 sitting"),
        (_args(tmp_path / "o", "--shard", "3/2"), "--shard 3/2"),
        (_args(tmp_path / "o", "--workers", "-1"), "--workers must be >= 0"),
        (_args(tmp_path / "o", "--resolution", "4"), "resolution must be in"),
        (["--count", "2", "--out", str(tmp_path / "o")], "--scene is required"),
    ]
    for argv, message in cases:
        assert run(argv, fake_backend()) == 2
        assert message in capsys.readouterr().err


def test_dry_run_prints_the_validated_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args(tmp_path / "o", "--preset", "fast", "--samples", "9", "--dry-run"), fake_backend()) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["render"]["samples"] == 9
    assert printed["config"]["render"]["resolution"] == 512
    assert printed["camera"]["cycles"]["panorama_type"] == "FISHEYE_LENS_POLYNOMIAL"
    assert not (tmp_path / "o").exists()


def test_people_per_frame_default_to_the_scene_occupancy(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    def placement(scene: str, *extra: str) -> dict:
        argv = ["--scene", scene, "--count", "2", "--out", str(tmp_path / "o"), "--dry-run", *extra]
        assert run(argv, fake_backend()) == 0
        return json.loads(capsys.readouterr().out)["config"]["placement"]

    # Without an occupancy: thesis Table 7.2.
    table = placement(SCENE)
    assert (table["sitting_range"], table["standing_range"]) == ([1, 5], [0, 4])
    # A scene that says what its room holds: that, unless a flag says otherwise.
    scene = tmp_path / "room"
    scene.mkdir()
    document = json.loads((Path(SCENE) / "scene.json").read_text())
    document["occupancy"] = {"sitting": [5, 7], "standing": [0, 1]}
    (scene / "scene.json").write_text(json.dumps(document))
    (scene / document["photo"]).symlink_to(Path(SCENE) / document["photo"])
    room = placement(str(scene))
    assert (room["sitting_range"], room["standing_range"]) == ([5, 7], [0, 1])
    mixed = placement(str(scene), "--standing", "2,3")
    assert (mixed["sitting_range"], mixed["standing_range"]) == ([5, 7], [2, 3])


def test_a_run_from_before_render_regions_resumes_with_the_same_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "old"
    assert run(_args(out, "--dry-run"), fake_backend()) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["render"]["region"] == "people"  # a new run: the default
    del config["render"]["region"]  # what a run folder written before regions existed holds
    out.mkdir()
    (out / batch.RUN_CONFIG).write_text(json.dumps({"config": config}))
    assert run(_args(out, "--dry-run"), fake_backend()) == 0
    assert json.loads(capsys.readouterr().out)["config"]["render"]["region"] == "full"
    assert run(_args(out, "--region", "people", "--dry-run"), fake_backend()) == 0  # a flag wins
    assert json.loads(capsys.readouterr().out)["config"]["render"]["region"] == "people"


def test_pool_recycles_workers_and_resume_renders_only_missing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "fail_on_4").touch()
    assert run(_args(out, "--workers", "2", "--frames-per-worker", "3"), fake_backend()) == 1
    err = capsys.readouterr().err
    assert "exited with code 3" in err and "rerun the same command" in err
    chunks = (out / "chunks.log").read_text().split()
    assert sorted(chunks) == ["0,1,2", "3,4,5", "6"]  # at most 3 frames per worker process
    assert sorted(p.stem for p in (out / "frames").glob("*.json")) == ["000000", "000001", "000002",
                                                                        "000003", "000006"]
    (out / "fail_on_4").unlink()
    (out / "chunks.log").unlink()
    assert run(_args(out, "--workers", "2", "--frames-per-worker", "3"), fake_backend()) == 0
    assert (out / "chunks.log").read_text().split() == ["4,5"]
    coco = json.loads((out / "coco.json").read_text())
    assert [im["id"] for im in coco["images"]] == list(range(7))
    assert "2 to render" in capsys.readouterr().out


def test_a_run_folder_refuses_a_different_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert run(_args(out, "--shard", "1/3"), fake_backend()) == 0
    assert sorted(p.stem for p in (out / "frames").glob("*.json")) == ["000001", "000004"]
    assert run(_args(out, "--seed", "5"), fake_backend()) == 2
    assert "differs in: seed" in capsys.readouterr().err
    # Other shards and worker counts are the same run.
    assert run(_args(out, "--shard", "0/3", "--workers", "3"), fake_backend()) == 0


def test_shards_partition_the_frames() -> None:
    parts = [batch.shard_frames(10, (i, 3)) for i in range(3)]
    assert sorted(f for part in parts for f in part) == list(range(10))
    assert parts[1] == [1, 4, 7]
    with pytest.raises(BatchError, match="i/N"):
        batch.parse_shard("two")


def test_frame_recipes_depend_only_on_seed_and_index() -> None:
    scene = load_scene(SCENE)
    config = BatchConfig(scene=SCENE, count=10, seed=3)
    forward = [batch.sample_frame_recipe(scene, config, i).to_dict() for i in range(4)]
    backward = [batch.sample_frame_recipe(scene, config, i).to_dict() for i in reversed(range(4))]
    assert forward == backward[::-1]
    assert forward[0] != forward[1]
    assert batch.frame_seed(3, 2) == batch.frame_seed(3, 2) != batch.frame_seed(4, 2)
    other = batch.sample_frame_recipe(scene, BatchConfig(scene=SCENE, count=10, seed=4), 0)
    assert other.to_dict() != forward[0]


def test_config_round_trips_and_validates() -> None:
    config = BatchConfig(scene=SCENE, count=3, render=RenderSettings(samples=8))
    assert BatchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(BatchError, match="unknown fields \\['colour'\\]"):
        BatchConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(BatchError, match="human_backend must be one of"):
        BatchConfig(scene=SCENE, count=1, human_backend="mblab")
    with pytest.raises(BatchError, match="unknown preset 'best'"):
        batch.preset("best")


def test_assets_flag_is_resolved_into_the_run_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from blender_addon.core import garments

    monkeypatch.delenv(garments.ENV_VAR, raising=False)
    assert run(_args(tmp_path / "o", "--assets", str(tmp_path)), fake_backend()) == 2
    assert "is not a MakeHuman asset folder" in capsys.readouterr().err
    assert run(_args(tmp_path / "o", "--no-assets", "--dry-run"), fake_backend()) == 0
    assert json.loads(capsys.readouterr().out)["config"]["assets"] is None
    fake = tmp_path / "assets"
    (fake / "base" / "clothes").mkdir(parents=True)
    monkeypatch.setenv(garments.ENV_VAR, str(fake))
    assert run(_args(tmp_path / "o", "--dry-run"), fake_backend()) == 0
    assert json.loads(capsys.readouterr().out)["config"]["assets"] == str(fake.resolve())
    with pytest.raises(BatchError, match="not a MakeHuman asset folder"):
        BatchConfig(scene=SCENE, count=1, assets=str(tmp_path / "nowhere"))
