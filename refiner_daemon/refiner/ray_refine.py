"""Batch refinement on Ray: refiner actors, each holding one loaded generator, refine disjoint
chunks of a rendered dataset's frames into one output folder (``refiner-daemon refine
--engine ray``).

Every actor runs ``batch_refine.refine_images`` on its chunks: the same crops, the same
per-frame batches and the same reinsertion as ``refine_dataset`` in one process, so with the
same model file and precision the refined images are identical. The driver opens the output
folder (checks, ``refiner.json``) before any actor writes, and closes it (``refine_report.json``
with each task's actor, node and attempts, then ``coco.json``) after the last chunk.

Failures: an actor that dies is restarted by Ray (``max_restarts``) and its unfinished call is
retried (``max_task_retries``); frames are written atomically and ``refine_images`` skips frames
whose refined image exists, so a retry only redoes what was lost. Like the render engine, a
cluster needs this project's environment on every node and both folders on a shared file
system. Ray is imported only when this engine runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import processes, ray_session
from refiner_daemon.refiner.batch_refine import (
    BatchRefineConfig,
    BatchRefineError,
    RefinerIdentity,
    RefineSummary,
    close_run,
    mask_files,
    open_run,
    refine_images,
)

# A marker file path: the first actor call on a chunk of 2+ frames that finds no such file
# creates it and SIGKILLs its own actor after one frame (only the fault-tolerance test sets it).
KILL_ONCE_ENV = "FISHEYE_SYNTH_TEST_KILL_ACTOR_ONCE"


@dataclass(frozen=True)
class RayRefineOptions:
    """How the actors run (never what they compute)."""

    actors: int = 2
    cpus_per_actor: int = 1  # also the actor's torch threads
    gpus_per_actor: float = 0.0
    frames_per_task: int = 8
    address: str | None = None  # None: start a local Ray instance
    ray_cpus: int | None = None
    max_retries: int = 3
    device: str = "auto"
    # fp32, not "auto": under auto each actor would choose its precision on its own first batch,
    # so actors could disagree and the output would depend on which actor got which frame.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("actors", "cpus_per_actor", "frames_per_task"):
            if getattr(self, name) < 1:
                raise BatchRefineError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_actor < 0 or self.max_retries < 0:
            raise BatchRefineError("--gpus-per-actor and --max-retries must be >= 0")
        ray_session.check_address(self.address, self.ray_cpus, BatchRefineError)


def import_ray() -> Any:
    return ray_session.import_ray(BatchRefineError, "refine through a daemon (--engine daemon)")


class RefinerActor:
    """One loaded generator refining chunks of frames (a Ray actor; plain class for tests)."""

    def __init__(self, in_dir: str, out_dir: str, model_path: str, config: dict[str, Any],
                 device: str, precision: str, threads: int) -> None:
        import torch

        from protocol.annotations import load_rendered_coco
        from refiner_daemon.refiner.inference import Refiner

        torch.set_num_threads(threads)  # what Ray granted, not every core of the node
        self.in_dir, self.out_dir = Path(in_dir), Path(out_dir)
        self.config = BatchRefineConfig(**config)
        self.refiner = Refiner.load(model_path, device=device, precision=precision)
        self.images = {image.image_id: image for image in load_rendered_coco(self.in_dir)}
        self.masks = mask_files(self.in_dir)

    def _refine(self, images: list[Any]) -> RefineSummary:
        return refine_images(self.in_dir, self.out_dir, images, self.masks,
                             lambda crops: self.refiner.refine(crops).images, self.config,
                             progress=False)

    def identify(self) -> tuple[str, int]:
        """The loaded weights' sha256 and this actor's pid (a later pid means a restart)."""
        return self.refiner.sha256, os.getpid()

    def refine(self, task: int, image_ids: list[str]) -> dict[str, Any]:
        images = [self.images[i] for i in image_ids]
        marker = os.environ.get(KILL_ONCE_ENV)
        if marker and len(images) > 1 and not Path(marker).exists():
            # Test hook (tests/test_refine_ray.py): finish this chunk's first frame, then die
            # the way a killed process does, once per marker file.
            self._refine(images[:1])
            Path(marker).write_text(f"{task} {os.getpid()}\n", encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)
        summary = self._refine(images)
        return {"task": task, "summary": summary.to_dict(), "node": socket.gethostname(),
                "actor_pid": os.getpid()}


def refine_dataset_ray(in_dir: str | Path, out_dir: str | Path, model_path: str | Path,
                       config: BatchRefineConfig | None = None,
                       options: RayRefineOptions | None = None, *,
                       progress: bool = True) -> RefineSummary:
    """``refine_dataset`` with the model file ``model_path`` loaded in ``options.actors`` Ray
    actors. The model's name in ``refiner.json`` is the file's stem, as a daemon names it."""
    config = config or BatchRefineConfig()
    options = options or RayRefineOptions()
    model_path = Path(model_path)
    if not model_path.exists():
        raise BatchRefineError(f"refiner file {model_path} not found; pass --models DIR with "
                               "DIR/<model>.pt, as for `refiner-daemon serve`")
    ray = import_ray()
    started = time.perf_counter()
    started_ray = ray_session.connect(ray, options.address, options.ray_cpus, BatchRefineError)
    try:
        actor_class = ray.remote(num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor,
                                 max_restarts=options.max_retries,
                                 max_task_retries=options.max_retries)(RefinerActor)
        actors = [actor_class.remote(str(Path(in_dir).resolve()), str(Path(out_dir).resolve()),
                                     str(model_path.resolve()), config.to_dict(), options.device,
                                     options.precision, options.cpus_per_actor)
                  for _ in range(options.actors)]
        identities = ray.get([actor.identify.remote() for actor in actors])
        first_pids = {pid for _, pid in identities}
        shas = {sha for sha, _ in identities}
        if len(shas) != 1:
            raise BatchRefineError(f"the actors loaded different weights from {model_path} "
                                   f"({sorted(s[:12] for s in shas)}); is the file being replaced?")
        identity = RefinerIdentity(model=model_path.stem if model_path.is_file() else model_path.name,
                                   model_sha256=shas.pop(), daemon_version=f"ray {ray.__version__}",
                                   endpoint=f"ray:{options.address or 'local'}")
        run = open_run(in_dir, out_dir, identity, config)
        ids = [image.image_id for image in run.images]
        chunks = [ids[i:i + options.frames_per_task] for i in range(0, len(ids), options.frames_per_task)]
        results = _run_chunks(ray, actors, chunks, progress)
    finally:
        if started_ray:
            ray.shutdown()
    summary = _combine(results, [image.image_id for image in run.images])
    summary.seconds = time.perf_counter() - started
    engine = {"engine": "ray", "actors": options.actors, "cpus_per_actor": options.cpus_per_actor,
              "gpus_per_actor": options.gpus_per_actor, "frames_per_task": options.frames_per_task,
              "max_retries": options.max_retries, "ray_version": ray.__version__,
              "tasks": [{"task": r["task"], "frames": chunks[r["task"]], "node": r["node"],
                         "actor_pid": r["actor_pid"],
                         # Ray restarted the actor that finished it (after its process died).
                         "actor_restarted": r["actor_pid"] not in first_pids}
                        for r in sorted(results, key=lambda r: r["task"])]}
    close_run(run, summary, {"engine": engine})
    return summary


def _run_chunks(ray: Any, actors: Sequence[Any], chunks: list[list[str]],
                progress: bool) -> list[dict[str, Any]]:
    """Hand each chunk to the next free actor, with a progress bar. A stop signal is raised
    between waits (not inside ``ray.wait``) and kills the actors before it propagates."""
    from tqdm import tqdm

    queue = list(enumerate(chunks))
    free = list(actors)
    running: dict[Any, tuple[Any, int]] = {}  # ref -> (actor, task)
    results: list[dict[str, Any]] = []
    with processes.DeferredStop("refine", "stopping the Ray actors") as stop, \
            tqdm(total=sum(map(len, chunks)), desc="refine", unit="frame",
                 disable=not progress) as bar:
        try:
            while queue or running:
                while queue and free:
                    actor, (task, chunk) = free.pop(), queue.pop(0)
                    running[actor.refine.remote(task, chunk)] = (actor, task)
                stop.check()
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
                for ref in ready:
                    actor, task = running.pop(ref)
                    free.append(actor)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # its retries are used up
                        raise BatchRefineError(
                            f"refining frames {chunks[task][0]}..{chunks[task][-1]} failed on Ray "
                            f"({ray_session.last_line(exc)}); rerun the same command to "
                            "resume (finished frames are kept)") from exc
                    results.append(result)
                    bar.update(len(chunks[result["task"]]))
        except BaseException:
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            raise
    return results


def _combine(results: list[dict[str, Any]], order: list[str]) -> RefineSummary:
    """One summary from the chunks' summaries, skipped people in frame order (as in-process)."""
    position = {image_id: n for n, image_id in enumerate(order)}
    summary = RefineSummary()
    for result in results:
        part = result["summary"]
        summary.frames_total += part["frames_total"]
        summary.frames_refined += part["frames_refined"]
        summary.frames_skipped_done += part["frames_skipped_done"]
        summary.people_refined += part["people_refined"]
        summary.people_skipped.extend(part["people_skipped"])
    summary.people_skipped.sort(key=lambda s: (position.get(str(s["image_id"]), 0), s["person_index"]))
    return summary
