"""Per-person random parameters (thesis Table 7.1) and pose choices, sampled from a seeded rng.

Everything here is pure Python/numpy so a batch can sample, log and replay people without
Blender. Ranges follow Table 7.1 of the thesis: 18 phenotypes, facial expressions, skin
age/bump/oil U(0, 1), skin hue U(0.49, 0.51), melanin U(0.2, 1), fabric saturation
N(0, 0.3) and value N(0.5, 0.2) (folded/clipped into [0, 1]). Body macros use MakeHuman's
0..1 scales (age 0.5 = 25 years, 1.0 = 90 years).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from blender_addon.core.bvh import PoseLibrary, builtin_pose_data, builtin_pose_names

ETHNICITIES: tuple[str, ...] = ("african", "asian", "caucasian")
GENDERS: tuple[str, ...] = ("female", "male")
BUILDS: dict[str, tuple[float, float]] = {
    # build -> (weight centre, muscle centre) on MakeHuman's 0..1 macro scales
    "slim": (0.3, 0.45),
    "average": (0.5, 0.5),
    "heavy": (0.8, 0.55),
}
# 3 ethnicities x 2 genders x 3 builds = Table 7.1's 18 phenotypes.
PHENOTYPES: tuple[str, ...] = tuple(
    f"{e}-{g}-{b}" for e in ETHNICITIES for g in GENDERS for b in BUILDS
)
TOP_STYLES: tuple[str, ...] = ("tanktop", "tshirt", "longsleeve")
BOTTOM_STYLES: tuple[str, ...] = ("shorts", "trousers", "skirt")
PATTERNS: tuple[str, ...] = ("solid", "stripes", "checks", "noise")
HAIR_STYLES: tuple[str, ...] = ("none", "short", "medium", "long")
# MakeHuman expression units (targets/expression/units/<ethnicity>/<unit>.target.gz).
EXPRESSION_UNITS: tuple[str, ...] = (
    "eye-left-closure", "eye-right-closure", "eye-left-slit", "eye-right-slit",
    "eyebrows-left-down", "eyebrows-right-down", "eyebrows-left-up", "eyebrows-right-up",
    "eyebrows-left-inner-up", "eyebrows-right-inner-up", "mouth-open", "mouth-compression",
    "mouth-corner-puller", "mouth-depression", "mouth-elevation", "mouth-pursing",
    "mouth-retraction", "mouth-upward-retraction", "nose-compression", "neck-platysma",
)
# Natural hair colours in sRGB (black, dark brown, brown, auburn, blond, grey).
HAIR_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.04, 0.035, 0.03), (0.12, 0.07, 0.04), (0.26, 0.16, 0.09),
    (0.36, 0.14, 0.06), (0.62, 0.49, 0.30), (0.58, 0.57, 0.55),
)
POSE_KINDS: tuple[str, ...] = ("standing", "sitting")
# Stature (metres, rest mesh) of an average adult MakeHuman body at height macro 0, 0.5 and 1,
# measured from the MPFB2 targets. MakeHuman's extremes are far outside real adult statures,
# so we sample a real stature and invert this curve.
STATURE_AT_HEIGHT: dict[str, tuple[float, float, float]] = {
    "female": (1.233, 1.599, 2.322),
    "male": (1.375, 1.742, 2.464),
}

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Garment:
    """One clothing item: style, base colour (sRGB), pattern and the pattern's second colour."""

    style: str
    colour: RGB
    pattern: str
    pattern_colour: RGB
    pattern_scale: float  # pattern repeats across the body's rest bounding box
    saturation: float  # the Table 7.1 draws the colour came from
    value: float
    looseness: float  # metres the cloth stands off the skin


@dataclass(frozen=True)
class PersonParams:
    """Everything that makes one person look the way they do; JSON-able via :meth:`to_dict`."""

    phenotype: str
    gender: float  # 0 female .. 1 male
    age: float  # MakeHuman scale: 0.5 = 25 years, 1.0 = 90 years
    age_years: float
    muscle: float
    weight: float
    height: float  # MakeHuman height macro, 0..1
    proportions: float
    ethnicity: tuple[float, float, float]  # african, asian, caucasian; sums to 1
    skin_melanin: float
    skin_hue: float
    skin_age: float
    skin_bump: float
    skin_oil: float
    expression: tuple[tuple[str, float], ...]
    top: Garment
    bottom: Garment
    shoes_colour: RGB
    hair_style: str
    hair_colour: RGB
    hair_volume: float  # outward offset of the hair shell, metres

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ethnicity"] = dict(zip(ETHNICITIES, self.ethnicity))
        out["expression"] = [{"unit": u, "weight": w} for u, w in self.expression]
        return out


