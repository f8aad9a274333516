"""Publish a finished experiment into ``docs/``: its ``results.json`` and ``tables.md``, and the
ONNX detector of each arm's median run, so that anyone can test them on their own frames.

The median run of an arm is the run whose F1 on R_test is the (lower) median of the arm's runs,
ties broken by seed: a typical detector of the arm, neither its luckiest nor its worst. Each file
carries the metadata evaluation needs (``detector.evaluate_onnx``) plus the arm, its training
sets and seeds; ``models/index.json`` lists them with their sizes and SHA-256.

    python -m refiner_daemon.evaluation.publish out/experiments/lunch3 docs/experiments/lunch3
    python -m refiner_daemon.detector.evaluate_onnx docs/experiments/lunch3/models/R_train.onnx \\
        --data MY_FRAMES
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from protocol.cli import CliError, run_main
from protocol.fileio import atomic_write_bytes, atomic_write_json

DEFAULT_MAX_MB = 20.0  # the repository budget for an experiment's published models


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the lower-median test F1 (ties: lower detector seed, then refiner seed)."""
    if not runs:
        raise ValueError("an arm without runs has no median run")
    ordered = sorted(runs, key=lambda r: (r["f1"], r["seed"], r.get("refiner_seed") or -1))
    return ordered[(len(ordered) - 1) // 2]


def model_file_name(arm: str) -> str:
    """A file name for an arm: ``R_train + C_CP+S`` -> ``R_train_plus_C_CP_S.onnx``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", arm.replace(" + ", " plus ")).strip("_") + ".onnx"


def publish(run_dir: str | Path, docs_dir: str | Path, max_mb: float = DEFAULT_MAX_MB) -> dict[str, Any]:
    """Copy ``results.json`` and ``tables.md`` of ``run_dir`` into ``docs_dir`` and export each
    arm's median run to ``docs_dir/models/``. Exports go to a scratch folder first: when they
    exceed ``max_mb`` in all, nothing in ``docs_dir`` is touched and the error lists the sizes."""
    from refiner_daemon.detector.evaluate_onnx import export_with_metadata

    run_dir, docs_dir = Path(run_dir), Path(docs_dir)
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise CliError(f"{results_path} not found: run the experiment to the end first "
                       "(python -m refiner_daemon.evaluation.pipeline --config CONFIG)")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    entries = []
    with tempfile.TemporaryDirectory(prefix="publish-") as scratch:
        for arm in results["arms"]:
            run = median_run(results["runs"][arm["name"]])
            checkpoint = Path(run["checkpoint"])
            if not checkpoint.is_file():
                raise CliError(f"arm {arm['name']!r}: checkpoint {checkpoint} is missing; rerun the "
                               "pipeline (it resumes) from the folder it was run in")
            name = model_file_name(arm["name"])
            path = export_with_metadata(checkpoint, Path(scratch) / name, {
                "arm": arm["name"], "train_sets": arm["train_sets"], "detector_seed": run["seed"],
                "refiner_seed": run.get("refiner_seed"), "test_f1": run["f1"],
                "harmful_refiner": arm.get("harmful_refiner", False)})
            data = path.read_bytes()
            entries.append({"file": f"models/{name}", "arm": arm["name"], "detector_seed": run["seed"],
                            "refiner_seed": run.get("refiner_seed"), "test_f1": run["f1"],
                            "test_precision": run["precision"], "test_recall": run["recall"],
                            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        total_mb = sum(e["bytes"] for e in entries) / 1e6
        if total_mb > max_mb:
            sizes = ", ".join(f"{e['file']} {e['bytes'] / 1e6:.1f} MB" for e in entries)
            raise CliError(f"the {len(entries)} models take {total_mb:.1f} MB, over the {max_mb:g} MB "
                           f"budget ({sizes}); publish fewer arms or raise --max-mb")
        models = docs_dir / "models"
        models.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            atomic_write_bytes(docs_dir / entry["file"], (Path(scratch) / Path(entry["file"]).name).read_bytes())
    index = {"what": "each arm's median-F1 run on R_test, exported with evaluation metadata",
             "evaluate": "python -m refiner_daemon.detector.evaluate_onnx MODEL --data FRAMES_DIR",
             "total_mb": round(total_mb, 3), "models": entries}
    atomic_write_json(docs_dir / "models" / "index.json", index)
    atomic_write_json(docs_dir / "results.json", results)
    if (run_dir / "tables.md").is_file():
        atomic_write_bytes(docs_dir / "tables.md", (run_dir / "tables.md").read_bytes())
    return index


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.evaluation.publish",
        description="Copy a finished experiment's results.json and tables.md into a docs folder and "
                    "export each arm's median run as an ONNX detector (models/, with index.json).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""example:
  python -m refiner_daemon.evaluation.publish out/experiments/lunch3 docs/experiments/lunch3
then test a published detector on your own annotated frames:
  python -m refiner_daemon.detector.evaluate_onnx docs/experiments/lunch3/models/R_train.onnx --data FRAMES""")
    parser.add_argument("run_dir", type=Path, help="the experiment's out_dir (holds results.json)")
    parser.add_argument("docs_dir", type=Path, help="where the published files go")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                        help=f"size budget for all models together (default {DEFAULT_MAX_MB:g})")
    args = parser.parse_args(argv)
    index = publish(args.run_dir, args.docs_dir, args.max_mb)
    for entry in index["models"]:
        print(f"{entry['file']}: {entry['arm']} (detector seed {entry['detector_seed']}, refiner seed "
              f"{entry['refiner_seed']}), test F1 {entry['test_f1']:.3f}, {entry['bytes'] / 1e6:.2f} MB")
    print(f"{len(index['models'])} models, {index['total_mb']:.1f} MB in all")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, prog="publish")


if __name__ == "__main__":
    raise SystemExit(main())
