"""Command line for training the head detector; see ``--help``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from protocol import processes
from protocol.cli import run_main
from protocol.datacheck import BadFile
from protocol.fileio import atomic_write_json
from refiner_daemon.common.distributed import context_from_env
from refiner_daemon.detector.config import ConfigError, DetectorConfig
from refiner_daemon.detector.data import load_samples
from refiner_daemon.detector.training import train_detector

EPILOG = """\
examples:
  # real frames 1-6 for training, 7-8 for validation (CEPDOF), MobileNetV2 backbone (default)
  python -m refiner_daemon.detector.train --out runs/det_real \\
      --train ../shared/data/real/cepdof_lunch3 --train-images Lunch3_00000{1..6}.jpg \\
      --val ../shared/data/real/cepdof_lunch3 --val-images Lunch3_00000{7,8}.jpg --epochs 40

  # a rendered set (coco.json) for training, the real frames for validation
  python -m refiner_daemon.detector.train --out runs/det_synth --train out/render_S \\
      --val ../shared/data/real/cepdof_lunch3

  # SqueezeNet as in the paper, from scratch (its ImageNet weights are not shipped)
  python -m refiner_daemon.detector.train --out runs/sq --backbone squeezenet --from-scratch ...

  # everything from a JSON config (DetectorConfig fields), print it and stop
  python -m refiner_daemon.detector.train --config det.json --dry-run

  # several processes (GPUs, or CPU processes over gloo): torchrun starts one per GPU; each
  # trains on --batch-size images, so the global batch is --batch-size x --nproc_per_node
  torchrun --standalone --nproc_per_node 4 -m refiner_daemon.detector.train --config det.json
  # the same without the torchrun script: python -m torch.distributed.run --standalone ...
  # continue it after a stop: the same command with --resume (same number of processes)

Writes config.json, best.pt (best validation F1), last.pt (resume with --resume),
history.json and tensorboard/ into --out. Then evaluate with
python -m refiner_daemon.detector.evaluate and export with python -m refiner_daemon.detector.export.
"""


def build_config(args: argparse.Namespace) -> DetectorConfig:
    data: dict = json.loads(Path(args.config).read_text()) if args.config else {}
    if args.train:
        data["train"] = [{"path": p, "images": args.train_images} for p in args.train]
    if args.val:
        data["val"] = [{"path": p, "images": args.val_images} for p in args.val]
    overrides = {"out_dir": args.out, "backbone": args.backbone, "weights": args.weights,
                 "input_size": args.input_size, "epochs": args.epochs, "batch_size": args.batch_size,
                 "learning_rate": args.lr, "seed": args.seed, "device": args.device,
                 "num_anchors": args.anchors}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if args.from_scratch:
        data["pretrained"] = False
    if args.no_augment:
        data["augment"] = False
    if args.resume:
        data["resume"] = True
    if args.no_sync_batchnorm:
        data["sync_batchnorm"] = False
    return DetectorConfig.from_dict(data)


def check_datasets(config: DetectorConfig, *, skip_bad: bool = False) -> list[BadFile]:
    """Check every training and validation image before training starts (a bad one raises
    ``BadDataError`` naming it). With ``skip_bad`` the specs holding bad images are narrowed
    to their good images (``DatasetSpec.images``, saved in config.json) and the bad ones are
    returned."""
    bad: list[BadFile] = []
    for spec in [*config.train, *config.val]:
        before = len(bad)
        good = load_samples(spec, config.head_box_scale, skip_bad=skip_bad, bad=bad)
        if len(bad) > before:
            if not good:
                raise ValueError(f"every image of {spec.path} is bad (first: {bad[before].reason}, "
                                 f"{bad[before].path}); fix the dataset")
            spec.images = [s.image_path.name for s in good]
            spec.limit = None  # already applied: the good images of the narrowed set
    return bad


def main(argv: list[str] | None = None) -> int:
    """The training command under ``protocol.cli.run_main`` (one-line errors, exit 2)."""
    return run_main(_main, argv, prog="detector-train")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.detector.train",
        description="Train the SqueezeDet-style head detector; the checkpoint with the best F1 on "
                    "the validation set is kept (thesis Algorithm 3, lines 7-8).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--config", help="JSON file with DetectorConfig fields; flags override it")
    parser.add_argument("--out", help="run folder for checkpoints and logs")
    parser.add_argument("--train", action="append", help="training dataset folder (repeatable)")
    parser.add_argument("--train-images", nargs="*", default=None, help="only these training file names")
    parser.add_argument("--val", action="append", help="validation dataset folder (repeatable)")
    parser.add_argument("--val-images", nargs="*", default=None, help="only these validation file names")
    parser.add_argument("--backbone", help="mobilenet_v2 (default) or squeezenet")
    parser.add_argument("--weights", help="backbone ImageNet weights file (.pth state dict)")
    parser.add_argument("--from-scratch", action="store_true", help="random backbone weights")
    parser.add_argument("--input-size", type=int, help="square network input in pixels (default 448)")
    parser.add_argument("--anchors", type=int, help="anchor shapes per cell, by k-means (default 9)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int,
                        help="images per step and process (global batch: this x torchrun's --nproc_per_node)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--no-augment", action="store_true", help="no rotation, flips or jitter")
    parser.add_argument("--resume", action="store_true", help="continue from last.pt in --out")
    parser.add_argument("--no-sync-batchnorm", action="store_true",
                        help="under torchrun: BatchNorm statistics per process instead of over the "
                             "global batch (faster on the CPU, not equivalent to one process)")
    parser.add_argument("--dry-run", action="store_true", help="print the validated config and stop")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable, truncated or missing images instead of stopping; "
                             "they are listed in <out>/data_check.json")
    args = parser.parse_args(argv)
    try:
        config = build_config(args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {args.config} is not valid JSON ({exc}); fix it") from None
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    main = context_from_env().is_main  # under torchrun only rank 0 writes and reports
    bad = check_datasets(config, skip_bad=args.skip_bad)
    if bad and main:
        report: dict[str, Any] = {"skipped_bad_files_count": len(bad),
                                  "skipped_bad_files": [b.to_dict() for b in bad]}
        atomic_write_json(Path(config.out_dir) / "data_check.json", report)
        print(f"skipped {len(bad)} bad images (listed in {Path(config.out_dir) / 'data_check.json'})",
              file=sys.stderr)
    # A stop signal ends training after the current step with last.pt saved (--resume goes on
    # from it); the command then exits with 128 + the signal number. A second signal: at once.
    best, signum = processes.run_until_stopped("detector-train", lambda should_stop: train_detector(config, should_stop=should_stop))
    if not main:
        return 0 if signum is None else 128 + signum
    if signum is not None:
        print(f"training stopped; state saved in {config.out_dir}; rerun with --resume to continue",
              file=sys.stderr)
        return 128 + signum
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
