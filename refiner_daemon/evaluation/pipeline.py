"""The whole experiment of thesis Algorithm 3, driven by one JSON config. Reads top to bottom:

1. split the real frames R into train / val / test, with a gap of frames between the parts
   (consecutive video frames are near duplicates) and the heads of each part counted;
2. render S (or use an existing rendered set) and hold a few of its frames out as S_val;
3. cut person crops of S, S_val, R_train and R_val by the one crop rule of every domain;
4. train each refiner preset with each refiner seed, choosing its checkpoint on R_val;
5. gate each refiner: S+ is used only when its person-crop FD to R_val is lower than S's and
   its heads stay intact (``refiner_daemon.refiner.validation.assess_refiner``); otherwise the
   run stops with the numbers, unless ``allow_harmful_refiner`` marks the arms instead;
6. refine S with each refiner into S+;
7. fit one anchor set on the union of the training sets and save it with the run;
8. train a detector per arm (S, each S+, R_train, R_train + S, R_train + each S+), refiner
   seed and detector seed (every pair, or seed i with seed i: ``seed_design``), keeping the
   checkpoint with the best F1 on R_val;
9. test each on R_test, frame by frame;
10. report: mean F1, sample standard deviation over seeds, 95 % bootstrap intervals over test
    frames, paired differences for the comparisons that matter, person-crop and whole-frame
    gap measures, and the thesis's tables (``results.json``, ``tables.md``).

Every stage's output folder is keyed on a hash of what determines it (inputs, config, preset,
seeds, code version; ``stage_cache``), so a changed config reruns exactly the stages it
changes and a stopped run continues where it stopped.

    python -m refiner_daemon.evaluation.pipeline --config docs/experiments/NAME/config.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from protocol import processes
from protocol.cli import run_main
from protocol.crop_dataset import CropDatasetConfig, build_crop_dataset
from protocol.fileio import atomic_write_json, atomic_write_text
from refiner_daemon.detector.config import DatasetSpec, DetectorConfig
from refiner_daemon.detector.data import DatasetError, image_names, load_samples
from refiner_daemon.evaluation import stage_cache as cache
from refiner_daemon.evaluation.statistics import (
    RunCounts,
    frame_resamples,
    paired_difference,
    summarise_arm,
)
from refiner_daemon.evaluation.sweep import SWEEP_ENGINES, SweepOptions, run_sweep

EXPERIMENTS = ("S", "R_train", "refined", "R_train+S", "R_train+refined", "mix")
SEED_DESIGNS = ("cross", "paired")


class PipelineError(ValueError):
    """A pipeline configuration that cannot run; the message names the field."""


class RefinerGateError(PipelineError):
    """A refiner failed the gate (it makes S worse); the message points at its report."""


@dataclass
class RefinedSet:
    """A refined synthetic set S+: an existing folder, or one to make from a refiner preset."""

    path: str | None = None
    preset: str | None = None  # refiner preset (Table 3.2) used to make it, if stages 3-6 run
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
    split_gap: int = 1  # frames left out between train, val and test (near duplicates)
    synthetic: str | None = None  # S: an existing rendered set; None runs stage 2
    render: dict[str, Any] | None = None  # stage 2 settings when synthetic is None
    synthetic_val_frames: int = 4  # S frames held out of refiner training, for checkpoint choice
    refined: dict[str, RefinedSet] = field(default_factory=dict)  # name -> S+
    refiner: dict[str, Any] = field(default_factory=dict)  # RefinerConfig fields
    crops: dict[str, Any] = field(default_factory=dict)  # CropDatasetConfig fields
    mix_ratios: list[float] = field(default_factory=lambda: [0, 1, 3, 5, 7, 10, 15])
    mix_refined: str | None = None  # S+ for Table 4.6; None: the best on R_val
    experiments: list[str] = field(default_factory=lambda: ["S", "R_train", "refined", "R_train+S",
                                                            "R_train+refined"])
    detector: dict[str, Any] = field(default_factory=dict)  # DetectorConfig fields
    gap: bool = True  # person-crop and whole-frame FD / KID of S, S+, R_train to R_test
    distance_table: bool = False  # kept for old configs: the gap measures replace Table 4.1
    gate: bool = True  # assess each refiner on S_val / R_val before using its S+
    allow_harmful_refiner: bool = False  # run the arms of a refiner that fails the gate, marked
    seed: int = 0
    repeats: int = 1
    detector_seeds: list[int] | None = None  # default: seed, seed + 1, ... (repeats of them)
    refiner_seeds: list[int] | None = None  # default: the detector seeds
    # How a refined arm's runs combine the seeds. "cross": every refiner seed with every
    # detector seed (|R| x |D| detectors per arm). "paired": refiner seed i with detector seed i
    # (|D| detectors, each on another refiner): both seeds still vary, at a third of the cost
    # for 3 x 3, and each S+ run pairs with the S run of its detector seed.
    seed_design: str = "cross"

    def __post_init__(self) -> None:
        self.refined = {name: (value if isinstance(value, RefinedSet) else RefinedSet(**value)
                               if isinstance(value, dict) else RefinedSet(path=str(value)))
                        for name, value in self.refined.items()}
        unknown = set(self.experiments) - set(EXPERIMENTS)
        if unknown:
            raise PipelineError(f"experiments: unknown {sorted(unknown)}; valid: {sorted(EXPERIMENTS)}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise PipelineError(f"repeats must be a positive integer, got {self.repeats!r}")
        if not isinstance(self.split_gap, int) or self.split_gap < 0:
            raise PipelineError(f"split_gap must be a non-negative integer, got {self.split_gap!r}")
        if self.detector_seeds is None:
            self.detector_seeds = [self.seed + k for k in range(self.repeats)]
        if self.refiner_seeds is None:
            self.refiner_seeds = list(self.detector_seeds)
        if self.seed_design not in SEED_DESIGNS:
            raise PipelineError(f"seed_design {self.seed_design!r} unknown; valid: {sorted(SEED_DESIGNS)}")
        if self.seed_design == "paired" and len(self.refiner_seeds) != len(self.detector_seeds):
            raise PipelineError(
                f"seed_design 'paired' matches refiner seed i with detector seed i, so it needs as many "
                f"of each; got refiner_seeds {self.refiner_seeds} and detector_seeds {self.detector_seeds}")
        for name in ("detector_seeds", "refiner_seeds"):
            seeds = getattr(self, name)
            if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
                raise PipelineError(f"{name} must be distinct integers, got {seeds!r}")
        if any(not (isinstance(r, (int, float)) and r >= 0) for r in self.mix_ratios):
            raise PipelineError(f"mix_ratios must be non-negative numbers, got {self.mix_ratios}")
        forbidden = {"train", "val", "out_dir", "seed", "anchor_shapes"} & set(self.detector)
        if forbidden:
            raise PipelineError(f"detector: {sorted(forbidden)} are set by the pipeline; remove them")
        forbidden = {"run_dir", "preset", "synthetic_dir", "real_dir", "seed", "val_synthetic_dir",
                     "val_real_dir"} & set(self.refiner)
        if forbidden:
            raise PipelineError(f"refiner: {sorted(forbidden)} are set by the pipeline; remove them")
        if self.mix_refined is not None and self.mix_refined not in self.refined:
            raise PipelineError(f"mix_refined {self.mix_refined!r} is not one of refined {sorted(self.refined)}")
        if self.needs_synthetic and self.synthetic is None and self.render is None:
            raise PipelineError("give synthetic (an existing rendered set) or render (stage 2 settings)")
        for name, refined in self.refined.items():
            if refined.path is None and refined.preset is None:
                raise PipelineError(f"refined[{name!r}]: give path (existing S+) or preset (stages 3-6)")
        if not isinstance(self.synthetic_val_frames, int) or self.synthetic_val_frames < 1:
            raise PipelineError(f"synthetic_val_frames must be a positive integer, got {self.synthetic_val_frames!r}")
        # Fail now, not after an hour of training, when the detector or crop settings are wrong.
        DetectorConfig.from_dict({**self.detector, "train": ["."], "val": ["."], "out_dir": "."})
        CropDatasetConfig(**self.crops)

    @property
    def needs_synthetic(self) -> bool:
        """S is needed to train on it, to make a refined set from it, or for the gap measures."""
        return bool({"S", "R_train+S"} & set(self.experiments)) or any(
            r.path is None for r in self.refined.values())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise PipelineError(f"unknown pipeline keys {sorted(unknown)}; valid: {[f.name for f in fields(cls)]}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- 1. splitting R


def split_real_frames(names: list[str], split: dict[str, Any], gap: int = 0) -> dict[str, list[str]]:
    """Split frame names into train / val / test: explicit lists, or fractions giving contiguous
    blocks in sorted name order with ``gap`` frames left out between blocks. Every part must be
    non-empty, no frame may be in two, and explicit lists must keep ``gap`` frames apart too."""
    if set(split) != {"train", "val", "test"}:
        raise PipelineError(f"real_split needs exactly train, val and test, got {sorted(split)}")
    ordered = sorted(names)
    if all(isinstance(v, list) for v in split.values()):
        parts = {k: [str(n) for n in split[k]] for k in ("train", "val", "test")}
        unknown = sorted({n for frames in parts.values() for n in frames} - set(ordered))
        if unknown:
            raise PipelineError(f"real_split names frames not in the real set: {unknown[:5]}")
    elif all(isinstance(v, (int, float)) for v in split.values()):
        fractions = np.array([float(split[k]) for k in ("train", "val", "test")])
        if (fractions <= 0).any():
            raise PipelineError(f"real_split fractions must be positive, got {split}")
        usable = len(ordered) - 2 * gap
        counts = np.maximum(np.round(fractions / fractions.sum() * usable).astype(int), 1)
        counts[0] = usable - counts[1] - counts[2]
        if counts[0] < 1:
            raise PipelineError(f"{len(ordered)} real frames are too few to split three ways "
                                f"with {gap} frame(s) between the parts")
        train_end = counts[0]
        val_start = train_end + gap
        test_start = val_start + counts[1] + gap
        parts = {"train": ordered[:train_end], "val": ordered[val_start:val_start + counts[1]],
                 "test": ordered[test_start:]}
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
    position = {name: i for i, name in enumerate(ordered)}
    for a, b in (("train", "val"), ("val", "test"), ("train", "test")):
        closest = min(abs(position[x] - position[y]) for x in parts[a] for y in parts[b])
        if closest <= gap:
            raise PipelineError(f"real_split: {a} and {b} frames are {closest} apart in frame order; "
                                f"leave at least {gap} frame(s) between the parts (split_gap)")
    return parts


def count_heads(spec: DatasetSpec) -> int:
    return sum(len(s.head_boxes) for s in load_samples(spec))


# --------------------------------------------------------------------------- 2. rendering S


def render_command(settings: dict[str, Any], out: Path) -> list[str]:
    """The batch renderer's command line for stage 2: ``{"scene": ..., "count": 100}`` becomes
    ``--scene ... --count 100`` (``True`` becomes a bare flag, ``False``/``None`` are left out)."""
    argv = [sys.executable, "-m", "blender_addon.bl.cli_entry", "--out", str(out)]
    for key, value in settings.items():
        if key == "out":
            raise PipelineError("render: \"out\" is chosen by the pipeline; remove it")
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def stage_render(cfg: PipelineConfig, out: Path) -> Path:
    """Stage 2: the synthetic set S, rendered by the batch renderer in its own process (it
    needs Blender's bpy; this process holds torch). Its folder is keyed on the render settings
    and the renderer's code; the renderer resumes by itself, so a rerun renders only what is
    missing."""
    if cfg.synthetic is not None:
        return _existing(cfg.synthetic, "synthetic")
    assert cfg.render is not None  # checked by PipelineConfig
    settings = {"seed": cfg.seed, **cfg.render}
    folder = cache.stage_dir(out, "render", "S", cache.stage_key("render", settings=settings))
    if cache.is_done(folder):
        return folder
    command = render_command(settings, folder)
    print("stage 2:", " ".join(command), flush=True)
    renderer = processes.popen(command)  # stopped with this process, even by kill -9
    try:
        code = renderer.wait()
    finally:
        processes.untrack(renderer)
    if code != 0:
        raise PipelineError(f"stage 2 (render) failed; rerun by hand to see why: {' '.join(command)}")
    cache.mark_done(folder, command=command)
    return folder


def split_synthetic_frames(synthetic: Path, val_frames: int) -> dict[str, list[str]]:
    """S frames for refiner training and the last ``val_frames`` (in name order) held out as
    S_val, the synthetic side of checkpoint selection and of the gate."""
    names = sorted(image_names(DatasetSpec(str(synthetic))))
    if len(names) <= val_frames:
        raise PipelineError(f"S has {len(names)} frames; holding out synthetic_val_frames="
                            f"{val_frames} leaves none to train the refiner on")
    return {"train": names[:-val_frames], "val": names[-val_frames:]}


# --------------------------------------------------------------------------- 3. crops


def stage_crop(source: Path, out: Path, name: str, frames: list[str] | None,
               settings: dict[str, Any]) -> Path:
    """Stage 3: person crops of ``source`` (only ``frames`` of it, when given), keyed on the
    source's content, the frames and the crop settings."""
    key = cache.stage_key("crops", source=cache.folder_fingerprint(source, frames), frames=frames,
                          settings=settings)
    folder = cache.stage_dir(out, "crops", name, key)
    if cache.is_done(folder):
        return folder
    if frames is not None:
        source = _subset_folder(source, frames, folder.parent / f"{folder.name}_frames")
    summary = build_crop_dataset(source, folder, CropDatasetConfig(**settings), progress=True)
    if not summary["crops"]:
        reasons = sorted({item["reason"] for item in summary["skipped"]})[:3]
        raise PipelineError(f"stage 3 cut no crops from {source}; first reasons: {reasons}. "
                            "Adjust \"crops\" in the config (size, fit_margin_px).")
    cache.mark_done(folder, crops=summary["crops"], skipped=len(summary["skipped"]))
    return folder


# --------------------------------------------------------------------------- 4-6. refiners


@dataclass
class RefinerRun:
    """One trained refiner (preset x refiner seed), its gate assessment and its S+."""

    name: str
    seed: int
    model: str
    assessment: dict[str, Any] | None
    refined: str | None = None

    @property
    def harmful(self) -> bool:
        return self.assessment is not None and not self.assessment.get("passes", False)


def stage_train_refiner(preset: str, crops: dict[str, Path], out: Path, name: str,
                        settings: dict[str, Any], seed: int) -> Path:
    """Stage 4: train one refiner preset on unpaired crops (S_train, R_train), choosing its
    checkpoint on S_val / R_val: returns ``model_best.pt`` (the evaluation with the lowest
    person-crop FD to R_val whose heads were intact), or the last step's ``refiner.pt`` when no
    evaluation qualified (the gate then says why). Resumes an unfinished run."""
    from refiner_daemon.refiner.training import RefinerConfig, train_refiner, validation_summary

    key = cache.stage_key("refiner", preset=preset, settings=settings, seed=seed,
                          crops={k: cache.folder_fingerprint(v) for k, v in crops.items()})
    folder = cache.stage_dir(out, "refiners", f"{slug(name)}_seed{seed}", key)
    if cache.is_done(folder):
        return Path(cache.read_marker(folder)["model"])
    config = RefinerConfig.from_dict({
        **settings, "seed": seed, "run_dir": str(folder), "preset": preset,
        "synthetic_dir": str(crops["S_train"]), "real_dir": str(crops["R_train"]),
        "val_synthetic_dir": str(crops["S_val"]), "val_real_dir": str(crops["R_val"]),
        "resume": (folder / "checkpoints" / "latest.pt").exists()})
    last = Path(train_refiner(config))
    best = (validation_summary(folder) or {}).get("best")
    model = folder / "model_best.pt" if best and (folder / "model_best.pt").exists() else last
    cache.mark_done(folder, model=str(model), last=str(last), best=best)
    return model


def stage_gate(model: Path, crops: dict[str, Path], seed: int) -> dict[str, Any]:
    """Stage 5: does this refiner bring S_val closer to R_val without breaking heads? Cached
    beside the model."""
    from refiner_daemon.refiner.validation import assess_refiner

    path = model.parent / "gate.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    assessment = assess_refiner(model, crops["S_val"], crops["R_val"], seed=seed)
    atomic_write_json(path, assessment)
    return assessment


def stage_refine(model: Path, synthetic: Path, out: Path, name: str, crop_settings: dict[str, Any]) -> Path:
    """Stage 6 (thesis Figure 3.10): cut every person of S out upright (the crop rule the
    refiner was trained with), refine the crops in this process, paste them back under each
    person's own mask and write S+ with S's annotations unchanged. This is the code path of
    ``refiner-daemon refine``, minus the sockets; ``refiner.json`` in S+ names the model."""
    from refiner_daemon.refiner.batch_refine import (
        BatchRefineConfig,
        RefinerIdentity,
        refine_dataset,
    )
    from refiner_daemon.refiner.inference import Refiner

    crops = CropDatasetConfig(**crop_settings)
    if crops.size[0] != crops.size[1]:
        raise PipelineError(f"crops.size {crops.size}: refining S needs square crops; give one side")
    refiner = Refiner.load(model)
    key = cache.stage_key("refine", model=refiner.sha256, synthetic=cache.folder_fingerprint(synthetic),
                          crops=crop_settings)
    folder = cache.stage_dir(out, "refined", slug(name), key)
    if cache.is_done(folder):
        return folder
    refine_dataset(
        synthetic, folder, lambda batch: refiner.refine(batch).images,
        RefinerIdentity(model=str(model), model_sha256=refiner.sha256, endpoint="in-process"),
        BatchRefineConfig(crop_size=crops.size[0], fit_margin_px=crops.fit_margin_px,
                          min_scale=crops.min_scale, fit=crops.fit))
    cache.mark_done(folder, model=str(model))
    return folder


def _existing(path: str, what: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"{what} folder {folder} does not exist")
    return folder


def _subset_folder(source: Path, frames: list[str], out: Path) -> Path:
    """A folder that looks like ``source`` restricted to ``frames``: a filtered annotation file
    and symbolic links to the frames (so only the named frames reach the refiner)."""
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


# --------------------------------------------------------------------------- 7. anchors


def stage_anchors(train_sets: list[DatasetSpec], detector: dict[str, Any], out: Path, seed: int) -> list[list[float]]:
    """One anchor set for every arm, fitted by k-means on the union of the training sets' head
    boxes (so arms differ only in their data), saved as ``anchors.json``."""
    from refiner_daemon.detector.training import training_anchor_shapes

    defaults = DetectorConfig.from_dict({**detector, "train": ["."], "val": ["."], "out_dir": "."})
    path = out / "anchors.json"
    sources = [{"path": s.path, "images": s.images} for s in train_sets]
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("sources") == sources and saved.get("input_size") == defaults.input_size \
                and len(saved.get("anchor_shapes", [])) == defaults.num_anchors:
            return saved["anchor_shapes"]
    samples = [s for spec in train_sets for s in load_samples(spec, defaults.head_box_scale)]
    shapes = training_anchor_shapes(samples, defaults.input_size, defaults.num_anchors, seed)
    anchors = [[round(float(w), 4), round(float(h), 4)] for w, h in shapes]
    atomic_write_json(path, {"sources": sources, "input_size": defaults.input_size,
                             "units": "input pixels (w, h)", "anchor_shapes": anchors})
    return anchors


# --------------------------------------------------------------------------- 8-9. detectors


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
    refiner_seed: int | None = None
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> RunCounts:
        return RunCounts.from_per_image(self.seed, self.refiner_seed, self.per_image)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "run"


def train_and_test(name: str, train_sets: list[DatasetSpec], val: list[DatasetSpec], test: list[DatasetSpec],
                   cfg: PipelineConfig, out: Path, seed: int, anchors: list[list[float]],
                   refiner_seed: int | None = None) -> Run:
    """Stages 8-9 for one training set and seed pair: train, select on R_val, test on R_test.
    Keyed on the training and validation sets' contents, the detector config, the anchors and
    the seed; an unfinished training resumes from its last checkpoint."""
    from refiner_daemon.detector.evaluate import evaluate_checkpoint
    from refiner_daemon.detector.training import train_detector

    def describe(specs: list[DatasetSpec]) -> list[dict[str, Any]]:
        return [{"data": cache.folder_fingerprint(s.path), **asdict(s), "path": None} for s in specs]

    key = cache.stage_key("detector", train=describe(train_sets), val=describe(val), test=describe(test),
                          detector=cfg.detector, seed=seed, anchors=anchors)
    run_dir = cache.stage_dir(out, "detectors", f"{slug(name)}_r{refiner_seed}_d{seed}", key)
    result_path = run_dir / "test.json"
    if cache.is_done(run_dir) and result_path.exists():
        return Run(**json.loads(result_path.read_text()))
    detector_cfg = DetectorConfig.from_dict({**cfg.detector, "train": [asdict(s) for s in train_sets],
                                             "val": [asdict(s) for s in val], "out_dir": str(run_dir),
                                             "seed": seed, "anchor_shapes": anchors,
                                             "resume": (run_dir / "last.pt").exists()})
    checkpoint = train_detector(detector_cfg)
    tested = evaluate_checkpoint(checkpoint, test, output_json=run_dir / "test_detail.json")
    history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else []
    best_val = max((h["val"]["f1"] for h in history), default=float("nan"))
    train_images = sum(len(_names_of(s)) for s in train_sets)
    run = Run(name, seed, tested["epoch"], tested["precision"], tested["recall"], tested["f1"], best_val,
              tested["confidence_threshold"], train_images, str(checkpoint), refiner_seed,
              tested["per_image"])
    atomic_write_json(result_path, asdict(run))
    cache.mark_done(run_dir, f1=run.f1)
    return run


@dataclass(frozen=True)
class DetectorJob:
    """One detector run of an arm: what :func:`train_and_test` needs besides the experiment's
    config, output folder and anchors."""

    name: str
    train_sets: list[DatasetSpec]
    val: list[DatasetSpec]
    test: list[DatasetSpec]
    seed: int
    refiner_seed: int | None = None

    def describe(self) -> str:
        return f"{self.name!r} (refiner seed {self.refiner_seed}, detector seed {self.seed})"


def run_detector_job(job: DetectorJob, cfg: PipelineConfig, out: Path,
                     anchors: list[list[float]]) -> Run:
    return train_and_test(job.name, job.train_sets, job.val, job.test, cfg, out, job.seed, anchors,
                          job.refiner_seed)


def run_detectors(jobs: dict[str, list[DetectorJob]], cfg: PipelineConfig, out: Path,
                  anchors: list[list[float]], sweep: SweepOptions, reports: dict[str, Any],
                  phase: str) -> dict[str, list[Run]]:
    """Every job of every arm in one sweep (``sweep.engine``); the runs grouped by arm again,
    and the sweep's report (what ran where, retries) kept under ``reports[phase]``."""
    flat = [job for arm_jobs in jobs.values() for job in arm_jobs]
    runs, report = run_sweep(functools.partial(run_detector_job, cfg=cfg, out=out, anchors=anchors),
                             flat, sweep, describe=DetectorJob.describe)
    reports[phase] = report.to_dict()
    grouped: dict[str, list[Run]] = {name: [] for name in jobs}
    for job, run in zip(flat, runs, strict=True):
        grouped[job.name].append(run)
    return grouped


def _names_of(spec: DatasetSpec) -> list[str]:
    names = spec.images if spec.images is not None else image_names(spec)
    return names[: spec.limit] if spec.limit is not None else names


@dataclass
class Arm:
    """One training recipe: a name, its thesis table, and the training sets for a refiner seed
    (``None`` for arms without a refined set)."""

    name: str
    table: str
    train_sets: Callable[[int | None], list[DatasetSpec]]
    refiner_seeds: list[int | None]
    refined: str | None = None  # the S+ name it uses


# --------------------------------------------------------------------------- the run


def run_pipeline(cfg: PipelineConfig, sweep: SweepOptions | None = None) -> dict[str, Any]:
    """Run every stage the config asks for and write ``tables.md`` and ``results.json`` into
    ``cfg.out_dir``; returns the results. ``sweep`` says where the detector runs happen (default:
    in this process); it never changes the results."""
    sweep = sweep or SweepOptions()
    out = Path(cfg.out_dir)
    detector_seeds, refiner_seeds = list(cfg.detector_seeds or []), list(cfg.refiner_seeds or [])

    # 1. R, split with gaps. Every input set is read (and its images checked) before anything
    # is written, so bad data stops the run with the file named and the output folder as it was.
    real = _existing(cfg.real, "real")
    try:
        real_names = image_names(DatasetSpec(str(real)))
        for name, refined in cfg.refined.items():
            if refined.path is not None:
                image_names(DatasetSpec(str(_existing(refined.path, f"refined[{name!r}]"))))
        if cfg.synthetic is not None:
            image_names(DatasetSpec(str(_existing(cfg.synthetic, "synthetic"))))
    except DatasetError as exc:
        raise PipelineError(f"{exc}; fix or remove it (the pipeline reads every frame)") from exc
    frames = split_real_frames(real_names, cfg.real_split, cfg.split_gap)
    r_train, r_val, r_test = (DatasetSpec(str(real), images=frames[k]) for k in ("train", "val", "test"))
    heads = {k: count_heads(s) for k, s in (("train", r_train), ("val", r_val), ("test", r_test))}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "pipeline_config.json", cfg.to_dict())
    atomic_write_json(out / "real_split.json", {**frames, "gap": cfg.split_gap, "heads": heads})

    # 2. S, and S_val held out of refiner training.
    synthetic = stage_render(cfg, out) if cfg.needs_synthetic or cfg.synthetic is not None else None
    s_spec = DatasetSpec(str(synthetic)) if synthetic is not None else None

    # 3-6. Refiners, their gate, and S+.
    refiner_runs: dict[str, list[RefinerRun]] = {}
    crops: dict[str, Path] = {}
    for name, refined in cfg.refined.items():
        if refined.path is not None:
            refiner_runs[name] = [RefinerRun(name, refiner_seeds[0], "", None,
                                             str(_existing(refined.path, f"refined[{name!r}]")))]
            continue
        assert synthetic is not None  # needs_synthetic holds when a refined set has no path
        if not crops:
            s_frames = split_synthetic_frames(synthetic, cfg.synthetic_val_frames)
            crops = {"S_train": stage_crop(synthetic, out, "S_train", s_frames["train"], cfg.crops),
                     "S_val": stage_crop(synthetic, out, "S_val", s_frames["val"], cfg.crops),
                     "R_train": stage_crop(real, out, "R_train", frames["train"], cfg.crops),
                     "R_val": stage_crop(real, out, "R_val", frames["val"], cfg.crops)}
        runs = []
        for seed in refiner_seeds:
            model = stage_train_refiner(str(refined.preset), crops, out, name, cfg.refiner, seed)
            assessment = stage_gate(model, crops, seed) if cfg.gate else None
            run = RefinerRun(name, seed, str(model), assessment)
            if run.harmful and not cfg.allow_harmful_refiner:
                raise RefinerGateError(_gate_message(run))
            run.refined = str(stage_refine(model, synthetic, out, f"{name}_seed{seed}", cfg.crops))
            runs.append(run)
        refiner_runs[name] = runs

    # 7. One anchor set on the union of the training sets (S+ has S's boxes).
    union = [r_train] + ([s_spec] if s_spec is not None else []) + [
        DatasetSpec(runs[0].refined) for runs in refiner_runs.values() if s_spec is None and runs[0].refined]
    anchors = stage_anchors(union, cfg.detector, out, cfg.seed)

    # 8-9. Detector arms: every arm x seed run is independent, so one sweep runs them all
    # (here, or as Ray tasks); the mix rows need the arms' R_val scores, so they come after.
    arms = plan_arms(cfg, r_train, s_spec, refiner_runs)
    sweep_reports: dict[str, Any] = {}
    runs_by_arm = run_detectors(
        {arm.name: [DetectorJob(arm.name, arm.train_sets(rs), [r_val], [r_test], ds, rs)
                    for rs, ds in seed_pairs(arm.refiner_seeds, detector_seeds, cfg.seed_design)]
         for arm in arms}, cfg, out, anchors, sweep, sweep_reports, "arms")
    mix_name = _run_mix(cfg, frames, refiner_runs, runs_by_arm, r_train, r_val, r_test, out, anchors,
                        lambda jobs: run_detectors(jobs, cfg, out, anchors, sweep, sweep_reports, "mix"))
    atomic_write_json(out / "sweep_report.json", sweep_reports)

    # 10. Report.
    results = report(cfg, frames, heads, synthetic, refiner_runs, arms, runs_by_arm, anchors, mix_name, out)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "tables.md", render_tables(results))
    if "4.6" in results["tables"]:
        plot_mix(results, out / "f1_vs_mix_ratio.png", cfg.mix_ratios)
    return results


