"""Train the head detector (Algorithm 3, lines 7-8): anchors by k-means on the training boxes,
SqueezeDet's loss with Adam and a cosine schedule, F1 on the validation set after every epoch
with the confidence threshold chosen there, and the checkpoint with the best validation F1 kept.

Run folder (``cfg.out_dir``): ``config.json``, ``best.pt`` (best validation F1, with its epoch
and threshold), ``last.pt`` (for ``resume``: weights, optimiser, schedule, history),
``history.json`` (per-epoch loss and validation scores), ``tensorboard/``.

Under ``torchrun`` (:mod:`refiner_daemon.common.distributed`) every process trains on its share
of each global batch of ``batch_size x world size`` images, in the order a single process with
that batch size would see them; the loss is normalised by the counts of the whole global batch,
so the averaged gradients are those of the single-process step. Only rank 0 validates and
writes files. BatchNorm statistics are those of the global batch too (``nn.SyncBatchNorm`` on
CUDA, :class:`refiner_daemon.common.distributed.ProcessGroupBatchNorm` on the CPU) unless
``sync_batchnorm`` is false.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from protocol.fileio import atomic_write_json
from refiner_daemon.common.checkpoints import load_checkpoint
from refiner_daemon.common.devices import resolve_device
from refiner_daemon.common.distributed import (
    DistributedContext,
    session,
    shard_slice,
    synchronise_batchnorm,
)
from refiner_daemon.detector.anchors import kmeans_anchor_shapes
from refiner_daemon.detector.config import DetectorConfig
from refiner_daemon.detector.data import (
    Augmentation,
    HeadDataset,
    HeadSample,
    collate,
    load_samples,
)
from refiner_daemon.detector.evaluate import collect_detections
from refiner_daemon.detector.metrics import choose_confidence_threshold
from refiner_daemon.detector.model import (
    HeadDetector,
    save_checkpoint,
    squeezedet_loss,
    squeezedet_loss_sums,
)

ProgressCallback = Callable[[dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_anchor_shapes(samples: list[HeadSample], input_size: int, k: int, seed: int) -> np.ndarray:
    """Anchor (w, h) shapes in input pixels from the training boxes (k-means, 1 - IoU)."""
    shapes = [s.head_boxes[:, 2:] - s.head_boxes[:, :2] for s in samples if len(s.head_boxes)]
    if not shapes:
        raise ValueError("the training set has no head boxes; anchors cannot be computed")
    scale = np.concatenate([np.tile([input_size / s.width, input_size / s.height], (len(s.head_boxes), 1))
                            for s in samples if len(s.head_boxes)])
    return kmeans_anchor_shapes(np.concatenate(shapes) * scale, k, seed=seed)


def epochs_for(cfg: DetectorConfig, steps_per_epoch: int) -> int:
    """Epochs to train: ``cfg.epochs``, or more when ``cfg.min_steps`` asks for more steps."""
    if cfg.min_steps is None:
        return cfg.epochs
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(steps_per_epoch, 1)))


def train_detector(cfg: DetectorConfig, *, on_progress: ProgressCallback | None = None,
                   should_stop: Callable[[], bool] | None = None) -> Path:
    """Train one detector as ``cfg`` says and return the path of the best-validation checkpoint
    (``best.pt``; ``last.pt`` when stopped before the first epoch finished).

    ``on_progress`` receives ``{"step", "total_steps", "epoch", "losses", "eta_s"}`` after each
    step and ``{"step", "total_steps", "epoch", "val": {...}}`` after each validation; ``should_stop`` is polled after
    each step and ends training early (the state is saved, so ``resume=True`` continues).

    Under ``torchrun`` this is one process of the group (see the module docstring); every
    process returns the same path.
    """
    with session(resolve_device(cfg.device)) as (dist, device):
        return _train(cfg, dist, device, on_progress, should_stop)


def _train(cfg: DetectorConfig, dist: DistributedContext, device: torch.device,
           on_progress: ProgressCallback | None, should_stop: Callable[[], bool] | None) -> Path:
    out_dir = Path(cfg.out_dir)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "config.json", cfg.to_dict())
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)

    train_samples = [s for spec in cfg.train for s in load_samples(spec, cfg.head_box_scale)]
    val_samples = [s for spec in cfg.val for s in load_samples(spec, cfg.head_box_scale)]
    augmentation = (Augmentation(cfg.rotation, cfg.flips, cfg.photometric) if cfg.augment else None)
    train_set = HeadDataset(train_samples, cfg.input_size, augmentation, cfg.seed, cfg.cache_images)
    val_set = HeadDataset(val_samples, cfg.input_size, None, cfg.seed, cfg.cache_images)

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    resume_state = _load_resume_state(last_path) if cfg.resume and last_path.exists() else None
    if resume_state is not None:
        anchor_shapes = resume_state["anchor_shapes"].numpy()
    elif cfg.anchor_shapes is not None:
        anchor_shapes = np.asarray(cfg.anchor_shapes, dtype=np.float64)
    else:
        anchor_shapes = training_anchor_shapes(train_samples, cfg.input_size, cfg.num_anchors, cfg.seed)
    model = HeadDetector(cfg.backbone, anchor_shapes, cfg.input_size, cfg.pretrained, cfg.weights).to(device)
    if dist.enabled and cfg.sync_batchnorm:
        # BatchNorm statistics of the whole global batch, as one process would compute them.
        model = synchronise_batchnorm(model, device)
    train_model = dist.wrap(model, device)  # forward/backward through DDP; save `model`
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    global_batch = cfg.batch_size * dist.world_size
    steps_per_epoch = math.ceil(len(train_set) / global_batch)
    epochs = epochs_for(cfg, steps_per_epoch)
    total_steps = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    start_epoch, best_f1, history = 0, -1.0, []
    if resume_state is not None:
        saved_world = int(resume_state.get("world_size", 1))
        if saved_world != dist.world_size:
            raise ValueError(f"cannot resume {last_path}: it was trained by {saved_world} process(es) "
                             f"(global batch {cfg.batch_size * saved_world}), now {dist.world_size}; "
                             f"relaunch with {saved_world} process(es) or start a new out_dir")
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch = int(resume_state["epochs_completed"])
        best_f1 = float(resume_state["best_f1"])
        history = list(resume_state["history"])

    writer = _tensorboard_writer(out_dir) if cfg.tensorboard and dist.is_main else None
    step = start_epoch * steps_per_epoch
    started, steps_this_run = time.monotonic(), 0
    stopped = False
    for epoch in range(start_epoch, epochs):
        train_set.epoch = epoch
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader: Any
        if dist.enabled:
            loader = _shard_loader(train_set, global_batch, generator, dist)
        else:
            loader = torch.utils.data.DataLoader(
                train_set, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, num_workers=0,
                generator=generator)
        model.train()
        epoch_losses: list[dict[str, float]] = []
        for item in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                         disable=on_progress is not None or not dist.is_main):
            if dist.enabled:
                images, boxes, weight = item
                loss, parts = _distributed_loss(train_model, images.to(device), boxes, weight, cfg, dist)
            else:
                images, boxes = item
                raw, anchors = model.forward_raw(images.to(device))
                loss, parts = squeezedet_loss(raw, anchors, boxes, cfg.confidence_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            scheduler.step()
            step += 1
            steps_this_run += 1
            epoch_losses.append(parts)
            if writer is not None:
                for name, value in parts.items():
                    writer.add_scalar(f"loss/{name}", value, step)
            if on_progress is not None:
                rate = (time.monotonic() - started) / steps_this_run
                on_progress({"step": step, "total_steps": total_steps, "epoch": epoch + 1, "losses": parts,
                             "eta_s": rate * (total_steps - step)})
            if dist.any(should_stop is not None and should_stop()):
                stopped = True
                break
        if stopped:
            break
        if not dist.is_main:
            continue  # rank 0 validates and writes; the others wait for it in the next all-reduce

        detections = collect_detections(model, val_set, cfg.batch_size, device, cfg.nms_iou, cfg.max_detections)
        threshold, counts = choose_confidence_threshold(detections, cfg.iou_threshold)
        record = {"epoch": epoch + 1,
                  "loss": {k: float(np.mean([p[k] for p in epoch_losses])) for k in epoch_losses[0]},
                  "val": {"threshold": threshold, **counts.to_dict()}}
        history.append(record)
        if writer is not None:
            for name in ("precision", "recall", "f1"):
                writer.add_scalar(f"val/{name}", record["val"][name], epoch + 1)
        if on_progress is not None:
            on_progress({"step": step, "total_steps": total_steps, "epoch": epoch + 1, "val": record["val"]})
        if counts.f1 > best_f1:  # strictly better: ties keep the earlier, less fitted epoch
            best_f1 = counts.f1
            save_checkpoint(best_path, model, config=cfg.to_dict(), epoch=epoch + 1,
                            confidence_threshold=threshold, val=record["val"])
        save_checkpoint(last_path, model, config=cfg.to_dict(), epoch=epoch + 1, epochs_completed=epoch + 1,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        best_f1=best_f1, history=history, **_world_record(dist))
        atomic_write_json(out_dir / "history.json", history)

    if writer is not None:
        writer.close()
    if dist.is_main and not best_path.exists() and not last_path.exists():
        save_checkpoint(last_path, model, config=cfg.to_dict(), epoch=0, epochs_completed=0,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        best_f1=best_f1, history=history, **_world_record(dist))
    dist.barrier()  # the other ranks look for rank 0's files only once it has written them
    return best_path if best_path.exists() else last_path


def _world_record(dist: DistributedContext) -> dict[str, int]:
    # Only distributed checkpoints carry it (an absent key means one process), so a
    # single-process last.pt stays byte for byte what it was.
    return {"world_size": dist.world_size} if dist.enabled else {}


def _shard_loader(dataset: HeadDataset, global_batch: int, generator: torch.Generator,
                  dist: DistributedContext) -> Any:
    """This rank's share of each global batch, as (images, boxes, weight). The global batches are
    the index lists a single-process DataLoader with ``batch_size=global_batch`` and the same
    generator draws, so together the ranks see exactly what that process would. A rank whose
    share of a short last batch is empty gets the batch's first image with weight 0 (it must
    still take part in the gradient all-reduce)."""
    index_batches = torch.utils.data.DataLoader(range(len(dataset)), batch_size=global_batch,
                                                shuffle=True, generator=generator, collate_fn=list)
    for indices in index_batches:
        lo, hi = shard_slice(len(indices), dist.rank, dist.world_size)
        mine, weight = (indices[lo:hi], 1.0) if hi > lo else (indices[:1], 0.0)
        images, boxes = collate([dataset[i] for i in mine])
        yield images, boxes, weight


def _distributed_loss(train_model: torch.nn.Module, images: torch.Tensor, boxes: list[torch.Tensor],
                      weight: float, cfg: DetectorConfig, dist: DistributedContext
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """This rank's loss, normalised by the object and negative-anchor counts of the whole global
    batch and multiplied by the world size, so DDP's gradient average is the gradient of the
    global batch's loss; the returned parts are the global batch's loss values."""
    raw, anchors = train_model(images, raw=True)
    sums = squeezedet_loss_sums(raw, anchors, boxes, cfg.confidence_loss)
    objects, negatives = dist.sum_ints([round(sums.objects * weight), round(sums.negatives * weight)])
    loss, parts = squeezedet_loss(raw, anchors, boxes, cfg.confidence_loss, normalisers=(objects, negatives))
    parts = dist.sum_floats({k: v * weight for k, v in parts.items()})
    return loss * (weight * dist.world_size), parts


def _load_resume_state(path: Path) -> dict[str, Any]:
    state = load_checkpoint(path, what="checkpoint to resume")
    for key in ("optimizer", "scheduler", "epochs_completed", "history"):
        if key not in state:
            raise ValueError(f"{path} is not a resumable checkpoint (no {key!r}); start a fresh run")
    return state


def _tensorboard_writer(out_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a trimmed install may lack it
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))
