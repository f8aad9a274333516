"""Train the head detector (Algorithm 3, lines 7-8): anchors by k-means on the training boxes,
SqueezeDet's loss with Adam and a cosine schedule, F1 on the validation set after every epoch
with the confidence threshold chosen there, and the checkpoint with the best validation F1 kept.

Run folder (``cfg.out_dir``): ``config.json``, ``best.pt`` (best validation F1, with its epoch
and threshold), ``last.pt`` (for ``resume``: weights, optimiser, schedule, history),
``history.json`` (per-epoch loss and validation scores), ``tensorboard/``.
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
from refiner_daemon.detector.model import HeadDetector, save_checkpoint, squeezedet_loss

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
    """
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", cfg.to_dict())
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)

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
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    epochs = epochs_for(cfg, steps_per_epoch)
    total_steps = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    start_epoch, best_f1, history = 0, -1.0, []
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch = int(resume_state["epochs_completed"])
        best_f1 = float(resume_state["best_f1"])
        history = list(resume_state["history"])

    writer = _tensorboard_writer(out_dir) if cfg.tensorboard else None
    step = start_epoch * steps_per_epoch
    started, steps_this_run = time.monotonic(), 0
    stopped = False
    for epoch in range(start_epoch, epochs):
        train_set.epoch = epoch
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate, num_workers=0,
            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        model.train()
        epoch_losses: list[dict[str, float]] = []
        for images, boxes in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                                  disable=on_progress is not None):
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
            if should_stop is not None and should_stop():
                stopped = True
                break
        if stopped:
            break

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
                        best_f1=best_f1, history=history)
        atomic_write_json(out_dir / "history.json", history)

    if writer is not None:
        writer.close()
    if not best_path.exists():
        if not last_path.exists():
            save_checkpoint(last_path, model, config=cfg.to_dict(), epoch=0, epochs_completed=0,
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            best_f1=best_f1, history=history)
        return last_path
    return best_path


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
