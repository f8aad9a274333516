"""Training jobs run by the daemon: a queue, one background worker, records on disk, events.

A job is ``(kind, config)``. Its record ``<state_dir>/jobs/<job_id>/job.json`` (written
atomically) holds the config, the state, the latest progress and the next event number, so a
daemon killed with SIGKILL finds its queued and running jobs on restart and runs them again
with ``resume=True`` (the trainers continue from their last checkpoint).

Jobs run one at a time in a worker thread (one accelerator, one job). Progress callbacks
become numbered events kept in memory; the server reads them with ``events_since`` from its
own thread, so no socket is ever touched from the worker. Cancelling sets a flag the trainer
polls through ``should_stop``; the trainer then saves its state and returns.

Trainers are looked up by job kind in a plain dict of ``Trainer`` objects; the real ones
import torch lazily, so listing jobs never loads a model.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from protocol.fileio import atomic_write_bytes, atomic_write_json
from protocol.messages import FINISHED_JOB_STATES, JOB_KINDS, JobInfo

RECORD_NAME = "job.json"
EVENTS_KEPT = 2000  # per job, in memory; older events are dropped (the record keeps the latest)
RECORD_EVERY_S = 1.0  # progress is written to disk at most this often (state changes always)
# Event numbers are reserved on disk in blocks: a record promises that no event below its
# ``next_seq`` was issued by a later write, so a daemon restarted after SIGKILL continues above
# every number its predecessor may have sent, without writing the record on every event.
SEQ_RESERVE = 1000

ProgressCallback = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]


class JobError(Exception):
    """A job request the daemon refuses; ``code`` is an ``ErrorReply`` code."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


class Trainer(Protocol):
    """What the job runner needs from a training entry point."""

    kind: str
    run_dir_field: str  # the config field naming the output folder

    def path_fields(self, config: dict[str, Any]) -> list[str]:
        """Every filesystem path the config names (checked against the allowed roots)."""

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        """Return the config completed and checked; raise ValueError naming the bad field."""

    def run(self, config: dict[str, Any], *, resume: bool, on_progress: ProgressCallback,
            should_stop: StopCheck) -> str:
        """Train; return the path of the result (e.g. the exported model)."""


def _clean_progress(event: dict[str, Any]) -> dict[str, Any]:
    """Progress dicts travel as JSON: turn anything unusual (tensors, numpy scalars) into text
    or floats rather than failing the job over a log line."""
    return json.loads(json.dumps(event, default=_json_fallback))


def _json_fallback(value: Any) -> Any:
    with contextlib.suppress(TypeError, ValueError):
        return float(value)
    return str(value)


class RefinerTrainer:
    """``train_refiner`` from ``refiner_daemon.refiner.training`` (CycleGAN / AGGAN refiners)."""

    kind = "train_refiner"
    run_dir_field = "run_dir"

    def path_fields(self, config: dict[str, Any]) -> list[str]:
        names = ("run_dir", "synthetic_dir", "real_dir", "perceptual_weights")
        return [str(config[name]) for name in names if config.get(name)]

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        from refiner_daemon.refiner.training import RefinerConfig

        values = {"progress": False, **config}  # no tqdm bar in a daemon's log
        return RefinerConfig.from_dict(values).to_dict()

    def run(self, config: dict[str, Any], *, resume: bool, on_progress: ProgressCallback,
            should_stop: StopCheck) -> str:
        from refiner_daemon.refiner.train import check_crop_folders
        from refiner_daemon.refiner.training import RefinerConfig, train_refiner

        cfg = RefinerConfig.from_dict({**config, "resume": bool(config.get("resume")) or resume})
        check_crop_folders(cfg)  # a bad crop fails the job at once, naming the file
        return str(train_refiner(cfg, on_progress=on_progress, should_stop=should_stop))


class DetectorTrainer:
    """``train_detector`` from ``refiner_daemon.detector.training`` (the head detector)."""

    kind = "train_detector"
    run_dir_field = "out_dir"

    def path_fields(self, config: dict[str, Any]) -> list[str]:
        paths = [str(config[name]) for name in ("out_dir", "weights") if config.get(name)]
        for split in ("train", "val"):
            sets = config.get(split) or []
            for item in sets if isinstance(sets, list) else [sets]:
                paths.append(str(item.get("path", "")) if isinstance(item, dict) else str(item))
        return paths

    def validate(self, config: dict[str, Any]) -> dict[str, Any]:
        try:
            from refiner_daemon.detector.config import DetectorConfig
        except ImportError as exc:
            raise JobError("unavailable", f"detector trainer not available: {exc}",
                           "install the refiner_daemon.detector package") from None
        return DetectorConfig.from_dict(config).to_dict()

    def run(self, config: dict[str, Any], *, resume: bool, on_progress: ProgressCallback,
            should_stop: StopCheck) -> str:
        from refiner_daemon.detector.config import DetectorConfig
        from refiner_daemon.detector.training import train_detector

        cfg = DetectorConfig.from_dict({**config, "resume": bool(config.get("resume")) or resume})
        from refiner_daemon.detector.train import check_datasets

        check_datasets(cfg)  # a bad image fails the job at once, naming the file
        return str(train_detector(cfg, on_progress=on_progress, should_stop=should_stop))


