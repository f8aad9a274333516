"""Detector training step time in one process and in two processes under torchrun
(DistributedDataParallel over gloo on the CPU): ``python -m bench ddp_step``.

Each process trains with the same per-process batch and one thread, so two processes do twice
the work per step (global batch x 2); the table gives the median step time, the images per
second and both as ratios to the one-process baseline. Two processes are measured with
BatchNorm statistics synchronised over the global batch (the default, equivalent to one
process) and per process (``sync_batchnorm=False``). The step is the whole training step of
:func:`refiner_daemon.detector.training.train_detector` (forward, loss with its count
all-reduce, backward with the gradient all-reduce, synchronised BatchNorm, Adam), timed between
consecutive progress callbacks of rank 0 within one epoch, the first ``WARMUP`` steps left out.
On a machine whose cores are shared (e.g. with a running experiment) the ratios say more about
that machine than about DDP; the JSON records the core count and the load average.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import print_table, write_result

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ((1, True), (2, True), (2, False))  # (processes, sync_batchnorm)
PER_PROCESS_BATCH = 4
IMAGES = 96
IMAGE_SIZE = 128
INPUT_SIZE = 128
WARMUP = 2


def worker(plan_path: str) -> None:
    """One process: train one epoch and write rank 0's step times to the plan's ``out``."""
    import torch

    from refiner_daemon.detector.config import DetectorConfig
    from refiner_daemon.detector.training import train_detector

    torch.set_num_threads(1)
    plan = json.loads(Path(plan_path).read_text())
    stamps: list[float] = []
    train_detector(DetectorConfig.from_dict(plan["config"]),
                   on_progress=lambda e: stamps.append(time.perf_counter()) if "losses" in e else None)
    if int(os.environ.get("RANK", "0")) == 0:
        steps = [b - a for a, b in itertools.pairwise(stamps)][WARMUP:]
        Path(plan["out"]).write_text(json.dumps({"step_times_s": steps}))


def measure(processes: int, sync_batchnorm: bool, data: Path, work: Path) -> dict[str, Any]:
    name = f"{processes}_{'sync' if sync_batchnorm else 'local'}"
    plan = {"out": str(work / f"times_{name}.json"),
            "config": {"train": [str(data)], "val": [str(data)], "out_dir": str(work / f"run_{name}"),
                       "input_size": INPUT_SIZE, "num_anchors": 3, "epochs": 1,
                       "batch_size": PER_PROCESS_BATCH, "tensorboard": False, "augment": False,
                       "num_threads": 1, "device": "cpu", "sync_batchnorm": sync_batchnorm}}
    plan_path = work / f"plan_{name}.json"
    plan_path.write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    launcher = ([] if processes == 1 else
                ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"])
    command = [sys.executable, *launcher, "-m" if processes == 1 else "--module", "bench.bench_ddp_step",
               "--worker", str(plan_path)]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    steps = json.loads(Path(plan["out"]).read_text())["step_times_s"]
    median = statistics.median(steps)
    return {"processes": processes, "batchnorm": "per process" if processes == 1 or not sync_batchnorm
            else "synchronised", "per_process_batch": PER_PROCESS_BATCH,
            "global_batch": PER_PROCESS_BATCH * processes, "steps_timed": len(steps),
            "step_s_median": median, "step_s_best": min(steps),
            "images_per_s": PER_PROCESS_BATCH * processes / median}


def main() -> None:
    from refiner_daemon.detector.toydata import write_disc_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_disc_dataset(work / "discs", images=IMAGES, size=IMAGE_SIZE, seed=0)
        load_before = os.getloadavg()
        rows = [measure(n, sync, data, work) for n, sync in VARIANTS]
        load_after = os.getloadavg()
    base = rows[0]
    for row in rows:
        row["step_time_ratio"] = row["step_s_median"] / base["step_s_median"]
        row["throughput_ratio"] = row["images_per_s"] / base["images_per_s"]
    print_table(f"detector training step, MobileNetV2 at {INPUT_SIZE} px, gloo on the CPU, 1 thread a process",
                ["processes", "BatchNorm", "global batch", "step s (median)", "images/s", "step time x",
                 "throughput x"],
                [[r["processes"], r["batchnorm"], r["global_batch"], r["step_s_median"], r["images_per_s"],
                  r["step_time_ratio"], r["throughput_ratio"]] for r in rows])
    write_result("ddp_step", {
        # BENCH_NOTE says under what conditions it ran (e.g. a machine shared with other work).
        "measured_on": os.environ.get("BENCH_NOTE", f"{os.cpu_count()} cores"),
        "cpu_count": os.cpu_count(), "load_average_1min_before_after": [load_before[0], load_after[0]],
        "backbone": "mobilenet_v2", "input_size": INPUT_SIZE, "images": IMAGES, "threads_per_process": 1,
        "warmup_steps_left_out": WARMUP, "results": rows})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
