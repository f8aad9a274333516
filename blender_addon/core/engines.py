"""Execution engines for batch rendering: who runs the worker processes that render chunks of
frames, and how failures are retried and recorded.

Both engines run exactly the same worker command (``Backend.worker_command``: one Blender
process renders a chunk of frames of the run in ``--out`` and exits), so the engine never
changes what a frame contains: frame ``i`` is determined by ``(config, i)`` alone, a frame is
complete when ``frames/<i>.json`` exists (written last, atomically), and workers skip complete
frames. What the engines differ in is where and how often that command runs:

- ``local``: a pool of ``--workers`` processes on this machine (``batch.run_worker_pool``). A
  failed chunk stays missing; rerunning the command renders it.
- ``ray``: every chunk is a Ray task that declares ``--threads`` CPUs and is retried up to
  ``--max-retries`` times, both when the Blender process fails and when the Ray worker itself
  dies. The driver starts a local Ray instance (``--ray-cpus``) or joins a cluster
  (``--address``); every node needs this project's Python environment at the same path and
  the output folder on a shared file system, because workers write the frames themselves.

Ray is imported only here, and only when the ray engine runs: the local engine works without
Ray installed. The engines are chosen from the plain registry :data:`ENGINES`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from blender_addon.core import batch
from blender_addon.core.batch import BatchError
from protocol import processes, ray_session

RAY_PIN, RAY_INSTALL_HINT = ray_session.RAY_PIN, ray_session.RAY_INSTALL_HINT
PROJECT_ROOT = Path(__file__).resolve().parents[2]

WorkerCommand = Callable[[list[int]], list[str]]


@dataclass(frozen=True)
class EngineOptions:
    """How to run the worker commands (never what they render)."""

    workers: int = 1  # local: concurrent worker processes
    frames_per_worker: int = 25  # frames per worker process (local) or per task (ray)
    threads: int = 1  # Cycles threads per worker; ray: CPUs each task declares
    address: str | None = None  # ray: an existing cluster; None starts a local instance
    ray_cpus: int | None = None  # ray: CPUs of the local instance (None: all of this machine)
    max_retries: int = 3  # ray: retries of a task after its first attempt

    def __post_init__(self) -> None:
        if self.frames_per_worker < 1:
            raise BatchError(f"--frames-per-worker must be >= 1, got {self.frames_per_worker}")
        if self.threads < 1:
            raise BatchError(f"--threads must be >= 1, got {self.threads}")
        if self.max_retries < 0:
            raise BatchError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.ray_cpus is not None and self.ray_cpus < 1:
            raise BatchError(f"--ray-cpus must be >= 1, got {self.ray_cpus}")


@dataclass
class TaskRecord:
    """One chunk of frames and what happened to it (written into the run report)."""

    task: int
    frames: list[int]
    status: str = "pending"  # ok | failed
    attempts: int = 0
    failures: list[str] = field(default_factory=list)  # one line per failed attempt
    node: str | None = None  # the host whose worker finished it

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "retries": self.retries}


@dataclass
class EngineReport:
    engine: str
    rendered: list[int]  # frames complete on disk after the run (of those it was given)
    tasks: list[TaskRecord]
    seconds: float
    settings: dict[str, Any]

    @property
    def failed_tasks(self) -> list[TaskRecord]:
        return [t for t in self.tasks if t.status != "ok"]

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "settings": self.settings,
                "seconds": round(self.seconds, 3), "frames_rendered": len(self.rendered),
                "retries": sum(t.retries for t in self.tasks),
                "tasks": [t.to_dict() for t in self.tasks]}


class Engine(Protocol):
    name: str

    def run(self, out: Path, frames: Sequence[int], command: WorkerCommand,
            progress: Any = None) -> EngineReport: ...


# ---------------------------------------------------------------------------------------------
# local


class LocalEngine:
    """Worker processes on this machine; no retries (a rerun renders what is missing)."""

    name = "local"

    def __init__(self, options: EngineOptions) -> None:
        if options.workers < 1:
            raise BatchError(f"--workers must be >= 1 for the local engine's pool, got {options.workers}")
        self.options = options

    def run(self, out: Path, frames: Sequence[int], command: WorkerCommand,
            progress: Any = None) -> EngineReport:
        pool = batch.run_worker_pool(out, frames, command, self.options.workers,
                                     self.options.frames_per_worker, progress)
        failed = {tuple(chunk): code for chunk, code in pool.failed_workers}
        tasks = []
        for number, chunk in enumerate(batch.chunk_frames(frames, self.options.frames_per_worker,
                                                          self.options.workers)):
            code = failed.get(tuple(chunk))
            tasks.append(TaskRecord(number, chunk, "ok" if code is None else "failed", 1,
                                    [] if code is None else [f"worker exited with code {code}"],
                                    socket.gethostname()))
        settings = {"workers": self.options.workers,
                    "frames_per_worker": self.options.frames_per_worker,
                    "threads": self.options.threads}
        return EngineReport(self.name, pool.rendered, tasks, pool.seconds, settings)


# ---------------------------------------------------------------------------------------------
# ray


def import_ray() -> Any:
    """Ray, or a BatchError that says how to install it."""
    return ray_session.import_ray(BatchError, "render with --engine local")


class TaskFailed(RuntimeError):
    """A chunk's worker process failed; raised inside a Ray task so that Ray retries it."""