def default_trainers() -> dict[str, Trainer]:
    """The trainers for every job kind in the protocol."""
    trainers: dict[str, Trainer] = {t.kind: t for t in (RefinerTrainer(), DetectorTrainer())}
    assert set(trainers) == set(JOB_KINDS)
    return trainers


@dataclass
class Job:
    """One job's in-memory state; ``record()`` is what goes to disk."""

    job_id: str
    kind: str
    config: dict[str, Any]
    request_id: str
    state: str = "queued"
    message: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    result: str = ""
    publish_to: str = ""  # copy the result file here when the job succeeds
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    next_seq: int = 0
    seq_limit: int = 0  # next_seq may grow up to here before the record must be rewritten
    resumes: int = 0
    events: collections.deque[tuple[int, str, dict[str, Any]]] = field(
        default_factory=lambda: collections.deque(maxlen=EVENTS_KEPT))
    cancel: threading.Event = field(default_factory=threading.Event)
    written_at: float = 0.0

    def info(self) -> JobInfo:
        return JobInfo(job_id=self.job_id, kind=self.kind, state=self.state,
                       progress=self.progress, message=self.message,
                       created_at=self.created_at, updated_at=self.updated_at)

    def record(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "kind": self.kind, "config": self.config,
                "request_id": self.request_id, "state": self.state, "message": self.message,
                "progress": self.progress, "result": self.result, "publish_to": self.publish_to,
                "created_at": self.created_at,
                "updated_at": self.updated_at, "next_seq": self.seq_limit, "resumes": self.resumes}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Job:
        return cls(job_id=data["job_id"], kind=data["kind"], config=data["config"],
                   request_id=data.get("request_id", ""), state=data["state"],
                   message=data.get("message", ""), progress=data.get("progress", {}),
                   result=data.get("result", ""), publish_to=data.get("publish_to", ""),
                   created_at=data["created_at"],
                   updated_at=data["updated_at"], next_seq=data.get("next_seq", 0),
                   seq_limit=data.get("next_seq", 0),
                   resumes=data.get("resumes", 0))


