"""Command line for refiner training: ``python -m refiner_daemon.refiner.train --help``.

:func:`add_train_parser` mounts the same options as a subcommand of another CLI (the daemon's
``refiner-daemon train-refiner``); :func:`run_from_args` runs a parsed namespace.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from protocol import processes
from protocol.cli import run_main
from protocol.datacheck import check_images
from refiner_daemon.refiner.presets import PRESETS

DESCRIPTION = ("Train a CycleGAN or AGGAN refiner (synthetic -> real) on two unpaired crop "
               "folders, with the loss presets of the thesis' Table 3.2.")

EPILOG = """\
examples:
  # print the validated config and exit
  python -m refiner_daemon.refiner.train --run-dir runs/ccp --synthetic out/crops_synth \\
      --real out/crops_real --preset C_CP+S --dry-run

  # the thesis setting: 160 epochs, batch 1, width 64, 9 ResNet blocks
  python -m refiner_daemon.refiner.train --run-dir runs/ccp --synthetic out/crops_synth \\
      --real out/crops_real --preset C_CP+S

  # AGGAN (generator width 32 as in the thesis), attention switch after 30 epochs
  python -m refiner_daemon.refiner.train --run-dir runs/a --synthetic S --real R --preset A \\
      --width 32 --switch-epoch 30

  # continue an interrupted run from runs/ccp/checkpoints/latest.pt
  python -m refiner_daemon.refiner.train --run-dir runs/ccp --synthetic S --real R \\
      --preset C_CP+S --resume

  # override one loss weight of a preset and the perceptual layers
  ... --preset C_CPCF --loss-weight cycle_feature=2e-5 --feature-layers pool2 pool4

  # several processes (GPUs, or CPU processes over gloo): one per GPU; each trains on
  # --batch-size crops, so the global batch is --batch-size x --nproc_per_node; only rank 0
  # writes; --resume continues with the same number of processes
  torchrun --standalone --nproc_per_node 4 -m refiner_daemon.refiner.train --run-dir runs/ccp \
      --synthetic S --real R --preset C_CP+S --batch-size 4
  # the same without the torchrun script: python -m torch.distributed.run --standalone ...

