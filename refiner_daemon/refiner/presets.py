"""Refiner variants of thesis Table 3.2, as a registry of named presets.

Each preset names an architecture (CycleGAN or AGGAN), whether the generator has the
input-output skip connection ("+S"), the loss weights (lambdas) and which feature layers the
feature losses use. Names: ``C_CP``, ``C_CPCF``, ``C_CPCFIF``, ``C_CPCFIP``, ``D``, ``M``, ``A``
and each of them with ``+S``.

Reading of the table where it is ambiguous (the extracted table text is garbled in places):
- ``M``: mean feature 5e-5 plus identity feature 5e-6 (the row repeats an identity-feature term;
  the first and last values are used). ``M+S``: mean feature 1e-5, identity feature 5e-6.
- ``C_CPCFIP+S`` is cut off in the table; it uses the same weights as ``C_CPCFIP``.
- ``D``: the identity feature loss (Eq. 2.19) is measured in the perceptual extractor's pool2
  features, the cyclic feature loss in discriminator layers 1-4 (Eq. 2.21-2.22).
- ``A`` / ``A+S``: the table gives the cyclic pixel weight as 1e-5 (the AGGAN paper uses 10);
  the table's value is kept, and ``RefinerConfig.loss_weights`` can override it.

Feature-term calibration (issue 13): the thesis' feature lambdas were tuned for VGG16 on 0-255
inputs with a summed squared error; with another extractor or another distance they make the
feature terms vanish (MobileNetV2 here: about 6e-5 beside a cycle term of about 2). So every
preset with a feature term states ``feature_share``: the share of the generator objective its
weighted feature terms make up at the start of training, on the calibration batch (see
:func:`refiner_daemon.refiner.losses.calibrate_feature_scales`). The lambdas then only set the
split of that share between the feature terms. 0.2 where a pixel cycle term carries content
preservation (the ``C_CPCF*`` family); 0.5 for ``D`` and ``M``, whose feature terms are their only
content terms. ``RefinerConfig.feature_share`` overrides it; 0 turns calibration off (the raw
lambdas, as in the thesis).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

ARCHITECTURES = ("cyclegan", "aggan")


@dataclass(frozen=True)
class LossWeights:
    """Lambdas of the generator objective; 0 disables a term (and skips computing it)."""

    adversarial: float = 1.0
    cycle_pixel: float = 0.0        # Eq. 2.8 / 2.12
    identity_pixel: float = 0.0     # Eq. 2.17
    cycle_feature: float = 0.0      # Eq. 2.18
    identity_feature: float = 0.0   # Eq. 2.19
    mean_feature: float = 0.0       # Eq. 2.20
    disc_feature_cycle: float = 0.0  # Eq. 2.21-2.22

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossWeights:
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {unknown}; valid: {sorted(valid)}")
        weights = cls(**{k: float(v) for k, v in data.items()})
        for name, value in asdict(weights).items():
            if value < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {value}")
        return weights

    def uses_perceptual(self) -> bool:
        return any(w > 0 for w in (self.cycle_feature, self.identity_feature, self.mean_feature))


@dataclass(frozen=True)
class Preset:
    name: str
    architecture: str
    skip: bool
    weights: LossWeights
    description: str
    feature_layers: tuple[str, ...] = ("pool2",)
    disc_layers: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # Share of the generator objective the weighted feature terms make up at calibration
    # (0: no feature term, or no calibration).
    feature_share: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "architecture": self.architecture, "skip": self.skip,
            "weights": self.weights.to_dict(), "description": self.description,
            "feature_layers": list(self.feature_layers), "disc_layers": list(self.disc_layers),
            "feature_share": self.feature_share,
        }


def _base_presets() -> list[Preset]:
    return [
        Preset("C_CP", "cyclegan", False, LossWeights(cycle_pixel=10.0),
               "CycleGAN with a cyclic pixel loss (Eq. 2.8)"),
        Preset("C_CPCF", "cyclegan", False, LossWeights(cycle_pixel=10.0, cycle_feature=1e-5),
               "CycleGAN, cyclic pixel + cyclic feature loss (Eq. 2.8, 2.18)", feature_share=0.2),
        Preset("C_CPCFIF", "cyclegan", False,
               LossWeights(cycle_pixel=10.0, cycle_feature=1e-5, identity_feature=5e-6),
               "CycleGAN, cyclic pixel + cyclic feature + identity feature loss (2.8, 2.18, 2.19)",
               feature_share=0.2),
        Preset("C_CPCFIP", "cyclegan", False,
               LossWeights(cycle_pixel=10.0, cycle_feature=1e-5, identity_pixel=10.0),
               "CycleGAN, cyclic pixel + cyclic feature + identity pixel loss (2.8, 2.18, 2.17)",
               feature_share=0.2),
        Preset("D", "cyclegan", False,
               LossWeights(disc_feature_cycle=1e-5, identity_feature=5e-6),
               "CycleGAN, cyclic loss in discriminator features + identity feature loss "
               "(2.21, 2.19)", disc_layers=(1, 2, 3, 4), feature_share=0.5),
        Preset("M", "cyclegan", False, LossWeights(mean_feature=5e-5, identity_feature=5e-6),
               "CycleGAN, mean target-feature loss + identity feature loss (2.20, 2.19)",
               feature_layers=("pool2", "pool5"), feature_share=0.5),
        Preset("A", "aggan", False, LossWeights(cycle_pixel=1e-5),
               "AGGAN with a cyclic pixel loss (Eq. 2.12)"),
    ]


def _with_skip(preset: Preset) -> Preset:
    changes: dict[str, Any] = {"name": preset.name + "+S", "skip": True,
                               "description": preset.description + ", generator skip connection"}
    if preset.name == "M":
        changes["weights"] = LossWeights(mean_feature=1e-5, identity_feature=5e-6)
    return replace(preset, **changes)


PRESETS: dict[str, Preset] = {}
for _preset in _base_presets():
    PRESETS[_preset.name] = _preset
    PRESETS[_preset.name + "+S"] = _with_skip(_preset)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises an error listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown refiner preset {name!r}; valid presets: {sorted(PRESETS)}") from None
