"""The gap report: where do synthetic (and refined) images still differ from real ones?

One command compares named image sets with a reference (the real set) and writes an HTML page
with PNG figures and a JSON file of every number:

* Fréchet distance between feature distributions: FID with InceptionV3 when its weights are on
  disk, otherwise the same formula on ImageNet MobileNetV2 features, labelled "FD (MobileNetV2)";
  plus KID (unbiased, so it is fair for small sets) with its spread over subsets.
* The same two distances on person crops (``refiner_daemon.evaluation.gap.gap_measures``: the
  one crop rule of ``protocol.crop_dataset``) beside whole frames, when every dataset is an
  annotated folder: people are a few percent of a fisheye frame, so whole-frame distances
  mostly measure the room.
* PCA scatter of CNN features at a shallow and a deep layer (as thesis Figure 4.10).
* Grey-level and per-channel histograms (seed 000), with the 1-D earth mover's distance of each
  set's grey histogram to the reference.
* A real-vs-other classifier (logistic regression on pooled deep features) with its
  cross-validated accuracy, and class activation maps showing where it looks.
* A feature-discrepancy heatmap per image (seed 003): how far each location's mid-level
  features lie from the nearest feature vector anywhere in the reference set, in units of the
  reference set's own typical nearest-neighbour distance.

    python -m refiner_daemon.evaluation.gap_report --dataset real=../shared/data/real/cepdof_lunch3 \\
        --dataset synthetic=out/render_S --dataset refined=out/refined_D --out out/gap
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protocol.fileio import atomic_write_json, atomic_write_text
from refiner_daemon.common.devices import resolve_device
from refiner_daemon.common.distances import frechet_distance, kernel_inception_distance
from refiner_daemon.common.features import (
    InceptionFeatures,
    MobileNetFeatures,
    batches,
    inception_pool_features,
    load_image,
    pooled_features,
)
from refiner_daemon.common.images import list_images as list_image_files
from refiner_daemon.evaluation.gap import FEATURE_SPACE_KEY, gap_measures

HISTOGRAM_BINS = 64


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted); for a dataset folder with ``coco.json``
    or ``annotations.json`` exactly the images it lists."""
    folder = Path(folder)
    if folder.is_dir() and ((folder / "coco.json").exists() or (folder / "annotations.json").exists()):
        from refiner_daemon.detector.config import DatasetSpec
        from refiner_daemon.detector.data import load_samples

        return [s.image_path for s in load_samples(DatasetSpec(str(folder)))]
    return list_image_files(folder, recursive=True)


class GapReportError(ValueError):
    """Bad report input; the message says how to fix it."""


@dataclass
class GapReportConfig:
    """What to compare and how; saved as ``config.json`` beside the report."""

    datasets: dict[str, str]  # name -> folder (images, or a dataset folder)
    out_dir: str
    reference: str | None = None  # default: the first dataset
    image_size: int = 224
    max_images: int = 200  # per set, a seeded sample beyond that
    seed: int = 0
    inception_weights: str | None = None
    mobilenet_weights: str | None = None
    kid_subsets: int = 20
    person_crops: bool = True  # FD/KID on person crops too (annotated dataset folders only)
    examples_per_set: int = 3
    device: str = "auto"
    labels: dict[str, str] = field(default_factory=dict)
    skipped_bad_files: list[dict[str, str]] = field(default_factory=list)  # with --skip-bad

    def __post_init__(self) -> None:
        if len(self.datasets) < 2:
            raise GapReportError("datasets: give at least two (a reference and one to compare)")
        self.reference = self.reference or next(iter(self.datasets))
        if self.reference not in self.datasets:
            raise GapReportError(f"reference {self.reference!r} is not one of the datasets {sorted(self.datasets)}")
        if self.image_size < 32 or self.max_images < 2 or self.examples_per_set < 0:
            raise GapReportError("image_size must be >= 32, max_images >= 2, examples_per_set >= 0")


# --------------------------------------------------------------------------- analyses