def seed_pairs(refiner_seeds: list[int | None], detector_seeds: list[int],
               design: str) -> list[tuple[int | None, int]]:
    """The (refiner seed, detector seed) of each run of one arm (see ``seed_design``); an arm
    without a refined set (refiner seeds ``[None]``) runs every detector seed either way."""
    if design == "paired" and refiner_seeds != [None]:
        return list(zip(refiner_seeds, detector_seeds, strict=True))
    return [(rs, ds) for rs in refiner_seeds for ds in detector_seeds]


def plan_arms(cfg: PipelineConfig, r_train: DatasetSpec, s_spec: DatasetSpec | None,
              refiner_runs: dict[str, list[RefinerRun]]) -> list[Arm]:
    """The detector arms the config asks for, in the thesis's table order."""
    def refined_sets(name: str) -> Callable[[int | None], list[DatasetSpec]]:
        by_seed = {run.seed: run for run in refiner_runs[name]}
        return lambda seed: [DatasetSpec(str(by_seed[seed].refined))]  # type: ignore[index]

    arms: list[Arm] = []
    if "S" in cfg.experiments and s_spec is not None:
        arms.append(Arm("S", "4.2", lambda _: [s_spec], [None]))
    if {"R_train", "mix"} & set(cfg.experiments):
        arms.append(Arm("R_train", "4.2", lambda _: [r_train], [None]))
    seeds_of = {name: [run.seed for run in runs] for name, runs in refiner_runs.items()}
    if "refined" in cfg.experiments:
        for name in refiner_runs:
            table = "4.3" if cfg.refined[name].has_skip(name) else "4.4"
            arms.append(Arm(name, table, refined_sets(name), seeds_of[name], name))  # type: ignore[arg-type]
    if "R_train+S" in cfg.experiments and s_spec is not None:
        arms.append(Arm("R_train + S", "4.5", lambda _: [r_train, s_spec], [None]))
    if "R_train+refined" in cfg.experiments:
        for name in refiner_runs:
            sets = refined_sets(name)
            arms.append(Arm(f"R_train + {name}", "4.5", lambda seed, sets=sets: [r_train, *sets(seed)],
                            seeds_of[name], name))  # type: ignore[arg-type]
    return arms