outputs in --run-dir: config.json, checkpoints/latest.pt, tensorboard/ (tensorboard --logdir),
refiner.pt (the generator; load with refiner_daemon.refiner.inference.Refiner.load).
presets (thesis Table 3.2): """ + ", ".join(sorted(PRESETS))


def _crop_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"crop size {text!r}: expected HEIGHTxWIDTH, e.g. 256x128")
    return height, width


def _loss_weight(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"loss weight {text!r}: expected NAME=VALUE")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the training options to ``parser`` (a top-level parser or a subcommand)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    req = parser.add_argument_group("data and output")
    req.add_argument("--run-dir", required=True, help="folder for config, checkpoints, logs")
    req.add_argument("--synthetic", dest="synthetic_dir", required=True,
                     help="synthetic crop folder (<dir>/crops/*.png or images in <dir>)")
    req.add_argument("--real", dest="real_dir", required=True, help="real crop folder")
    model = parser.add_argument_group("model and losses")
    model.add_argument("--preset", default="C_CP", choices=sorted(PRESETS), metavar="NAME",
                       help="refiner variant of thesis Table 3.2 (default C_CP)")
    model.add_argument("--width", type=int, help="generator filters (default 64)")
    model.add_argument("--disc-width", type=int, help="discriminator filters (default 64)")
    model.add_argument("--n-blocks", type=int, help="ResNet blocks (default 9)")
    model.add_argument("--attention-width", type=int, help="AGGAN attention filters (default 32)")
    model.add_argument("--loss-weight", type=_loss_weight, action="append", default=[],
                       metavar="NAME=VALUE", help="override one of the preset's lambdas")
    model.add_argument("--feature-layers", nargs="+", metavar="LAYER",
                       help="perceptual layers pool1..pool5 (default: the preset's)")
    model.add_argument("--disc-layers", nargs="+", type=int, metavar="J",
                       help="discriminator layers 1..4 for the D-feature cyclic loss")
    model.add_argument("--perceptual", choices=("auto", "vgg16", "mobilenet_v2"),
                       help="feature extractor (default auto: VGG16 if its weights exist, "
                            "else the offline MobileNetV2)")
    model.add_argument("--perceptual-weights", help="path to the extractor's ImageNet .pth")
    model.add_argument("--feature-share", type=float,
                       help="share of the generator objective the feature terms make up at "
                            "calibration (default: the preset's; 0: raw lambdas)")
    model.add_argument("--switch-epoch", type=int, help="AGGAN attention switch (default 30)")
    model.add_argument("--tau", type=float, help="AGGAN foreground threshold (default 0.1)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, help="epochs over min(|S|, |R|) (default 160)")
    train.add_argument("--batch-size", type=int,
                       help="crops per step and process (default 1; under torchrun the global "
                            "batch is this x --nproc_per_node)")
    train.add_argument("--crop-size", type=_crop_size,
                       help="HEIGHTxWIDTH (default 128x128, the crop dataset's default)")
    train.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4)")
    train.add_argument("--pool-size", type=int, help="generated-image history (default 50)")
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                       help="no random horizontal flips")
    train.add_argument("--checkpoint-every", type=int, help="steps (default 1000)")
    val = parser.add_argument_group("validation (FD/KID to held-out real crops, model_best.pt)")
    val.add_argument("--val-synthetic", dest="val_synthetic_dir",
                     help="S_val: synthetic crops not trained on")
    val.add_argument("--val-real", dest="val_real_dir",
                     help="R_val: crops of real frames never trained on")
    val.add_argument("--val-every", type=int, help="steps between evaluations (default 500)")
    val.add_argument("--val-max-crops", type=int, help="crops per folder (default 64)")
    train.add_argument("--max-steps", type=int, help="stop (with a checkpoint) after N steps")
    train.add_argument("--resume", action="store_true", default=None,
                       help="continue from <run-dir>/checkpoints/latest.pt")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    train.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                       help="no bfloat16 mixed precision (used on CUDA and on CPUs with native bf16)")
    train.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                       default=None, help="CUDA: keep NCHW memory layout")
    train.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    parser.add_argument("--config", help="JSON file with RefinerConfig fields (flags override it)")
    parser.add_argument("--dry-run", action="store_true", help="print the config and exit")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable, truncated or empty crops instead of stopping; "
                             "they are listed in <run-dir>/data_check.json")
    parser.set_defaults(handler=run_from_args)
    return parser


def add_train_parser(subparsers: Any, name: str = "train-refiner") -> argparse.ArgumentParser:
    """Mount the training command as ``name`` on another CLI's subparsers."""
    parser = subparsers.add_parser(name, help="train a CycleGAN/AGGAN refiner on crop folders",
                                   description=DESCRIPTION)
    return configure_parser(parser)