def _age_to_years(age: float) -> float:
    """MakeHuman's piecewise-linear age mapping (0 -> 1 y, 0.1875 -> 11, 0.5 -> 25, 1 -> 90)."""
    if age < 0.1875:
        return 1.0 + age / 0.1875 * 10.0
    if age < 0.5:
        return 11.0 + (age - 0.1875) / (0.5 - 0.1875) * 14.0
    return 25.0 + (age - 0.5) / 0.5 * 65.0


def height_macro_for_stature(stature_m: float, gender: float) -> float:
    """The MakeHuman height macro (0..1) that gives roughly ``stature_m`` at this gender."""
    female, male = STATURE_AT_HEIGHT["female"], STATURE_AT_HEIGHT["male"]
    curve = [f * (1 - gender) + m * gender for f, m in zip(female, male)]
    return float(np.clip(np.interp(stature_m, curve, [0.0, 0.5, 1.0]), 0.0, 1.0))


def _fabric_colour(rng: np.random.Generator) -> tuple[RGB, float, float]:
    """A fabric colour: uniform hue, Table 7.1 saturation N(0, 0.3) and value N(0.5, 0.2)."""
    saturation = float(min(1.0, abs(rng.normal(0.0, 0.3))))
    value = float(np.clip(rng.normal(0.5, 0.2), 0.04, 1.0))
    hue = float(rng.uniform(0.0, 1.0))
    rgb = colorsys.hsv_to_rgb(hue, saturation, value)
    return (float(rgb[0]), float(rgb[1]), float(rgb[2])), saturation, value


def _garment(rng: np.random.Generator, style: str) -> Garment:
    colour, saturation, value = _fabric_colour(rng)
    pattern = str(rng.choice(PATTERNS, p=[0.55, 0.2, 0.12, 0.13]))
    second, _, _ = _fabric_colour(rng)
    return Garment(style=style, colour=colour, pattern=pattern, pattern_colour=second,
                   pattern_scale=float(rng.uniform(8.0, 30.0)), saturation=saturation,
                   value=value, looseness=float(rng.uniform(0.004, 0.022)))


def sample_person_params(rng: np.random.Generator) -> PersonParams:
    """Draw one adult person. The same generator state always gives the same person."""
    phenotype = str(rng.choice(PHENOTYPES))
    ethnicity_name, gender_name, build = phenotype.split("-")
    weight_centre, muscle_centre = BUILDS[build]
    gender = float(np.clip((0.9 if gender_name == "male" else 0.1) + rng.normal(0, 0.07), 0, 1))
    age = float(rng.uniform(0.5, 0.85))  # 25 to ~70 years: the people in offices
    muscle = float(np.clip(rng.normal(muscle_centre, 0.1), 0.0, 1.0))
    weight = float(np.clip(rng.normal(weight_centre, 0.08), 0.0, 1.0))
    stature = float(np.clip(rng.normal(1.63 + 0.14 * gender, 0.07), 1.45, 1.98))
    height = height_macro_for_stature(stature, gender)
    proportions = float(rng.uniform(0.3, 1.0))
    # Mostly the phenotype's ethnicity, with some admixture.
    dominant = float(rng.uniform(0.6, 1.0))
    rest = rng.dirichlet([1.0, 1.0]) * (1.0 - dominant)
    others = iter(rest)
    ethnicity = tuple(dominant if e == ethnicity_name else float(next(others)) for e in ETHNICITIES)

    expression_count = int(rng.integers(0, 4))
    units = rng.choice(EXPRESSION_UNITS, size=expression_count, replace=False)
    expression = tuple((str(u), float(rng.uniform(0.2, 0.8))) for u in units)

    female = gender < 0.5
    top_style = str(rng.choice(TOP_STYLES, p=[0.15, 0.45, 0.40]))
    bottom_style = str(rng.choice(BOTTOM_STYLES, p=[0.15, 0.6, 0.25] if female else [0.2, 0.8, 0.0]))
    shoes, _, _ = _fabric_colour(rng)
    hair_style = str(rng.choice(HAIR_STYLES, p=[0.03, 0.2, 0.35, 0.42] if female else [0.15, 0.65, 0.17, 0.03]))
    age_years = _age_to_years(age)
    # Grey hair becomes likelier with age.
    grey_probability = float(np.clip((age_years - 45.0) / 50.0, 0.0, 0.6))
    hair_colour = HAIR_COLOURS[5] if rng.random() < grey_probability else \
        HAIR_COLOURS[int(rng.integers(0, 5))]
    return PersonParams(
        phenotype=phenotype, gender=gender, age=age, age_years=age_years, muscle=muscle,
        weight=weight, height=height, proportions=proportions,
        ethnicity=(float(ethnicity[0]), float(ethnicity[1]), float(ethnicity[2])),
        skin_melanin=float(rng.uniform(0.2, 1.0)), skin_hue=float(rng.uniform(0.49, 0.51)),
        skin_age=float(rng.uniform(0.0, 1.0)), skin_bump=float(rng.uniform(0.0, 1.0)),
        skin_oil=float(rng.uniform(0.0, 1.0)), expression=expression,
        top=_garment(rng, top_style), bottom=_garment(rng, bottom_style), shoes_colour=shoes,
        hair_style=hair_style, hair_colour=hair_colour,
        hair_volume=float(rng.uniform(0.004, 0.02)),
    )


