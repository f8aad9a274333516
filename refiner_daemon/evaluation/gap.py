"""Gap measures that can see people: FD and KID on person crops and on whole frames.

People cover a few percent of a ceiling-fisheye frame, so a distance between whole-frame
features mostly measures the room: a refiner that makes every person look real barely moves
it. :func:`gap_measures` cuts person crops from every set with the one crop rule of
``protocol.crop_dataset`` (its default :class:`CropDatasetConfig`, the same for rendered and
real sets) and measures the distances on those crops, next to the same distances on the whole
frames:

    measures = gap_measures({"real": Path("../shared/data/real/cepdof_lunch3"),
                             "synthetic": Path("out/render_S"), "refined": Path("out/refined_D")},
                            reference="real", out_dir=Path("out/gap_measures"))
    measures["refined"]["fd_person"], measures["refined"]["kid_person"], measures["feature_space"]

Features: InceptionV3's 2048-d pool features (FID proper) when its torchvision weights are on
disk (``inception_weights=PATH`` or torchvision's cache), otherwise MobileNetV2's 1280-d deep
features (then the number is "FD (MobileNetV2)", not FID); ``feature_space`` names which. KID
uses subsets of half the smaller set (``refiner_daemon.common.distances.kid_subset_size``).
Crops are cached in ``out_dir/crops/<set>/`` and reused while the set's annotation file, its
images (size and modification time) and the crop config are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from protocol.annotations import CEPDOF_FILE, RENDERED_COCO_FILE, load_annotations
from protocol.crop_dataset import RECORDS_FORMAT_VERSION, CropDatasetConfig, build_crop_dataset
from protocol.fileio import atomic_write_json
from refiner_daemon.common.devices import resolve_device
from refiner_daemon.common.distances import (
    frechet_distance,
    kernel_inception_distance,
    kid_subset_size,
)
from refiner_daemon.common.features import (
    INCEPTION_SIZE,
    InceptionFeatures,
    MobileNetFeatures,
    inception_pool_features,
    pooled_features,
)

MOBILENET_SIZE = 224
DEFAULT_CROP_CONFIG = CropDatasetConfig()  # the project's one crop rule, as protocol.crop_dataset's CLI
FEATURE_SPACE_KEY = "feature_space"
CACHE_FILE = "gap_source.json"
MEASURE_KEYS = ("crops", "frames", "fd_person", "kid_person", "kid_person_std",
                "fd_frame", "kid_frame", "kid_frame_std")


class GapError(ValueError):
    """Bad input to :func:`gap_measures`; the message says how to fix it."""


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "set"


def _annotation_file(folder: Path) -> Path:
    for name in (RENDERED_COCO_FILE, CEPDOF_FILE):
        if (folder / name).is_file():
            return folder / name
    raise GapError(f"{folder} holds neither {RENDERED_COCO_FILE} (a rendered set) nor {CEPDOF_FILE} "
                   "(CEPDOF-style real frames); gap measures need annotated people to crop")


def source_fingerprint(folder: Path, config: CropDatasetConfig) -> dict[str, Any]:
    """What the cached crops of ``folder`` depend on: the annotation file's hash, every listed
    image's size and modification time, the crop config and the records format."""
    annotation = _annotation_file(folder)
    _, images = load_annotations(folder)
    listed = {}
    for image in images:
        stat = image.path.stat() if image.path.is_file() else None
        listed[image.path.relative_to(folder).as_posix()] = [stat.st_size, stat.st_mtime_ns] if stat else None
    return json.loads(json.dumps({  # as it reads back from the JSON file (tuples become lists)
        "source": str(folder.resolve()),
        "annotation_file": annotation.name,
        "annotation_sha256": hashlib.sha256(annotation.read_bytes()).hexdigest(),
        "images": listed,
        "config": asdict(config),
        "records_format": RECORDS_FORMAT_VERSION,
    }))


