"""Detector sweeps: an experiment's independent runs (arms x seeds of Algorithm 3's detector
stages) in this process, one after another, or as Ray tasks across a machine or a cluster.

The engine decides only where each run happens, never what it computes: every job is the same
call with the same arguments, and each detector's folder, checkpoints and results are keyed on
what determines them (``stage_cache``). So a Ray sweep writes the same results as a local one
(at equal torch threads), and a task whose worker dies is retried by Ray and resumes from the
run's last checkpoint. Python errors in a job (bad data, a bug) are not retried: they would
fail the same way again.

- ``local``: the jobs in order, in this process (the default; Ray is not imported).
- ``ray``: one Ray task per job, declaring ``cpus_per_task`` CPUs (also its torch threads) and
  ``gpus_per_task`` GPUs, retried up to ``max_retries`` times when its worker dies. The driver
  starts a local instance (``ray_cpus``) or joins ``address``; every node needs this project's
  environment and the experiment folder on a shared file system, and each task works in the
  driver's folder when the node has it (relative paths in a config mean the same there). Ray
  hides the GPUs from a task that declares none, so with ``gpus_per_task`` 0 the runs train on
  the CPU even where a local run would use a GPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from protocol import processes, ray_session

Job = TypeVar("Job")
Result = TypeVar("Result")

# A marker file path: the first Ray attempt that finds no such file creates it and SIGKILLs
# its own worker (only the fault-tolerance test sets it).
KILL_ONCE_ENV = "FISHEYE_SYNTH_TEST_KILL_SWEEP_TASK_ONCE"


class SweepError(ValueError):
    """A sweep that cannot start, or a job that failed after its retries."""


@dataclass(frozen=True)
class SweepOptions:
    """How the jobs run (never what they compute)."""

    engine: str = "local"
    address: str | None = None  # ray: an existing cluster; None starts a local instance
    ray_cpus: int | None = None  # ray: CPUs of the local instance (None: all this process may use)
    cpus_per_task: int = 1  # ray: CPUs each task declares, and its torch threads
    gpus_per_task: float = 0.0  # ray: GPUs each task declares
    max_retries: int = 2  # ray: retries of a task whose worker died

    def __post_init__(self) -> None:
        if self.engine not in SWEEP_ENGINES:
            raise SweepError(f"unknown engine {self.engine!r}; valid engines: {', '.join(SWEEP_ENGINES)}")
        if self.cpus_per_task < 1:
            raise SweepError(f"--cpus-per-task must be >= 1, got {self.cpus_per_task}")
        if self.gpus_per_task < 0 or self.max_retries < 0:
            raise SweepError("--gpus-per-task and --max-retries must be >= 0")
        if self.ray_cpus is not None and self.ray_cpus < 1:
            raise SweepError(f"--ray-cpus must be >= 1, got {self.ray_cpus}")
        ray_session.check_address(self.address, self.ray_cpus, SweepError)
        if self.engine == "local":
            given = [flag for flag, value, default in (
                ("--address", self.address, None), ("--ray-cpus", self.ray_cpus, None),
                ("--cpus-per-task", self.cpus_per_task, 1), ("--gpus-per-task", self.gpus_per_task, 0.0))
                if value != default]
            if given:
                raise SweepError(f"{', '.join(given)} only apply with --engine ray; add it, or drop them")


@dataclass
class SweepReport:
    """What ran where: one record per job (attempts, the node that finished it)."""

    engine: str
    seconds: float
    jobs: list[dict[str, Any]]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "seconds": round(self.seconds, 3), "settings": self.settings,
                "retries": sum(max(0, j["attempts"] - 1) for j in self.jobs), "jobs": self.jobs}


def run_sweep(run: Callable[[Job], Result], jobs: Sequence[Job], options: SweepOptions, *,
              describe: Callable[[Job], str] = str,
              progress: bool = True) -> tuple[list[Result], SweepReport]:
    """``[run(job) for job in jobs]`` on the chosen engine, results in the jobs' order.
    ``run`` must be importable by name (a module-level function, or a ``functools.partial`` of
    one) so that Ray workers can load it."""
    return SWEEP_ENGINES[options.engine](run, list(jobs), options, describe, progress)


def _run_local(run: Callable[[Job], Result], jobs: list[Job], options: SweepOptions,
               describe: Callable[[Job], str], progress: bool) -> tuple[list[Result], SweepReport]:
    from tqdm import tqdm

    started = time.monotonic()
    results = [run(job) for job in tqdm(jobs, desc="detectors", unit="run", disable=not progress)]
    records = [{"job": describe(job), "attempts": 1, "node": socket.gethostname(), "failures": []}
               for job in jobs]
    return results, SweepReport("local", time.monotonic() - started, records, {})


def attempt(run: Callable[[Job], Result], job: Job, index: int, threads: int, log: Any,
            cwd: str | None = None) -> tuple[Result, str]:
    """Body of one Ray task: check in with the attempt log, then ``run(job)`` on ``threads``
    torch threads (what Ray granted, not every core of the node); returns the result and the
    node it ran on."""
    import ray
    import torch

    number = int(ray.get(log.start.remote(index)))
    if cwd is not None and Path(cwd).is_dir():
        os.chdir(cwd)  # the driver's folder, so relative paths in the job mean the same here
    marker = os.environ.get(KILL_ONCE_ENV)
    if marker:
        # Test hook (tests/test_sweep.py): die the way a killed worker does, once per marker
        # (O_EXCL: of two tasks starting together, only one creates it).
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, f"{index} {os.getpid()}\n".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    torch.set_num_threads(threads)
    try:
        return run(job), socket.gethostname()
    except Exception as exc:
        ray.get(log.fail.remote(index, number, f"attempt {number} on {socket.gethostname()}: "
                                               f"{type(exc).__name__}: {exc}"))
        raise


def _run_ray(run: Callable[[Job], Result], jobs: list[Job], options: SweepOptions,
             describe: Callable[[Job], str], progress: bool) -> tuple[list[Result], SweepReport]:
    from tqdm import tqdm

    ray = ray_session.import_ray(SweepError, "run the sweep with --engine local")
    started = time.monotonic()
    results: dict[int, Result] = {}
    nodes: dict[int, str] = {}
    refs: dict[Any, int] = {}
    with processes.DeferredStop("sweep", "cancelling the Ray tasks") as stop:
        started_ray = ray_session.connect(ray, options.address, options.ray_cpus, SweepError)
        try:
            remote = ray.remote(num_cpus=options.cpus_per_task, num_gpus=options.gpus_per_task,
                                max_retries=options.max_retries, retry_exceptions=False)(attempt)
            log = ray.remote(num_cpus=0)(ray_session.AttemptLog).remote()
            for index, job in enumerate(jobs):
                refs[remote.remote(run, job, index, options.cpus_per_task, log, os.getcwd())] = index
            waiting = list(refs)
            with tqdm(total=len(jobs), desc="detectors", unit="run", disable=not progress) as bar:
                while waiting:
                    stop.check()  # signals wait for a safe point: raising inside ray.wait breaks it
                    ready, waiting = ray.wait(waiting, num_returns=1, timeout=0.25)
                    for ref in ready:
                        index = refs[ref]
                        try:
                            results[index], nodes[index] = ray.get(ref)
                        except ray.exceptions.RayError as exc:
                            raise SweepError(
                                f"detector run {describe(jobs[index])} failed on Ray "
                                f"({ray_session.last_line(exc)}); rerun the same command to resume "
                                "(finished runs are kept)") from exc
                        bar.update(1)
            snapshot = ray.get(log.snapshot.remote())
        except BaseException:
            for ref in refs:  # no task may keep training without us
                with contextlib.suppress(Exception):  # a finished task cannot be cancelled; fine
                    ray.cancel(ref, force=True)
            raise
        finally:
            if started_ray:
                ray.shutdown()
    records = []
    for index, job in enumerate(jobs):
        attempts, failures = ray_session.attempts_of(snapshot, index, succeeded=True)
        records.append({"job": describe(job), "attempts": attempts, "node": nodes[index],
                        "failures": failures})
    settings = {"address": options.address or "local instance", "ray_cpus": options.ray_cpus,
                "cpus_per_task": options.cpus_per_task, "gpus_per_task": options.gpus_per_task,
                "max_retries": options.max_retries, "ray_version": ray.__version__}
    return [results[i] for i in range(len(jobs))], SweepReport("ray", time.monotonic() - started,
                                                                records, settings)


SWEEP_ENGINES: dict[str, Callable[..., tuple[list[Any], SweepReport]]] = {
    "local": _run_local, "ray": _run_ray}

__all__ = ["KILL_ONCE_ENV", "SWEEP_ENGINES", "SweepError", "SweepOptions", "SweepReport", "run_sweep"]
