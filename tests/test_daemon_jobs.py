"""Training jobs: queue, progress events, cancel, failure, path confinement, idempotent starts,
resumption after the daemon process is killed with SIGKILL, and a real tiny refiner run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol.fileio import atomic_write_json
from refiner_daemon.serve.jobs import RECORD_NAME, JobError, JobManager

TESTS_DIR = Path(__file__).resolve().parent


class CountingTrainer:
    """A stand-in trainer: counts to ``steps``, checkpointing each step, like a real one.

    It logs every start (with the step it resumed from) to ``<run_dir>/starts.jsonl``.
    """

    kind = "train_refiner"
    run_dir_field = "run_dir"

    def __init__(self, step_s: float = 0.0, fail_at: int | None = None) -> None:
        self.step_s = step_s
        self.fail_at = fail_at

    def path_fields(self, config: dict[str, Any]) -> list[str]:
        return [str(config[k]) for k in ("run_dir", "data_dir") if config.get(k)]

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        steps = config.get("steps")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        return dict(config)

    def run(self, config: dict[str, Any], *, resume: bool, on_progress, should_stop) -> str:
        run_dir = Path(config["run_dir"])
        checkpoint = run_dir / "checkpoint.json"
        step = json.loads(checkpoint.read_text())["step"] if resume and checkpoint.exists() else 0
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "starts.jsonl", "a") as log:
            log.write(json.dumps({"from_step": step, "resume": resume}) + "\n")
        while step < config["steps"]:
            time.sleep(self.step_s)
            step += 1
            if step == self.fail_at:
                raise FloatingPointError(f"non-finite loss at step {step}")
            atomic_write_json(checkpoint, {"step": step})
            on_progress({"step": step, "total_steps": config["steps"],
                         "loss": np.float32(1.0 / step)})  # numpy scalars must not break events
            if should_stop():
                break
        return str(checkpoint)


def _manager(tmp_path: Path, **trainer_options: Any) -> JobManager:
    return JobManager(tmp_path / "state", allowed_roots=[tmp_path / "data"],
                      trainers={"train_refiner": CountingTrainer(**trainer_options)})


def test_job_runs_reports_events_and_records_to_disk(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    try:
        info = manager.start("train_refiner", {"steps": 5})
        assert info.state == "queued"
        done = manager.wait(info.job_id, timeout_s=10)
        assert done.state == "succeeded" and done.progress["step"] == 5
        events = manager.events_since(info.job_id, -1)
        assert [seq for seq, _, _ in events] == list(range(len(events)))
        steps = [event["step"] for _, _, event in events if "step" in event]
        assert steps == [1, 2, 3, 4, 5]
        assert all(isinstance(e["loss"], float) for _, _, e in events if "step" in e)
        assert [state for _, state, e in events if "state" in e] == ["queued", "running",
                                                                      "succeeded"]
        record = json.loads((manager.jobs_dir / info.job_id / RECORD_NAME).read_text())
        assert record["state"] == "succeeded" and record["progress"]["step"] == 5
        assert record["config"]["run_dir"].startswith(str(manager.jobs_dir))  # default run dir
        assert manager.result(info.job_id).endswith("checkpoint.json")
    finally:
        manager.close()


def test_cancel_running_and_queued_jobs(tmp_path: Path) -> None:
    manager = _manager(tmp_path, step_s=0.02)
    try:
        first = manager.start("train_refiner", {"steps": 10_000})
        second = manager.start("train_refiner", {"steps": 5})
        deadline = time.monotonic() + 10
        while manager.get(first.job_id).progress.get("step", 0) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert manager.cancel(second.job_id).state == "cancelled"  # never started
        manager.cancel(first.job_id)
        stopped = manager.wait(first.job_id, timeout_s=10)
        assert stopped.state == "cancelled" and stopped.progress["step"] < 10_000
        assert not (manager.jobs_dir / second.job_id / "run").exists()  # it never ran
    finally:
        manager.close()


def test_failed_job_keeps_the_reason_and_the_worker_survives(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "state", trainers={
        "train_refiner": CountingTrainer(fail_at=3)})
    try:
        failed = manager.wait(manager.start("train_refiner", {"steps": 5}).job_id, 10)
        assert failed.state == "failed" and "non-finite loss at step 3" in failed.message
        manager.trainers["train_refiner"] = CountingTrainer()
        ok = manager.wait(manager.start("train_refiner", {"steps": 2}).job_id, 10)
        assert ok.state == "succeeded"
    finally:
        manager.close()


def test_bad_config_unknown_kind_and_paths_outside_the_roots(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    try:
        with pytest.raises(JobError, match="steps must be an int") as info:
            manager.start("train_refiner", {"steps": 0})
        assert info.value.code == "bad_config"
        with pytest.raises(JobError, match="outside the folders") as info:
            manager.start("train_refiner", {"steps": 1, "data_dir": "/etc"})
        assert info.value.code == "bad_config" and "--allow-root" in info.value.hint
        with pytest.raises(JobError, match="outside"):  # no escaping a root with ..
            manager.start("train_refiner", {"steps": 1,
                                            "data_dir": str(tmp_path / "data" / ".." / "x")})
        ok = manager.start("train_refiner", {"steps": 1, "data_dir": str(tmp_path / "data")})
        assert ok.state == "queued"
        with pytest.raises(JobError) as info:
            manager.start("train_detector", {})
        assert info.value.code == "unavailable"
        with pytest.raises(JobError) as info:
            manager.get("nope")
        assert info.value.code == "unknown_job"
    finally:
        manager.close()


def test_a_clean_shutdown_leaves_the_running_job_queued_for_the_next_daemon(
        tmp_path: Path) -> None:
    manager = _manager(tmp_path, step_s=0.05)
    job = manager.start("train_refiner", {"steps": 60})
    deadline = time.monotonic() + 10
    while manager.get(job.job_id).progress.get("step", 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    manager.close()  # what SIGTERM does: the trainer is asked to stop and saves its state
    record = json.loads((manager.jobs_dir / job.job_id / RECORD_NAME).read_text())
    assert record["state"] == "queued" and "shutdown" in record["message"]
    stopped_at = record["progress"]["step"]
    again = JobManager(tmp_path / "state", trainers={"train_refiner": CountingTrainer()})
    try:
        done = again.wait(job.job_id, timeout_s=20)
        assert done.state == "succeeded" and done.progress["step"] == 60
        assert stopped_at < 60
        starts = (tmp_path / "state" / "jobs" / job.job_id / "run" / "starts.jsonl")
        resumed = json.loads(starts.read_text().splitlines()[1])
        assert resumed == {"from_step": stopped_at, "resume": True}
    finally:
        again.close()


def test_a_repeated_request_id_does_not_start_a_second_job(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    try:
        first = manager.start("train_refiner", {"steps": 1}, request_id="req-1")
        again = manager.start("train_refiner", {"steps": 1}, request_id="req-1")
        assert again.job_id == first.job_id and len(manager.list()) == 1
    finally:
        manager.close()


def test_detector_jobs_use_the_real_config_and_path_checks(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "state", allowed_roots=[tmp_path / "data"])  # real trainers
    inside, outside = str(tmp_path / "data" / "frames"), str(tmp_path / "elsewhere")
    try:
        with pytest.raises(JobError, match="outside the folders"):
            manager.start("train_detector", {"train": [outside], "val": [inside]})
        with pytest.raises(JobError, match="outside the folders"):
            manager.start("train_detector", {"train": [{"path": inside}], "val": [inside],
                                             "weights": outside})
        with pytest.raises(JobError, match="epochs must be a positive integer") as info:
            manager.start("train_detector", {"train": [inside], "val": [inside], "epochs": 0})
        assert info.value.code == "bad_config"
        # A valid config whose data folder does not exist: queued, then fails with the reason.
        job = manager.start("train_detector", {"train": [inside], "val": [inside],
                                               "tensorboard": False, "device": "cpu"})
        failed = manager.wait(job.job_id, timeout_s=60)
        assert failed.state == "failed" and failed.message
    finally:
        manager.close()


_KILLED_DAEMON = """
import sys, time
sys.path.insert(0, {tests!r})
from test_daemon_jobs import CountingTrainer
from refiner_daemon.serve.jobs import JobManager
manager = JobManager({state!r}, trainers={{"train_refiner": CountingTrainer(step_s=0.02)}})
print(manager.start("train_refiner", {{"steps": 60}}).job_id, flush=True)
time.sleep(60)
"""


def test_job_resumes_after_the_daemon_is_killed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    script = _KILLED_DAEMON.format(tests=str(TESTS_DIR), state=str(state))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        job_id = process.stdout.readline().strip()
        checkpoint = state / "jobs" / job_id / "run" / "checkpoint.json"
        deadline = time.monotonic() + 30
        while not checkpoint.exists() or json.loads(checkpoint.read_text())["step"] < 5:
            assert time.monotonic() < deadline, "the job never made progress"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
    killed_at = json.loads(checkpoint.read_text())["step"]
    assert killed_at < 60
    record = json.loads((state / "jobs" / job_id / RECORD_NAME).read_text())
    assert record["state"] == "running"  # what a killed daemon leaves behind

    manager = JobManager(state, trainers={"train_refiner": CountingTrainer()})
    try:
        done = manager.wait(job_id, timeout_s=20)
        assert done.state == "succeeded" and done.progress["step"] == 60
        starts = [json.loads(line) for line in
                  (checkpoint.parent / "starts.jsonl").read_text().splitlines()]
        assert starts[0] == {"from_step": 0, "resume": False}
        assert starts[1]["resume"] is True and starts[1]["from_step"] == killed_at
        # Event numbers continue above all the killed daemon issued (queued, running, one per
        # step: at most killed_at + 1), so a subscriber's after_seq stays meaningful.
        assert min(seq for seq, _, _ in manager.events_since(job_id, -1)) > killed_at + 1
    finally:
        manager.close()


def test_real_refiner_training_job_is_published_and_served(tmp_path: Path) -> None:
    """A real (tiny) CycleGAN run through the service's job queue, published into the model
    folder and then used to refine crops: train -> publish -> serve."""
    from PIL import Image

    from refiner_daemon.serve.service import RefinerService, ServiceConfig, ServiceError

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for domain, shift in (("synthetic", 0), ("real", 40)):
        (data / domain).mkdir(parents=True)
        for i in range(4):
            image = np.clip(rng.normal(110 + shift, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(data / domain / f"{i}.png")
    (tmp_path / "models").mkdir()
    service = RefinerService(ServiceConfig(models_dir=str(tmp_path / "models"),
                                           state_dir=str(tmp_path / "state"), device="cpu",
                                           allowed_roots=(str(data),)))
    config = {"synthetic_dir": str(data / "synthetic"), "real_dir": str(data / "real"),
              "preset": "C_CP", "epochs": 1, "batch_size": 2, "crop_size": [32, 32], "width": 4,
              "disc_width": 4, "n_blocks": 1, "pool_size": 2, "tensorboard": False,
              "device": "cpu", "publish_as": "toy_v1"}
    try:
        with pytest.raises(ServiceError, match="publish_as only applies"):
            service.start_job("train_detector", {"publish_as": "x"})
        info = service.start_job("train_refiner", config)
        # Generous: a healthy machine takes seconds, a loaded CI runner much longer.
        done = service.jobs.wait(info.job_id, timeout_s=300)
        assert done.state == "succeeded", done.message
        assert done.progress["step"] == done.progress["total_steps"] == 2
        assert "published as" in done.message and service.available_models() == ["toy_v1"]
        refined = service.refine("toy_v1", rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
        assert refined.images.shape == (2, 32, 32, 3) and refined.images.dtype == np.uint8
        assert len(refined.model_sha256) == 64
    finally:
        service.close()
