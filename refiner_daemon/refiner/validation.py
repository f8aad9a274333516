"""The refiner must do no harm (issue 22): validation on held-out crops and the pipeline's gate.

Two held-out crop folders, both cut with the one crop rule (``protocol.crop_dataset``):

- ``S_val``: synthetic crops the refiner does not train on;
- ``R_val``: crops of real frames the refiner never sees.

Measures, all on person crops:

- **FD** (Fréchet distance) and **KID** of a crop set to R_val in MobileNetV2 features
  (``refiner_daemon.common.features``: the ``deep`` layer, 1280 channels, global average pooled,
  crops resized to 224 px, the gap report's space), with the distances of
  ``refiner_daemon.common.distances``. FD is computed exactly in the samples' span
  (:func:`frechet_distance`), which is fast when there are fewer crops than feature channels;
  that is what makes a bootstrap over crops affordable.
- **head structure**: the refiner may change colours and textures, not the head. The crop rule
  puts the head on the vertical centre line a quarter of the height from the top
  (``protocol.crops.DEFAULT_HEAD_ANCHOR_FRACTION``); in a square of ``HEAD_BOX_FRACTION`` of the
  crop width around that point, :func:`head_structure_ssim` compares the luminance gradient
  magnitude of G(S) with that of S by SSIM (7x7 windows). A colour change leaves gradients
  alone (SSIM near 1); noise, smearing or a redrawn head does not. A refiner whose mean head SSIM
  is below ``HEAD_SSIM_THRESHOLD`` is *harmful*.

Used by training (``RefinerConfig.val_*``: every ``val_every`` steps, ``validation.json``, best
checkpoint ``model_best.pt``) and by :func:`assess_refiner`, the gate the experiment pipeline
calls before it uses a refiner.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from protocol.crops import DEFAULT_HEAD_ANCHOR_FRACTION
from refiner_daemon.common.distances import kernel_inception_distance
from refiner_daemon.common.features import MobileNetFeatures
from refiner_daemon.refiner.data import list_crop_files, load_crop, tensor_to_uint8, uint8_to_tensor

FEATURE_LAYER = "deep"
FEATURE_SIZE = 224
FEATURE_SPACE = f"MobileNetV2 {FEATURE_LAYER} (global average pool, {FEATURE_SIZE} px)"
HEAD_BOX_FRACTION = 0.3     # side of the head square, as a fraction of the crop width
HEAD_SSIM_THRESHOLD = 0.5   # mean head-gradient SSIM below this: harmful
SSIM_WINDOW = 7
CONTACT_SHEET_COLUMNS = 8

RefineFn = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- inputs

def as_refine_fn(model: Any) -> tuple[RefineFn, tuple[int, int] | None]:
    """A uint8 (N, H, W, 3) -> uint8 (N, H, W, 3) function, and the crop size the model wants
    (None: any), from a refiner file or run folder (path), a loaded
    :class:`~refiner_daemon.refiner.inference.Refiner`, an ``nn.Module`` working on [-1, 1]
    tensors, or any such callable."""
    from refiner_daemon.refiner.inference import Refiner

    if isinstance(model, (str, Path)):
        model = Refiner.load(model, device="cpu", precision="fp32")
    if isinstance(model, Refiner):
        refiner = model
        return (lambda crops: refiner.refine(crops).images), tuple(refiner.crop_size)
    if isinstance(model, nn.Module):
        module = model

        @torch.no_grad()
        def run(crops: np.ndarray) -> np.ndarray:
            module.eval()
            out = [tensor_to_uint8(module(uint8_to_tensor(np.ascontiguousarray(crops[i:i + 16]))))
                   for i in range(0, len(crops), 16)]
            return np.concatenate(out)
        return run, None
    if callable(model):
        return model, None
    raise TypeError(f"cannot refine with {type(model).__name__}: give a refiner file, a Refiner, "
                    "an nn.Module or a callable on uint8 crops")


def load_crops(folder: str | Path, size: tuple[int, int] | None = None,
               max_crops: int | None = None, seed: int = 0) -> tuple[np.ndarray, list[Path]]:
    """The crops of a folder (``<dir>/crops/*`` or ``<dir>/*``) as uint8 (N, H, W, 3) at ``size``
    (height, width; None: the first crop's size), at most ``max_crops`` of them (a seeded
    sample, in file order)."""
    files = list_crop_files(folder)
    if max_crops is not None and len(files) > max_crops:
        keep = np.sort(np.random.default_rng(seed).choice(len(files), max_crops, replace=False))
        files = [files[i] for i in keep]
    if size is None:
        with Image.open(files[0]) as first:
            size = (first.height, first.width)
    return np.stack([load_crop(path, size) for path in files]), files


# --------------------------------------------------------------------------- feature distances

class CropFeatures:
    """MobileNetV2 features of uint8 crops (rows of a (N, 1280) float64 array)."""

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None
                 ) -> None:
        self.device = torch.device(device)
        self.network = MobileNetFeatures(weights).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, crops: np.ndarray, batch_size: int = 16) -> np.ndarray:
        rows = []
        for start in range(0, len(crops), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(crops[start:start + batch_size]))
            x = x.permute(0, 3, 1, 2).float().div(255.0).to(self.device)
            x = nn.functional.interpolate(x, size=(FEATURE_SIZE, FEATURE_SIZE), mode="bilinear",
                                          align_corners=False)
            fmap = self.network(x, (FEATURE_LAYER,))[FEATURE_LAYER]
            rows.append(fmap.mean(dim=(2, 3)).cpu().numpy().astype(np.float64))
        return np.concatenate(rows)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets, equal to
    ``refiner_daemon.common.distances.frechet_distance`` (tested), computed in the samples' span:
    with centred rows A (n x D) and B (m x D), ``tr sqrt(C_a C_b)`` is the sum of the singular
    values of ``A B^T`` over ``sqrt((n-1)(m-1))``, an n x m problem instead of D x D."""
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two (N >= 2, D) feature sets of equal width, got {a.shape}, {b.shape}")
    ca, cb = a - a.mean(0), b - b.mean(0)
    n, m = len(a), len(b)
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / math.sqrt((n - 1) * (m - 1))
    value = (((a.mean(0) - b.mean(0)) ** 2).sum() + (ca ** 2).sum() / (n - 1)
             + (cb ** 2).sum() / (m - 1) - 2.0 * cross)
    return max(float(value), 0.0)


def kid(features_a: np.ndarray, features_b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets) from ``refiner_daemon.common.distances``."""
    return kernel_inception_distance(features_a, features_b, subsets=10, seed=seed)


def bootstrap_fd_difference(refined: np.ndarray, raw: np.ndarray, real: np.ndarray,
                            rounds: int = 200, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of ``FD(refined, real) - FD(raw, real)`` over bootstrap
    resamples of the crops: the same synthetic crops (paired: raw and refined resampled with the
    same indices) and the real crops, with replacement."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        i = rng.integers(0, len(raw), len(raw))
        j = rng.integers(0, len(real), len(real))
        diffs.append(frechet_distance(refined[i], real[j]) - frechet_distance(raw[i], real[j]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


# --------------------------------------------------------------------------- head structure

def head_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the head square in a crop of ``height`` x ``width``."""
    fx, fy = DEFAULT_HEAD_ANCHOR_FRACTION
    cx, cy = fx * width, fy * height
    half = max(HEAD_BOX_FRACTION * width / 2, SSIM_WINDOW / 2 + 1)
    top, bottom = max(0, round(cy - half)), min(height, round(cy + half))
    left, right = max(0, round(cx - half)), min(width, round(cx + half))
    return top, bottom, left, right


def _gradient_magnitude(crops: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the luminance (N, H, W), luminance in [0, 1]."""
    rgb = crops.astype(np.float64) / 255.0
    lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    p = np.pad(lum, ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = ((p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:])
          - (p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2])) / 8.0
    gy = ((p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:])
          - (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:])) / 8.0
    return np.sqrt(gx ** 2 + gy ** 2)


def _box_mean(images: np.ndarray, k: int) -> np.ndarray:
    """Mean over every k x k window (valid positions) of (N, H, W)."""
    c = np.cumsum(np.cumsum(np.pad(images, ((0, 0), (1, 0), (1, 0))), 1), 2)
    return (c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]) / (k * k)


def head_structure_ssim(source: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """Per crop: SSIM of the luminance gradient magnitude of ``refined`` against ``source`` in
    the head square (:func:`head_box`), 7x7 windows, averaged over the square. 1 = same edges."""
    if source.shape != refined.shape or source.ndim != 4:
        raise ValueError(f"source and refined must be equal (N, H, W, 3), got {source.shape}, "
                         f"{refined.shape}")
    top, bottom, left, right = head_box(source.shape[1], source.shape[2])
    a = _gradient_magnitude(source)[:, top:bottom, left:right]
    b = _gradient_magnitude(refined)[:, top:bottom, left:right]
    k = SSIM_WINDOW
    c1, c2 = (0.01 * 0.5) ** 2, (0.03 * 0.5) ** 2  # gradient magnitudes span about [0, 0.5]
    mu_a, mu_b = _box_mean(a, k), _box_mean(b, k)
    var_a = _box_mean(a * a, k) - mu_a ** 2
    var_b = _box_mean(b * b, k) - mu_b ** 2
    cov = _box_mean(a * b, k) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
            / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return ssim.reshape(len(source), -1).mean(1)


# --------------------------------------------------------------------------- contact sheet

def write_contact_sheet(path: str | Path, rows: Sequence[np.ndarray],
                        columns: int = CONTACT_SHEET_COLUMNS) -> Path:
    """One PNG: each row up to ``columns`` crops (uint8 (N, H, W, 3), resized to the first
    row's size), 2 px white gaps. Rows here: S crops, G(S) crops, real crops."""
    rows = [r for r in rows if len(r)]
    h, w = rows[0].shape[1:3]
    gap = 2
    sheet = Image.new("RGB", (columns * (w + gap) + gap, len(rows) * (h + gap) + gap), "white")
    for r, crops in enumerate(rows):
        for c, crop in enumerate(crops[:columns]):
            tile = Image.fromarray(np.ascontiguousarray(crop[..., :3]))
            if tile.size != (w, h):
                tile = tile.resize((w, h), Image.BILINEAR)
            sheet.paste(tile, (gap + c * (w + gap), gap + r * (h + gap)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# --------------------------------------------------------------------------- evaluation

class Validator:
    """S_val and R_val loaded once (R_val's features too); :meth:`evaluate` scores a refiner.

    Used by training every ``val_every`` steps."""

    def __init__(self, s_val_dir: str | Path, r_val_dir: str | Path, *,
                 crop_size: tuple[int, int] | None = None, max_crops: int | None = None,
                 seed: int = 0, device: str | torch.device = "cpu",
                 features: CropFeatures | None = None,
                 head_threshold: float = HEAD_SSIM_THRESHOLD) -> None:
        self.synthetic, self.synthetic_files = load_crops(s_val_dir, crop_size, max_crops, seed)
        self.real, self.real_files = load_crops(r_val_dir, None, max_crops, seed)
        self.features = features or CropFeatures(device)
        self.real_features = self.features(self.real)
        self.raw_features = self.features(self.synthetic)
        self.head_threshold = head_threshold
        self.seed = seed

    def raw_scores(self) -> dict[str, float]:
        """FD and KID of S_val itself (no refiner) to R_val: the line a refiner must beat."""
        kid_mean, kid_std = kid(self.raw_features, self.real_features, self.seed)
        return {"fd": frechet_distance(self.raw_features, self.real_features),
                "kid": kid_mean, "kid_std": kid_std}

    def evaluate(self, refine: RefineFn, contact_sheet: str | Path | None = None
                 ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """``({"fd", "kid", "kid_std", "head_ssim", "head_ssim_min", "head_threshold",
        "harmful", "contact_sheet"}, refined crops, refined features)``."""
        refined = np.asarray(refine(self.synthetic))
        if refined.shape != self.synthetic.shape or refined.dtype != np.uint8:
            raise ValueError(f"the refiner returned {refined.dtype} {refined.shape} for uint8 "
                             f"{self.synthetic.shape}")
        feats = self.features(refined)
        kid_mean, kid_std = kid(feats, self.real_features, self.seed)
        heads = head_structure_ssim(self.synthetic, refined)
        result: dict[str, Any] = {
            "fd": frechet_distance(feats, self.real_features), "kid": kid_mean, "kid_std": kid_std,
            "head_ssim": float(heads.mean()), "head_ssim_min": float(heads.min()),
            "head_threshold": self.head_threshold,
            "harmful": bool(heads.mean() < self.head_threshold), "contact_sheet": None}
        if contact_sheet is not None:
            result["contact_sheet"] = str(write_contact_sheet(
                contact_sheet, [self.synthetic, refined, self.real]))
        return result, refined, feats


def assess_refiner(model: Any, s_val_dir: str | Path, r_val_dir: str | Path, *, seed: int = 0,
                   bootstrap: int = 200, max_crops: int | None = None,
                   head_threshold: float = HEAD_SSIM_THRESHOLD, out_dir: str | Path | None = None,
                   device: str = "cpu", features: CropFeatures | None = None) -> dict[str, Any]:
    """Does this refiner bring S_val closer to R_val without harming heads? The pipeline's gate.

    ``model``: a refiner file or run folder (``Path``/``str``, loaded on the CPU in float32), a
    loaded ``Refiner``, an ``nn.Module`` on [-1, 1] tensors, or a callable uint8 (N, H, W, 3) ->
    uint8 (N, H, W, 3). S_val crops are loaded at the refiner's crop size when it has one.

    Returns a JSON-able dict with exactly these keys:

    - ``fd_raw``: FD(S_val, R_val); ``fd_refined``: FD(G(S_val), R_val) (MobileNetV2 features,
      ``feature_space``); ``fd_diff``: ``fd_refined - fd_raw``;
    - ``fd_diff_ci95``: ``[low, high]``, the bootstrap 95 % interval of ``fd_diff`` (``bootstrap``
      resamples of the crops, the synthetic ones paired between raw and refined);
    - ``kid_raw``, ``kid_raw_std``, ``kid_refined``, ``kid_refined_std``: KID (mean, std over
      subsets) of S_val and of G(S_val) to R_val;
    - ``head_ssim``: mean over S_val of the head-region gradient SSIM of G(S) against S;
      ``head_ssim_min``: the worst crop's; ``head_threshold``: the threshold on ``head_ssim``;
    - ``passes``: True when ``fd_refined < fd_raw`` and ``fd_diff_ci95[1] < 0`` (the improvement
      holds over the bootstrap) and ``head_ssim >= head_threshold``;
      ``reasons``: one sentence per failed condition (empty when it passes);
    - ``contact_sheet``: path of a PNG with rows S crops, G(S) crops, R_val crops (in
      ``out_dir``; default: beside a model file, else a new temporary folder);
    - ``n_synthetic``, ``n_real``: crops used; ``feature_space``: the feature space's name;
      ``bootstrap``, ``seed``: as given.
    """
    refine, size = as_refine_fn(model)
    validator = Validator(s_val_dir, r_val_dir, crop_size=size, max_crops=max_crops, seed=seed,
                          device=device, features=features, head_threshold=head_threshold)
    if out_dir is None:
        out_dir = (Path(model).parent if isinstance(model, (str, Path)) and Path(model).is_file()
                   else Path(model) if isinstance(model, (str, Path))
                   else Path(tempfile.mkdtemp(prefix="refiner_assessment_")))
    name = Path(model).stem if isinstance(model, (str, Path)) else "refiner"
    scores, _, refined_feats = validator.evaluate(
        refine, Path(out_dir) / f"assessment_{name}_contact_sheet.png")
    raw = validator.raw_scores()
    low, high = bootstrap_fd_difference(refined_feats, validator.raw_features,
                                        validator.real_features, bootstrap, seed)
    result: dict[str, Any] = {
        "fd_raw": raw["fd"], "fd_refined": scores["fd"], "fd_diff": scores["fd"] - raw["fd"],
        "fd_diff_ci95": [low, high],
        "kid_raw": raw["kid"], "kid_raw_std": raw["kid_std"],
        "kid_refined": scores["kid"], "kid_refined_std": scores["kid_std"],
        "head_ssim": scores["head_ssim"], "head_ssim_min": scores["head_ssim_min"],
        "head_threshold": head_threshold,
        "n_synthetic": len(validator.synthetic), "n_real": len(validator.real),
        "feature_space": FEATURE_SPACE, "bootstrap": bootstrap, "seed": seed,
        "contact_sheet": scores["contact_sheet"]}
    reasons = []
    if not result["fd_refined"] < result["fd_raw"]:
        reasons.append(f"FD to R_val is not lower after refining: {result['fd_refined']:.3f} "
                       f"vs {result['fd_raw']:.3f} for the unrefined S_val")
    elif not high < 0:
        reasons.append(f"the FD improvement ({result['fd_diff']:.3f}) is not significant: its "
                       f"bootstrap 95% interval [{low:.3f}, {high:.3f}] reaches 0")
    if not result["head_ssim"] >= head_threshold:
        reasons.append(f"heads are damaged: head-region gradient SSIM {result['head_ssim']:.3f} "
                       f"< {head_threshold}")
    result["passes"] = not reasons
    result["reasons"] = reasons
    return result
