"""Batch refinement on Ray (``refiner-daemon refine --engine ray``): two refiner actors on a
local 2-CPU Ray instance write the same refined dataset, byte for byte, as ``refine_dataset``
in one process with the same model file; an actor killed mid-run is restarted and the
dataset still completes identically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ray", reason="the Ray refinement tests need Ray: pip install ray==2.60.0")

from refiner_daemon import cli
from refiner_daemon.refiner.batch_refine import (
    BatchRefineConfig,
    RefinerIdentity,
    refine_dataset,
)
from refiner_daemon.refiner.inference import Refiner
from refiner_daemon.refiner.networks import ResnetGenerator
from refiner_daemon.refiner.training import ModelSpec, export_refiner
from tests.test_daemon_refine import CROP, make_rendered_dataset

pytestmark = pytest.mark.slow

FILES = ("coco.json", "run_config.json")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny rendered dataset, a tiny model file, and its in-process refinement (fp32, 1 thread,
    as each actor runs)."""
    dataset = make_rendered_dataset(tmp_path_factory.mktemp("render"))
    models = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    export_refiner(models / "tiny.pt", ModelSpec(width=4, n_blocks=1, crop_size=(CROP, CROP)),
                   ResnetGenerator(width=4, n_blocks=1), name="tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        refiner = Refiner.load(models / "tiny.pt", device="cpu", precision="fp32")
        reference = tmp_path_factory.mktemp("in_process")
        refine_dataset(dataset, reference, lambda crops: refiner.refine(crops).images,
                       RefinerIdentity("tiny", refiner.sha256, endpoint="in-process"),
                       BatchRefineConfig(crop_size=CROP), progress=False)
    finally:
        torch.set_num_threads(threads)
    return dataset, models, reference


def _refine_on_ray(dataset: Path, models: Path, out: Path) -> int:
    return cli.main(["refine", str(dataset), str(out), "--model", "tiny", "--size", str(CROP),
                     "--engine", "ray", "--models", str(models), "--actors", "2",
                     "--ray-cpus", "2", "--frames-per-task", "1", "--device", "cpu", "--quiet"])


def _assert_same(got: Path, want: Path) -> None:
    names = sorted(str(p.relative_to(want)) for p in want.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file()) == names
    for name in names:
        if name.endswith(".png") and name.startswith("images/"):
            a, b = np.asarray(Image.open(got / name)), np.asarray(Image.open(want / name))
            assert a.shape == b.shape and np.array_equal(a, b), name
        elif name not in ("refiner.json", "refine_report.json"):
            assert (got / name).read_bytes() == (want / name).read_bytes(), name
    ray_record = json.loads((got / "refiner.json").read_text())
    record = json.loads((want / "refiner.json").read_text())
    for key in ("model", "model_sha256", "config", "crop_size"):
        assert ray_record[key] == record[key], key
    ray_report = json.loads((got / "refine_report.json").read_text())
    report = json.loads((want / "refine_report.json").read_text())
    for key in ("frames_total", "frames_refined", "people_refined", "people_skipped"):
        assert ray_report[key] == report[key], key


def test_ray_actors_refine_the_same_dataset_as_one_process(setup: tuple[Path, Path, Path],
                                                           tmp_path: Path) -> None:
    dataset, models, reference = setup
    out = tmp_path / "ray"
    assert _refine_on_ray(dataset, models, out) == 0
    _assert_same(out, reference)
    # The refiner really changed people (so equality above is not two untouched copies).
    assert not np.array_equal(np.asarray(Image.open(out / "images" / "000000.png")),
                              np.asarray(Image.open(dataset / "images" / "000000.png")))
    report = json.loads((out / "refine_report.json").read_text())
    engine = report["engine"]
    assert engine["engine"] == "ray" and engine["actors"] == 2
    assert sorted(t["frames"] for t in engine["tasks"]) == [["0"], ["1"], ["2"]]
    assert json.loads((out / "refiner.json").read_text())["endpoint"] == "ray:local"


def test_ray_refine_without_models_folder_says_what_to_pass(setup: tuple[Path, Path, Path],
                                                           tmp_path: Path, capsys) -> None:
    dataset, _, _ = setup
    assert cli.main(["refine", str(dataset), str(tmp_path / "o"), "--model", "tiny",
                     "--engine", "ray", "--quiet"]) == 2
    assert "pass --models DIR (the folder that holds tiny.pt)" in capsys.readouterr().err
    assert cli.main(["refine", str(dataset), str(tmp_path / "o"), "--model", "nope",
                     "--engine", "ray", "--models", str(tmp_path), "--quiet"]) == 2
    assert "nope.pt not found" in capsys.readouterr().err


def test_an_actor_killed_mid_chunk_is_restarted_and_the_dataset_completes(
        setup: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from refiner_daemon.refiner.ray_refine import KILL_ONCE_ENV

    dataset, models, reference = setup
    out, marker = tmp_path / "ray", tmp_path / "killed"
    # Set before Ray starts, so the actors inherit it: the first 2-frame chunk's actor writes
    # its first frame, then SIGKILLs itself.
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    assert cli.main(["refine", str(dataset), str(out), "--model", "tiny", "--size", str(CROP),
                     "--engine", "ray", "--models", str(models), "--actors", "1",
                     "--ray-cpus", "2", "--frames-per-task", "2", "--device", "cpu",
                     "--quiet"]) == 0
    assert marker.exists(), "the actor was never killed"
    killed_task, killed_pid = (int(v) for v in marker.read_text().split())
    assert killed_task == 0
    # Every image equals the in-process run's, and nothing half-written is left behind.
    for name in ("000000.png", "000001.png", "000002.png"):
        assert np.array_equal(np.asarray(Image.open(out / "images" / name)),
                              np.asarray(Image.open(reference / "images" / name))), name
    for name in ("coco.json", "run_config.json", "frames/000001.json", "masks/000001.png"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    report = json.loads((out / "refine_report.json").read_text())
    first = next(t for t in report["engine"]["tasks"] if t["task"] == 0)
    assert first["frames"] == ["0", "1"] and first["actor_restarted"] is True
    assert first["actor_pid"] != killed_pid
    # The retried call found frame 0 done (written before the kill) and refined only frame 1.
    assert report["frames_skipped_done"] == 1 and report["frames_refined"] == 2
