"""The bad-data contract (issue 20): every command that reads datasets, given each broken
dataset of ``tests/broken_datasets.py``, prints ONE line ``error: ...`` naming the bad file or
folder, exits 2, prints no traceback (unless --debug / FISHEYE_DEBUG=1), and leaves its output
folder as it was. ``--skip-bad`` skips bad images and lists them in the run's JSON.

Commands run in-process through their ``main(argv)`` (each goes through
``protocol.cli.run_main``), the experiment pipeline (``refiner_daemon/evaluation/pipeline.py``)
included.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import broken_datasets as bd

from protocol.cli import run_main
from protocol.datacheck import BadDataError, check_image, check_images

SENTINEL = "keep.txt"


def _out(tmp_path: Path) -> Path:
    """An output folder that already holds something: it must come out unchanged."""
    out = tmp_path / "out"
    out.mkdir()
    (out / SENTINEL).write_text("written before\n")
    return out


def _assert_untouched(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == [SENTINEL], list(out.iterdir())
    assert (out / SENTINEL).read_text() == "written before\n"


def _assert_one_line_error(code: int, err: str, named: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert named in errors[0], (named, errors[0])


# --------------------------------------------------------------------------- commands

def _crops(path: Path, out: Path, tmp_path: Path) -> int:
    from protocol import crop_dataset

    return crop_dataset.main([str(path), str(out), "--quiet"])


def _detector_train(path: Path, out: Path, tmp_path: Path) -> int:
    from refiner_daemon.detector import train

    good = bd.good_cepdof(tmp_path / "good_val")
    return train.main(["--train", str(path), "--val", str(good), "--out", str(out),
                       "--epochs", "1", "--device", "cpu", "--from-scratch"])


def _detector_evaluate(path: Path, out: Path, tmp_path: Path) -> int:
    from refiner_daemon.detector import evaluate

    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"not loaded: the data is checked first")
    return evaluate.main([str(checkpoint), "--data", str(path), "--out", str(out)])


def _gap_report(path: Path, out: Path, tmp_path: Path) -> int:
    from refiner_daemon.evaluation import gap_report

    good = bd.good_cepdof(tmp_path / "good_ref")
    return gap_report.main(["--dataset", f"real={good}", "--dataset", f"bad={path}",
                            "--out", str(out), "--device", "cpu"])


def _pipeline(path: Path, out: Path, tmp_path: Path) -> int:
    from refiner_daemon.evaluation import pipeline

    good = bd.good_cepdof(tmp_path / "good_real")
    config = tmp_path / "experiment.json"
    config.write_text(json.dumps({"out_dir": str(out), "real": str(good), "synthetic": str(path),
                                  "experiments": ["S"], "gap": False, "split_gap": 0}))
    return pipeline.main(["--config", str(config)])


DATASET_COMMANDS: dict[str, Callable[[Path, Path, Path], int]] = {
    "crop_dataset": _crops,
    "detector_train": _detector_train,
    "detector_evaluate": _detector_evaluate,
    "gap_report": _gap_report,
    "pipeline": _pipeline,
}


def _refiner_train(path: Path, out: Path, tmp_path: Path) -> int:
    from refiner_daemon.refiner import train

    good = bd.good_crops(tmp_path / "good_crops")
    return train.main(["--run-dir", str(out), "--synthetic", str(path), "--real", str(good),
                       "--device", "cpu", "--max-steps", "1", "--crop-size", "32x32"])


def _refiner_train_daemon_cli(path: Path, out: Path, tmp_path: Path) -> int:
    from refiner_daemon import cli

    good = bd.good_crops(tmp_path / "good_crops")
    return cli.main(["train-refiner", "--run-dir", str(out), "--synthetic", str(good),
                     "--real", str(path), "--device", "cpu", "--max-steps", "1"])


CROP_COMMANDS = {"refiner_train": _refiner_train, "refiner_daemon_train": _refiner_train_daemon_cli}


def _render(path: Path, out: Path, tmp_path: Path) -> int:
    from blender_addon.core.render_cli import Backend, run

    def never(*_: object) -> list[str]:
        raise AssertionError("nothing may render from a broken scene")

    backend = Backend(never, never)  # type: ignore[arg-type]
    return run_main(lambda argv: run(argv, backend),
                    ["--scene", str(path), "--count", "2", "--human-backend", "proxy",
                     "--out", str(out), "--no-progress"], prog="render")


# --------------------------------------------------------------------------- the matrix

@pytest.mark.parametrize("case", sorted(bd.DATASET_CASES))
@pytest.mark.parametrize("command", sorted(DATASET_COMMANDS))
def test_dataset_commands_name_the_bad_file(command: str, case: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, named = bd.DATASET_CASES[case](tmp_path / "data")
    out = _out(tmp_path)
    capsys.readouterr()
    code = DATASET_COMMANDS[command](path, out, tmp_path)
    _assert_one_line_error(code, capsys.readouterr().err, named)
    _assert_untouched(out)


@pytest.mark.parametrize("case", sorted(bd.CROP_CASES))
@pytest.mark.parametrize("command", sorted(CROP_COMMANDS))
def test_refiner_training_names_the_bad_crop(command: str, case: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path, named = bd.CROP_CASES[case](tmp_path / "data")
    out = _out(tmp_path)
    capsys.readouterr()
    code = CROP_COMMANDS[command](path, out, tmp_path)
    _assert_one_line_error(code, capsys.readouterr().err, named)
    _assert_untouched(out)


@pytest.mark.parametrize("case", sorted(bd.SCENE_CASES))
def test_render_names_the_bad_scene_file(case: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path, named = bd.SCENE_CASES[case](tmp_path / "data")
    out = _out(tmp_path)
    capsys.readouterr()
    code = _render(path, out, tmp_path)
    _assert_one_line_error(code, capsys.readouterr().err, named)
    _assert_untouched(out)


# --------------------------------------------------------------------------- daemon jobs

def _wait_failed(manager: object, job_id: str) -> str:
    info = manager.wait(job_id, timeout_s=60)  # type: ignore[attr-defined]
    assert info.state == "failed", info
    return str(info.message)


@pytest.mark.parametrize("case", ["truncated_png", "zero_byte_png", "text_named_png", "empty_folder"])
def test_daemon_refiner_job_fails_naming_the_bad_crop(case: str, tmp_path: Path) -> None:
    from refiner_daemon.serve.jobs import JobError, JobManager

    path, named = bd.CROP_CASES[case](tmp_path / "data")
    good = bd.good_crops(tmp_path / "data" / "good")
    manager = JobManager(tmp_path / "state", allowed_roots=[tmp_path])
    try:
        try:
            info = manager.start("train_refiner", {"synthetic_dir": str(path), "real_dir": str(good),
                                                   "run_dir": str(tmp_path / "run"),
                                                   "device": "cpu", "max_steps": 1})
        except JobError as exc:  # refused at once is fine too, if it names the file
            assert named in exc.message
            return
        assert named in _wait_failed(manager, info.job_id)
        assert not (tmp_path / "run" / "refiner.pt").exists()
    finally:
        manager.close()


@pytest.mark.parametrize("case", ["truncated_jpeg", "annotation_names_missing_file", "nan_box",
                                  "text_named_jpg"])
def test_daemon_detector_job_fails_naming_the_bad_file(case: str, tmp_path: Path) -> None:
    from refiner_daemon.serve.jobs import JobError, JobManager

    path, named = bd.DATASET_CASES[case](tmp_path / "data")
    good = bd.good_cepdof(tmp_path / "data" / "good")
    manager = JobManager(tmp_path / "state", allowed_roots=[tmp_path])
    try:
        try:
            info = manager.start("train_detector", {"train": [str(path)], "val": [str(good)],
                                                    "out_dir": str(tmp_path / "run"),
                                                    "device": "cpu", "epochs": 1})
        except JobError as exc:
            assert named in exc.message
            return
        assert named in _wait_failed(manager, info.job_id)
        assert not (tmp_path / "run").exists()
    finally:
        manager.close()


# --------------------------------------------------------------------------- --skip-bad

def test_crops_skip_bad_lists_the_skipped_files(tmp_path: Path, capsys) -> None:
    from protocol import crop_dataset

    path, named = bd.DATASET_CASES["truncated_jpeg"](tmp_path / "data")
    out = tmp_path / "crops"
    assert crop_dataset.main([str(path), str(out), "--quiet", "--skip-bad"]) == 0
    records = json.loads((out / "records.json").read_text())
    assert [b["path"] for b in records["skipped_bad_files"]] == [named]
    assert "truncated" in records["skipped_bad_files"][0]["reason"]
    assert len(records["items"]) == 6  # 3 good frames x 2 people
    assert "skipped 1 bad images" in capsys.readouterr().err


def test_detector_skip_bad_narrows_the_specs(tmp_path: Path) -> None:
    from refiner_daemon.detector.config import DetectorConfig
    from refiner_daemon.detector.train import check_datasets

    path, named = bd.DATASET_CASES["zero_byte_image"](tmp_path / "data")
    config = DetectorConfig.from_dict({"train": [str(path)], "val": [str(path)],
                                       "out_dir": str(tmp_path / "run")})
    with pytest.raises(BadDataError, match="empty"):
        check_datasets(config)
    bad = check_datasets(config, skip_bad=True)
    assert [b.path for b in bad] == [named, named]
    assert config.train[0].images == [bd.FRAMES[0], bd.FRAMES[2], bd.FRAMES[3]]
    assert config.to_dict()["val"][0]["images"] == [bd.FRAMES[0], bd.FRAMES[2], bd.FRAMES[3]]


def test_refiner_skip_bad_trains_on_the_good_crops(tmp_path: Path) -> None:
    from refiner_daemon.refiner.data import list_crop_files
    from refiner_daemon.refiner.train import check_crop_folders
    from refiner_daemon.refiner.training import RefinerConfig

    path, named = bd.CROP_CASES["truncated_png"](tmp_path / "data")
    good = bd.good_crops(tmp_path / "good")
    cfg = RefinerConfig.from_dict({"run_dir": str(tmp_path / "run"), "synthetic_dir": str(path),
                                   "real_dir": str(good)})
    with pytest.raises(BadDataError, match="truncated"):
        check_crop_folders(cfg)
    checked, report = check_crop_folders(cfg, skip_bad=True)
    assert report["synthetic_dir"]["skipped_bad_files"][0]["path"] == named
    assert checked.real_dir == str(good)
    files = list_crop_files(checked.synthetic_dir)
    assert len(files) == 3 and all(f.resolve().name != "crop_1.png" for f in files)


def test_gap_report_skip_bad_reports_on_the_good_images(tmp_path: Path, capsys) -> None:
    from refiner_daemon.evaluation import gap_report

    path, named = bd.DATASET_CASES["truncated_jpeg"](tmp_path / "data")
    good = bd.good_cepdof(tmp_path / "good_ref")
    out = tmp_path / "report"
    code = gap_report.main(["--dataset", f"real={good}", "--dataset", f"bad={path}", "--out", str(out),
                            "--device", "cpu", "--skip-bad", "--no-person-crops"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "gap_report.json").read_text())
    assert [b["path"] for b in result["skipped_bad_files"]] == [named]
    assert result["skipped_bad_files"][0]["dataset"] == "bad"
    assert result["person_crop_distances"] is None  # --no-person-crops is honoured
    assert "skipped 1 bad file(s)" in capsys.readouterr().out
    # The report ran on a checked view of the set: its three good frames, not the truncated one.
    view = out / "checked_inputs" / "bad"
    listed = json.loads((view / "annotations.json").read_text())["images"]
    assert len(listed) == 3 and all(Path(named).name != im["file_name"] for im in listed)


# --------------------------------------------------------------------------- the helpers

def test_check_image_finds_each_defect(tmp_path: Path) -> None:
    made = {name: make(tmp_path / name) for name, make in bd.DATASET_CASES.items()
            if name in ("truncated_jpeg", "zero_byte_image", "text_named_jpg",
                        "annotation_names_missing_file")}
    reasons = {name: check_image(named) for name, (_, named) in made.items()}
    assert "truncated" in reasons["truncated_jpeg"]
    assert "empty" in reasons["zero_byte_image"]
    assert "not an image" in reasons["text_named_jpg"]
    assert "missing" in reasons["annotation_names_missing_file"]
    folder = bd.good_cepdof(tmp_path / "good")
    assert all(check_image(folder / name) is None for name in bd.FRAMES)
    crops = bd.CROP_CASES["truncated_png"](tmp_path / "png")[1]
    assert "truncated" in check_image(crops)


def test_check_images_is_fast(tmp_path: Path) -> None:
    folder = bd.good_cepdof(tmp_path / "good")
    paths = [folder / name for name in bd.FRAMES] * 100
    started = time.perf_counter()
    good, bad = check_images(paths)
    assert len(good) == 400 and not bad
    assert time.perf_counter() - started < 5.0


def test_debug_shows_the_traceback(tmp_path: Path, capsys, monkeypatch) -> None:
    from protocol import crop_dataset

    assert crop_dataset.main([str(tmp_path / "nope"), str(tmp_path / "o"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
    monkeypatch.setenv("FISHEYE_DEBUG", "1")
    assert crop_dataset.main([str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("FISHEYE_DEBUG", "0")
    assert crop_dataset.main([str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_internal_errors_are_one_line_with_exit_1(capsys) -> None:
    def broken(_argv: list[str]) -> int:
        raise ZeroDivisionError("a bug")

    assert run_main(broken, []) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error ZeroDivisionError: a bug" in err
    assert "--debug" in err
