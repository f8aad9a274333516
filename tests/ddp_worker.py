"""One process of a tiny distributed training, launched by tests/test_distributed.py under
``torchrun``; not a test itself.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py
PLAN.json``. The plan lists trainings to run one after the other (``kind``: ``detector`` or
``refiner``, ``config``: the config as a dict, ``stop_after``: end after that many steps via
``should_stop``, as a stop signal would). Each process records the per-step losses it was told
and every file write it made under ``watch`` (seen through a Python audit hook, so a write by a
rank other than 0 cannot go unnoticed) into ``PLAN["record_dir"]/<name>.rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def install_write_audit(root: Path, writes: list[str]) -> None:
    """Append to ``writes`` every file opened for writing, renamed, created or removed under
    ``root`` by this process (builtin open, os.open, tempfile, os.replace, os.mkdir...)."""
    prefix = str(root.resolve())

    def under(path: Any) -> bool:
        if isinstance(path, bytes):
            path = path.decode(errors="replace")
        return isinstance(path, str) and os.path.abspath(path).startswith(prefix)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                       else bool(flags & WRITE_FLAGS))
            if writing and under(path):
                writes.append(f"open {path}")
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.symlink") and (
                under(args[0]) or (event == "os.rename" and under(args[1]))):
            writes.append(f"{event} {args[0]}")

    sys.addaudithook(hook)


def main(plan_path: str) -> None:
    import torch

    torch.set_num_threads(1)  # two processes on a shared machine
    plan = json.loads(Path(plan_path).read_text())
    rank = int(os.environ["RANK"])
    writes: list[str] = []
    install_write_audit(Path(plan["watch"]), writes)
    # One process group for all jobs: the trainings join it instead of making their own (a
    # group made again in the same torchrun process would find the first one's stale addresses
    # in torchrun's store). It is made and destroyed by the same helper the trainings use.
    from refiner_daemon.common.distributed import session

    with session(torch.device("cpu")):
        run_jobs(plan, rank, writes)


def run_jobs(plan: dict[str, Any], rank: int, writes: list[str]) -> None:
    record_dir = Path(plan["record_dir"])
    for job in plan["jobs"]:
        steps: list[dict[str, Any]] = []

        def progress(event: dict[str, Any], steps: list[dict[str, Any]] = steps) -> None:
            if "losses" in event:
                steps.append({"step": event["step"], "losses": event["losses"]})

        def stop(steps: list[dict[str, Any]] = steps, limit: int | None = job.get("stop_after")) -> bool:
            return limit is not None and len(steps) >= limit

        del writes[:]
        if job["kind"] == "detector":
            from refiner_daemon.detector.config import DetectorConfig
            from refiner_daemon.detector.training import train_detector

            returned = train_detector(DetectorConfig.from_dict(job["config"]), on_progress=progress,
                                      should_stop=stop)
        else:
            from refiner_daemon.refiner.training import RefinerConfig, train_refiner

            returned = train_refiner(RefinerConfig.from_dict(job["config"]), on_progress=progress,
                                     should_stop=stop)
        record = {"rank": rank, "steps": steps, "returned": str(returned), "writes": list(writes),
                  "world_size": int(os.environ["WORLD_SIZE"])}
        (record_dir / f"{job['name']}.rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
