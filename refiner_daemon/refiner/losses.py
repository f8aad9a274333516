"""Loss functions of the refiner (thesis §2.4-2.6).

- least-squares adversarial losses (CycleGAN's LSGAN objective);
- pixel L1 for the cyclic (Eq. 2.8 / 2.12) and identity (Eq. 2.17) losses;
- feature distances for the cyclic (2.18), identity (2.19), mean-feature (2.20) and
  discriminator-feature cyclic (2.21-2.22) losses.

Feature distances are the L2 norm of the feature difference per image (not squared, as in the
thesis's equations), averaged over the batch and summed over the chosen layers. That is why the
thesis's lambdas for feature losses are so small (1e-5): a norm over a whole feature map is large.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F


def lsgan_generator_loss(prediction: torch.Tensor) -> torch.Tensor:
    """Generator side: ``E[(D(G(x)) - 1)^2]``."""
    return torch.mean((prediction.float() - 1.0) ** 2)


def lsgan_discriminator_loss(real_prediction: torch.Tensor,
                             fake_prediction: torch.Tensor) -> torch.Tensor:
    """Discriminator side: ``0.5 * (E[(D(y) - 1)^2] + E[D(G(x))^2])`` (halved as in CycleGAN so
    the discriminator learns at half the generator's pace)."""
    return 0.5 * (torch.mean((real_prediction.float() - 1.0) ** 2)
                  + torch.mean(fake_prediction.float() ** 2))


def pixel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel difference."""
    return F.l1_loss(a.float(), b.float())


def feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch mean of the per-image L2 norm of ``a - b`` (any shape with a batch dimension)."""
    diff = (a.float() - b.float()).flatten(1)
    return diff.norm(dim=1).mean()


def layered_feature_distance(a: Mapping[str, torch.Tensor] | Iterable[torch.Tensor],
                             b: Mapping[str, torch.Tensor] | Iterable[torch.Tensor]
                             ) -> torch.Tensor:
    """Sum of :func:`feature_distance` over matching layers (dicts by name, or sequences)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise ValueError(f"feature layers differ: {sorted(a)} vs {sorted(b)}")
        pairs = [(a[name], b[name]) for name in a]
    else:
        pairs = list(zip(list(a), list(b), strict=True))
    if not pairs:
        raise ValueError("no feature layers to compare")
    return torch.stack([feature_distance(x, y) for x, y in pairs]).sum()


def mean_feature_distance(features: Mapping[str, torch.Tensor],
                          target_means: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 2.20: distance of each image's features to the target set's mean feature map."""
    return layered_feature_distance(
        features, {name: target_means[name].expand_as(features[name]) for name in features})


# --------------------------------------------------------------------------- calibration

FEATURE_TERMS = ("cycle_feature", "identity_feature", "mean_feature", "disc_feature_cycle")


def calibrate_feature_scales(raw: Mapping[str, float], lambdas: Mapping[str, float],
                             share: float) -> dict[str, object]:
    """Scales for the feature terms so that, on the calibration probe, the weighted feature terms
    make up ``share`` of the generator objective (issue 13).

    ``raw`` holds every enabled term's unweighted value on the probe, ``lambdas`` the preset's
    weights. With ``other`` the weighted sum of the non-feature terms, the feature terms together
    get ``F = share / (1 - share) * other``, split between them in proportion to their lambdas;
    term ``f``'s scale is ``F * lambda_f / sum(lambdas) / (lambda_f * raw_f)``, so its effective
    weight is ``lambda_f * scale_f``. A feature term with a zero raw value keeps scale 1 (and is
    named in ``"unmeasurable"``). Returns a JSON-able dict ``{"share", "other", "feature_target",
    "scales": {term: scale}, "terms": {term: {"raw", "lambda", "scale", "weighted", "share"}}}``.
    """
    if not 0 <= share < 1:
        raise ValueError(f"feature share must be in [0, 1), got {share}")
    features = [n for n in FEATURE_TERMS if lambdas.get(n, 0.0) > 0 and n in raw]
    other = float(sum(lambdas.get(n, 0.0) * float(v) for n, v in raw.items()
                      if n not in FEATURE_TERMS))
    target = share / (1.0 - share) * other
    lambda_sum = sum(lambdas[n] for n in features)
    scales: dict[str, float] = {}
    unmeasurable = []
    for name in features:
        value = float(raw[name])
        if value > 0 and math.isfinite(value):
            scales[name] = target * (lambdas[name] / lambda_sum) / (lambdas[name] * value)
        else:
            scales[name] = 1.0
            unmeasurable.append(name)
    weighted = {n: lambdas.get(n, 0.0) * scales.get(n, 1.0) * float(v) for n, v in raw.items()}
    total = sum(weighted.values()) or 1.0
    terms = {n: {"raw": float(raw[n]), "lambda": float(lambdas.get(n, 0.0)),
                 "scale": scales.get(n, 1.0), "weighted": weighted[n],
                 "share": weighted[n] / total} for n in raw}
    return {"share": share, "other": other, "feature_target": target, "scales": scales,
            "terms": terms, "unmeasurable": unmeasurable}
