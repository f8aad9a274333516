"""The render CLI's Blender-free parts: validation errors, sharding, seeds, recipes, the worker
pool (recycling, failures, progress) and resume bookkeeping, with a fake renderer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_render_worker import fake_backend
from hypothesis import given
from hypothesis import strategies as st

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
    assert printed["config"]["render"]["denoise_quality"] == "high"
    assert not (tmp_path / "o").exists()


def test_denoise_quality_is_an_option_and_old_runs_still_resume(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_args(tmp_path / "o", "--denoise-quality", "balanced", "--dry-run"), fake_backend()) == 0
    assert json.loads(capsys.readouterr().out)["config"]["render"]["denoise_quality"] == "balanced"
    with pytest.raises(SystemExit):
        run(_args(tmp_path / "o", "--denoise-quality", "best"), fake_backend())
    assert "invalid choice: 'best'" in capsys.readouterr().err
    with pytest.raises(BatchError, match=r"denoise_quality must be one of \('high', 'balanced', 'fast'\)"):
        RenderSettings(denoise_quality="best")
    # A run folder written before the option existed resumes with the quality it was made with.
    out = tmp_path / "old"
    assert run(_args(out, "--count", "2"), fake_backend()) == 0
    config = json.loads((out / "run_config.json").read_text())
    del config["config"]["render"]["denoise_quality"]
    (out / "run_config.json").write_text(json.dumps(config))
    assert batch.load_run_config(out).render.denoise_quality == "high"
    assert run(_args(out, "--count", "3"), fake_backend()) == 0
    assert "1 to render" in capsys.readouterr().out


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
    # Two frames left for two workers: one each, not both to one worker while the other idles.
    assert sorted((out / "chunks.log").read_text().split()) == ["4", "5"]
    coco = json.loads((out / "coco.json").read_text())
    assert [im["id"] for im in coco["images"]] == list(range(7))
    assert "2 to render" in capsys.readouterr().out


def test_chunks_keep_every_worker_busy() -> None:
    frames = list(range(10))
    assert batch.chunk_frames(frames, 25, 2) == [frames[:5], frames[5:]]
    assert batch.chunk_frames(frames, 4, 2) == [frames[:4], frames[4:8], frames[8:]]  # enough chunks
    assert batch.chunk_frames(frames[:5], 25, 3) == [[0, 1], [2, 3], [4]]
    assert batch.chunk_frames([7], 25, 8) == [[7]] and batch.chunk_frames([], 3, 2) == []


@given(st.lists(st.integers(0, 10**6), unique=True, max_size=200), st.integers(1, 40), st.integers(1, 16))
def test_chunks_cover_the_frames_in_order_within_the_size_limit(frames: list[int], size: int,
                                                                parallel: int) -> None:
    chunks = batch.chunk_frames(frames, size, parallel)
    assert [f for chunk in chunks for f in chunk] == frames
    assert all(1 <= len(chunk) <= size for chunk in chunks)
    assert len(chunks) >= min(parallel, len(frames))


def test_auto_workers_is_one_per_cpu_as_memory_allows() -> None:
    per_worker = batch.worker_memory_bytes(1024)
    assert per_worker > batch.worker_memory_bytes(512) > 0
    assert batch.auto_workers(8, 1024, None)[0] == 8
    assert batch.auto_workers(8, 1024, 100 * per_worker)[0] == 8
    workers, why = batch.auto_workers(8, 1024, 3 * per_worker + 1)
    assert workers == 3 and "holds 3" in why and "8 CPUs" in why
    assert batch.auto_workers(8, 1024, per_worker // 2)[0] == 1  # never 0: one worker always runs
    assert batch.auto_workers(8, 1024, None, threads=3)[0] == 2  # --threads 3: 3 CPUs per worker
    assert batch.available_memory_bytes() is None or batch.available_memory_bytes() > 0


def test_workers_default_to_auto(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert run(_args(out), fake_backend()) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("--workers auto: "))
    workers = int(line.split()[2])
    assert 1 <= workers and "CPUs" in line
    # 7 frames, at most 25 per worker process: one chunk per worker (up to 7).
    assert len((out / "chunks.log").read_text().split()) == min(workers, 7)
    with pytest.raises(SystemExit) as exit_info:
        run(_args(tmp_path / "p", "--workers", "many"), fake_backend())
    assert exit_info.value.code == 2 and "expected a number of workers or 'auto'" in capsys.readouterr().err


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
