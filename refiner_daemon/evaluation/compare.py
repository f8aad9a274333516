"""Compare finished pipeline runs that differ in one input, such as the rendered set S, its
scene or the code that drew its people, arm by arm and paired by seed.

Each run is a pipeline ``out_dir`` given a label (``before=out/experiments/realism/before``).
The runs must have tested on the same R_test frames. For one arm (``S`` by default) the
comparison reports:

- each run's F1 over its detector seeds: the mean, the sample std and the 95 % frame-bootstrap
  interval (:func:`statistics.summarise_arm`);
- the paired difference of each run against the baseline, with detectors matched by seed and
  bootstrapped on the same resampled test frames for both (:func:`statistics.paired_difference`);
- the run's person-crop and whole-frame FD and KID to R_test, where it measured them;
- with ``--gap-intervals N``, how far each run's person-crop FD could move and its difference
  to the baseline's, bootstrapped over the crops (:func:`statistics.fd_differences`; the R_test
  crops are resampled once per draw for all runs, which must have cut the same ones, and by
  real person: one person's crops in neighbouring frames are near copies). The features are
  the gap stage's (MobileNetV2, 224 px) of the crops that stage cut, cached next to them as
  ``compare_features.npz``.

Per-frame counts come from each detector's ``test.json`` next to its checkpoint, so the
comparison needs the run folders, not only their ``results.json``.

    python -m refiner_daemon.evaluation.compare before=out/experiments/realism/before \\
        after=out/experiments/realism/after --baseline before --out docs/experiments/realism
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from protocol.cli import CliError, run_main
from protocol.fileio import atomic_write_json, atomic_write_text
from refiner_daemon.evaluation.statistics import (
    GAP_RESAMPLES,
    RunCounts,
    fd_differences,
    frame_resamples,
    paired_difference,
    summarise_arm,
)

GAP_KEYS = ("fd_person", "kid_person", "fd_frame", "kid_frame")


def load_run(out_dir: Path, arm: str) -> tuple[dict[str, Any], list[RunCounts]]:
    """A finished pipeline run's ``results.json`` and the per-frame counts of ``arm``'s detectors."""
    results, counts, _ = _load(out_dir, arm)
    return results, counts


def _load(out_dir: Path, arm: str) -> tuple[dict[str, Any], list[RunCounts], list[float]]:
    """Also each detector's best F1 over thresholds on R_test (``test_detail.json``'s oracle
    threshold, NaN where absent): an optimistic number that says whether a detector ranks real
    heads above the rest at all, whatever threshold R_val picked."""
    results_path = out_dir / "results.json"
    if not results_path.is_file():
        raise CliError(f"{results_path} not found: run the pipeline to the end first "
                       "(python -m refiner_daemon.evaluation.pipeline --config CONFIG)")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    runs = results.get("runs", {}).get(arm)
    if not runs:
        raise CliError(f"{out_dir} has no arm {arm!r}; its arms: {sorted(results.get('runs', {}))}")
    counts, oracle = [], []
    for run in runs:
        detail = Path(run["checkpoint"]).parent / "test.json"
        if not detail.is_file():
            raise CliError(f"{detail} is missing: the per-frame counts of {arm!r} seed {run['seed']} "
                           "live next to its checkpoint; compare from the folder the pipeline ran in")
        tested = json.loads(detail.read_text(encoding="utf-8"))
        counts.append(RunCounts.from_per_image(tested["seed"], tested.get("refiner_seed"), tested["per_image"]))
        extra = detail.with_name("test_detail.json")
        best = (json.loads(extra.read_text(encoding="utf-8")).get("oracle_threshold_on_this_set") or {}
                if extra.is_file() else {})
        oracle.append(float(best.get("f1", float("nan"))))
    return results, counts, oracle


def compare(runs: dict[str, Path], baseline: str, arm: str = "S", seed: int = 0,
            gap_resamples: int = 0) -> dict[str, Any]:
    """The comparison of ``arm`` across ``runs`` (label -> pipeline out_dir) against ``baseline``."""
    if baseline not in runs:
        raise CliError(f"baseline {baseline!r} is not one of the runs {sorted(runs)}")
    loaded_all = {label: _load(path, arm) for label, path in runs.items()}
    loaded = {label: (results, counts) for label, (results, counts, _) in loaded_all.items()}
    test_frames = {label: results["real_split"]["test"] for label, (results, _) in loaded.items()}
    reference = test_frames[baseline]
    for label, frames in test_frames.items():
        if frames != reference:
            raise CliError(f"{label!r} tested on {frames}, {baseline!r} on {reference}: runs compare "
                           "only on the same R_test; use one real_split in every config")
    resamples = frame_resamples(len(reference), seed=seed)
    rows = []
    for label, (results, counts) in loaded.items():
        gap = ((results.get("gap") or {}).get("sets") or {}).get("S") if arm == "S" else None
        rows.append({"label": label, "out_dir": str(runs[label]), "synthetic": results.get("synthetic"),
                     "train_images": results["runs"][arm][0].get("train_images"),
                     "test": summarise_arm(counts, resamples),
                     "oracle_f1_mean": float(np.nanmean(loaded_all[label][2])) if not all(
                         np.isnan(loaded_all[label][2])) else None,
                     "gap_to_r_test": {k: gap[k] for k in GAP_KEYS if k in gap} if gap else None})
    paired = [{"a": label, "b": baseline,
               **paired_difference(loaded[label][1], loaded[baseline][1], resamples)}
              for label in runs if label != baseline]
    intervals = gap_intervals(runs, baseline, reference, gap_resamples, seed) if gap_resamples else None
    return {"arm": arm, "baseline": baseline, "test_frames": reference, "rows": rows, "paired": paired,
            "gap_intervals": intervals,
            "statistics": ("f1_std: sample std over detector seeds; f1_ci95: 95% percentile bootstrap over "
                           f"the {len(reference)} test frames; paired: detectors matched by seed, the same "
                           "resampled frames for both runs")}


FEATURE_CACHE = "compare_features.npz"


def _gap_stage(out_dir: Path) -> Path:
    stages = sorted(p.parent for p in (out_dir / "gap").glob("*/gap.json"))
    if len(stages) != 1:
        raise CliError(f"{out_dir / 'gap'}: expected one finished gap stage, found {len(stages)}; "
                       "run the pipeline with \"gap\": true to the end")
    return stages[0]


def _crop_items(crop_dir: Path, frames: set[str] | None) -> list[dict[str, Any]]:
    records = json.loads((crop_dir / "records.json").read_text(encoding="utf-8"))
    return [item for item in records["items"] if frames is None or Path(item["image_file"]).name in frames]


def person_features(out_dir: Path, test_frames: list[str], extractor: Any) -> dict[str, Any]:
    """The run's gap-stage person crops of S and of R_test, as features (cached beside them),
    the real person of each R_test crop, and a fingerprint of the R_test crops' bytes."""
    import hashlib

    from refiner_daemon.common.features import pooled_features
    from refiner_daemon.evaluation.gap import MOBILENET_SIZE

    stage = _gap_stage(out_dir)
    items = {"S": _crop_items(stage / "crops" / "S", None),
             "R_test": _crop_items(stage / "crops" / "R_test", set(test_frames))}
    paths = {k: [stage / "crops" / k / item["crop_file"] for item in v] for k, v in items.items()}
    # Crops without a person id (none in CEPDOF) count as people of their own.
    people = np.array([str(item.get("person_id", f"crop {i}")) for i, item in enumerate(items["R_test"])])
    names = {k: np.array([p.name for p in v]) for k, v in paths.items()}
    cache = stage / FEATURE_CACHE
    features: dict[str, np.ndarray] = {}
    if cache.is_file():
        with np.load(cache) as stored:
            if all(f"{k}_names" in stored and np.array_equal(stored[f"{k}_names"], names[k]) for k in paths):
                features = {k: stored[k] for k in paths}
    if not features:
        features = {k: pooled_features(extractor, v, MOBILENET_SIZE, ("deep",), desc=f"{out_dir.name} {k}")["deep"]
                    for k, v in paths.items()}
        temporary = cache.with_suffix(".tmp.npz")
        np.savez(temporary, **features, **{f"{k}_names": v for k, v in names.items()})
        temporary.replace(cache)
    digest = hashlib.sha256()
    for path in sorted(paths["R_test"]):
        digest.update(path.name.encode() + path.read_bytes())
    return {**features, "R_test_people": people, "reference_sha256": digest.hexdigest()}