def grey_level(images: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of float RGB (B, 3, H, W) -> (B, H, W)."""
    return 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]


def histograms(paths: Sequence[Path], size: int) -> dict[str, np.ndarray]:
    """Normalised histograms (``HISTOGRAM_BINS`` bins over [0, 1]) of grey and R, G, B values."""
    counts = {name: np.zeros(HISTOGRAM_BINS) for name in ("grey", "red", "green", "blue")}
    for images in batches(paths, size, 16):
        channels = {"grey": grey_level(images), "red": images[:, 0], "green": images[:, 1], "blue": images[:, 2]}
        for name, values in channels.items():
            counts[name] += np.histogram(values.numpy(), bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]
    return {name: c / max(c.sum(), 1.0) for name, c in counts.items()}


def histogram_emd(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """1-D earth mover's distance between two histograms over [0, 1] (difference of CDFs)."""
    return float(np.abs(np.cumsum(hist_a) - np.cumsum(hist_b)).sum() / len(hist_a))


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the centred rows onto the first two principal components, and the fraction
    of the total variance each explains."""
    centred = features - features.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    explained = singular**2 / max(float((singular**2).sum()), 1e-12)
    return centred @ components[:2].T, explained[:2]


@dataclass
class LinearProbe:
    """Logistic regression on standardised pooled features; ``weights`` act on raw channels."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weights + self.bias

    def channel_weights(self) -> np.ndarray:
        """Weights per raw channel, so a feature map's weighted sum is the class activation map."""
        return self.weights / self.scale


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, l2: float = 1e-2, steps: int = 200) -> LinearProbe:
    """Logistic regression with L2 regularisation, fitted with L-BFGS (deterministic)."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    x = torch.from_numpy((features - mean) / scale)
    y = torch.from_numpy(labels.astype(np.float64))
    weights = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(x @ weights + bias, y) + l2 * (weights**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean, scale, weights.detach().numpy(), float(bias.detach()))


def cross_validated_accuracy(features: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> float:
    """Accuracy of :func:`fit_linear_probe` over stratified folds (each sample tested once)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(len(members)) % folds
    correct = 0
    for fold in range(folds):
        test = fold_of == fold
        probe = fit_linear_probe(features[~test], labels[~test])
        correct += int(((probe.logits(features[test]) > 0) == (labels[test] == 1)).sum())
    return correct / len(labels)


def class_activation_map(feature_map: torch.Tensor, channel_weights: np.ndarray) -> np.ndarray:
    """(C, h, w) deep feature map -> (h, w) map whose mean is the probe's logit (minus constants):
    positive where the image looks like the "other" (non-reference) class."""
    weights = torch.as_tensor(channel_weights, dtype=feature_map.dtype).view(-1, 1, 1)
    return (feature_map * weights).sum(dim=0).numpy()


