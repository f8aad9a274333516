"""Where people go in a frame: seeded, collision-free, and bounded in effort.

Thesis Table 7.2 draws U(1, 5) sitting and U(0, 4) standing people per image (inclusive
integer ranges, configurable). Sitting people take seat spots of the scene; standing people
stand on the floor region, clear of furniture obstacles and of each other. People are discs
on the floor plan (``radius_m``); two discs may touch but not overlap. Placement retries a
bounded number of times and raises ``PlacementError`` saying what did not fit, never loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from blender_addon.core.scene_format import FurnitureProxy, SceneSpec

POSE_KINDS = ("sitting", "standing")


class PlacementError(ValueError):
    """The scene cannot hold the requested people; the message says what to change."""


@dataclass(frozen=True)
class PlacementConfig:
    """How many people and how much room each needs. Ranges are inclusive ``(min, max)``."""

    sitting_range: tuple[int, int] = (1, 5)
    standing_range: tuple[int, int] = (0, 4)
    standing_radius_m: float = 0.3
    sitting_radius_m: float = 0.3
    furniture_clearance_m: float = 0.05
    max_attempts: int = 300

    def __post_init__(self) -> None:
        for name in ("sitting_range", "standing_range"):
            low, high = getattr(self, name)
            if not (isinstance(low, int) and isinstance(high, int)) or not 0 <= low <= high:
                raise PlacementError(
                    f"PlacementConfig.{name} must be integers 0 <= min <= max, got {(low, high)}"
                )
        for name in ("standing_radius_m", "sitting_radius_m"):
            if not getattr(self, name) > 0:
                raise PlacementError(f"PlacementConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.furniture_clearance_m < 0:
            raise PlacementError("PlacementConfig.furniture_clearance_m must be >= 0")
        if self.max_attempts < 1:
            raise PlacementError("PlacementConfig.max_attempts must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Placement:
    """One person's spot: ``location`` is the floor point under the pelvis (standing) or the
    seat point at seat height (sitting); ``heading_rad`` is counter-clockwise from +X."""

    kind: str
    location: tuple[float, float, float]
    heading_rad: float
    radius_m: float
    seat: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def point_in_polygon(point: tuple[float, float], polygon: Sequence[tuple[float, float]]) -> bool:
    """Even-odd rule: count crossings of a ray from the point towards +X."""
    x, y = point
    inside = False
    n = len(polygon)
    for i in range(n):
        x0, y0 = polygon[i]
        x1, y1 = polygon[(i + 1) % n]
        if (y0 > y) != (y1 > y):
            x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
            if x < x_cross:
                inside = not inside
    return inside


def distance_to_segment(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    px, py = p
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def distance_to_polygon_edge(point: tuple[float, float], polygon: Sequence[tuple[float, float]]) -> float:
    n = len(polygon)
    return min(distance_to_segment(point, polygon[i], polygon[(i + 1) % n]) for i in range(n))


def disc_inside_polygon(center: tuple[float, float], radius: float,
                        polygon: Sequence[tuple[float, float]]) -> bool:
    return point_in_polygon(center, polygon) and distance_to_polygon_edge(center, polygon) >= radius


def disc_hits_box(center: tuple[float, float], radius: float, box: FurnitureProxy) -> bool:
    """True when the disc overlaps the furniture's (rotated) floor rectangle."""
    footprint = box.footprint()
    if point_in_polygon(center, footprint):
        return True
    return distance_to_polygon_edge(center, footprint) < radius


def sample_counts(config: PlacementConfig, rng: np.random.Generator) -> tuple[int, int]:
    """(sitting, standing) counts, each uniform over its inclusive range."""
    sitting = int(rng.integers(config.sitting_range[0], config.sitting_range[1] + 1))
    standing = int(rng.integers(config.standing_range[0], config.standing_range[1] + 1))
    return sitting, standing


def check_capacity(scene: SceneSpec, config: PlacementConfig) -> None:
    """Fail up front when the scene can never hold the configured maximum of sitting people."""
    if config.sitting_range[1] > len(scene.seats):
        raise PlacementError(
            f"scene {scene.name!r} has {len(scene.seats)} seats but up to "
            f"{config.sitting_range[1]} sitting people were requested; lower the sitting maximum "
            "(--sitting MIN,MAX) or add seats to scene.json"
        )
    if config.standing_range[1] > 0 and not scene.floor_polygons:
        raise PlacementError(f"scene {scene.name!r} has no floor region for standing people")


