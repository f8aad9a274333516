"""Batch refinement of a rendered dataset (``refiner-daemon refine``, ``batch_refine``) on a tiny
dataset synthesised here: through a real daemon on loopback it gives the same pixels as the
in-process service; pixels outside every person's mask stay bit-identical; annotations are
copied byte for byte; runs resume, refuse a different refiner, and fail clearly on an unknown
model, an unreachable daemon or a folder that is not a dataset."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protocol.coco import rle_encode
from protocol.fileio import atomic_write_json
from refiner_daemon import cli
from refiner_daemon.refiner.batch_refine import (
    BatchRefineConfig,
    BatchRefineError,
    RefinerIdentity,
    refine_dataset,
    refine_frame,
)
from refiner_daemon.refiner.networks import ResnetGenerator
from refiner_daemon.refiner.training import ModelSpec, export_refiner
from refiner_daemon.serve.server import DaemonServer, ServerConfig
from refiner_daemon.serve.service import RefinerService, ServiceConfig

torch.set_num_threads(2)
SIDE, CROP = 96, 64


def _draw_person(instance: np.ndarray, image: np.ndarray, person_id: int, head: np.ndarray,
                 rng: np.random.Generator) -> None:
    """A capsule body from the head toward the image centre plus a round head."""
    centre = np.array([(SIDE - 1) / 2.0] * 2)
    direction = (centre - head) / max(np.linalg.norm(centre - head), 1e-6)
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    points = np.stack([xs, ys], axis=-1).astype(float)
    t = np.clip(((points - head) @ direction) / 22.0, 0.0, 1.0)
    nearest = head + t[..., None] * 22 * direction
    body = np.linalg.norm(points - nearest, axis=-1) <= 5.5
    head_disc = np.linalg.norm(points - head, axis=-1) <= 4.5
    person = body | head_disc
    instance[person] = person_id
    image[person] = rng.integers(40, 220, 3)


def make_rendered_dataset(folder: Path, seed: int = 0) -> Path:
    """Three frames in the renderer's format (docs/dataset_format.md): two people each in the
    first two (one partly overlapping the other), plus a person whose head lies outside the
    image (it must be skipped), and an empty third frame."""
    rng = np.random.default_rng(seed)
    heads_per_frame = [[(20.0, 24.0), (30.0, 30.0), (80.0, 70.0)],
                       [(70.0, 20.0), (15.0, 75.0), (-3.0, 50.0)], []]
    coco: dict = {"images": [], "annotations": [],
                  "categories": [{"id": 1, "name": "person", "keypoints": ["head"]}]}
    for index, heads in enumerate(heads_per_frame):
        stem = f"{index:06d}"
        image = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)  # a textured "room"
        instance = np.zeros((SIDE, SIDE), dtype=np.uint16)
        annotations = []
        for person_index, head in enumerate(heads, start=1):
            drawn = np.clip(np.array(head), 0, SIDE - 1)
            _draw_person(instance, image, person_index, drawn, rng)
        for person_index, head in enumerate(heads, start=1):
            visible = instance == person_index
            ys, xs = np.nonzero(visible)
            annotations.append({
                "id": len(coco["annotations"]) + len(annotations) + 1, "image_id": index,
                "category_id": 1, "instance_id": person_index,
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                "head_point": list(head), "segmentation": rle_encode(visible),
                "visibility": 1.0, "iscrowd": 0, "area": int(visible.sum())})
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / "images" / f"{stem}.png")
        Image.fromarray(instance).save(folder / "masks" / f"{stem}.png")
        atomic_write_json(folder / "frames" / f"{stem}.json",
                          {"index": index, "annotations": annotations, "manifest": {"seed": 7}})
        coco["images"].append({"id": index, "file_name": f"images/{stem}.png", "width": SIDE,
                               "height": SIDE, "mask_file": f"masks/{stem}.png"})
        coco["annotations"].extend(annotations)
    atomic_write_json(folder / "run_config.json", {"count": 3, "seed": seed})
    atomic_write_json(folder / "coco.json", coco)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rendered_dataset(tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonServer]:
    """A real daemon (thread, loopback TCP) serving one tiny, randomly initialised refiner."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    export_refiner(folder / "tiny.pt", ModelSpec(width=4, n_blocks=1, crop_size=(CROP, CROP)),
                   ResnetGenerator(width=4, n_blocks=1), name="tiny")
    service = RefinerService(ServiceConfig(models_dir=str(folder),
                                           state_dir=str(tmp_path_factory.mktemp("state")),
                                           device="cpu"))
    server = DaemonServer(service, ServerConfig(bind="tcp://127.0.0.1:*", poll_ms=10))
    stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, args=(stop,), daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join(5)
    server.close()
    service.close()


