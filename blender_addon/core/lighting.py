"""Indoor lighting rigs (numpy only): ceiling panels laid out like an office, optional window.

A ceiling camera sees people lit from above by many soft sources, not by one hard sun: a grid
of recessed panels or strip lights at the ceiling, all of one colour temperature (one fixture
type per room), a few of them off, and in some rooms a bright window on one wall. The rig is
a plain description (positions, sizes, powers, linear colours); ``blender_addon.bl.scene_build``
turns it into Cycles area lights and every frame's manifest records it.

Power calibration: a panel of P watts lights the floor cell it sits over (``spacing_x *
spacing_y`` square metres) with about P / cell W/m^2 on average, so powers are drawn as a
target mean irradiance on the floor times the cell area; the window's power is a target
irradiance at 2.5 m in front of it times pi d^2 (a Lambertian emitter's on-axis intensity is
P / pi). The targets (1-2.5 W/m^2 from the ceiling, 0.8-3 W/m^2 from a window) match the range
of the sun this replaces (strength 0.5-3 W/m^2), so people keep the photo's exposure.

With ``--match-photo`` the rig is then matched to the room photo (:func:`match_to_photo`):
white balance from the photo's grey world, exposure from its median luminance.

Entry points: :func:`sample_office_rig`, :func:`match_to_photo`, :func:`kelvin_to_linear_rgb`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RGB = tuple[float, float, float]


def kelvin_to_linear_rgb(kelvin: float) -> RGB:
    """Approximate linear RGB of a black body at ``kelvin``, the largest channel 1.

    Tanner Helland's fit to the CIE black-body colours (sRGB-encoded values), decoded with
    the sRGB transfer curve so the light's colour means what it says in Cycles."""
    t = kelvin / 100.0
    red = 1.0 if t <= 66 else 1.2929 * (t - 60) ** -0.1332
    green = (0.3901 * math.log(t) - 0.6318) if t <= 66 else 1.1298 * (t - 60) ** -0.0755
    blue = 1.0 if t >= 66 else (0.0 if t <= 19 else 0.5432 * math.log(t - 10) - 1.1962)
    srgb = [min(1.0, max(0.0, c)) for c in (red, green, blue)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in srgb]
    top = max(linear)
    return tuple(round(c / top, 5) for c in linear)  # type: ignore[return-value]


@dataclass(frozen=True)
class AreaLight:
    """One rectangular emitter. It faces down its local -Z; ``rotation_deg`` is XYZ Euler."""

    name: str
    kind: str  # "panel" | "window"
    position: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    size: tuple[float, float]  # metres along the light's local X and Y
    power_w: float
    colour: RGB  # linear RGB
    kelvin: float


@dataclass(frozen=True)
class LightingRig:
    """All area lights of a room, plus what was drawn to make them (for the manifest)."""

    lights: tuple[AreaLight, ...]
    fixture: str  # "square_panels" | "strip_lights"
    kelvin: float
    floor_irradiance: float  # target mean W/m^2 from the ceiling lights
    spacing: tuple[float, float]
    window: bool

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "lights"},
                "lights": [asdict(light) for light in self.lights]}


FIXTURES = {
    "square_panels": (0.6, 0.6),  # recessed 600 x 600 mm LED panels
    "strip_lights": (1.2, 0.15),  # 1200 mm linear fittings
}
MAX_PANELS = 48


def sample_office_rig(rng: np.random.Generator, floor_polygons: Sequence[Sequence[Sequence[float]]],
                      ceiling_z: float, window_probability: float = 0.5) -> LightingRig:
    """Ceiling lights on a regular grid over the floor's bounding box, maybe a window.

    Grid spacing U(1.8, 3.0) m per axis with a random phase; one fixture type and one colour
    temperature U(3000, 5500) K per room (each fitting +-150 K), each fitting off with
    probability 0.1 and its power within +-15%. The window (probability ``window_probability``)
    sits just outside one side of the floor's box, 1.5-3 m wide and 1.2-1.8 m tall, centred
    1.5 m up, daylight at U(5500, 7500) K.
    """
    points = np.asarray([p for polygon in floor_polygons for p in polygon], dtype=np.float64)
    if points.ndim != 2 or len(points) < 3:
        raise ValueError("floor_polygons must hold at least one polygon of 3 or more points")
    (xmin, ymin), (xmax, ymax) = points.min(axis=0), points.max(axis=0)
    fixture = str(rng.choice(list(FIXTURES), p=[0.6, 0.4]))
    width, depth = FIXTURES[fixture]
    turned = bool(rng.random() < 0.5)  # strips run along x or along y for the whole room
    spacing = (float(rng.uniform(1.8, 3.0)), float(rng.uniform(1.8, 3.0)))
    kelvin = float(rng.uniform(3000.0, 5500.0))
    irradiance = float(rng.uniform(1.0, 2.5))
    cell_power = irradiance * spacing[0] * spacing[1]
    xs = _grid(xmin, xmax, spacing[0], rng)
    ys = _grid(ymin, ymax, spacing[1], rng)
    while len(xs) * len(ys) > MAX_PANELS:  # a very large room: coarser grid, same mean light
        spacing = (spacing[0] * 1.25, spacing[1] * 1.25)
        cell_power = irradiance * spacing[0] * spacing[1]
        xs, ys = _grid(xmin, xmax, spacing[0], rng), _grid(ymin, ymax, spacing[1], rng)
    lights: list[AreaLight] = []
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            if rng.random() < 0.1:
                continue  # a fitting that is off (or broken)
            k = kelvin + float(rng.uniform(-150.0, 150.0))
            lights.append(AreaLight(
                name=f"panel_{i}_{j}", kind="panel", position=(float(x), float(y), float(ceiling_z)),
                rotation_deg=(0.0, 0.0, 90.0 if turned else 0.0), size=(width, depth),
                power_w=round(cell_power * float(rng.uniform(0.85, 1.15)), 4),
                colour=kelvin_to_linear_rgb(k), kelvin=round(k, 1)))
    window = bool(rng.random() < window_probability)
    if window:
        lights.append(_window(rng, (xmin, ymin, xmax, ymax)))
    return LightingRig(lights=tuple(lights), fixture=fixture, kelvin=round(kelvin, 1),
                       floor_irradiance=round(irradiance, 4), spacing=(round(spacing[0], 4), round(spacing[1], 4)),
                       window=window)