class JobManager:
    """Queue, run, record and report training jobs. Thread-safe."""

    def __init__(self, state_dir: str | Path, *, allowed_roots: Iterable[str | Path] = (),
                 trainers: dict[str, Trainer] | None = None) -> None:
        self.jobs_dir = Path(state_dir) / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # The daemon's own state folder is always allowed: default run folders live there.
        self.allowed_roots = tuple(
            Path(root).resolve() for root in (*allowed_roots, self.jobs_dir))
        self.trainers = trainers if trainers is not None else default_trainers()
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        with self._lock:
            self._recover()
        self._worker = threading.Thread(target=self._work, name="job-worker", daemon=True)
        self._worker.start()

    # ---- recovery after a restart
    def _recover(self) -> None:
        """Load every job record; queue again those a previous daemon left unfinished.

        Called with the lock held."""
        for record_path in sorted(self.jobs_dir.glob(f"*/{RECORD_NAME}")):
            try:
                job = Job.from_record(json.loads(record_path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError) as exc:
                print(f"warning: skipping unreadable job record {record_path}: {exc}")
                continue
            self._jobs[job.job_id] = job
            if job.state not in FINISHED_JOB_STATES:
                job.resumes += 1
                self._set_state(job, "queued",
                                f"resuming after a daemon restart (resume {job.resumes})")
                self._queue.append(job.job_id)
        # Oldest first, as they were originally queued.
        self._queue = collections.deque(
            sorted(self._queue, key=lambda jid: self._jobs[jid].created_at))

    # ---- requests
    def start(self, kind: str, config: dict[str, Any], request_id: str = "",
              publish_to: str | Path | None = None) -> JobInfo:
        """Validate and queue a job. A repeated ``request_id`` returns the job it started.

        ``publish_to``: where to copy the result file (e.g. the exported refiner) on success.
        """
        trainer = self.trainers.get(kind)
        if trainer is None:
            raise JobError("unavailable", f"no trainer for job kind {kind!r}; available: "
                           f"{sorted(self.trainers)}")
        with self._lock:
            for job in self._jobs.values():
                if request_id and job.request_id == request_id:
                    return job.info()  # a client's retry of a request we already took
        job_id = uuid.uuid4().hex[:12]
        config = dict(config)
        config.setdefault(trainer.run_dir_field, str(self.jobs_dir / job_id / "run"))
        self._check_paths(trainer.path_fields(config))
        try:
            config = trainer.validate(config)
        except JobError:
            raise
        except (ValueError, TypeError) as exc:
            raise JobError("bad_config", f"{kind} config: {exc}",
                           "fix the named field and start the job again") from None
        job = Job(job_id=job_id, kind=kind, config=config, request_id=request_id,
                  publish_to=str(publish_to or ""))
        with self._lock:
            self._jobs[job_id] = job
            self._set_state(job, "queued", "waiting for the worker")
            self._queue.append(job_id)
            self._wake.notify_all()
        return job.info()

    def _check_paths(self, paths: list[str]) -> None:
        for raw in paths:
            resolved = Path(raw).expanduser().resolve()
            if not any(resolved.is_relative_to(root) for root in self.allowed_roots):
                roots = ", ".join(str(root) for root in self.allowed_roots)
                raise JobError(
                    "bad_config", f"path {raw!r} is outside the folders this daemon may use",
                    f"use a path under one of: {roots} (or start the daemon with --allow-root)")

    def get(self, job_id: str) -> JobInfo:
        with self._lock:
            return self._job(job_id).info()

    def result(self, job_id: str) -> str:
        with self._lock:
            return self._job(job_id).result

    def list(self) -> list[JobInfo]:
        with self._lock:
            return [job.info() for job in sorted(self._jobs.values(), key=lambda j: j.created_at)]

    def cancel(self, job_id: str) -> JobInfo:
        with self._lock:
            job = self._job(job_id)
            if job.state == "queued":
                self._queue.remove(job_id)
                self._set_state(job, "cancelled", "cancelled before it started")
            elif job.state == "running":
                job.cancel.set()
                job.message = "cancelling: waiting for the trainer to save its state"
            return job.info()

    def events_since(self, job_id: str, after_seq: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Events numbered above ``after_seq`` that are still in memory: (seq, state, event)."""
        with self._lock:
            return [e for e in self._job(job_id).events if e[0] > after_seq]

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobError("unknown_job", f"no job {job_id!r}",
                           "list the jobs with `refiner-daemon status --jobs`")
        return job

    def wait(self, job_id: str, timeout_s: float) -> JobInfo:
        """Block until the job finishes or ``timeout_s`` passes (for tests and scripts)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._job(job_id).state not in FINISHED_JOB_STATES:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
            return self._job(job_id).info()

    # ---- state changes (hold the lock)
    def _set_state(self, job: Job, state: str, message: str) -> None:
        job.state, job.message, job.updated_at = state, message, time.time()
        self._add_event(job, {"state": state, "message": message})
        self._write(job)
        self._wake.notify_all()

    def _add_event(self, job: Job, event: dict[str, Any]) -> None:
        if job.next_seq >= job.seq_limit:
            self._write(job)  # reserve the next block of event numbers first
        job.events.append((job.next_seq, job.state, event))
        job.next_seq += 1

    def _write(self, job: Job) -> None:
        job.seq_limit = max(job.seq_limit, job.next_seq + SEQ_RESERVE)
        atomic_write_json(self.jobs_dir / job.job_id / RECORD_NAME, job.record())
        job.written_at = time.monotonic()

    # ---- the worker
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                job = self._jobs[self._queue.popleft()]
                resume = job.resumes > 0
                self._set_state(job, "running", "resuming from the last checkpoint" if resume
                                else "started")
            self._run(job, resume)

    def _run(self, job: Job, resume: bool) -> None:
        def on_progress(event: dict[str, Any]) -> None:
            clean = _clean_progress(event)
            with self._lock:
                job.progress, job.updated_at = clean, time.time()
                self._add_event(job, clean)
                if time.monotonic() - job.written_at >= RECORD_EVERY_S:
                    self._write(job)

        def should_stop() -> bool:
            return job.cancel.is_set() or self._closing

        trainer = self.trainers[job.kind]
        try:
            result = trainer.run(job.config, resume=resume, on_progress=on_progress,
                                 should_stop=should_stop)
        except Exception as exc:  # noqa: BLE001 - a failed job must not stop the worker
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            with self._lock:
                self._set_state(job, "failed", detail[:2000])
            return
        with self._lock:
            job.result = str(result)
            if job.cancel.is_set():
                self._set_state(job, "cancelled", f"cancelled; state saved in {result}")
            elif self._closing:
                # Left as queued on disk, so the next daemon resumes it.
                self._set_state(job, "queued", "interrupted by daemon shutdown; resumes on restart")
            else:
                self._set_state(job, "succeeded", self._publish(job))

    def _publish(self, job: Job) -> str:
        """Copy the result where it was asked to go; returns the job's final message."""
        if not job.publish_to:
            return f"finished: {job.result}"
        try:
            atomic_write_bytes(job.publish_to, Path(job.result).read_bytes())
        except OSError as exc:
            return f"finished: {job.result}, but publishing to {job.publish_to} failed: {exc}"
        return f"finished: {job.result}; published as {job.publish_to}"

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask a running job to stop (it saves its state) and stop the worker."""
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        self._worker.join(timeout_s)