def person_crops(folder: Path, crop_dir: Path, config: CropDatasetConfig = DEFAULT_CROP_CONFIG
                 ) -> tuple[list[dict[str, Any]], bool]:
    """Every person crop of ``folder`` cut into ``crop_dir`` (``protocol.crop_dataset`` layout),
    reused when ``crop_dir`` already holds the crops of the same source and config. Returns the
    records' items (``crop_file``, ``image_file``, ...) and whether the cache was reused."""
    fingerprint = source_fingerprint(folder, config)
    stamp, records = crop_dir / CACHE_FILE, crop_dir / "records.json"
    if stamp.is_file() and records.is_file():
        try:
            if json.loads(stamp.read_text()) == fingerprint:
                return json.loads(records.read_text())["items"], True
        except (ValueError, KeyError):
            pass  # unreadable: cut again
    if crop_dir.exists():
        shutil.rmtree(crop_dir)
    build_crop_dataset(folder, crop_dir, config, progress=False)
    atomic_write_json(stamp, fingerprint)  # written last: marks the cache complete
    return json.loads(records.read_text())["items"], False


def _select_frames(name: str, folder: Path, frame_paths: list[Path], wanted: Sequence[str] | None) -> list[Path]:
    """``frame_paths`` restricted to ``wanted`` frame files, each named by its path relative to
    the set folder (as in the annotation file) or by its file name."""
    if wanted is None:
        return frame_paths
    by_name: dict[str, Path] = {}
    for path in frame_paths:
        by_name.setdefault(path.relative_to(folder).as_posix(), path)
        by_name.setdefault(path.name, path)
    missing = [frame for frame in wanted if frame not in by_name]
    if missing:
        raise GapError(f"frames of {name!r} not in {folder}: {missing[:5]}"
                       f"{' ...' if len(missing) > 5 else ''}; name frames as the annotation file does")
    chosen = {by_name[frame] for frame in wanted}
    return [path for path in frame_paths if path in chosen]


def _sample(paths: list[Path], limit: int | None, rng: np.random.Generator) -> list[Path]:
    if limit is None or len(paths) <= limit:
        return paths
    return [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]


def _pair(features: np.ndarray, reference: np.ndarray, subsets: int, seed: int) -> tuple[Any, Any, Any]:
    """FD, KID and KID's std; ``None`` for each when either side has fewer than 2 samples."""
    if len(features) < 2 or len(reference) < 2:
        return None, None, None
    kid, kid_std = kernel_inception_distance(features, reference, subsets=subsets, seed=seed)
    return frechet_distance(features, reference), kid, kid_std


