"""Placement properties: no overlaps, everything in its region, determinism, bounded failure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blender_addon.core.placement import (
    PlacementConfig,
    PlacementError,
    check_capacity,
    disc_hits_box,
    disc_inside_polygon,
    place_people,
    point_in_polygon,
    sample_counts,
)
from blender_addon.core.scene_format import FurnitureProxy, SceneSpec, load_scene

SAMPLE = Path(__file__).resolve().parents[1] / "scenes" / "sample_office"


@pytest.fixture(scope="module")
def office() -> SceneSpec:
    return load_scene(SAMPLE)


def _check(scene: SceneSpec, people: list, config: PlacementConfig) -> None:
    seats = {s.name: s for s in scene.seats}
    for i, a in enumerate(people):
        for b in people[i + 1:]:
            gap = math.dist(a.location[:2], b.location[:2])
            assert gap >= a.radius_m + b.radius_m - 1e-9, (a, b)
        if a.kind == "sitting":
            seat = seats[a.seat]
            assert a.location == (seat.position[0], seat.position[1], seat.height_m)
            jitter = math.radians(seat.facing_jitter_deg)
            delta = (a.heading_rad - math.radians(seat.facing_deg) + math.pi) % (2 * math.pi) - math.pi
            assert abs(delta) <= jitter + 1e-9
        else:
            assert a.location[2] == 0.0
            assert any(disc_inside_polygon(a.location[:2], a.radius_m, poly) for poly in scene.floor_polygons)
            reach = a.radius_m + config.furniture_clearance_m
            assert not any(disc_hits_box(a.location[:2], reach, f) for f in scene.furniture if f.obstacle)
    assert len({p.seat for p in people if p.kind == "sitting"}) == sum(p.kind == "sitting" for p in people)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_sitting=st.integers(0, 5), n_standing=st.integers(0, 4))
def test_placements_are_valid_for_any_seed(office: SceneSpec, seed: int, n_sitting: int,
                                          n_standing: int) -> None:
    config = PlacementConfig()
    people = place_people(office, n_sitting, n_standing, np.random.default_rng(seed), config)
    assert [p.kind for p in people].count("sitting") == n_sitting
    assert [p.kind for p in people].count("standing") == n_standing
    _check(office, people, config)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_placement_is_deterministic(office: SceneSpec, seed: int) -> None:
    first = place_people(office, 3, 4, np.random.default_rng(seed))
    second = place_people(office, 3, 4, np.random.default_rng(seed))
    assert first == second


def test_counts_follow_table_7_2_ranges() -> None:
    rng = np.random.default_rng(0)
    draws = np.array([sample_counts(PlacementConfig(), rng) for _ in range(2000)])
    assert set(draws[:, 0]) == {1, 2, 3, 4, 5}
    assert set(draws[:, 1]) == {0, 1, 2, 3, 4}
    assert abs(draws[:, 0].mean() - 3.0) < 0.1 and abs(draws[:, 1].mean() - 2.0) < 0.1


def test_more_sitters_than_seats_is_reported(office: SceneSpec) -> None:
    with pytest.raises(PlacementError, match="8 seats; cannot seat 9"):
        place_people(office, 9, 0, np.random.default_rng(0))
    with pytest.raises(PlacementError, match="8 seats but up to 12 sitting.*--sitting"):
        check_capacity(office, PlacementConfig(sitting_range=(1, 12)))


def test_an_overfull_floor_fails_within_the_attempt_bound(office: SceneSpec) -> None:
    config = PlacementConfig(max_attempts=50)
    with pytest.raises(PlacementError, match="could not place standing person .* in 50 attempts"):
        place_people(office, 0, 200, np.random.default_rng(0), config)


def test_bad_config_names_the_field() -> None:
    with pytest.raises(PlacementError, match="sitting_range"):
        PlacementConfig(sitting_range=(3, 1))
    with pytest.raises(PlacementError, match="standing_radius_m"):
        PlacementConfig(standing_radius_m=0.0)


def test_geometry_helpers() -> None:
    square = [(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0)]
    assert point_in_polygon((1.0, 1.0), square) and not point_in_polygon((3.0, 1.0), square)
    assert disc_inside_polygon((1.0, 1.0), 0.9, square) and not disc_inside_polygon((1.0, 1.0), 1.1, square)
    box = FurnitureProxy("b", (0.0, 0.0, 0.5), (2.0, 1.0, 1.0), yaw_deg=90.0)  # long side along y
    assert disc_hits_box((0.0, 1.2), 0.3, box) and not disc_hits_box((1.2, 0.0), 0.3, box)