def _run_mix(cfg: PipelineConfig, frames: dict[str, list[str]], refiner_runs: dict[str, list[RefinerRun]],
             runs_by_arm: dict[str, list[Run]], r_train: DatasetSpec, r_val: DatasetSpec,
             r_test: DatasetSpec, out: Path, anchors: list[list[float]],
             detectors: Callable[[dict[str, list[DetectorJob]]], dict[str, list[Run]]]) -> str | None:
    """Thesis Table 4.6: R_train plus k x |R_train| images of one S+ (the first refiner seed's),
    chosen by F1 on R_val (never on R_test) unless the config names it."""
    if "mix" not in cfg.experiments or not refiner_runs:
        return None
    if cfg.mix_refined is not None:
        mix_name = cfg.mix_refined
    else:
        scores = {name: float(np.mean([r.val_f1 for r in runs_by_arm.get(name, [])] or [-1.0]))
                  for name in refiner_runs}
        mix_name = max(scores, key=lambda n: scores[n])
    first = refiner_runs[mix_name][0]
    jobs: dict[str, list[DetectorJob]] = {}
    for ratio in cfg.mix_ratios:
        row = f"R_train + {_ratio_text(ratio)}x {mix_name}"
        if ratio == 0:  # the thesis's "+ 0x" row is R_train alone: reuse those runs
            jobs[row] = []
            continue
        limit = round(ratio * len(frames["train"]))
        jobs[row] = [DetectorJob(row, [r_train, DatasetSpec(str(first.refined), limit=limit, seed=seed)],
                                 [r_val], [r_test], seed, first.seed)
                     for seed in cfg.detector_seeds or []]
    trained = detectors(jobs)
    for row, row_jobs in jobs.items():  # in ratio order, as the table lists them
        runs_by_arm[row] = trained[row] if row_jobs else runs_by_arm["R_train"]
    return mix_name


