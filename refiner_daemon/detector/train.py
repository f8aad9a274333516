"""Command line for training the head detector; see ``--help``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refiner_daemon.detector.config import ConfigError, DetectorConfig
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
    return DetectorConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--no-augment", action="store_true", help="no rotation, flips or jitter")
    parser.add_argument("--resume", action="store_true", help="continue from last.pt in --out")
    parser.add_argument("--dry-run", action="store_true", help="print the validated config and stop")
    args = parser.parse_args(argv)
    try:
        config = build_config(args)
    except (ConfigError, json.JSONDecodeError, OSError) as exc:
        parser.error(str(exc))
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    best = train_detector(config)
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
