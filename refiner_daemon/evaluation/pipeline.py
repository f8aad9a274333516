"""The whole experiment of thesis Algorithm 3, driven by one JSON config:

1. render S (or use an existing rendered set),
2. crop S and R_train into person crops,
3. train each refiner preset listed,
4. refine S with each refiner into S+,
5. train a detector on S, R_train, each S+, R_train + S, R_train + each S+, and R_train plus
   k times |R_train| images of the best S+ (thesis Table 4.6),
6. keep each detector's checkpoint with the best F1 on R_val (inside training),
7. test it on R_test,

then write the thesis's Tables 4.2-4.6 as Markdown and JSON, and Figure 4.7 (F1 against the
mix ratio) as a PNG. Every number carries its seed; ``repeats`` reruns every detector with
seeds ``seed, seed + 1, ...`` and reports mean ± standard deviation.

Each stage is a function from folders to folders, so any stage can be skipped by naming an
existing folder in the config. Stage 1 runs the batch renderer (``blender_addon.bl.cli_entry``)
in its own process; stages 2-4 call ``protocol.crop_dataset``,
``refiner_daemon.refiner.training.train_refiner`` and ``refiner_daemon.refiner.batch_refine.refine_dataset`` with
an in-process ``Refiner``.

The real frames R are split by frame (never mixing frames) into contiguous blocks in file-name
order: consecutive video frames are near duplicates, so contiguous blocks leak less between
train, val and test than an interleaved split would.

    python -m refiner_daemon.evaluation.pipeline --config experiment.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from protocol.crop_dataset import CropDatasetConfig, build_crop_dataset
from protocol.fileio import atomic_write_json, atomic_write_text
from refiner_daemon.detector.config import DatasetSpec, DetectorConfig
from refiner_daemon.detector.data import DatasetError, image_names
from refiner_daemon.detector.evaluate import evaluate_checkpoint
from refiner_daemon.detector.training import train_detector
from refiner_daemon.refiner.batch_refine import BatchRefineConfig, RefinerIdentity, refine_dataset
from refiner_daemon.refiner.inference import Refiner
from refiner_daemon.refiner.training import RefinerConfig, train_refiner


class PipelineError(ValueError):
    """A pipeline configuration that cannot run; the message names the field."""


@dataclass
class RefinedSet:
    """A refined synthetic set S+: an existing folder, or one to make from a refiner preset."""

    path: str | None = None
    preset: str | None = None  # refiner preset (Table 3.2) used to make it, if stages 3-4 run
    skip_connection: bool | None = None  # generator input-output skip; decides Table 4.3 vs 4.4

    def has_skip(self, name: str) -> bool:
        if self.skip_connection is not None:
            return self.skip_connection
        return (self.preset or name).endswith(("+S", "^S", "_S"))


@dataclass
class PipelineConfig:
    """One experiment. Paths are relative to the current directory."""

    out_dir: str
    real: str  # R: a dataset folder (CEPDOF annotations.json or coco.json)
    real_split: dict[str, Any] = field(default_factory=lambda: {"train": 0.6, "val": 0.2, "test": 0.2})
    synthetic: str | None = None  # S: an existing rendered set; None runs stage 1
    render: dict[str, Any] | None = None  # stage 1 settings when synthetic is None
    refined: dict[str, RefinedSet] = field(default_factory=dict)  # name -> S+
    refiner: dict[str, Any] = field(default_factory=dict)  # stage 3 overrides (RefinerConfig fields)
    crops: dict[str, Any] = field(default_factory=dict)  # stage 2 overrides (CropDatasetConfig fields)
    mix_ratios: list[float] = field(default_factory=lambda: [0, 1, 3, 5, 7, 10, 15])
    mix_refined: str | None = None  # S+ for Table 4.6; None: the best on R_val among the S+ sets
    experiments: list[str] = field(default_factory=lambda: ["S", "R_train", "refined", "R_train+S",
                                                            "R_train+refined", "mix"])
    detector: dict[str, Any] = field(default_factory=dict)  # DetectorConfig fields
    distance_table: bool = False  # Table 4.1: FD / KID of cropped S+ to cropped S and R_train
    seed: int = 0
    repeats: int = 1

    def __post_init__(self) -> None:
        self.refined = {name: (value if isinstance(value, RefinedSet) else RefinedSet(**value)
                               if isinstance(value, dict) else RefinedSet(path=str(value)))
                        for name, value in self.refined.items()}
        valid_experiments = {"S", "R_train", "refined", "R_train+S", "R_train+refined", "mix"}
        unknown = set(self.experiments) - valid_experiments
        if unknown:
            raise PipelineError(f"experiments: unknown {sorted(unknown)}; valid: {sorted(valid_experiments)}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise PipelineError(f"repeats must be a positive integer, got {self.repeats!r}")
        if any(not (isinstance(r, (int, float)) and r >= 0) for r in self.mix_ratios):
            raise PipelineError(f"mix_ratios must be non-negative numbers, got {self.mix_ratios}")
        forbidden = {"train", "val", "out_dir", "seed"} & set(self.detector)
        if forbidden:
            raise PipelineError(f"detector: {sorted(forbidden)} are set by the pipeline; remove them")
        if self.mix_refined is not None and self.mix_refined not in self.refined:
            raise PipelineError(f"mix_refined {self.mix_refined!r} is not one of refined {sorted(self.refined)}")
        if self.needs_synthetic and self.synthetic is None and self.render is None:
            raise PipelineError("give synthetic (an existing rendered set) or render (stage 1 settings)")
        for name, refined in self.refined.items():
            if refined.path is None and refined.preset is None:
                raise PipelineError(f"refined[{name!r}]: give path (existing S+) or preset (stages 3-4)")
        # Fail now, not after an hour of training, when the detector settings are wrong.
        DetectorConfig.from_dict({**self.detector, "train": ["."], "val": ["."], "out_dir": "."})

    @property
    def needs_synthetic(self) -> bool:
        """S is needed to train on it, to make a refined set from it, or for Table 4.1."""
        return bool({"S", "R_train+S"} & set(self.experiments)) or self.distance_table or any(
            r.path is None for r in self.refined.values())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise PipelineError(f"unknown pipeline keys {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- splitting R


def split_real_frames(names: list[str], split: dict[str, Any]) -> dict[str, list[str]]:
    """Split frame names into train / val / test: explicit lists, or fractions giving contiguous
    blocks in sorted name order. Every part must be non-empty and no frame may be in two."""
    if set(split) != {"train", "val", "test"}:
        raise PipelineError(f"real_split needs exactly train, val and test, got {sorted(split)}")
    ordered = sorted(names)
    if all(isinstance(v, list) for v in split.values()):
        parts = {k: [str(n) for n in v] for k, v in split.items()}
        unknown = sorted({n for frames in parts.values() for n in frames} - set(ordered))
        if unknown:
            raise PipelineError(f"real_split names frames not in the real set: {unknown[:5]}")
    elif all(isinstance(v, (int, float)) for v in split.values()):
        fractions = np.array([float(split[k]) for k in ("train", "val", "test")])
        if (fractions <= 0).any():
            raise PipelineError(f"real_split fractions must be positive, got {split}")
        counts = np.round(fractions / fractions.sum() * len(ordered)).astype(int)
        counts = np.maximum(counts, 1)
        counts[0] = len(ordered) - counts[1] - counts[2]
        if counts[0] < 1:
            raise PipelineError(f"{len(ordered)} real frames are too few to split three ways")
        bounds = np.cumsum(counts)
        parts = {"train": ordered[:bounds[0]], "val": ordered[bounds[0]:bounds[1]], "test": ordered[bounds[1]:]}
    else:
        raise PipelineError("real_split values must be all fractions or all lists of frame names")
    seen: dict[str, str] = {}
    for part, frames in parts.items():
        if not frames:
            raise PipelineError(f"real_split leaves {part} empty")
        for frame in frames:
            if frame in seen:
                raise PipelineError(f"frame {frame} is in both {seen[frame]} and {part}: frames must not mix")
            seen[frame] = part
    return parts


# --------------------------------------------------------------------------- stages 1-4


def render_command(settings: dict[str, Any], out: Path) -> list[str]:
    """The batch renderer's command line for stage 1: ``{"scene": ..., "count": 100}`` becomes
    ``--scene ... --count 100`` (``True`` becomes a bare flag, ``False``/``None`` are left out)."""
    argv = [sys.executable, "-m", "blender_addon.bl.cli_entry", "--out", str(out)]
    for key, value in settings.items():
        if key == "out":
            raise PipelineError("render: \"out\" is chosen by the pipeline (<out_dir>/S); remove it")
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def stage_render(cfg: PipelineConfig, out: Path) -> Path:
    """Stage 1: the synthetic set S, rendered by the batch renderer in its own process (it
    needs Blender's bpy; this process holds torch). The renderer resumes by itself, so a rerun
    only renders missing frames."""
    if cfg.synthetic is not None:
        return _existing(cfg.synthetic, "synthetic")
    assert cfg.render is not None  # checked by PipelineConfig
    command = render_command({"seed": cfg.seed, **cfg.render}, out)
    print("stage 1:", " ".join(command), flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise PipelineError(f"stage 1 (render) failed; rerun by hand to see why: {' '.join(command)}")
    return out


def stage_crop(source: Path, out: Path, frames: list[str] | None, settings: dict[str, Any]) -> Path:
    """Stage 2: person crops of ``source`` (only ``frames`` of it, when given) into ``out``."""
    if frames is not None:
        source = _subset_folder(source, frames, out.parent / f"{out.name}_frames")
    summary = build_crop_dataset(source, out, CropDatasetConfig(**settings), progress=True)
    if not summary["crops"]:
        reasons = sorted({item["reason"] for item in summary["skipped"]})[:3]
        raise PipelineError(f"stage 2 cut no crops from {source}; first reasons: {reasons}. "
                            "Adjust \"crops\" in the config (size, fit_margin_px).")
    return out


def stage_train_refiner(preset: str, synthetic_crops: Path, real_crops: Path, out: Path,
                        settings: dict[str, Any], seed: int) -> Path:
    """Stage 3: train one refiner preset on unpaired crops; returns its exported model file."""
    config = RefinerConfig.from_dict({"seed": seed, **settings, "run_dir": str(out), "preset": preset,
                                      "synthetic_dir": str(synthetic_crops), "real_dir": str(real_crops)})
    return Path(train_refiner(config))


def stage_refine(refiner_model: Path, synthetic: Path, out: Path, crop_settings: dict[str, Any]) -> Path:
    """Stage 4 (thesis Figure 3.10): cut every person of S out upright (Algorithm 5), refine the
    crops with the trained generator in this process, paste them back under each person's own
    mask (Algorithm 6) and write S+ with S's annotations unchanged. This is the code path of
    ``refiner-daemon refine``, minus the sockets; ``refiner.json`` in S+ names the model."""
    crops = CropDatasetConfig(**crop_settings)
    if crops.size[0] != crops.size[1]:
        raise PipelineError(f"crops.size {crops.size}: refining S needs square crops; give one side")
    refiner = Refiner.load(refiner_model)
    refine_dataset(
        synthetic, out, lambda batch: refiner.refine(batch).images,
        RefinerIdentity(model=str(refiner_model), model_sha256=refiner.sha256, endpoint="in-process"),
        BatchRefineConfig(crop_size=crops.size[0], fit_margin_px=crops.fit_margin_px,
                          min_scale=crops.min_scale))
    return out


def _existing(path: str, what: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"{what} folder {folder} does not exist")
    return folder


def _subset_folder(source: Path, frames: list[str], out: Path) -> Path:
    """A folder that looks like ``source`` restricted to ``frames``: a filtered annotation file
    and symbolic links to the frames (so only R_train reaches the refiner)."""
    name = "coco.json" if (source / "coco.json").exists() else "annotations.json"
    data = json.loads((source / name).read_text())
    wanted = set(frames)
    images = [im for im in data["images"] if Path(im["file_name"]).name in wanted]
    ids = {im["id"] for im in images}
    subset = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    out.mkdir(parents=True, exist_ok=True)
    for image in images:
        link = out / image["file_name"]
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink((source / image["file_name"]).resolve(), link)
    atomic_write_json(out / name, subset)
    return out


# --------------------------------------------------------------------------- stages 5-7


@dataclass
class Run:
    """One trained and tested detector."""

    experiment: str
    seed: int
    epoch: int | None
    precision: float
    recall: float
    f1: float
    val_f1: float
    confidence_threshold: float
    train_images: int
    checkpoint: str


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "run"


def train_and_test(name: str, train_sets: list[DatasetSpec], val: list[DatasetSpec], test: list[DatasetSpec],
                   cfg: PipelineConfig, out: Path, seed: int) -> Run:
    """Stages 5-7 for one training set and seed: train, select on R_val, test on R_test."""
    run_dir = out / "detectors" / slug(name) / f"seed{seed}"
    result_path = run_dir / "test.json"
    if result_path.exists():  # resumable: finished runs are not repeated
        return Run(**json.loads(result_path.read_text()))
    detector_cfg = DetectorConfig.from_dict({**cfg.detector, "train": [asdict(s) for s in train_sets],
                                             "val": [asdict(s) for s in val], "out_dir": str(run_dir),
                                             "seed": seed})
    checkpoint = train_detector(detector_cfg)
    tested = evaluate_checkpoint(checkpoint, test, output_json=run_dir / "test_detail.json")
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else []
    best_val = max((h["val"]["f1"] for h in history), default=float("nan"))
    train_images = sum(len(_names_of(s)) for s in train_sets)
    run = Run(name, seed, tested["epoch"], tested["precision"], tested["recall"], tested["f1"], best_val,
              tested["confidence_threshold"], train_images, str(checkpoint))
    atomic_write_json(result_path, asdict(run))
    return run


def _names_of(spec: DatasetSpec) -> list[str]:
    names = spec.images if spec.images is not None else image_names(spec)
    return names[: spec.limit] if spec.limit is not None else names


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run every stage the config asks for and write ``tables.md``, ``results.json`` and
    ``f1_vs_mix_ratio.png`` into ``cfg.out_dir``; returns the results."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "pipeline_config.json", cfg.to_dict())
    real = _existing(cfg.real, "real")
    try:
        frames = split_real_frames(image_names(DatasetSpec(str(real))), cfg.real_split)
    except DatasetError as exc:
        raise PipelineError(f"real: {exc}") from exc
    atomic_write_json(out / "real_split.json", frames)
    r_train, r_val, r_test = (DatasetSpec(str(real), images=frames[k]) for k in ("train", "val", "test"))

    synthetic = stage_render(cfg, out / "S") if cfg.needs_synthetic else None
    refined_paths: dict[str, Path] = {}
    crops: dict[str, Path] = {}
    for name, refined in cfg.refined.items():
        if refined.path is not None:
            refined_paths[name] = _existing(refined.path, f"refined[{name!r}]")
            continue
        assert synthetic is not None  # needs_synthetic holds when a refined set has no path
        if not crops:
            crops = {"S": stage_crop(synthetic, out / "crops" / "S", None, cfg.crops),
                     "R_train": stage_crop(real, out / "crops" / "R_train", frames["train"], cfg.crops)}
        model = stage_train_refiner(str(refined.preset), crops["S"], crops["R_train"],
                                    out / "refiners" / slug(name), cfg.refiner, cfg.seed)
        refined_paths[name] = stage_refine(model, synthetic, out / "refined" / slug(name), cfg.crops)

    s_spec = DatasetSpec(str(synthetic)) if synthetic is not None else None
    plans: list[tuple[str, str, list[DatasetSpec]]] = []  # (table, row name, training sets)
    if "S" in cfg.experiments and s_spec is not None:
        plans.append(("4.2", "S", [s_spec]))
    if "R_train" in cfg.experiments or "mix" in cfg.experiments:
        plans.append(("4.2", "R_train", [r_train]))
    if "refined" in cfg.experiments:
        for name, path in refined_paths.items():
            table = "4.3" if cfg.refined[name].has_skip(name) else "4.4"
            plans.append((table, name, [DatasetSpec(str(path))]))
    if "R_train+S" in cfg.experiments and s_spec is not None:
        plans.append(("4.5", "R_train + S", [r_train, s_spec]))
    if "R_train+refined" in cfg.experiments:
        for name, path in refined_paths.items():
            plans.append(("4.5", f"R_train + {name}", [r_train, DatasetSpec(str(path))]))

    seeds = [cfg.seed + k for k in range(cfg.repeats)]
    runs: dict[str, list[Run]] = {}
    tables: dict[str, list[str]] = {}
    for table, name, train_sets in plans:
        runs[name] = [train_and_test(name, train_sets, [r_val], [r_test], cfg, out, seed) for seed in seeds]
        tables.setdefault(table, []).append(name)

    mix_name = None
    if "mix" in cfg.experiments and refined_paths:
        mix_name = cfg.mix_refined or _best_on_validation(refined_paths, runs, cfg, r_train, r_val, r_test,
                                                          out, seeds)
        train_count = len(frames["train"])
        for ratio in cfg.mix_ratios:
            row = f"R_train + {_ratio_text(ratio)}x {mix_name}"
            if ratio == 0:  # the thesis's "+ 0x" row is R_train alone: reuse those runs
                runs[row] = runs["R_train"]
            else:
                limit = round(ratio * train_count)
                runs[row] = [train_and_test(row, [r_train, DatasetSpec(str(refined_paths[mix_name]), limit=limit,
                                                                       seed=seed)],
                                            [r_val], [r_test], cfg, out, seed) for seed in seeds]
            tables.setdefault("4.6", []).append(row)

    distances = (distance_table(synthetic, real, frames["train"], refined_paths, out, cfg)
                 if cfg.distance_table and synthetic is not None else None)

    results = {"seeds": seeds, "real_split": frames, "synthetic": str(synthetic) if synthetic else None,
               "refined": {k: str(v) for k, v in refined_paths.items()}, "mix_refined": mix_name,
               "tables": {t: {row: summarise(runs[row]) for row in rows} for t, rows in tables.items()},
               "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
               "table_4_1": distances}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "tables.md", render_tables(results))
    if "4.6" in tables:
        plot_mix(results, out / "f1_vs_mix_ratio.png", cfg.mix_ratios)
    return results


def distance_table(synthetic: Path, real: Path, train_frames: list[str], refined_paths: dict[str, Path],
                   out: Path, cfg: PipelineConfig) -> dict[str, Any]:
    """Table 4.1: Fréchet distance and KID from each cropped set to cropped S and cropped
    R_train, on MobileNetV2 deep features (InceptionV3 weights are not obtainable here, so this
    is "FD (MobileNetV2)", not FID). Crops are cut with the same settings as for the refiners."""
    from refiner_daemon.common.devices import resolve_device
    from refiner_daemon.common.distances import frechet_distance, kernel_inception_distance
    from refiner_daemon.common.features import MobileNetFeatures, pooled_features
    from refiner_daemon.common.images import list_images

    sources = {"S": (synthetic, None), "R_train": (real, train_frames),
               **{name: (path, None) for name, path in refined_paths.items()}}
    extractor = MobileNetFeatures()
    device = resolve_device("auto")
    features = {}
    for name, (folder, frames) in sources.items():
        crop_folder = out / "crops" / slug(name)
        if not (crop_folder / "records.json").exists():
            stage_crop(folder, crop_folder, frames, cfg.crops)
        paths = list_images(crop_folder / "crops", recursive=True)
        features[name] = pooled_features(extractor, paths, 224, ("deep",), device=device, desc=f"crops {name}")["deep"]
    table: dict[str, Any] = {"feature_space": "MobileNetV2 deep layer (FD, not FID)", "rows": {}}
    for name, values in features.items():
        row = {"crops": len(values)}
        for target in ("S", "R_train"):
            kid, kid_std = kernel_inception_distance(values, features[target], subsets=10, seed=cfg.seed)
            row[f"fd_to_{target}"] = frechet_distance(values, features[target])
            row[f"kid_to_{target}"] = kid
            row[f"kid_std_to_{target}"] = kid_std
        table["rows"][name] = row
    return table


def _best_on_validation(refined_paths: dict[str, Path], runs: dict[str, list[Run]], cfg: PipelineConfig,
                        r_train: DatasetSpec, r_val: DatasetSpec, r_test: DatasetSpec, out: Path,
                        seeds: list[int]) -> str:
    """The S+ whose detectors scored best on R_val (never on R_test: that would be selection on
    the test set)."""
    scores = {}
    for name, path in refined_paths.items():
        if name not in runs:
            runs[name] = [train_and_test(name, [DatasetSpec(str(path))], [r_val], [r_test], cfg, out, seed)
                          for seed in seeds]
        scores[name] = float(np.mean([r.val_f1 for r in runs[name]]))
    return max(scores, key=lambda n: scores[n])


def _ratio_text(ratio: float) -> str:
    return str(int(ratio)) if float(ratio).is_integer() else f"{ratio:g}"


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Mean and standard deviation (population, 0 for one run) of each score, with the seeds."""
    summary: dict[str, Any] = {"seeds": [r.seed for r in runs], "epochs": [r.epoch for r in runs],
                               "train_images": runs[0].train_images if runs else 0}
    for key in ("precision", "recall", "f1", "val_f1"):
        values = np.array([getattr(r, key) for r in runs], dtype=float)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
    return summary


TABLE_TITLES = {
    "4.2": "Table 4.2: test results on R_test, trained on synthetic (S) and real (R_train) data",
    "4.3": "Table 4.3: test results on R_test of refined sets (generator with skip connection)",
    "4.4": "Table 4.4: test results on R_test of refined sets (generator without skip connection)",
    "4.5": "Table 4.5: test results on R_test, trained on R_train + S and R_train + S+",
    "4.6": "Table 4.6: test results on R_test, trained on R_train + k x |R_train| images of S+",
}


def _cell(stat: dict[str, float], repeats: int) -> str:
    return f"{stat['mean']:.3f}" if repeats == 1 else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def render_tables(results: dict[str, Any]) -> str:
    lines = ["# Detector results (thesis Algorithm 3)", "",
             (f"Seeds: {results['seeds']}. Checkpoints chosen by F1 on R_val; numbers are on R_test "
              "(mean ± std over seeds when repeated). Epoch: the selected checkpoint's epoch per seed."), ""]
    if results.get("table_4_1"):
        table = results["table_4_1"]
        lines += [f"## Table 4.1: distances between cropped sets ({table['feature_space']})", "",
                  "| cropped set | crops | FD to cS | FD to cR_train | KID to cS | KID to cR_train |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, row in table["rows"].items():
            lines.append(f"| c{name} | {row['crops']} | {row['fd_to_S']:.2f} | {row['fd_to_R_train']:.2f} "
                         f"| {row['kid_to_S']:.4f} | {row['kid_to_R_train']:.4f} |")
        lines.append("")
    for table in sorted(results["tables"]):
        lines += [f"## {TABLE_TITLES[table]}", "",
                  "| training set | epoch | precision | recall | F1 | train images | seeds |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row, s in results["tables"][table].items():
            repeats = len(s["seeds"])
            epochs = ", ".join(str(e) for e in s["epochs"])
            lines.append(f"| {row} | {epochs} | {_cell(s['precision'], repeats)} | {_cell(s['recall'], repeats)} "
                         f"| {_cell(s['f1'], repeats)} | {s['train_images']} | {s['seeds']} |")
        lines.append("")
    return "\n".join(lines)


def plot_mix(results: dict[str, Any], path: Path, ratios: list[float]) -> Path:
    """Figure 4.7: F1 on R_test against the mix ratio, with the spread over seeds."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from protocol.fileio import atomic_write_bytes

    rows = list(results["tables"]["4.6"].values())
    means = [r["f1"]["mean"] for r in rows]
    stds = [r["f1"]["std"] for r in rows]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.errorbar(ratios, means, yerr=stds, marker="o", capsize=3)
    axis.set_xlabel(f"size of {results['mix_refined']} added, in multiples of |R_train|")
    axis.set_ylabel("F1 on R_test")
    axis.set_title(f"R_train + k x {results['mix_refined']} (seeds {results['seeds']})")
    axis.grid(True, alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.evaluation.pipeline",
        description="Run thesis Algorithm 3 from a JSON config: (render, crop, train refiners, refine,) "
                    "train detectors on S, R_train, S+ and mixes, select on R_val, test on R_test, and "
                    "write Tables 4.2-4.6 (Markdown + JSON) and Figure 4.7.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""example config (existing S and S+ folders; stages 1-4 skipped):
  {
    "out_dir": "runs/exp1",
    "real": "../shared/data/real/cepdof_lunch3",
    "real_split": {"train": 0.6, "val": 0.2, "test": 0.2},
    "synthetic": "out/render_S",
    "refined": {"D+S": {"path": "out/refined_DS", "skip_connection": true},
                "D":   {"path": "out/refined_D"}},
    "mix_ratios": [0, 1, 3],
    "detector": {"epochs": 30, "input_size": 448},
    "repeats": 3, "seed": 0
  }
examples:
  python -m refiner_daemon.evaluation.pipeline --config exp1.json
  python -m refiner_daemon.evaluation.pipeline --config exp1.json --repeats 5 --dry-run
A refined entry with "preset" instead of "path" runs stages 2-4 for it. Finished detector runs
are reused when rerun (delete OUT/detectors/<name> to redo one).""")
    parser.add_argument("--config", required=True, type=Path, help="experiment JSON (PipelineConfig fields)")
    parser.add_argument("--repeats", type=int, help="override: runs per training set (different seeds)")
    parser.add_argument("--seed", type=int, help="override: the first seed")
    parser.add_argument("--out", help="override: output folder")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the config, then stop")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.config.read_text())
        for key in ("repeats", "seed"):
            if getattr(args, key) is not None:
                data[key] = getattr(args, key)
        if args.out:
            data["out_dir"] = args.out
        config = PipelineConfig.from_dict(data)
    except (OSError, json.JSONDecodeError, PipelineError, ValueError) as exc:
        parser.error(str(exc))
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    try:
        results = run_pipeline(config)
    except PipelineError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(render_tables(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())