def _ratio_text(ratio: float) -> str:
    return str(int(ratio)) if float(ratio).is_integer() else f"{ratio:g}"


def _gate_message(run: RefinerRun) -> str:
    a = run.assessment or {}
    return (f"refiner {run.name} (seed {run.seed}) fails the gate: {'; '.join(a.get('reasons', []))}. "
            f"Person-crop FD to R_val: S {a.get('fd_raw', float('nan')):.2f}, S+ "
            f"{a.get('fd_refined', float('nan')):.2f} (difference 95% interval "
            f"{a.get('fd_diff_ci95')}); head structure {a.get('head_ssim', float('nan')):.3f} "
            f"(threshold {a.get('head_threshold')}). Contact sheet: {a.get('contact_sheet')}. "
            "Fix the refiner (more steps, another preset) or pass --allow-harmful-refiner to run "
            "its arms anyway, marked as harmful in every table")


# --------------------------------------------------------------------------- 10. report


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for one run) of each score, with
    the seeds, for the thesis-shaped tables."""
    summary: dict[str, Any] = {"seeds": [r.seed for r in runs], "epochs": [r.epoch for r in runs],
                               "refiner_seeds": [r.refiner_seed for r in runs],
                               "train_images": runs[0].train_images if runs else 0}
    for key in ("precision", "recall", "f1", "val_f1"):
        values = np.array([getattr(r, key) for r in runs], dtype=float)
        summary[key] = {"mean": float(values.mean()),
                        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return summary


def comparisons(arms: list[Arm], refiner_runs: dict[str, list[RefinerRun]]) -> list[tuple[str, str]]:
    """The paired comparisons that matter: S+ vs S, R_train + S+ vs R_train + S, R_train + S+ vs
    R_train for every S+, and R_train + S vs R_train."""
    names = {arm.name for arm in arms}
    wanted = [("R_train + S", "R_train")]
    for name in refiner_runs:
        wanted += [(name, "S"), (f"R_train + {name}", "R_train + S"), (f"R_train + {name}", "R_train")]
    return [(a, b) for a, b in wanted if a in names and b in names]


def report(cfg: PipelineConfig, frames: dict[str, list[str]], heads: dict[str, int], synthetic: Path | None,
           refiner_runs: dict[str, list[RefinerRun]], arms: list[Arm], runs_by_arm: dict[str, list[Run]],
           anchors: list[list[float]], mix_name: str | None, out: Path) -> dict[str, Any]:
    """Everything the experiment measured, in the shape ``docs/experiments/*/results.json``
    documents: arms with intervals, paired differences, gap measures, the thesis's tables."""
    test_frames = len(frames["test"])
    resamples = frame_resamples(test_frames, seed=cfg.seed)
    harmful = {name for name, runs in refiner_runs.items() if any(r.harmful for r in runs)}
    arm_results = []
    for arm in arms:
        runs = runs_by_arm[arm.name]
        arm_results.append({
            "name": arm.name, "table": arm.table,
            "train_sets": sorted({s.path for rs in arm.refiner_seeds for s in arm.train_sets(rs)}),
            "refiner_seeds": [s for s in arm.refiner_seeds if s is not None],
            "detector_seeds": list(cfg.detector_seeds or []),
            "seed_pairs": [[r.refiner_seed, r.seed] for r in runs],  # (refiner, detector) per run
            "harmful_refiner": arm.refined in harmful,
            "test": summarise_arm([r.counts() for r in runs], resamples),
        })
    by_name = {arm.name: arm for arm in arms}
    paired = [{"a": a, "b": b, **paired_difference([r.counts() for r in runs_by_arm[a]],
                                                   [r.counts() for r in runs_by_arm[b]], resamples),
               "harmful_refiner": bool({by_name[a].refined, by_name[b].refined} & harmful)}
              for a, b in comparisons(arms, refiner_runs)]
    tables: dict[str, dict[str, Any]] = {}
    for arm in arms:
        tables.setdefault(arm.table, {})[arm.name] = summarise(runs_by_arm[arm.name])
    if mix_name is not None:
        for ratio in cfg.mix_ratios:
            row = f"R_train + {_ratio_text(ratio)}x {mix_name}"
            tables.setdefault("4.6", {})[row] = summarise(runs_by_arm[row])
    gap = (stage_gap(cfg, synthetic, refiner_runs, frames, out)
           if cfg.gap and synthetic is not None else None)
    return {
        "question": "Does training on refined synthetic data give a head detector that works better "
                    "on real ceiling-fisheye frames?",
        "detector_seeds": cfg.detector_seeds, "refiner_seeds": cfg.refiner_seeds,
        "seed_design": cfg.seed_design,
        "seeds": cfg.detector_seeds,
        "real_split": {**frames, "gap": cfg.split_gap, "heads": heads},
        "synthetic": str(synthetic) if synthetic else None,
        "anchors": anchors,
        "refiners": {name: [{"seed": r.seed, "model": r.model, "checkpoint": _chosen_checkpoint(r.model),
                             "refined": r.refined, "harmful": r.harmful, "gate": r.assessment}
                            for r in runs]
                     for name, runs in refiner_runs.items()},
        "refined": {name: runs[0].refined for name, runs in refiner_runs.items()},
        "mix_refined": mix_name,
        "arms": arm_results,
        "paired": paired,
        "gap": gap,
        "tables": tables,
        "runs": {name: [{k: v for k, v in asdict(r).items() if k != "per_image"} for r in runs]
                 for name, runs in runs_by_arm.items()},
        "statistics": ("f1_std: sample standard deviation over runs (ddof=1); f1_ci95: 95% percentile "
                       f"bootstrap over the {test_frames} test frames ({len(resamples)} resamples), "
                       "every run's F1 recomputed from the resampled frames' summed counts; paired: "
                       "runs matched by seed, the same resamples for both arms"),
    }


def _chosen_checkpoint(model: str) -> dict[str, Any] | None:
    """Which training step a refiner's model is, from its run's stage marker: the validation's
    best evaluation, or the last step when none qualified."""
    marker = Path(model).parent / cache.STAGE_MARKER if model else None
    if marker is None or not marker.exists():
        return None
    record = json.loads(marker.read_text(encoding="utf-8"))
    return {"file": Path(model).name, "best_on_r_val": record.get("best")}


def stage_gap(cfg: PipelineConfig, synthetic: Path, refiner_runs: dict[str, list[RefinerRun]],
              frames: dict[str, list[str]], out: Path) -> dict[str, Any]:
    """Person-crop and whole-frame FD and KID of S, each S+ (first refiner seed) and R_train
    against R_test (``refiner_daemon.evaluation.gap.gap_measures``), cached on inputs."""
    from refiner_daemon.evaluation.gap import gap_measures

    sets = {"S": synthetic, "R_train": Path(cfg.real), "R_test": Path(cfg.real),
            **{name: Path(str(runs[0].refined)) for name, runs in refiner_runs.items() if runs[0].refined}}
    subsets = {"R_train": frames["train"], "R_test": frames["test"]}
    key = cache.stage_key("gap", sets={k: cache.folder_fingerprint(v, subsets.get(k)) for k, v in sets.items()},
                          crops=cfg.crops, seed=cfg.seed)
    folder = cache.stage_dir(out, "gap", "gap", key)
    if cache.is_done(folder):
        return json.loads((folder / "gap.json").read_text(encoding="utf-8"))
    raw = gap_measures(sets, "R_test", folder, seed=cfg.seed, frames=subsets,
                       crop_config=CropDatasetConfig(**cfg.crops))
    measures = {"feature_space": raw.pop("feature_space", ""), "reference": "R_test", "sets": raw}
    atomic_write_json(folder / "gap.json", measures)
    cache.mark_done(folder)
    return measures


TABLE_TITLES = {
    "4.2": "Table 4.2: test results on R_test, trained on synthetic (S) and real (R_train) data",
    "4.3": "Table 4.3: test results on R_test of refined sets (generator with skip connection)",
    "4.4": "Table 4.4: test results on R_test of refined sets (generator without skip connection)",
    "4.5": "Table 4.5: test results on R_test, trained on R_train + S and R_train + S+",
    "4.6": "Table 4.6: test results on R_test, trained on R_train + k x |R_train| images of S+",
}


def _cell(stat: dict[str, float], repeats: int) -> str:
    return f"{stat['mean']:.3f}" if repeats == 1 else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _interval(values: list[float]) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def render_tables(results: dict[str, Any]) -> str:
    """The results as Markdown: arms with intervals, paired differences, gap, thesis tables."""
    lines = ["# Detector results (thesis Algorithm 3)", ""]
    split = results.get("real_split") or {}
    if split.get("heads"):
        lines += [f"R split (gap of {split.get('gap')} frame(s) between parts): "
                  + ", ".join(f"{k} {len(split[k])} frames / {split['heads'][k]} heads"
                              for k in ("train", "val", "test")), ""]
    if results.get("arms"):
        lines += ["## Arms on R_test", "",
                  ("Mean F1 over refiner seeds x detector seeds; std: sample standard deviation over "
                   "those runs; 95% interval: bootstrap over test frames."), "",
                  "| arm | runs | F1 mean | F1 std | F1 95% interval | precision | recall | heads |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for arm in results["arms"]:
            t = arm["test"]
            mark = " (harmful refiner)" if arm.get("harmful_refiner") else ""
            lines.append(f"| {arm['name']}{mark} | {t['runs']} | {t['f1_mean']:.3f} | {t['f1_std']:.3f} "
                         f"| {_interval(t['f1_ci95'])} | {t['precision_mean']:.3f} | {t['recall_mean']:.3f} "
                         f"| {t['heads']} |")
        lines.append("")
    if results.get("paired"):
        lines += ["## Paired differences (F1 of a minus F1 of b, runs matched by seed)", "",
                  "| a | b | pairs | mean difference | 95% interval | share of pairs a better |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for p in results["paired"]:
            mark = " (harmful refiner)" if p.get("harmful_refiner") else ""
            lines.append(f"| {p['a']}{mark} | {p['b']} | {p['pairs']} | {p['f1_diff_mean']:+.3f} "
                         f"| {_interval(p['f1_diff_ci95'])} | {p['share_of_pairs_a_better']:.2f} |")
        lines.append("")
    if results.get("refiners"):
        lines += ["## Refiners: the checkpoint each arm used and its gate", "",
                  ("| refiner | seed | checkpoint | FD S_val to R_val | FD S+_val to R_val "
                   "| difference 95% interval | head SSIM | gate |"),
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, runs in results["refiners"].items():
            for run in runs:
                chosen, gate = run.get("checkpoint") or {}, run.get("gate") or {}
                best = chosen.get("best_on_r_val")
                step = f"step {best['step']} (best on R_val)" if best else chosen.get("file", "given")
                verdict = ("passes" if gate.get("passes") else "fails: " + "; ".join(gate.get("reasons", []))
                           ) if gate else "not run"
                interval = _interval(gate["fd_diff_ci95"]) if gate.get("fd_diff_ci95") else ""
                lines.append(f"| {name} | {run['seed']} | {step} | {gate.get('fd_raw', float('nan')):.1f} "
                             f"| {gate.get('fd_refined', float('nan')):.1f} | {interval} "
                             f"| {gate.get('head_ssim', float('nan')):.2f} | {verdict} |")
        lines.append("")
    gap = results.get("gap")
    if gap:
        lines += [f"## Gap to R_test ({gap.get('feature_space', '')})", "",
                  "| set | crops | FD person | KID person | FD frame | KID frame |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, row in gap.get("sets", {}).items():
            lines.append(f"| {name} | {row.get('crops')} | {row.get('fd_person', float('nan')):.2f} "
                         f"| {row.get('kid_person', float('nan')):.4f} | {row.get('fd_frame', float('nan')):.2f} "
                         f"| {row.get('kid_frame', float('nan')):.4f} |")
        lines.append("")
    for table in sorted(results.get("tables", {})):
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
    """The pipeline command under the project's error and stop contract (``protocol.cli``):
    one-line errors with exit code 2, children stopped on SIGTERM / SIGINT / SIGHUP."""
    return run_main(_main, argv, prog="pipeline")


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.evaluation.pipeline",
        description="Run thesis Algorithm 3 from a JSON config: (render S, crop, train refiners with "
                    "checkpoints chosen on R_val, gate them, refine,) train detectors on S, R_train, S+ "
                    "and mixes over refiner x detector seeds, select on R_val, test on R_test, and write "
                    "results.json and tables.md with bootstrap intervals and paired differences.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""example config (existing S; refiners trained by the pipeline):
  {
    "out_dir": "out/experiments/exp1",
    "real": "../shared/data/real/cepdof_lunch3",
    "real_split": {"train": 0.5, "val": 0.2, "test": 0.3}, "split_gap": 1,
    "synthetic": "out/render_S",
    "refined": {"C_CP+S": {"preset": "C_CP+S"}, "A+S": {"preset": "A+S"}},
    "refiner": {"width": 32, "n_blocks": 6, "max_steps": 2000, "val_every": 250},
    "detector": {"epochs": 30, "input_size": 448},
    "refiner_seeds": [0, 1, 2], "detector_seeds": [0, 1, 2]
  }
examples:
  python -m refiner_daemon.evaluation.pipeline --config exp1.json
  python -m refiner_daemon.evaluation.pipeline --config exp1.json --dry-run
  # the detector runs as Ray tasks: a local 8-CPU instance, 2 CPUs per run (4 at a time)
  python -m refiner_daemon.evaluation.pipeline --config exp1.json --engine ray --ray-cpus 8 \
      --cpus-per-task 2
  # on a cluster (the project's environment on every node, out_dir on a shared file system)
  python -m refiner_daemon.evaluation.pipeline --config exp1.json --engine ray --address auto \
      --cpus-per-task 4 --gpus-per-task 0.5
Every stage's folder is keyed on what determines it, so a rerun continues a stopped run and a
changed config reruns only what it changes. A refiner that makes S worse on R_val stops the
run with its numbers and contact sheet; --allow-harmful-refiner runs its arms anyway, marked.""")
    parser.add_argument("--config", required=True, type=Path, help="experiment JSON (PipelineConfig fields)")
    parser.add_argument("--repeats", type=int, help="override: detector seeds seed, seed+1, ...")
    parser.add_argument("--seed", type=int, help="override: the first seed")
    parser.add_argument("--out", help="override: output folder")
    parser.add_argument("--allow-harmful-refiner", action="store_true",
                        help="run the arms of a refiner that fails the gate, marked as harmful")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the config, then stop")
    where = parser.add_argument_group("where the detector runs happen (never what they compute)")
    where.add_argument("--engine", choices=list(SWEEP_ENGINES), default="local",
                       help="local: one run after another in this process (default); ray: every "
                            "arm x seed run as a Ray task, retried when its worker dies "
                            "(needs 'pip install ray==2.60.0')")
    where.add_argument("--address", metavar="ADDR",
                       help="ray: join this cluster ('auto', 'HOST:6379'); default: a local instance")
    where.add_argument("--ray-cpus", type=int, metavar="N",
                       help="ray: CPUs of the local instance (default: all of this machine)")
    where.add_argument("--cpus-per-task", type=int, default=1, metavar="N",
                       help="ray: CPUs (and torch threads) each detector run declares (default 1)")
    where.add_argument("--gpus-per-task", type=float, default=0.0, metavar="G",
                       help="ray: GPUs each detector run declares, e.g. 0.5 to share one (default 0)")
    where.add_argument("--max-retries", type=int, default=2,
                       help="ray: retries of a run whose worker died (default 2)")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.config.read_text())
        for key in ("repeats", "seed"):
            if getattr(args, key) is not None:
                data[key] = getattr(args, key)
        if args.repeats is not None:
            data.pop("detector_seeds", None)
        if args.out:
            data["out_dir"] = args.out
        if args.allow_harmful_refiner:
            data["allow_harmful_refiner"] = True
        config = PipelineConfig.from_dict(data)
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise PipelineError(f"{args.config}: {exc}; fix the config (see --help for an example)") from exc
    sweep = SweepOptions(args.engine, args.address, args.ray_cpus, args.cpus_per_task,
                         args.gpus_per_task, args.max_retries)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    results = run_pipeline(config, sweep)
    print(render_tables(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