def _sample_in_polygons(polygons: Sequence[Sequence[tuple[float, float]]],
                        rng: np.random.Generator) -> tuple[float, float]:
    """A uniform point inside the union of the polygons (rejection from their bounding box)."""
    xs = [p[0] for poly in polygons for p in poly]
    ys = [p[1] for poly in polygons for p in poly]
    for _ in range(1000):
        point = (float(rng.uniform(min(xs), max(xs))), float(rng.uniform(min(ys), max(ys))))
        if any(point_in_polygon(point, poly) for poly in polygons):
            return point
    raise PlacementError("the floor polygons cover almost none of their bounding box")


def _clear_of_people(center: tuple[float, float], radius: float, placed: Sequence[Placement]) -> bool:
    return all(
        math.hypot(center[0] - other.location[0], center[1] - other.location[1])
        >= radius + other.radius_m
        for other in placed
    )


def place_people(scene: SceneSpec, n_sitting: int, n_standing: int, rng: np.random.Generator,
                 config: PlacementConfig | None = None) -> list[Placement]:
    """Place ``n_sitting`` people on seats and ``n_standing`` on the floor, collision-free.

    Deterministic for a given rng state. Raises ``PlacementError`` when the people do not fit
    within ``config.max_attempts`` tries per person.
    """
    config = config or PlacementConfig()
    if n_sitting < 0 or n_standing < 0:
        raise PlacementError(f"people counts must be >= 0, got sitting={n_sitting}, standing={n_standing}")
    if n_sitting > len(scene.seats):
        raise PlacementError(
            f"scene {scene.name!r} has {len(scene.seats)} seats; cannot seat {n_sitting} people"
        )
    placed: list[Placement] = []
    # Sitting: visit seats in a random order and take those whose disc is clear of earlier ones.
    for seat_index in rng.permutation(len(scene.seats)):
        if sum(p.kind == "sitting" for p in placed) == n_sitting:
            break
        seat = scene.seats[int(seat_index)]
        if not _clear_of_people(seat.position, config.sitting_radius_m, placed):
            continue
        jitter = math.radians(seat.facing_jitter_deg)
        heading = math.radians(seat.facing_deg) + float(rng.uniform(-jitter, jitter))
        placed.append(Placement("sitting", (seat.position[0], seat.position[1], seat.height_m),
                                heading, config.sitting_radius_m, seat.name))
    seated = sum(p.kind == "sitting" for p in placed)
    if seated < n_sitting:
        raise PlacementError(
            f"scene {scene.name!r}: only {seated} of {n_sitting} sitting people fit (seats closer "
            f"than {2 * config.sitting_radius_m:.2f} m exclude each other); lower the sitting count"
        )
    obstacles = [f for f in scene.furniture if f.obstacle]
    reach = config.standing_radius_m + config.furniture_clearance_m
    # Rendered chairs stand at the empty seats too (see core.chairs): keep out of them as of
    # a seated person. Scenes without chairs leave empty seats free, as before.
    taken = {p.seat for p in placed}
    empty_chairs = [Placement("sitting", (seat.position[0], seat.position[1], seat.height_m), 0.0,
                              config.sitting_radius_m, seat.name)
                    for seat in scene.seats if scene.chairs is not None and seat.name not in taken]
    for person in range(n_standing):
        for _attempt in range(config.max_attempts):
            center = _sample_in_polygons(scene.floor_polygons, rng)
            heading = float(rng.uniform(0.0, 2.0 * math.pi))
            if not any(disc_inside_polygon(center, config.standing_radius_m, poly)
                       for poly in scene.floor_polygons):
                continue
            if any(disc_hits_box(center, reach, box) for box in obstacles):
                continue
            if not _clear_of_people(center, config.standing_radius_m, placed + empty_chairs):
                continue
            placed.append(Placement("standing", (center[0], center[1], 0.0), heading,
                                    config.standing_radius_m))
            break
        else:
            raise PlacementError(
                f"scene {scene.name!r}: could not place standing person {person + 1} of "
                f"{n_standing} in {config.max_attempts} attempts (floor too crowded); lower the "
                "standing count (--standing MIN,MAX) or enlarge the floor region"
            )
    return placed