def _grid(low: float, high: float, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Fixture positions across [low, high]: at least one, evenly spaced, random phase."""
    count = max(1, round((high - low) / spacing))
    phase = float(rng.uniform(-0.25, 0.25)) * spacing
    centre = (low + high) / 2 + phase
    return centre + (np.arange(count) - (count - 1) / 2) * spacing


def _window(rng: np.random.Generator, box: tuple[float, float, float, float]) -> AreaLight:
    xmin, ymin, xmax, ymax = box
    side = int(rng.integers(4))  # 0: -x wall, 1: +x, 2: -y, 3: +y
    width, height = float(rng.uniform(1.5, 3.0)), float(rng.uniform(1.2, 1.8))
    kelvin = float(rng.uniform(5500.0, 7500.0))
    distance = 2.5
    power = float(rng.uniform(0.8, 3.0)) * math.pi * distance**2
    along = float(rng.uniform(0.2, 0.8))
    if side < 2:
        x = xmin - 0.3 if side == 0 else xmax + 0.3
        y = ymin + along * (ymax - ymin)
        yaw = 90.0 if side == 0 else -90.0  # faces +x from the -x wall, -x from the +x wall
        position = (x, y, 1.5)
    else:
        y = ymin - 0.3 if side == 2 else ymax + 0.3
        x = xmin + along * (xmax - xmin)
        yaw = 180.0 if side == 2 else 0.0  # faces +y from the -y wall, -y from the +y wall
        position = (x, y, 1.5)
    # -90 degrees about X stands the light up facing -y; the yaw then turns it into the room.
    return AreaLight(name="window", kind="window", position=tuple(round(c, 4) for c in position),  # type: ignore[arg-type]
                     rotation_deg=(-90.0, 0.0, yaw), size=(width, height), power_w=round(power, 4),
                     colour=kelvin_to_linear_rgb(kelvin), kelvin=round(kelvin, 1))


def facing(light: AreaLight) -> np.ndarray:
    """The unit direction a light emits along (its local -Z in world axes)."""
    rx, ry, rz = (math.radians(a) for a in light.rotation_deg)
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x @ np.array([0.0, 0.0, -1.0])  # Blender's XYZ Euler order


# ---------------------------------------------------------------------------------------------
# Matching the rig to the room photo.


@dataclass(frozen=True)
class PhotoMatch:
    """How a rig was matched to its photo (recorded in every frame's manifest)."""

    cast: RGB  # the photo's grey-world colour, largest channel 1
    median_luminance: float  # linear, over the photo's image circle
    albedo: float  # the grey assumed for the photo's median surface (drawn)
    gain: float  # the factor applied to every light's power

    def to_dict(self) -> dict:
        return asdict(self)


def photo_statistics(photo_linear: np.ndarray) -> tuple[RGB, float]:
    """The grey-world cast (largest channel 1) and median linear luminance of a photo's lit
    pixels (the black outside a fisheye's image circle left out)."""
    pixels = np.asarray(photo_linear, dtype=np.float64).reshape(-1, 3)
    luminance = pixels @ np.array([0.2126, 0.7152, 0.0722])
    lit = pixels[luminance > 2e-3]
    if len(lit) == 0:
        raise ValueError("the photo is black: no pixel to match the lights to")
    mean = lit.mean(axis=0)
    cast = mean / mean.max()
    return (float(cast[0]), float(cast[1]), float(cast[2])), float(np.median(luminance[luminance > 2e-3]))


def match_to_photo(rig: LightingRig, cast: RGB, median_luminance: float,
                   rng: np.random.Generator) -> tuple[LightingRig, PhotoMatch]:
    """The rig as the photo's camera would have recorded it.

    White balance: a camera balances out its room's light, so the room's fittings take the
    photo's grey-world colour, and each light keeps only its difference from the room's colour
    temperature (a daylight window stays bluer than warm panels). Exposure: the photo's median
    surface, a grey of albedo ``a`` ~ U(0.2, 0.4), reads ``median_luminance`` = a E / pi, so
    the ceiling lights' target floor irradiance becomes E = pi median / a and every power is
    scaled by E over the rig's own target."""
    albedo = float(rng.uniform(0.2, 0.4))
    target = math.pi * median_luminance / albedo
    gain = target / rig.floor_irradiance
    room = np.asarray(kelvin_to_linear_rgb(rig.kelvin))
    lights = []
    for light in rig.lights:
        colour = np.asarray(cast) * np.asarray(kelvin_to_linear_rgb(light.kelvin)) / room
        colour = colour / colour.max()
        lights.append(AreaLight(light.name, light.kind, light.position, light.rotation_deg, light.size,
                                round(light.power_w * gain, 4),
                                (round(float(colour[0]), 5), round(float(colour[1]), 5), round(float(colour[2]), 5)),
                                light.kelvin))
    matched = LightingRig(tuple(lights), rig.fixture, rig.kelvin, round(target, 4), rig.spacing, rig.window)
    return matched, PhotoMatch(cast, round(median_luminance, 6), round(albedo, 4), round(gain, 4))
