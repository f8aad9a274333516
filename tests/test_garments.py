"""MakeHuman garment fitting in numpy on the real CC0 assets (no Blender).

Skips with a message when ../shared/data/makehuman_assets is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import body, garments
from blender_addon.core.human_params import sample_person_params

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def library(shared_data: Path) -> garments.AssetLibrary:
    root = shared_data / "makehuman_assets"
    if not (root / "base" / "clothes").is_dir():
        pytest.skip(f"MakeHuman assets not found at {root}; see ../shared/data/README.md")
    return garments.AssetLibrary(root)


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    try:
        return body.assets().base.astype(np.float64)
    except body.HumanDataError as exc:
        pytest.skip(str(exc))


def _surface_distance(points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest face centre or vertex of a quad mesh (metres).

    Face centres halve the sampling gap of vertices alone; the mesh's quads are about 1 cm."""
    samples = np.concatenate([verts[np.unique(faces)], verts[faces].mean(axis=1)]).astype(np.float32)
    points = points[:: max(1, len(points) // 600)].astype(np.float32)  # a spread-out subset is enough
    sample_sq = (samples ** 2).sum(axis=1)
    out = np.empty(len(points))
    for start in range(0, len(points), 256):
        chunk = points[start:start + 256]
        d2 = (chunk ** 2).sum(axis=1)[:, None] - 2.0 * chunk @ samples.T + sample_sq[None, :]
        out[start:start + 256] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def _body_faces() -> np.ndarray:
    return body.assets().face_groups["body"]


def test_library_lists_the_shared_assets(library: garments.AssetLibrary) -> None:
    assert len(library.names("clothes")) == 19  # 20 items: fedora01 holds two variants
    assert len(library.names("hair")) == 10
    assert library.hats() == ["fedora01"]
    assert len(library.shoes()) == 6
    assert all(n.startswith("male_") for n in library.suits(1.0))
    assert "male_worksuit01" in library.suits(0.0)  # unisex work suit for everyone
    assert library.poses_dir() is not None


def test_fedora_fitted_to_the_base_mesh_reproduces_its_obj(library: garments.AssetLibrary, base: np.ndarray) -> None:
    fitting = library.get("clothes", "fedora01")
    obj = garments._parse_obj(fitting.mhclo_path.with_name("fedora.obj"))[0]
    expected = np.stack([obj[:, 0], -obj[:, 2], obj[:, 1]], axis=1) * garments.MH_UNIT_M
    fitted = garments.fit(fitting, base)
    # Per-axis coordinate differences (MakeHuman's rule): 1.4e-4 dm measured.
    assert np.abs(fitted - expected).max() < 3e-5


@pytest.mark.parametrize("category", ["clothes", "hair"])
def test_every_asset_parses_with_valid_indices(library: garments.AssetLibrary, base: np.ndarray,
                                               category: str) -> None:
    for name in library.names(category):
        fitting = library.get(category, name)
        assert fitting.vertex_count == len(fitting.weights) > 500, name
        assert fitting.ref.min() >= 0 and fitting.ref.max() < len(base), name
        assert np.allclose(fitting.weights.sum(axis=1), 1.0, atol=0.02), name
        assert fitting.face_vertices.max() < fitting.vertex_count, name
        assert len(fitting.uv) == len(fitting.face_vertices), name
        if len(fitting.delete_verts):
            assert fitting.delete_verts.min() >= 0 and fitting.delete_verts.max() < len(base), name


def test_garments_lie_close_to_the_body_surface(library: garments.AssetLibrary, base: np.ndarray) -> None:
    faces = _body_faces()
    stats = {}
    for name in library.names("clothes"):
        d = _surface_distance(garments.fit(library.get("clothes", name), base), base, faces)
        stats[name] = (np.median(d), np.percentile(d, 95))
    # Measured: medians 7-23 mm, 95th percentiles 14-52 mm (the elegant dress's hem and the
    # fedora's brim stand off furthest).
    for name, (median, p95) in stats.items():
        assert median < 0.03, (name, median)
        assert p95 < 0.07, (name, p95)


def test_fitting_follows_a_shape_change(library: garments.AssetLibrary, base: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    params = sample_person_params(rng)
    import dataclasses

    heavy = dataclasses.replace(params, weight=1.0, muscle=0.5, height=0.9, gender=1.0)
    shaped = body.shaped_vertices(heavy)
    faces = _body_faces()
    fitting = library.get("clothes", "male_casualsuit02")
    on_base = garments.fit(fitting, base)
    on_shaped = garments.fit(fitting, shaped)
    moved = np.linalg.norm(on_shaped - on_base, axis=1)
    assert np.median(moved) > 0.03  # the shape change moved the garment a lot
    d_shaped = _surface_distance(on_shaped, shaped, faces)
    d_stale = _surface_distance(on_base, shaped, faces)
    # Refitted, it hugs the new body as closely as the old one; left unfitted, it does not.
    assert np.median(d_shaped) < 0.03
    assert np.median(d_stale) > 2 * np.median(d_shaped)
    # Taller body, taller garment: its vertical extent scales like the part of the body it covers.
    covered = garments.dominant_reference(fitting)
    body_ratio = np.ptp(shaped[covered, 2]) / np.ptp(base[covered, 2])
    garment_ratio = np.ptp(on_shaped[:, 2]) / np.ptp(on_base[:, 2])
    assert body_ratio > 1.02 and abs(garment_ratio - body_ratio) < 0.01


def test_delete_verts_hide_the_covered_body(library: garments.AssetLibrary) -> None:
    part = body.parts()["body"]
    suit = library.get("clothes", "male_casualsuit02")
    shoes = library.get("clothes", "shoes01")
    hidden_suit = garments.hidden_body_faces(part.faces, part.vertex_index, [suit])
    hidden_shoes = garments.hidden_body_faces(part.faces, part.vertex_index, [shoes])
    regions = np.asarray(body.REGIONS)[part.face_region]
    assert hidden_suit[regions == "torso"].mean() > 0.8
    assert hidden_suit[regions == "skin"].mean() < 0.3  # head and hands stay
    assert hidden_shoes[regions == "foot"].mean() > 0.8
    assert hidden_shoes[regions == "torso"].sum() == 0
    both = garments.hidden_body_faces(part.faces, part.vertex_index, [suit, shoes])
    assert np.array_equal(both, hidden_suit | hidden_shoes)


def test_skin_weights_transfer_from_the_reference_vertices(library: garments.AssetLibrary) -> None:
    data = body.assets()
    for name, bones in (("shoes01", {"LeftFoot", "RightFoot", "LeftToeBase", "RightToeBase",
                                     "LeftLeg", "RightLeg"}),
                        ("fedora01", {"Head", "Neck1", "Neck"})):
        fitting = library.get("clothes", name)
        weights = garments.transfer_weights(fitting, data.weights, len(data.base))
        total = np.zeros(fitting.vertex_count)
        inside = np.zeros(fitting.vertex_count)
        for bone, (idx, w) in weights.items():
            total[idx] += w
            if bone in bones:
                inside[idx] += w
        assert np.allclose(total, 1.0, atol=1e-5), name
        assert inside.mean() > 0.95, name


def test_suit_faces_split_into_top_and_bottom(library: garments.AssetLibrary) -> None:
    data = body.assets()
    lower = garments.lower_body_vertices(data.weights, len(data.base)).astype(np.int64)
    fitting = library.get("clothes", "male_casualsuit02")
    slots = garments.face_slots(fitting, lower)
    fitted = garments.fit(fitting, data.base.astype(np.float64))
    starts = np.concatenate([[0], np.cumsum(fitting.face_sizes)[:-1]])
    centre_z = fitted[fitting.face_vertices[starts], 2]
    assert 0.2 < slots.mean() < 0.8
    assert centre_z[slots == 0].mean() > centre_z[slots == 1].mean() + 0.4  # shirt above trousers


def test_outfit_is_a_function_of_the_person(library: garments.AssetLibrary) -> None:
    rng = np.random.default_rng(11)
    people = [sample_person_params(rng) for _ in range(40)]
    outfits = [garments.choose_outfit(p, library) for p in people]
    assert outfits == [garments.choose_outfit(p, library) for p in people]
    for person, outfit in zip(people, outfits):
        assert outfit.suit in library.suits(person.gender)
        assert outfit.shoes in library.shoes()
        assert (outfit.hair is None) == (person.hair_style == "none")
        if outfit.hair:
            assert outfit.hair in garments.HAIR_ASSETS[person.hair_style]
    assert len({o.suit for o in outfits}) >= 6
    pigments = [garments.hair_pigment(p) for p in people]
    assert all(0.0 <= g["melanin"] <= 1.0 and 0.0 <= g["redness"] <= 1.0 for g in pigments)


def test_find_assets_root_refuses_a_wrong_explicit_folder(tmp_path: Path) -> None:
    with pytest.raises(garments.AssetError, match="not a MakeHuman asset folder"):
        garments.find_assets_root(tmp_path)


def test_malformed_mhclo_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "bad.obj").write_text("v 0 0 0\nf 1 1 1\n")
    (tmp_path / "bad.mhclo").write_text("basemesh hm08\nobj_file bad.obj\nx_scale 1 2 1\ny_scale 1 2 1\n"
                                        "z_scale 1 2 1\nverts 0\n1 2 3 0.5 0.5\n")
    with pytest.raises(garments.AssetError, match=r"bad.mhclo:7: malformed"):
        garments.parse_mhclo(tmp_path / "bad.mhclo")