def gap_intervals(runs: dict[str, Path], baseline: str, test_frames: list[str], resamples: int,
                  seed: int = 0) -> dict[str, Any]:
    """Bootstrap intervals of every run's person-crop FD to R_test and of its difference to the
    baseline's (see the module docstring)."""
    from refiner_daemon.common.features import MobileNetFeatures

    extractor = MobileNetFeatures()
    loaded = {label: person_features(path, test_frames, extractor) for label, path in runs.items()}
    fingerprints = {label: f["reference_sha256"] for label, f in loaded.items()}
    if len(set(fingerprints.values())) != 1:
        raise CliError(f"the runs cut different R_test crops ({fingerprints}); FD intervals need the same "
                       "real people on every side: use one real folder and crop rule in every config")
    reference = loaded[baseline]
    return fd_differences({label: f["S"] for label, f in loaded.items()}, reference["R_test"], baseline,
                          resamples, seed, reference_groups=reference["R_test_people"])


def render_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as two Markdown tables: each run, then each run minus the baseline."""
    arm, baseline = comparison["arm"], comparison["baseline"]
    lines = [f"# Arm {arm} across runs", "",
             f"Test frames: {', '.join(comparison['test_frames'])}.", "",
             ("| run | train images | F1 mean ± std (seeds) | 95% CI (frames) | precision | recall "
              "| best-threshold F1 | person FD | person KID | frame FD |"),
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in comparison["rows"]:
        test, gap = row["test"], row["gap_to_r_test"] or {}
        low, high = test["f1_ci95"]
        lines.append(
            f"| {row['label']} | {row['train_images']} | {test['f1_mean']:.3f} ± {test['f1_std']:.3f} "
            f"| [{low:.3f}, {high:.3f}] | {test['precision_mean']:.3f} | {test['recall_mean']:.3f} | "
            + (f"{row['oracle_f1_mean']:.3f}" if row.get("oracle_f1_mean") is not None else "-") + " | "
            + " | ".join(f"{gap[k]:.3f}" if k in gap else "-" for k in ("fd_person", "kid_person", "fd_frame"))
            + " |")
    lines += ["", f"## Paired differences against {baseline} (detectors matched by seed)", "",
              "| a - b | pairs | mean F1 difference | 95% CI (frames) | share of pairs a better |",
              "| --- | --- | --- | --- | --- |"]
    for pair in comparison["paired"]:
        low, high = pair["f1_diff_ci95"]
        lines.append(f"| {pair['a']} - {pair['b']} | {pair['pairs']} | {pair['f1_diff_mean']:+.3f} "
                     f"| [{low:+.3f}, {high:+.3f}] | {pair['share_of_pairs_a_better']:.2f} |")
    lines += ["", comparison["statistics"] + ". Best-threshold F1: the best F1 over confidence "
              "thresholds on R_test itself (optimistic; shows whether a detector ranks real heads "
              "first at all).", ""]
    intervals = comparison.get("gap_intervals")
    if intervals:
        lines += [f"## Person-crop FD to R_test, with bootstrap intervals (against {baseline})", "",
                  "| run | S crops | FD | 95% CI | FD - baseline | 95% CI | share of draws closer than baseline |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for label, entry in intervals["sets"].items():
            low, high = entry["fd_ci95"]
            row = f"| {label} | {entry['crops']} | {entry['fd']:.1f} | [{low:.1f}, {high:.1f}] |"
            if "fd_diff" in entry:
                d_low, d_high = entry["fd_diff_ci95"]
                row += (f" {entry['fd_diff']:+.1f} | [{d_low:+.1f}, {d_high:+.1f}] "
                        f"| {entry['share_closer_than_baseline']:.2f} |")
            else:
                row += " (baseline) | | |"
            lines.append(row)
        lines += ["", (f"{intervals['resamples']} draws; each resamples the {intervals['reference_crops']} "
                       f"R_test crops by real person ({intervals['reference_groups']} people) once for "
                       "every run (paired) and each run's S crops on their own; 95 % basic bootstrap "
                       "intervals. A single FD's interval is for the distance between the populations: "
                       "FD from a few dozen crops reads high, so it lies below the observed value. The "
                       "differences, where that bias mostly cancels, are what to read."), ""]
    return "\n".join(lines)


def labelled_path(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` on a command line -> ``(label, Path)`` (shared by the evaluation tools)."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give each as LABEL=PATH")
    return label, Path(path)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.evaluation.compare",
        description="Compare one detector arm across finished pipeline runs that differ in one input "
                    "(for example S rendered before and after a change): F1 with seed spread and "
                    "frame-bootstrap intervals, paired differences against a baseline, and the gap "
                    "to R_test.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""example:
  python -m refiner_daemon.evaluation.compare before=out/experiments/realism/before \\
      after=out/experiments/realism/after office=out/experiments/realism/office \\
      --baseline before --out docs/experiments/realism""")
    parser.add_argument("runs", nargs="+", type=labelled_path, metavar="LABEL=OUT_DIR",
                        help="a finished pipeline run (its out_dir) and the label it gets in the tables")
    parser.add_argument("--baseline", help="the label the others are compared against (default: the first)")
    parser.add_argument("--arm", default="S", help="the detector arm to compare (default S)")
    parser.add_argument("--out", type=Path, help="write compare.json and compare.md here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the frame bootstrap (default 0)")
    parser.add_argument("--gap-intervals", type=int, nargs="?", const=GAP_RESAMPLES, default=0, metavar="DRAWS",
                        help="also bootstrap each run's person-crop FD to R_test and its difference to "
                             f"the baseline's over the crops (default {GAP_RESAMPLES} draws; needs the "
                             "runs' gap stages and the MobileNetV2 weights)")
    args = parser.parse_args(argv)
    runs = dict(args.runs)
    if len(runs) != len(args.runs):
        raise CliError("each run needs its own label")
    if args.gap_intervals < 0:
        raise CliError(f"--gap-intervals must be a number of draws >= 0, got {args.gap_intervals}")
    comparison = compare(runs, args.baseline or args.runs[0][0], args.arm, args.seed, args.gap_intervals)
    markdown = render_markdown(comparison)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "compare.json", comparison)
        atomic_write_text(args.out / "compare.md", markdown)
    print(markdown, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, prog="compare")


if __name__ == "__main__":
    raise SystemExit(main())