def gap_measures(
    sets: Mapping[str, str | Path],
    reference: str,
    out_dir: Path,
    *,
    seed: int = 0,
    frames: Mapping[str, Sequence[str]] | None = None,
    crop_config: CropDatasetConfig = DEFAULT_CROP_CONFIG,
    inception_weights: str | Path | None = None,
    mobilenet_weights: str | Path | None = None,
    kid_subsets: int = 20,
    max_items: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """FD and KID of every set against ``reference``, on person crops and on whole frames.

    ``sets`` maps a name to a dataset folder (rendered ``coco.json`` or CEPDOF-style
    ``annotations.json``); ``frames`` optionally restricts a set to named frame files (paths
    relative to the folder as in the annotation file, or file names). Crops are cut with
    ``crop_config`` (default: the project's one crop rule) into ``out_dir/crops/<set>/`` and
    reused while source and config are unchanged. ``max_items`` caps crops and frames per set
    (a sample seeded by ``seed``, which also seeds the KID subsets).

    Returns ``{name: {"crops", "frames", "fd_person", "kid_person", "kid_person_std",
    "fd_frame", "kid_frame", "kid_frame_std", "kid_person_subset", "kid_frame_subset"},
    "feature_space": str}``; a measure is ``None`` where a side has fewer than 2 items. The
    reference's own row compares it with itself (FD 0; KID about 0, from disjoint halves).
    The result is also written to ``out_dir/gap_measures.json``.
    """
    if reference not in sets:
        raise GapError(f"reference {reference!r} is not one of the sets {sorted(sets)}")
    if FEATURE_SPACE_KEY in sets:
        raise GapError(f"{FEATURE_SPACE_KEY!r} is reserved for the feature space's name; rename that set")
    unknown = set(frames or {}) - set(sets)
    if unknown:
        raise GapError(f"frames given for unknown sets {sorted(unknown)}; sets are {sorted(sets)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    crop_paths: dict[str, list[Path]] = {}
    frame_paths: dict[str, list[Path]] = {}
    used_crop_dirs: dict[str, str] = {}
    for name, folder_like in sets.items():
        folder = Path(folder_like)
        _annotation_file(folder)
        slug = _slug(name)
        if slug in used_crop_dirs:
            raise GapError(f"sets {used_crop_dirs[slug]!r} and {name!r} would share the crop folder {slug!r}")
        used_crop_dirs[slug] = name
        crop_dir = out_dir / "crops" / slug
        items, _ = person_crops(folder, crop_dir, crop_config)
        _, images = load_annotations(folder)
        chosen = _select_frames(name, folder, [image.path for image in images], (frames or {}).get(name))
        chosen_files = {path.relative_to(folder).as_posix() for path in chosen}
        crop_paths[name] = _sample([crop_dir / item["crop_file"] for item in items
                                    if item["image_file"] in chosen_files], max_items, rng)
        frame_paths[name] = _sample(chosen, max_items, rng)

    torch_device = resolve_device(device)
    mobilenet: MobileNetFeatures | None = None
    try:
        inception: InceptionFeatures | None = InceptionFeatures(inception_weights).to(torch_device)
    except FileNotFoundError:
        inception = None

    def features_of(paths: list[Path]) -> np.ndarray:
        if not paths:
            return np.zeros((0, 2048 if inception is not None else 1280))
        if inception is not None:
            return inception_pool_features(inception, paths, INCEPTION_SIZE, device=torch_device)
        assert mobilenet is not None
        return pooled_features(mobilenet, paths, MOBILENET_SIZE, ("deep",), device=torch_device,
                               desc="gap features")["deep"]

    if inception is not None:
        feature_space = "InceptionV3 (pool, 2048-d, 299 px): FID"
    else:
        mobilenet = MobileNetFeatures(mobilenet_weights).to(torch_device)
        feature_space = f"MobileNetV2 (deep layer pooled, 1280-d, {MOBILENET_SIZE} px): FD (MobileNetV2), not FID"

    person = {name: features_of(paths) for name, paths in crop_paths.items()}
    whole = {name: features_of(paths) for name, paths in frame_paths.items()}
    result: dict[str, Any] = {}
    for name in sets:
        fd_person, kid_person, kid_person_std = _pair(person[name], person[reference], kid_subsets, seed)
        fd_frame, kid_frame, kid_frame_std = _pair(whole[name], whole[reference], kid_subsets, seed)
        result[name] = {
            "crops": len(crop_paths[name]), "frames": len(frame_paths[name]),
            "fd_person": fd_person, "kid_person": kid_person, "kid_person_std": kid_person_std,
            "fd_frame": fd_frame, "kid_frame": kid_frame, "kid_frame_std": kid_frame_std,
            "kid_person_subset": _subset(person[name], person[reference]),
            "kid_frame_subset": _subset(whole[name], whole[reference]),
        }
    result[FEATURE_SPACE_KEY] = feature_space
    atomic_write_json(out_dir / "gap_measures.json", result)
    return result


def _subset(a: np.ndarray, b: np.ndarray) -> int | None:
    """KID's subset size for these two sets (a set against itself is split into halves)."""
    if len(a) < 2 or len(b) < 2:
        return None
    size = kid_subset_size(len(a), len(b))
    if a.shape == b.shape and np.array_equal(a, b) and len(a) >= 4:
        size = min(size, len(a) // 2)
    return size