def _refine_cli(daemon: DaemonServer, source: Path, target: Path, *extra: str) -> int:
    return cli.main(["refine", str(source), str(target), "--model", "tiny", "--endpoint",
                     daemon.endpoint, "--size", str(CROP), "--quiet", *extra])


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_refine_through_the_daemon_matches_in_process_and_keeps_everything_else(
        daemon: DaemonServer, dataset: Path, tmp_path: Path) -> None:
    via_daemon, in_process = tmp_path / "via_daemon", tmp_path / "in_process"
    assert _refine_cli(daemon, dataset, via_daemon) == 0
    service = daemon.service  # the same loaded refiner, so the same precision choice
    sha = service.load_model("tiny").sha256
    summary = refine_dataset(
        dataset, in_process, lambda crops: service.refine("tiny", crops).images,
        RefinerIdentity("tiny", sha, endpoint="in-process"), BatchRefineConfig(crop_size=CROP),
        progress=False)
    assert summary.frames_refined == 3 and summary.people_refined == 5
    assert [s["reason"][:20] for s in summary.people_skipped] == ["head_xy (-3.0, 50.0)"]

    changed_inside = 0
    for stem in ("000000", "000001", "000002"):
        source = _pixels(dataset / "images" / f"{stem}.png")
        refined = _pixels(via_daemon / "images" / f"{stem}.png")
        np.testing.assert_array_equal(refined, _pixels(in_process / "images" / f"{stem}.png"))
        instance = _pixels(dataset / "masks" / f"{stem}.png")
        background = instance == 0
        np.testing.assert_array_equal(refined[background], source[background])
        changed_inside += int((refined[~background] != source[~background]).any(axis=-1).sum())
    assert changed_inside > 200  # the refiner really changed the people

    for name in ("coco.json", "run_config.json", "masks/000000.png", "masks/000002.png",
                 "frames/000000.json", "frames/000001.json", "frames/000002.json"):
        assert (via_daemon / name).read_bytes() == (dataset / name).read_bytes(), name
    record = json.loads((via_daemon / "refiner.json").read_text())
    assert record["model"] == "tiny" and record["model_sha256"] == sha
    assert record["crop_size"] == [CROP, CROP] and record["endpoint"] == daemon.endpoint
    assert record["config"]["crop_size"] == CROP and record["daemon_version"]
    report = json.loads((via_daemon / "refine_report.json").read_text())
    assert report["people_refined"] == 5 and len(report["people_skipped"]) == 1