def render_task(task: int, out: str, frames: list[int], command: list[str], cwd: str | None,
                env_overrides: dict[str, str], log: Any) -> dict[str, Any]:
    """Body of one Ray task: run the worker command on ``frames`` and check they are complete.

    Runs on a Ray worker. The Blender process is started with a parent-death signal, so when
    Ray kills this worker (cancellation, node loss, a test's SIGKILL) Blender goes with it.
    Any frame the chunk leaves incomplete makes the attempt fail, so Ray retries it; the retry
    skips the frames that were completed."""
    import ray

    attempt = int(ray.get(log.start.remote(task)))
    env = {**os.environ, **env_overrides}
    if cwd is not None and not Path(cwd).is_dir():
        cwd = None  # a node without the driver's folder: the PYTHONPATH override still applies
    process = processes.popen(command, cwd=cwd, env=env)
    try:
        code = process.wait()
    finally:
        processes.stop_children(which=[process])
    missing = batch.missing_frames(Path(out), frames)
    if code != 0 or missing:
        message = (f"attempt {attempt} on {socket.gethostname()}: worker exited with code {code}, "
                   f"{len(missing)} of {len(frames)} frames incomplete")
        ray.get(log.fail.remote(task, attempt, message))
        raise TaskFailed(message)
    return {"task": task, "attempt": attempt, "node": socket.gethostname()}


class RayEngine:
    """Chunks of frames as Ray tasks: declared CPUs, retried on failure, attempts recorded."""

    name = "ray"

    def __init__(self, options: EngineOptions) -> None:
        ray_session.check_address(options.address, options.ray_cpus, BatchError)
        self.options = options

    def run(self, out: Path, frames: Sequence[int], command: WorkerCommand,
            progress: Any = None, poll_seconds: float = 0.25) -> EngineReport:
        ray = import_ray()
        start = time.monotonic()
        out = out.resolve()
        tasks: list[TaskRecord] = []
        # Workers run `python -m blender_addon...`: make the project importable wherever the
        # task lands, whatever the Ray worker's own working directory is.
        python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
        cwd = os.getcwd()
        done: set[int] = set()
        refs: dict[Any, TaskRecord] = {}
        # Signals wait for a safe point: raising inside ray.wait breaks the call.
        with processes.DeferredStop("render", "cancelling the Ray tasks") as stop:
            started_ray = ray_session.connect(ray, self.options.address, self.options.ray_cpus,
                                                  BatchError)
            connect_seconds = time.monotonic() - start
            # At least as many chunks as tasks can start now (when there are that many frames):
            # free CPUs, not the cluster's total, so a shared cluster is not flooded.
            slots = int(ray.available_resources().get("CPU", 1) // self.options.threads)
            tasks += [TaskRecord(number, chunk) for number, chunk in enumerate(
                batch.chunk_frames(frames, self.options.frames_per_worker, slots))]
            try:
                remote = ray.remote(num_cpus=self.options.threads,
                                    max_retries=self.options.max_retries,
                                    retry_exceptions=[TaskFailed])(render_task)
                log = ray.remote(num_cpus=0)(ray_session.AttemptLog).remote()
                for record in tasks:
                    ref = remote.remote(record.task, str(out), record.frames,
                                        command(record.frames), cwd,
                                        {"PYTHONPATH": python_path}, log)
                    refs[ref] = record
                waiting = list(refs)
                while waiting:
                    stop.check()
                    ready, waiting = ray.wait(waiting, num_returns=len(waiting),
                                              timeout=poll_seconds)
                    for ref in ready:
                        _settle(ray, ref, refs[ref])
                    newly = [i for i in frames if i not in done and batch.frame_done(out, i)]
                    done.update(newly)
                    if progress is not None and newly:
                        progress.update(len(newly))
                attempts = ray.get(log.snapshot.remote())
            except BaseException:
                # A stop signal, Ctrl-C or an error: no task may keep rendering without us.
                # force=True kills the Ray workers; their Blender children get the parent-death
                # signal. Frames are written atomically, so a rerun resumes from what is on disk.
                for ref in refs:
                    # A task that already finished cannot be cancelled; that is fine.
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                raise
            finally:
                if started_ray:
                    ray.shutdown()
        for record in tasks:
            _attach_attempts(record, attempts)
        settings = {"address": self.options.address or "local instance",
                    "ray_cpus": self.options.ray_cpus if self.options.address is None else None,
                    "cpus_per_task": self.options.threads,
                    "frames_per_task": self.options.frames_per_worker,
                    "max_retries": self.options.max_retries, "ray_version": ray.__version__,
                    "connect_seconds": round(connect_seconds, 3)}
        return EngineReport(self.name, sorted(done), tasks, time.monotonic() - start, settings)


def _settle(ray: Any, ref: Any, record: TaskRecord) -> None:
    """Record a finished task's outcome: its result, or the error left after all retries."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:  # retries exhausted: its frames stay missing
        record.status = "failed"
        record.failures.append(f"gave up: {ray_session.last_line(exc)}")
    else:
        record.status, record.node = "ok", result["node"]


def _attach_attempts(record: TaskRecord, log: dict[str, Any]) -> None:
    """Fill in attempts and per-attempt failures from the AttemptLog's snapshot."""
    record.attempts, failures = ray_session.attempts_of(log, record.task, record.status == "ok")
    record.failures = failures + record.failures


ENGINES: dict[str, Callable[[EngineOptions], Engine]] = {"local": LocalEngine, "ray": RayEngine}


def make_engine(name: str, options: EngineOptions) -> Engine:
    """The engine called ``name``; an unknown name fails with the list of valid ones."""
    if name not in ENGINES:
        raise BatchError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return ENGINES[name](options)