@dataclass(frozen=True)
class PoseChoice:
    """Which pose a person takes: a BVH file and frame, or a built-in pose plus variation."""

    kind: str  # "standing" | "sitting"
    bvh_path: str | None  # None for built-in poses
    frame: int | None
    builtin_name: str | None = None
    tilt_deg: float = 0.0  # sitting: trunk lean, positive forward (thesis section 3.2)
    # Added local rotations [x, y, z] degrees per canonical joint (arm variation, head turn).
    joint_variation: tuple[tuple[str, tuple[float, float, float]], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in POSE_KINDS:
            raise ValueError(f"PoseChoice.kind {self.kind!r} is not one of {POSE_KINDS}")
        if (self.bvh_path is None) == (self.builtin_name is None):
            raise ValueError("PoseChoice needs exactly one of bvh_path and builtin_name")
        if self.bvh_path is not None and self.frame is None:
            raise ValueError("PoseChoice.frame is required with bvh_path")

    def variation_degrees(self) -> dict[str, tuple[float, float, float]]:
        """All added joint rotations, including the tilt, as ``{joint: (x, y, z)}``."""
        extra = {joint: tuple(angles) for joint, angles in self.joint_variation}
        if self.tilt_deg:
            x, y, z = extra.get("LowerBack", (0.0, 0.0, 0.0))
            extra["LowerBack"] = (x + self.tilt_deg, y, z)
        return extra  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "bvh_path": self.bvh_path, "frame": self.frame,
            "builtin_name": self.builtin_name, "tilt_deg": self.tilt_deg,
            "joint_variation": {j: list(a) for j, a in self.joint_variation},
        }


def _arm_variation(rng: np.random.Generator, spread: float) -> tuple[tuple[str, tuple[float, float, float]], ...]:
    joints = ("LeftArm", "RightArm", "LeftForeArm", "RightForeArm", "Head")
    out = []
    for joint in joints:
        scale = spread * (0.5 if joint == "Head" else 1.0)
        angles = tuple(float(a) for a in rng.normal(0.0, scale, size=3))
        out.append((joint, (round(angles[0], 3), round(angles[1], 3), round(angles[2], 3))))
    return tuple(out)


def sample_pose(rng: np.random.Generator, kind: str, library: PoseLibrary | None = None) -> PoseChoice:
    """Choose a pose of ``kind``.

    standing: a random file and frame from ``library`` when given, else a built-in standing
    or walking pose with small arm variation. sitting: a built-in seated pose with a random
    trunk tilt U(-8, 20) degrees and arm/head variation.
    """
    if kind not in POSE_KINDS:
        raise ValueError(f"unknown pose kind {kind!r}; valid: {list(POSE_KINDS)}")
    if kind == "standing" and library is not None:
        path, frame = library.choose(rng)
        return PoseChoice(kind=kind, bvh_path=path, frame=frame)
    names = builtin_pose_names(kind)
    name = names[int(rng.integers(len(names)))]
    tilt = float(rng.uniform(-8.0, 20.0)) if kind == "sitting" else 0.0
    spread = 8.0 if kind == "sitting" else 6.0
    return PoseChoice(kind=kind, bvh_path=None, frame=None, builtin_name=name,
                      tilt_deg=round(tilt, 3), joint_variation=_arm_variation(rng, spread))


def pose_kind_of_builtin(name: str) -> str:
    """The kind (standing/sitting) a built-in pose declares."""
    poses = builtin_pose_data()["poses"]
    if name not in poses:
        raise ValueError(f"unknown built-in pose {name!r}; valid: {sorted(poses)}")
    return str(poses[name]["kind"])


def srgb_to_linear(rgb: RGB) -> RGB:
    """sRGB display values to the linear values Blender's shaders take."""
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else math.pow((c + 0.055) / 1.055, 2.4)

    return (channel(rgb[0]), channel(rgb[1]), channel(rgb[2]))
