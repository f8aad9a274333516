"""Detector sweeps (``pipeline --engine ray``): the experiment's arm x seed detector runs as Ray
tasks on a local 2-CPU instance give the same detectors and results as the local engine, and a
task whose worker is killed is retried, with the retry in the sweep report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from refiner_daemon.detector.toydata import DiscStyle, write_disc_dataset
from refiner_daemon.evaluation import pipeline
from refiner_daemon.evaluation.sweep import KILL_ONCE_ENV, SweepError, SweepOptions, run_sweep


def test_options_name_the_problem() -> None:
    with pytest.raises(SweepError, match="unknown engine 'dask'; valid engines: local, ray"):
        SweepOptions(engine="dask")
    with pytest.raises(SweepError, match="drop one of the two"):
        SweepOptions(engine="ray", address="auto", ray_cpus=4)
    with pytest.raises(SweepError, match="--cpus-per-task must be >= 1"):
        SweepOptions(engine="ray", cpus_per_task=0)
    with pytest.raises(SweepError, match="--address, --cpus-per-task only apply with --engine ray"):
        SweepOptions(engine="local", address="auto", cpus_per_task=2)


def test_local_sweep_keeps_the_jobs_order_and_reports_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # the local engine never needs Ray
    results, report = run_sweep(abs, [-3, 2, -1], SweepOptions(), progress=False)
    assert results == [3, 2, 1]
    assert [job["job"] for job in report.jobs] == ["-3", "2", "-1"]
    assert report.to_dict()["retries"] == 0 and report.engine == "local"
    with pytest.raises(SweepError, match="needs Ray, which is not installed.*--engine local"):
        run_sweep(abs, [1], SweepOptions(engine="ray"), progress=False)


def _settings(tmp_path: Path, out: str) -> dict[str, Any]:
    real = tmp_path / "real"
    if not real.exists():
        write_disc_dataset(real, images=8, size=64, radius=(5, 7), seed=0)
        write_disc_dataset(tmp_path / "S", images=6, size=64, radius=(5, 7), seed=1,
                           style=DiscStyle(background=0.55, noise=0.02, tint=(1.1, 1.0, 0.8)))
    return {
        "out_dir": str(tmp_path / out), "real": str(real),
        "real_split": {"train": 0.5, "val": 0.2, "test": 0.3}, "split_gap": 1,
        "synthetic": str(tmp_path / "S"), "experiments": ["S", "R_train", "R_train+S"], "gap": False,
        # One torch thread in every run, whichever engine runs it: results then match bit for bit.
        "detector": {"epochs": 1, "input_size": 64, "batch_size": 4, "num_anchors": 2, "augment": False,
                     "tensorboard": False, "num_threads": 1},
        "detector_seeds": [0, 1],
    }


def _runs(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each arm's runs without the checkpoint path (the two engines write to two folders)."""
    return {arm: [{k: v for k, v in run.items() if k != "checkpoint"} for run in runs]
            for arm, runs in results["runs"].items()}


def _weights(results: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    return [torch.load(run["checkpoint"], map_location="cpu", weights_only=True)["model"]
            for runs in results["runs"].values() for run in runs]


@pytest.mark.slow
def test_ray_sweep_equals_local_and_survives_a_killed_worker(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray", reason="the Ray sweep test needs Ray: pip install ray==2.60.0")
    local = pipeline.run_pipeline(pipeline.PipelineConfig.from_dict(_settings(tmp_path, "local")))
    # The first attempt of the first task to start dies by SIGKILL; Ray retries it.
    marker = tmp_path / "killed_once"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    code = pipeline.main(["--config", _write(tmp_path, _settings(tmp_path, "ray")), "--engine", "ray",
                          "--ray-cpus", "2", "--cpus-per-task", "1", "--max-retries", "2"])
    assert code == 0 and marker.exists()
    on_ray = json.loads((tmp_path / "ray" / "results.json").read_text())

    assert _runs(on_ray) == _runs(local) and on_ray["arms"] == local["arms"]
    for a, b in zip(_weights(local), _weights(on_ray), strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    report = json.loads((tmp_path / "ray" / "sweep_report.json").read_text())["arms"]
    assert report["engine"] == "ray" and len(report["jobs"]) == 6 and report["retries"] == 1
    retried = [job for job in report["jobs"] if job["attempts"] == 2]
    assert len(retried) == 1 and "worker process died" in retried[0]["failures"][0]
    # A second run finds every detector done and trains nothing (keyed stages, either engine).
    monkeypatch.delenv(KILL_ONCE_ENV)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "detectors").glob("*/stage.json")}
    again = pipeline.run_pipeline(pipeline.PipelineConfig.from_dict(_settings(tmp_path, "ray")),
                                  SweepOptions(engine="ray", ray_cpus=2))
    assert _runs(again) == _runs(on_ray)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def _write(tmp_path: Path, settings: dict[str, Any]) -> str:
    path = tmp_path / f"{Path(settings['out_dir']).name}.json"
    path.write_text(json.dumps(settings))
    return str(path)


def test_engine_flags_reach_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[pipeline.SweepOptions] = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, sweep: seen.append(sweep) or {})
    monkeypatch.setattr(pipeline, "render_tables", lambda results: "")
    config = _write(tmp_path, _settings(tmp_path, "flags"))
    assert pipeline.main(["--config", config, "--engine", "ray", "--address", "auto",
                          "--cpus-per-task", "2", "--gpus-per-task", "0.5"]) == 0
    assert seen == [SweepOptions("ray", "auto", None, 2, 0.5, 2)]
    assert pipeline.main(["--config", config, "--engine", "ray", "--address", "auto",
                          "--ray-cpus", "4"]) == 2  # one-line error, exit code 2
