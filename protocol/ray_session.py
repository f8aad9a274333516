"""Starting or joining Ray for the commands that can run on it (``--engine ray``): the batch
renderer, batch refinement and the experiment's detector sweeps. Pure stdlib; Ray is imported
only when one of these functions is called, so everything else works without Ray installed.

Each command passes its own error class, so a missing Ray or a failed start reads as that
command's one-line error, with what to do about it.
"""

from __future__ import annotations

import os
from typing import Any

from protocol import processes

RAY_PIN = "ray==2.60.0"
RAY_INSTALL_HINT = f"pip install {RAY_PIN}"
# The local instance's shared-memory object store. Tasks return small dicts (images travel
# through the output folders), so a small store avoids reserving 30% of RAM as Ray would.
RAY_OBJECT_STORE_BYTES = 128 * 1024 * 1024


def import_ray(error: type[Exception], instead: str) -> Any:
    """The ``ray`` module, or ``error`` saying how to install it and what to run ``instead``."""
    try:
        import ray
    except ImportError as exc:
        raise error(f"--engine ray needs Ray, which is not installed ({exc}); install it with "
                    f"'{RAY_INSTALL_HINT}', or {instead}") from None
    return ray


def cpu_count() -> int:
    """The CPUs this process may use (its affinity mask, not the whole machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_address(address: str | None, num_cpus: int | None, error: type[Exception]) -> None:
    """Reject ``--address`` with ``--ray-cpus`` (call it where options are parsed, to fail early)."""
    if address is not None and num_cpus is not None:
        raise error("--ray-cpus sizes a local Ray instance; with --address the cluster's own "
                    "size applies (drop one of the two)")


def connect(ray: Any, address: str | None, num_cpus: int | None, error: type[Exception]) -> bool:
    """Join the cluster at ``address``, or start a local instance of ``num_cpus`` CPUs (default:
    all this process may use). True when this call started Ray, so the caller shuts it down;
    False when a Ray session was already up (a notebook's, say), which the caller leaves alone."""
    check_address(address, num_cpus, error)
    if ray.is_initialized():
        return False
    try:
        # ray.init installs a native SIGTERM handler that exits 1 at once; keep the command's
        # (stop the tasks, shut Ray down, exit 128+N).
        with processes.python_handlers_kept():
            if address is not None:
                ray.init(address=address, include_dashboard=False)
            else:
                ray.init(num_cpus=num_cpus or cpu_count(), include_dashboard=False,
                         object_store_memory=RAY_OBJECT_STORE_BYTES)
    except Exception as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        if address:
            hint = ("check the address ('ray status' on the head node prints it; 'auto' joins "
                    "the cluster this machine belongs to)")
        elif "AF_UNIX" in str(exc):
            # Ray puts its sockets under $RAY_TMPDIR, else $TMPDIR; deep folders overflow the
            # 107-byte limit of a socket path.
            hint = "set RAY_TMPDIR to a short folder (e.g. RAY_TMPDIR=/tmp) and rerun"
        else:
            hint = "see 'ray start --help' and Ray's logs under $RAY_TMPDIR (default /tmp/ray)"
        raise error(f"could not start or join {where}: {exc}; {hint}") from exc
    return True


class AttemptLog:
    """A Ray actor (``num_cpus=0``) that counts each task's attempts and keeps their errors.

    Ray does not tell the driver how often it retried a task, and an attempt whose Ray worker
    was killed reports nothing itself; so every attempt checks in here before it starts, and
    the attempts with neither a result nor an error are the ones whose worker died."""

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}
        self.errors: dict[int, dict[int, str]] = {}

    def start(self, task: int) -> int:
        self.attempts[task] = self.attempts.get(task, 0) + 1
        return self.attempts[task]

    def fail(self, task: int, attempt: int, message: str) -> None:
        self.errors.setdefault(task, {})[attempt] = message

    def snapshot(self) -> dict[str, Any]:
        return {"attempts": dict(self.attempts), "errors": {k: dict(v) for k, v in self.errors.items()}}


def attempts_of(snapshot: dict[str, Any], task: int, succeeded: bool) -> tuple[int, list[str]]:
    """A task's attempt count and one line per failed attempt, from an AttemptLog snapshot. An
    attempt that checked in but left neither a result nor an error is one whose worker died."""
    attempts = int(snapshot["attempts"].get(task, 0))
    errors = snapshot["errors"].get(task, {})
    failures = []
    for attempt in range(1, attempts + 1):
        if attempt in errors:
            failures.append(errors[attempt])
        elif not succeeded or attempt < attempts:
            failures.append(f"attempt {attempt}: no result (the Ray worker process died)")
    return attempts, failures


def last_line(exc: BaseException) -> str:
    """The last line of a (often many-line) Ray error, with its type: what a one-line error shows."""
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[-1]}"


__all__ = [
    "RAY_INSTALL_HINT",
    "RAY_OBJECT_STORE_BYTES",
    "RAY_PIN",
    "AttemptLog",
    "attempts_of",
    "check_address",
    "connect",
    "cpu_count",
    "import_ray",
    "last_line",
]