def config_from_args(args: argparse.Namespace) -> Any:
    from refiner_daemon.refiner.training import RefinerConfig

    data: dict[str, Any] = {}
    if args.config:
        data.update(json.loads(Path(args.config).read_text(encoding="utf-8")))
        valid = {f.name for f in fields(RefinerConfig)}
        data = {k: v for k, v in data.items() if k in valid}  # config.json carries extra records
    for f in fields(RefinerConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = value
    if args.loss_weight:
        data["loss_weights"] = {**data.get("loss_weights", {}), **dict(args.loss_weight)}
    return RefinerConfig.from_dict(data)


CROP_FOLDER_FIELDS = ("synthetic_dir", "real_dir", "val_synthetic_dir", "val_real_dir")
CHECKED_INPUTS_DIR = "checked_inputs"


def check_crop_folders(cfg: Any, *, skip_bad: bool = False, write: bool = True) -> tuple[Any, dict[str, Any]]:
    """Check every crop of the config's crop folders before training starts
    (``protocol.datacheck``). A bad crop raises ``BadDataError`` naming it; with ``skip_bad``
    each folder with bad crops is replaced by ``<run_dir>/checked_inputs/<field>/`` holding
    links to its good crops. Returns the (possibly changed) config and a report
    ``{field: {"folder", "checked", "skipped_bad_files": [...]}}``. ``write=False`` (the
    processes other than rank 0 under torchrun) returns the same config without building the
    link folders; training waits for rank 0 before it reads them."""
    from refiner_daemon.refiner.data import list_crop_files

    data = cfg.to_dict()
    report: dict[str, Any] = {}
    for name in CROP_FOLDER_FIELDS:
        folder = getattr(cfg, name, None)
        if not folder:
            continue
        files = list_crop_files(folder)
        good, bad = check_images(files, skip_bad=skip_bad, what=f"crops in {folder}")
        report[name] = {"folder": str(folder), "checked": len(files),
                        "skipped_bad_files": [b.to_dict() for b in bad]}
        if bad:
            if not good:
                raise ValueError(f"every crop in {folder} is bad (first: {bad[0].reason}, "
                                 f"{bad[0].path}); regenerate the crop folder")
            view = Path(cfg.run_dir) / CHECKED_INPUTS_DIR / name
            data[name] = str(_good_crop_view(view, good) if write else view)
    return (type(cfg).from_dict(data) if data != cfg.to_dict() else cfg), report


def _good_crop_view(view: Path, good: list[Path]) -> Path:
    """A folder of symbolic links to ``good`` (rebuilt each run, so it matches this check)."""
    import shutil

    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    for index, path in enumerate(good):
        (view / f"{index:07d}_{path.name}").symlink_to(path.resolve())
    return view


def run_from_args(args: argparse.Namespace) -> int:
    """Run a parsed namespace; bad input raises (``protocol.cli.run_main`` reports it)."""
    try:
        cfg = config_from_args(args)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config file {args.config} is not valid JSON ({exc}); fix it") from None
    except KeyError as exc:
        raise ValueError(f"config field {exc} is missing; see --help for the fields") from None
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from refiner_daemon.common.distributed import context_from_env

    main = context_from_env().is_main  # under torchrun only rank 0 writes and reports
    cfg, report = check_crop_folders(cfg, skip_bad=bool(getattr(args, "skip_bad", False)), write=main)
    skipped = [b for entry in report.values() for b in entry["skipped_bad_files"]]
    if skipped and main:
        from protocol.fileio import atomic_write_json

        atomic_write_json(Path(cfg.run_dir) / "data_check.json",
                          {"skipped_bad_files_count": len(skipped), "folders": report})
        print(f"skipped {len(skipped)} bad crops (listed in {Path(cfg.run_dir) / 'data_check.json'})",
              file=sys.stderr)
    from refiner_daemon.refiner.training import train_refiner

    # A stop signal ends training after the current step, with a checkpoint (--resume goes on
    # from it); the command then exits with 128 + the signal number. A second signal: at once.
    path, signum = processes.run_until_stopped("train-refiner", lambda should_stop: train_refiner(cfg, should_stop=should_stop))
    if not main:
        return 0 if signum is None else 128 + signum
    if signum is not None:
        print(f"training stopped; state saved in {cfg.run_dir}; rerun with --resume to continue",
              file=sys.stderr)
        return 128 + signum
    print(f"refiner written to {path}")
    return 0


def _main(argv: list[str]) -> int:
    parser = configure_parser(argparse.ArgumentParser(
        prog="python -m refiner_daemon.refiner.train", description=DESCRIPTION))
    return run_from_args(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """The training command under ``protocol.cli.run_main`` (one-line errors, exit 2)."""
    return run_main(_main, argv, prog="train-refiner")


if __name__ == "__main__":
    raise SystemExit(main())