def test_refine_resumes_and_refuses_to_mix_refiners(daemon: DaemonServer, dataset: Path,
                                                    tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _refine_cli(daemon, dataset, out) == 0
    first = (out / "images" / "000001.png").read_bytes()
    kept = (out / "images" / "000000.png").stat().st_mtime_ns
    (out / "images" / "000001.png").unlink()  # as if the run had stopped before this frame
    (out / "coco.json").unlink()
    capsys.readouterr()
    assert _refine_cli(daemon, dataset, out) == 0
    assert "refined 1 frames" in capsys.readouterr().out
    assert (out / "images" / "000001.png").read_bytes() == first
    assert (out / "images" / "000000.png").stat().st_mtime_ns == kept  # not redone
    assert (out / "coco.json").read_bytes() == (dataset / "coco.json").read_bytes()

    assert cli.main(["refine", str(dataset), str(out), "--model", "tiny", "--endpoint",
                     daemon.endpoint, "--size", "16", "--quiet"]) == 2
    assert "refusing to mix" in capsys.readouterr().err


def test_refine_errors_name_the_problem(daemon: DaemonServer, dataset: Path, tmp_path: Path,
                                        capsys) -> None:
    assert cli.main(["refine", str(dataset), str(tmp_path / "a"), "--model", "nope",
                     "--endpoint", daemon.endpoint, "--quiet"]) == 2
    assert "no model 'nope'" in (err := capsys.readouterr().err) and "['tiny']" in err
    assert cli.main(["refine", str(dataset), str(tmp_path / "b"), "--model", "tiny",
                     "--endpoint", "tcp://127.0.0.1:9", "--connect-timeout-ms", "200",
                     "--retries", "0", "--quiet"]) == 1
    assert "is the daemon running" in capsys.readouterr().err
    assert _refine_cli(daemon, tmp_path, tmp_path / "c") == 2  # not a dataset
    assert "no coco.json" in capsys.readouterr().err
    assert _refine_cli(daemon, dataset, dataset) == 2
    assert "must differ" in capsys.readouterr().err
    assert cli.main(["refine", str(dataset), str(tmp_path / "d"), "--model", "tiny",
                     "--size", "33"]) == 2
    assert "even int" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


def test_a_truncated_frame_stops_the_run_before_any_work_naming_it(dataset: Path, tmp_path: Path) -> None:
    import shutil

    from refiner_daemon.refiner.batch_refine import (
        BatchRefineError,
        RefinerIdentity,
        refine_dataset,
    )

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    frame = max((broken / "images").glob("*.png"))
    frame.write_bytes(frame.read_bytes()[: frame.stat().st_size // 2])
    with pytest.raises(BatchRefineError, match=rf"{frame.name}.*re-render or restore"):
        refine_dataset(broken, tmp_path / "out", lambda crops: crops,
                       RefinerIdentity(model="identity", model_sha256="0" * 64), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_refiner_that_returns_the_wrong_shape_is_refused(dataset: Path) -> None:
    from protocol.annotations import load_rendered_coco

    image = load_rendered_coco(dataset)[0]
    pixels = _pixels(image.path)
    with pytest.raises(BatchRefineError, match="must return uint8 crops of the input shape"):
        refine_frame(pixels, image, lambda crops: crops[:, :8], BatchRefineConfig(crop_size=CROP))
    unchanged, people, skipped = refine_frame(pixels, load_rendered_coco(dataset)[2],
                                              lambda crops: 1 / 0, BatchRefineConfig(crop_size=CROP))
    assert people == 0 and skipped == [] and unchanged is pixels  # no people: no refiner call


def test_the_demo_command_lines_work_against_a_daemon_process(daemon: DaemonServer,
                                                              dataset: Path,
                                                              tmp_path: Path) -> None:
    """``serve``, ``status --timeout-ms 1000`` and ``refine`` as processes, spelled exactly as
    ``refiner_daemon.demo`` runs them; status fails once the daemon is gone."""
    models = Path(daemon.service.config.models_dir)
    python = [sys.executable, "-m", "refiner_daemon.cli"]
    process = subprocess.Popen(
        [*python, "serve", "--bind", "tcp://127.0.0.1:*", "--models", str(models), "--state",
         str(tmp_path / "state"), "--allow-root", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith("refiner daemon on "), banner
        endpoint = banner.split()[3].rstrip(";")
        status = subprocess.run([*python, "status", "--endpoint", endpoint, "--timeout-ms",
                                 "1000"], check=False, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "['tiny']" in status.stdout, status.stderr
        out = tmp_path / "refined"
        refine = subprocess.run([*python, "refine", str(dataset), str(out), "--model", "tiny",
                                 "--endpoint", endpoint, "--size", str(CROP)],
                                check=False, capture_output=True, text=True, timeout=120)
        assert refine.returncode == 0, refine.stderr
        assert "refined 3 frames (5 people)" in refine.stdout
        assert (out / "coco.json").read_bytes() == (dataset / "coco.json").read_bytes()
        process.terminate()
        assert process.wait(30) == 128 + signal.SIGTERM  # the stop contract
        gone = subprocess.run([*python, "status", "--endpoint", endpoint, "--timeout-ms",
                               "300", "--retries", "0"], check=False, capture_output=True, text=True,
                              timeout=60)
        assert gone.returncode != 0 and "no reply" in gone.stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


def test_a_failure_mid_run_leaves_complete_frames_and_the_rerun_finishes(
        daemon: DaemonServer, dataset: Path, tmp_path: Path) -> None:
    service = daemon.service
    identity = RefinerIdentity("tiny", service.load_model("tiny").sha256, endpoint="in-process")
    config = BatchRefineConfig(crop_size=CROP)
    calls: list[int] = []

    def fails_on_the_second_frame(crops: np.ndarray) -> np.ndarray:
        calls.append(len(crops))
        if len(calls) == 2:
            raise ConnectionError("the daemon went away")
        return service.refine("tiny", crops).images

    out = tmp_path / "out"
    with pytest.raises(ConnectionError):
        refine_dataset(dataset, out, fails_on_the_second_frame, identity, config, progress=False)
    assert (out / "images" / "000000.png").exists() and (out / "frames" / "000000.json").exists()
    assert not (out / "images" / "000001.png").exists() and not (out / "coco.json").exists()
    summary = refine_dataset(dataset, out, lambda crops: service.refine("tiny", crops).images,
                             identity, config, progress=False)
    assert summary.frames_skipped_done == 1 and summary.frames_refined == 2
    complete = tmp_path / "complete"
    refine_dataset(dataset, complete, lambda crops: service.refine("tiny", crops).images,
                   identity, config, progress=False)
    for stem in ("000000", "000001", "000002"):
        np.testing.assert_array_equal(_pixels(out / "images" / f"{stem}.png"),
                                      _pixels(complete / "images" / f"{stem}.png"))
    assert (out / "coco.json").read_bytes() == (dataset / "coco.json").read_bytes()
