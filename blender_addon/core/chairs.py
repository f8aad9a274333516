"""Chairs for rooms whose photo shows none where people sit.

A clean plate made from real frames removes the chairs together with the people who sat on
them (the floor under a seated person is never seen), so rendered seated people would hover
over bare floor. A scene with ``chairs`` (see ``core.scene_format``) gets one rendered chair at
every seat: under a seated person it follows that person's place and heading, and an empty
seat gets one at its own place and facing. Chairs are ordinary visible geometry: they hide
the parts of people behind them, cast shadows on the floor and catch the people's shadows
(the contact shadows a seated person makes), and they are never part of a person's mask.

The chair is a meeting-room stacking chair built from boxes (cushion, backrest, four legs),
sized from common office-chair dimensions. Pure numpy: the Blender backend turns the parts
into meshes (``blender_addon.bl.scene_build.add_chairs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from blender_addon.core.batch import PersonRecipe
from blender_addon.core.placement import PlacementConfig
from blender_addon.core.scene_format import SceneSpec, Seat

SEAT_WIDTH_M = 0.46
SEAT_DEPTH_M = 0.44
CUSHION_M = 0.05
# The hip joint of someone sitting back on a chair is about this far in front of the backrest.
HIPS_TO_BACKREST_M = 0.15
BACKREST_BOTTOM_M = 0.12  # above the seat: meeting chairs leave a gap at the lumbar
BACKREST_TOP_M = 0.46
BACKREST_THICKNESS_M = 0.05
LEG_M = 0.025
PARTS = ("cushion", "backrest", "leg_front_left", "leg_front_right", "leg_back_left", "leg_back_right")


@dataclass(frozen=True)
class ChairPart:
    """One box of a chair: ``center`` (metres, world), ``size`` along the chair's own axes
    (forward, left, up) and ``yaw_deg`` (the chair's heading, counter-clockwise from +X)."""

    name: str
    material: str  # "fabric" or "frame"
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw_deg: float


@dataclass(frozen=True)
class Chair:
    """A chair at a seat: its parts, and the seated person's name (None: an empty seat)."""

    seat: str
    occupant: str | None
    parts: tuple[ChairPart, ...]

    def corners(self) -> np.ndarray:
        """Every part's 8 world-space corners, stacked: (8 * parts, 3)."""
        return np.concatenate([part_corners(part) for part in self.parts])


def chair_parts(position_xy: Sequence[float], seat_height_m: float, heading_rad: float) -> tuple[ChairPart, ...]:
    """The boxes of a chair whose sitter's hips are over ``position_xy`` at ``seat_height_m``
    (the seat's top) and who faces ``heading_rad``."""
    forward = np.array([math.cos(heading_rad), math.sin(heading_rad)])
    left = np.array([-forward[1], forward[0]])
    origin = np.asarray(position_xy, dtype=np.float64)
    yaw = math.degrees(heading_rad)

    def at(ahead: float, across: float, z: float) -> tuple[float, float, float]:
        x, y = origin + forward * ahead + left * across
        return (float(x), float(y), float(z))

    back_face = -HIPS_TO_BACKREST_M  # the backrest's front face, along forward from the hips
    seat_middle = back_face + SEAT_DEPTH_M / 2
    parts = [
        ChairPart("cushion", "fabric", at(seat_middle, 0.0, seat_height_m - CUSHION_M / 2),
                  (SEAT_DEPTH_M, SEAT_WIDTH_M, CUSHION_M), yaw),
        ChairPart("backrest", "fabric",
                  at(back_face - BACKREST_THICKNESS_M / 2, 0.0,
                     seat_height_m + (BACKREST_BOTTOM_M + BACKREST_TOP_M) / 2),
                  (BACKREST_THICKNESS_M, SEAT_WIDTH_M, BACKREST_TOP_M - BACKREST_BOTTOM_M), yaw),
    ]
    leg_height = seat_height_m - CUSHION_M
    inset = LEG_M / 2
    for name, ahead, across in (
        ("leg_front_left", back_face + SEAT_DEPTH_M - inset, SEAT_WIDTH_M / 2 - inset),
        ("leg_front_right", back_face + SEAT_DEPTH_M - inset, -SEAT_WIDTH_M / 2 + inset),
        # The back legs run on up to the backrest's top: the frame that holds it.
        ("leg_back_left", back_face - BACKREST_THICKNESS_M / 2, SEAT_WIDTH_M / 2 - inset),
        ("leg_back_right", back_face - BACKREST_THICKNESS_M / 2, -SEAT_WIDTH_M / 2 + inset),
    ):
        top = leg_height if name.startswith("leg_front") else seat_height_m + BACKREST_TOP_M
        parts.append(ChairPart(name, "frame", at(ahead, across, top / 2), (LEG_M, LEG_M, top), yaw))
    return tuple(parts)


def part_corners(part: ChairPart) -> np.ndarray:
    """The 8 world-space corners of a part's box."""
    half = np.asarray(part.size, dtype=np.float64) / 2
    signs = np.array([[sx, sy, sz] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)], dtype=np.float64)
    yaw = math.radians(part.yaw_deg)
    rotation = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0],
                         [0.0, 0.0, 1.0]])
    return (signs * half) @ rotation.T + np.asarray(part.center, dtype=np.float64)


def frame_chairs(scene: SceneSpec, people: Sequence[PersonRecipe],
                 spacing_m: float = 2 * PlacementConfig().sitting_radius_m) -> list[Chair]:
    """The chairs of a frame of a scene that asks for them (none otherwise), in seat order:
    under each seated person (their place and heading, jitter included), and empty at the
    seat's own facing on every other seat whose point is at least ``spacing_m`` from each
    chair already there (placement leaves seats that close to a seated person empty, and two
    chairs there would intersect)."""
    if scene.chairs is None:
        return []
    seated = {p.seat: p for p in people if p.kind == "sitting"}
    taken = {name: person.location[:2] for name, person in seated.items()}
    chairs = {}
    for seat in scene.seats:
        person = seated.get(seat.name)
        if person is not None:
            x, y, z = person.location
            chairs[seat.name] = Chair(seat.name, person.name, chair_parts((x, y), z, person.heading_rad))
    for seat in scene.seats:
        if seat.name in seated or any(math.dist(seat.position, xy) < spacing_m for xy in taken.values()):
            continue
        taken[seat.name] = seat.position
        chairs[seat.name] = Chair(seat.name, None, empty_chair(seat))
    return [chairs[seat.name] for seat in scene.seats if seat.name in chairs]


def empty_chair(seat: Seat) -> tuple[ChairPart, ...]:
    return chair_parts(seat.position, seat.height_m, math.radians(seat.facing_deg))