@dataclass
class ReferenceBank:
    """Mid-level feature vectors of every location of every reference image, standardised per
    channel, with the image each came from and the typical nearest-neighbour distance between
    reference images (the unit of the discrepancy maps)."""

    vectors: torch.Tensor  # (N, C)
    image_index: torch.Tensor  # (N,)
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    unit: float = 1.0

    def standardise(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(C, h, w) -> (h * w, C) standardised vectors."""
        flat = feature_map.double().reshape(feature_map.shape[0], -1).T
        return (flat - self.mean) / self.std

    def nearest_distance(self, feature_map: torch.Tensor, exclude_image: int | None = None) -> torch.Tensor:
        """(h, w) distance from each location to the nearest reference vector (from another
        image when ``exclude_image`` is a reference image's index)."""
        distances = torch.cdist(self.standardise(feature_map), self.vectors)
        if exclude_image is not None:
            distances[:, self.image_index == exclude_image] = float("inf")
        return distances.min(dim=1).values.reshape(feature_map.shape[1:])


def build_reference_bank(extractor: MobileNetFeatures, paths: Sequence[Path], size: int, layer: str,
                         device: torch.device, max_vectors: int = 20000, seed: int = 0) -> ReferenceBank:
    """Collect the reference set's ``layer`` vectors; the unit is the median, over reference
    locations, of the distance to the nearest location of a *different* reference image."""
    maps = [fmap for images in batches(paths, size, 16)
            for fmap in extractor(images.to(device), [layer])[layer].double().cpu()]
    flat = torch.cat([m.reshape(m.shape[0], -1).T for m in maps])
    image_index = torch.cat([torch.full((m.shape[1] * m.shape[2],), i) for i, m in enumerate(maps)])
    mean, std = flat.mean(0), flat.std(0).clamp(min=1e-6)
    if len(flat) > max_vectors:  # bound memory and time; a seeded sample keeps it reproducible
        keep = torch.from_numpy(np.random.default_rng(seed).choice(len(flat), max_vectors, replace=False))
        flat, image_index = flat[keep], image_index[keep]
    bank = ReferenceBank((flat - mean) / std, image_index, mean, std)
    own = [bank.nearest_distance(m, exclude_image=i) for i, m in enumerate(maps)]
    bank.unit = float(torch.cat([d.reshape(-1) for d in own]).median().clamp(min=1e-9))
    return bank


def discrepancy_map(feature_map: torch.Tensor, bank: ReferenceBank, exclude_image: int | None = None) -> np.ndarray:
    """(C, h, w) -> (h, w): distance of each location's features to the nearest reference
    feature vector, in units of the reference set's own typical distance (about 1 where an image
    looks like the reference, larger where nothing in the reference looks like it)."""
    return (bank.nearest_distance(feature_map, exclude_image) / bank.unit).numpy()


# --------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise GapReportError("the report's figures need matplotlib: pip install matplotlib") from exc
    return plt


def _save(figure: Any, path: Path) -> str:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    from protocol.fileio import atomic_write_bytes

    atomic_write_bytes(path, buffer.getvalue())
    _pyplot().close(figure)
    return path.name


def _overlay(axis: Any, image: torch.Tensor, heat: np.ndarray, title: str, cmap: str,
             vmin: float | None = None, vmax: float | None = None) -> None:
    axis.imshow(image.permute(1, 2, 0).numpy())
    size = image.shape[-1]
    axis.imshow(heat, cmap=cmap, alpha=0.5, extent=(0, size, size, 0), interpolation="bilinear",
                vmin=vmin, vmax=vmax)
    axis.set_title(title, fontsize=8)
    axis.axis("off")


# --------------------------------------------------------------------------- the report


def build_gap_report(cfg: GapReportConfig) -> dict[str, Any]:
    """Compute every analysis, write ``index.html``, the PNGs, ``gap_report.json`` and
    ``config.json`` into ``cfg.out_dir``; return the JSON content."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", asdict(cfg))
    device = resolve_device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    paths: dict[str, list[Path]] = {}
    for name, folder in cfg.datasets.items():
        found = list_images(folder)
        if len(found) > cfg.max_images:
            found = [found[i] for i in sorted(rng.choice(len(found), cfg.max_images, replace=False))]
        if len(found) < 2:
            raise GapReportError(f"dataset {name!r} ({folder}) has {len(found)} image(s); need at least 2")
        paths[name] = found
    reference = str(cfg.reference)
    others = [name for name in paths if name != reference]
    extractor = MobileNetFeatures(cfg.mobilenet_weights).to(device)
    features = {name: pooled_features(extractor, p, cfg.image_size, ("shallow", "deep"), device=device,
                                      desc=f"features {name}") for name, p in paths.items()}

    # Fréchet distance: Inception when possible, else MobileNetV2, labelled honestly.
    fd_space, fd_note = "MobileNetV2 (deep layer, 1280-d)", ""
    fd_features = {name: f["deep"] for name, f in features.items()}
    try:
        inception = InceptionFeatures(cfg.inception_weights).to(device)
        fd_features = {name: inception_pool_features(inception, p, device=device) for name, p in paths.items()}
        fd_space = "InceptionV3 (pool, 2048-d): FID"
    except FileNotFoundError as exc:
        fd_note = str(exc)
    distances: dict[str, dict[str, float]] = {}
    for name, name_paths in paths.items():
        kid_mean, kid_std = kernel_inception_distance(fd_features[name], fd_features[reference],
                                                      subsets=cfg.kid_subsets, seed=cfg.seed)
        distances[name] = {"frechet_distance": frechet_distance(fd_features[name], fd_features[reference]),
                           "kid": kid_mean, "kid_std": kid_std, "images": len(name_paths)}

    person_distances, person_note = _person_crop_distances(cfg, reference, device)

    plt = _pyplot()
    figures: dict[str, str] = {}

    # PCA at two depths.
    pca_results: dict[str, Any] = {}
    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for axis, layer in zip(axes, ("shallow", "deep")):
        stacked = np.concatenate([features[name][layer] for name in paths])
        projected, explained = pca_2d(stacked)
        start = 0
        centres = {}
        for name, name_paths in paths.items():
            points = projected[start:start + len(name_paths)]
            start += len(name_paths)
            centres[name] = points.mean(axis=0)
            axis.scatter(points[:, 0], points[:, 1], s=12, alpha=0.6, label=name)
            axis.scatter(*centres[name], marker="X", s=120, edgecolors="black")
        axis.set_title(f"PCA of MobileNetV2 {layer} features ({explained.sum():.0%} of variance)")
        axis.legend(fontsize=8)
        pca_results[layer] = {"explained_variance": explained.tolist(),
                              "centre_distance_to_reference": {
                                  n: float(np.linalg.norm(centres[n] - centres[reference])) for n in paths}}
    figures["pca"] = _save(figure, out / "pca.png")

    # Histograms.
    hist = {name: histograms(p, cfg.image_size) for name, p in paths.items()}
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    centres_x = (np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS
    for axis, channel in zip(axes, ("grey", "red", "green", "blue")):
        for name in paths:
            axis.plot(centres_x, hist[name][channel], label=name)
        axis.set_title(f"{channel} level histogram")
        axis.set_xlabel("value")
    axes[0].legend(fontsize=8)
    figures["histograms"] = _save(figure, out / "histograms.png")
    histogram_results = {name: {channel: histogram_emd(hist[name][channel], hist[reference][channel])
                                for channel in hist[name]} for name in paths}

    # Real-vs-other classifiers and where they look.
    classifier_results: dict[str, Any] = {}
    examples = max(cfg.examples_per_set, 1)
    figure, axes = plt.subplots(len(others), 2 * examples, figsize=(2.6 * 2 * examples, 2.8 * len(others)),
                                squeeze=False)
    for row, name in enumerate(others):
        x = np.concatenate([features[reference]["deep"], features[name]["deep"]])
        y = np.concatenate([np.zeros(len(paths[reference])), np.ones(len(paths[name]))])
        folds = max(2, min(5, len(paths[reference]), len(paths[name])))
        accuracy = cross_validated_accuracy(x, y, folds, cfg.seed)
        probe = fit_linear_probe(x, y)
        classifier_results[name] = {"cross_validated_accuracy": accuracy, "folds": folds,
                                    "chance": float(max(y.mean(), 1 - y.mean()))}
        shown = paths[reference][:examples] + paths[name][:examples]
        images = torch.stack([load_image(p, cfg.image_size) for p in shown])
        maps = extractor(images.to(device), ["deep"])["deep"].cpu()
        cams = [class_activation_map(m, probe.channel_weights()) for m in maps]
        limit = max(float(np.abs(np.stack(cams)).max()), 1e-9)
        for column, (image, cam, path) in enumerate(zip(images, cams, shown)):
            owner = reference if column < len(paths[reference][:examples]) else name
            _overlay(axes[row][column], image, cam, f"{owner}: {path.name[:18]}", "coolwarm", -limit, limit)
    figure.suptitle("Where the classifier looks (red: looks non-reference, blue: looks like the reference)",
                    fontsize=9)
    figures["classifier"] = _save(figure, out / "classifier_cam.png")

    # Feature-discrepancy heatmaps (reference images are scored against the other reference images).
    bank = build_reference_bank(extractor, paths[reference], cfg.image_size, "middle", device, seed=cfg.seed)
    discrepancy_results: dict[str, Any] = {}
    heatmaps: dict[str, list[np.ndarray]] = {}
    for name, name_paths in paths.items():
        heatmaps[name] = []
        for images in batches(name_paths, cfg.image_size, 16):
            for fmap in extractor(images.to(device), ["middle"])["middle"].cpu():
                own_index = len(heatmaps[name]) if name == reference else None
                heatmaps[name].append(discrepancy_map(fmap, bank, own_index))
        scores = [float(h.mean()) for h in heatmaps[name]]
        discrepancy_results[name] = {"mean": float(np.mean(scores)),
                                     "per_image": dict(zip([p.name for p in name_paths], scores))}
    # One colour scale for every panel, so brighter always means further from the reference.
    shown_maps = np.concatenate([h.reshape(-1) for maps in heatmaps.values() for h in maps[:examples]])
    top = max(float(np.percentile(shown_maps, 99)), 2.0)
    figure, axes = plt.subplots(len(paths), examples, figsize=(2.8 * examples, 2.9 * len(paths)), squeeze=False)
    for row, (name, name_paths) in enumerate(paths.items()):
        for column, path in enumerate(name_paths[:examples]):
            heat = heatmaps[name][column]
            _overlay(axes[row][column], load_image(path, cfg.image_size), heat,
                     f"{name}: mean {heat.mean():.2f}", "inferno", 0.0, top)
    figure.suptitle(f"Feature discrepancy from '{reference}' (nearest-neighbour distance of MobileNetV2 "
                    "middle-layer features, 1 = typical within the reference)", fontsize=9)
    figures["discrepancy"] = _save(figure, out / "discrepancy.png")

    result = {
        "reference": reference,
        "feature_space_for_distances": fd_space,
        "feature_space_note": fd_note,
        "seed": cfg.seed,
        "distances_to_reference": distances,
        "person_crop_distances": person_distances,
        "person_crop_note": person_note,
        "pca": pca_results,
        "histogram_emd_to_reference": histogram_results,
        "real_vs_other_classifier": classifier_results,
        "feature_discrepancy": {n: {"mean": v["mean"]} for n, v in discrepancy_results.items()},
        "feature_discrepancy_per_image": {n: v["per_image"] for n, v in discrepancy_results.items()},
        "figures": figures,
        "skipped_bad_files": cfg.skipped_bad_files,
    }
    atomic_write_json(out / "gap_report.json", result)
    atomic_write_text(out / "index.html", render_html(result, cfg))
    return result


def _person_crop_distances(cfg: GapReportConfig, reference: str, device: torch.device
                           ) -> tuple[dict[str, Any] | None, str]:
    """:func:`gap_measures` for the report's datasets (crops cached in ``OUT/person_crops``),
    or ``None`` and the reason when it cannot apply."""
    if not cfg.person_crops:
        return None, "person-crop distances switched off (person_crops=False)"
    plain = [name for name, folder in cfg.datasets.items()
             if not any((Path(folder) / f).is_file() for f in ("coco.json", "annotations.json"))]
    if plain:
        return None, (f"no person-crop distances: {', '.join(plain)} "
                      f"{'is a plain image folder' if len(plain) == 1 else 'are plain image folders'}; "
                      "they need annotated dataset folders (coco.json or annotations.json)")
    measures = gap_measures({name: Path(folder) for name, folder in cfg.datasets.items()}, reference,
                            Path(cfg.out_dir) / "person_crops", seed=cfg.seed,
                            inception_weights=cfg.inception_weights, mobilenet_weights=cfg.mobilenet_weights,
                            kid_subsets=cfg.kid_subsets, max_items=cfg.max_images, device=str(device))
    return measures, ""


def _person_table(result: dict[str, Any], max_items: int) -> str:
    esc = html.escape
    measures = result.get("person_crop_distances")
    if not measures:
        return f"<p class=note>{esc(result.get('person_crop_note', ''))}</p>"
    space = measures[FEATURE_SPACE_KEY]
    label = "FID" if "FID" in space and "not FID" not in space else "FD"

    def kid(value: float | None, std: float | None) -> str:
        return "—" if value is None else f"{value:.4f} ± {std:.4f}"

    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{m['crops']}</td><td>{_fmt(m['fd_person'], 2)}</td>"
        f"<td>{kid(m['kid_person'], m['kid_person_std'])}</td><td>{m['frames']}</td>"
        f"<td>{_fmt(m['fd_frame'], 2)}</td><td>{kid(m['kid_frame'], m['kid_frame_std'])}</td></tr>"
        for name, m in measures.items() if name != FEATURE_SPACE_KEY)
    return f"""<p>People are a few percent of a fisheye frame, so distances between whole frames mostly
measure the room. Here the same distances are taken on person crops (the one crop rule of
<code>protocol.crop_dataset</code>, the same in every domain) and, beside them, on whole frames
(all annotated frames of each set, up to {max_items}). Features: {esc(space)}. KID subsets
hold half the smaller set (at most 1000); the reference against itself uses disjoint halves.</p>
<table><tr><th>dataset</th><th>crops</th><th>{label} (people)</th><th>KID (people)</th><th>frames</th>
<th>{label} (frames)</th><th>KID (frames)</th></tr>{rows}</table>"""


def render_html(result: dict[str, Any], cfg: GapReportConfig) -> str:
    esc = html.escape
    reference = result["reference"]
    label = "FID" if "FID" in result["feature_space_for_distances"] else "FD (MobileNetV2)"
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{d['images']}</td><td>{d['frechet_distance']:.2f}</td>"
        f"<td>{d['kid']:.4f} ± {d['kid_std']:.4f}</td>"
        f"<td>{result['histogram_emd_to_reference'][name]['grey']:.4f}</td>"
        f"<td>{_fmt(result['real_vs_other_classifier'].get(name, {}).get('cross_validated_accuracy'))}</td>"
        f"<td>{result['feature_discrepancy'][name]['mean']:.3f}</td></tr>"
        for name, d in result["distances_to_reference"].items())
    note = (f"<p class=note>{esc(result['feature_space_note'])}</p>" if result["feature_space_note"] else "")
    sources = "".join(f"<li><b>{esc(n)}</b>: {esc(p)}</li>" for n, p in cfg.datasets.items())
    figures = result["figures"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Synthetic-to-real gap report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #aaa;padding:4px 8px;text-align:right}}img{{max-width:100%}}
.note{{color:#a40}}</style></head><body>
<h1>Synthetic-to-real gap report</h1>
<p>Reference set: <b>{esc(reference)}</b>. Seed {result['seed']}. Datasets:</p><ul>{sources}</ul>
<h2>Distances to the reference</h2>
<p>Distances use {esc(result['feature_space_for_distances'])} features. {label} is biased upwards for
small sets (it is not 0 even between two samples of the same distribution); KID is unbiased
(about 0 for matching distributions, can be slightly negative). Grey EMD: earth mover's distance between
grey-level histograms. Classifier: cross-validated accuracy of a linear real-vs-this-set probe on deep
features (0.5 = indistinguishable). Discrepancy: mean distance of mid-level features to their nearest
neighbour in the reference set, in units of the reference's own typical distance (about 1 for the reference).</p>{note}
<table><tr><th>dataset</th><th>images</th><th>{label}</th><th>KID</th><th>grey EMD</th>
<th>classifier accuracy</th><th>discrepancy</th></tr>{rows}</table>
<h2>People: distances on person crops and on whole frames</h2>
{_person_table(result, cfg.max_images)}
<h2>PCA of CNN features (thesis Figure 4.10)</h2><img src="{figures['pca']}">
<p>Crosses mark each set's centre; a refined set whose centre moves towards the reference has
closed part of the gap at that depth.</p>
<h2>Histograms</h2><img src="{figures['histograms']}">
<h2>Where a real-vs-synthetic classifier looks</h2><img src="{figures['classifier']}">
<p>Class activation maps of the linear probe: its logit is the average of this map, so red regions are
what makes an image look non-real to it.</p>
<h2>Feature-discrepancy heatmaps</h2><img src="{figures['discrepancy']}">
<p>Bright regions depart most from the real feature statistics: candidates for unrealistic detail.</p>
</body></html>
"""


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """The report command under ``protocol.cli.run_main`` (one-line errors, exit 2)."""
    from protocol.cli import run_main

    return run_main(_main, argv, prog="gap_report")


def _check_inputs(datasets: dict[str, str], out: Path, skip_bad: bool = False
                  ) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Every input image checked before the (slow) analyses: a missing folder, an empty one,
    or a missing, empty, truncated or non-image file raises naming it (protocol.datacheck), and
    nothing is written. With ``skip_bad`` a set with bad files is replaced by a checked view
    of it in ``out/checked_inputs/<name>/`` (links to the good images and, for a dataset
    folder, its annotation file narrowed to them); returns the sets to use and the skipped
    files."""
    from protocol.annotations import RENDERED_COCO_FILE, load_annotations
    from protocol.datacheck import check_images

    views: dict[str, str] = {}
    skipped: list[dict[str, str]] = []
    for name, folder in datasets.items():
        root = Path(folder)
        if not root.is_dir():
            raise GapReportError(f"dataset {name!r}: folder {folder} does not exist; pass "
                                 "NAME=FOLDER with an image or dataset folder")
        annotated = (root / "coco.json").exists() or (root / "annotations.json").exists()
        files = ([image.path for image in load_annotations(root)[1]] if annotated
                 else list_image_files(root, recursive=True))
        good, bad = check_images(files, skip_bad=skip_bad, what=f"images of dataset {name!r}")
        views[name] = folder
        if not bad:
            continue
        skipped += [{"dataset": name, "path": b.path, "reason": b.reason} for b in bad]
        view = out / "checked_inputs" / _slug(name)
        view.mkdir(parents=True, exist_ok=True)
        for path in good:
            link = view / path.resolve().relative_to(root.resolve())
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(path.resolve())
        if annotated:
            name_file = RENDERED_COCO_FILE if (root / RENDERED_COCO_FILE).exists() else "annotations.json"
            data = json.loads((root / name_file).read_text(encoding="utf-8"))
            kept = {str(p.resolve().relative_to(root.resolve())) for p in good}
            images = [im for im in data["images"] if str(im["file_name"]) in kept]
            ids = {im["id"] for im in images}
            atomic_write_json(view / name_file, {**data, "images": images, "annotations": [
                a for a in data["annotations"] if a.get("image_id") in ids]})
        views[name] = str(view)
    return views, skipped


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "set"


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.evaluation.gap_report",
        description="Compare image sets with a real reference set: Fréchet distance and KID, PCA of CNN "
                    "features, histograms, a real-vs-synthetic classifier with activation maps, and "
                    "per-image feature-discrepancy heatmaps, as an HTML page with PNG figures.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m refiner_daemon.evaluation.gap_report --dataset real=../shared/data/real/cepdof_lunch3 \\\n"
               "      --dataset synthetic=out/render_S --dataset refined=out/refined_D --out out/gap\n"
               "  # crops instead of whole frames, FID proper when the Inception weights are on disk\n"
               "  python -m refiner_daemon.evaluation.gap_report --dataset real=out/crops_R --dataset synth=out/crops_S \\\n"
               "      --inception-weights ~/inception_v3_google-0cc3c7bd.pth --out out/gap_crops\n"
               "A dataset is a folder of images or a dataset folder (coco.json / annotations.json).\n"
               "Open OUT/index.html; every number is also in OUT/gap_report.json.")
    parser.add_argument("--dataset", action="append", required=True, metavar="NAME=FOLDER",
                        help="a set to compare (repeatable); the first is the reference unless --reference")
    parser.add_argument("--reference", help="name of the reference (real) set")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-images", type=int, default=200, help="per set (a seeded sample beyond it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inception-weights", help="InceptionV3 ImageNet .pth for FID proper")
    parser.add_argument("--no-person-crops", action="store_true",
                        help="skip FD/KID on person crops (on by default for annotated dataset folders)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable, truncated or empty images instead of stopping; they are "
                             "counted, printed and listed in gap_report.json (skipped_bad_files)")
    args = parser.parse_args(argv)
    datasets: dict[str, str] = {}
    for item in args.dataset:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--dataset expects NAME=FOLDER, got {item!r}")
        datasets[name] = folder
    datasets, skipped = _check_inputs(datasets, Path(args.out), args.skip_bad)
    config = GapReportConfig(datasets=datasets, out_dir=args.out, reference=args.reference,
                             image_size=args.image_size, max_images=args.max_images, seed=args.seed,
                             inception_weights=args.inception_weights, device=args.device,
                             person_crops=not args.no_person_crops, skipped_bad_files=skipped)
    if skipped:
        print(f"skipped {len(skipped)} bad file(s) (--skip-bad), first: {skipped[0]['reason']}, "
              f"{skipped[0]['path']}")
    result = build_gap_report(config)
    people = result["person_crop_distances"] or {}
    for name, values in result["distances_to_reference"].items():
        line = f"{name}: FD {values['frechet_distance']:.2f}  KID {values['kid']:.4f}"
        if name in people and people[name]["fd_person"] is not None:
            line += f"  |  people: FD {people[name]['fd_person']:.2f}  KID {people[name]['kid_person']:.4f}"
        print(line)
    if result["person_crop_note"]:
        print(result["person_crop_note"])
    print(f"report: {Path(args.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
