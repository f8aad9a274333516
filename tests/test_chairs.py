"""Chairs at the seats of rooms whose photo lost them: geometry under the sitter (numpy), the
scene field and placement that keeps standing people out of empty chairs, and a render where
the chairs show, hide people behind them and never join a person's mask (bpy)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_addon.core import chairs as ch
from blender_addon.core.batch import PersonRecipe
from blender_addon.core.placement import PlacementConfig, place_people
from blender_addon.core.scene_format import ChairStyle, SceneFormatError, load_scene

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "scenes" / "sample_office"


def _scene_with_chairs(tmp_path: Path, chairs: object = None, furniture: bool = True) -> Path:
    folder = tmp_path / "scene"
    shutil.copytree(SAMPLE, folder)
    document = json.loads((folder / "scene.json").read_text())
    document["chairs"] = chairs if chairs is not None else {"fabric_srgb": [0.55, 0.27, 0.30]}
    if not furniture:
        document["furniture"] = []
    (folder / "scene.json").write_text(json.dumps(document))
    return folder


@pytest.mark.parametrize("heading_deg", [0.0, 37.0, 180.0, -100.0])
def test_the_chair_carries_the_sitter(heading_deg: float) -> None:
    heading = math.radians(heading_deg)
    hips, seat_height = np.array([1.2, -0.7]), 0.46
    parts = {p.name: p for p in ch.chair_parts(hips, seat_height, heading)}
    assert set(parts) == set(ch.PARTS)
    corners = {name: ch.part_corners(part) for name, part in parts.items()}
    # The cushion's top is the seat height and it holds the hips; the legs stand on the floor.
    cushion = corners["cushion"]
    assert cushion[:, 2].max() == pytest.approx(seat_height)
    forward = np.array([math.cos(heading), math.sin(heading)])
    left = np.array([-forward[1], forward[0]])
    ahead = (cushion[:, :2] - hips) @ forward
    across = (cushion[:, :2] - hips) @ left
    assert ahead.min() < 0 < ahead.max() and across.min() < 0 < across.max()
    for name in ch.PARTS[2:]:
        assert corners[name][:, 2].min() == pytest.approx(0.0)
        assert corners[name][:, 2].max() <= seat_height + ch.BACKREST_TOP_M + 1e-9
    # The backrest is behind the sitter, the front legs ahead of the hips.
    assert ((corners["backrest"][:, :2] - hips) @ forward < 0).all()
    assert ((corners["leg_front_left"][:, :2] - hips) @ forward > 0).all()
    assert (((corners["leg_front_left"][:, :2] - hips) @ left) > 0).all()
    assert corners["backrest"][:, 2].max() == pytest.approx(seat_height + ch.BACKREST_TOP_M)


def _person(name: str, seat: str | None, location: tuple[float, float, float], heading: float) -> PersonRecipe:
    kind = "sitting" if seat else "standing"
    return PersonRecipe(name, 1, kind, location, heading, (0.0, 0.0, 0.0), seat, None, None)


def test_every_seat_gets_a_chair_under_its_sitter_or_empty(tmp_path: Path) -> None:
    assert ch.frame_chairs(load_scene(SAMPLE), []) == []  # a scene without chairs
    scene = load_scene(_scene_with_chairs(tmp_path))
    assert scene.chairs == ChairStyle((0.55, 0.27, 0.30))
    seat = scene.seats[2]
    # The sitter's place and heading (jitter included) move the chair, not the seat's.
    sitter = _person("person_1", seat.name, (seat.position[0] + 0.05, seat.position[1], seat.height_m), 1.0)
    walker = _person("person_2", None, (0.0, 0.0, 0.0), 2.0)
    chairs = ch.frame_chairs(scene, [sitter, walker])
    assert [c.seat for c in chairs] == [s.name for s in scene.seats]
    assert [c.occupant for c in chairs] == [None, None, "person_1"] + [None] * (len(scene.seats) - 3)
    assert chairs[2].parts == ch.chair_parts(sitter.location[:2], seat.height_m, 1.0)
    empty = scene.seats[0]
    assert chairs[0].parts == ch.chair_parts(empty.position, empty.height_m, math.radians(empty.facing_deg))
    assert chairs[0].corners().shape == (8 * len(ch.PARTS), 3)


def test_no_empty_chair_crowds_a_sitter(tmp_path: Path) -> None:
    folder = _scene_with_chairs(tmp_path)
    document = json.loads((folder / "scene.json").read_text())
    first = document["seats"][0]
    # A second seat 0.4 m from the first: placement never seats both, so no chair may go there
    # while someone sits on the first (it would intersect theirs).
    document["seats"].append({**first, "name": "crowded", "position": [first["position"][0] + 0.4,
                                                                      first["position"][1]]})
    (folder / "scene.json").write_text(json.dumps(document))
    scene = load_scene(folder)
    seat = scene.seats[0]
    sitter = _person("person_1", seat.name, (*seat.position, seat.height_m), 0.0)
    names = [c.seat for c in ch.frame_chairs(scene, [sitter])]
    assert seat.name in names and "crowded" not in names
    assert len(names) == len(scene.seats) - 1
    # Nobody seated: the earlier seat keeps its empty chair, the crowding one stays bare.
    assert "crowded" not in [c.seat for c in ch.frame_chairs(scene, [])]


def test_chairs_field_is_checked(tmp_path: Path) -> None:
    with_frame = load_scene(_scene_with_chairs(tmp_path, {"fabric_srgb": [0.1, 0.2, 0.3],
                                                          "frame_srgb": [0.0, 0.0, 0.0]}))
    assert with_frame.chairs == ChairStyle((0.1, 0.2, 0.3), (0.0, 0.0, 0.0))
    assert with_frame.to_dict()["chairs"] == {"fabric_srgb": [0.1, 0.2, 0.3], "frame_srgb": [0.0, 0.0, 0.0]}
    for bad, message in (({"fabric_srgb": [0.1, 0.2, 1.5]}, r"chairs\.fabric_srgb: must be three sRGB"),
                         ({"frame_srgb": [0, 0, 0]}, r"chairs\.fabric_srgb: is missing"),
                         ({"fabric_srgb": [120, 40, 50]}, r"in 0\.\.1")):
        shutil.rmtree(tmp_path / "scene")
        with pytest.raises(SceneFormatError, match=message):
            load_scene(_scene_with_chairs(tmp_path, bad))


def test_standing_people_keep_out_of_empty_chairs(tmp_path: Path) -> None:
    # Without furniture: the sample office's seat boxes would keep standing people away anyway.
    chaired = load_scene(_scene_with_chairs(tmp_path, furniture=False))
    plain = dataclasses.replace(chaired, chairs=None)
    config = PlacementConfig()
    near_misses = 0
    for seed in range(200):
        placed = place_people(chaired, 1, 3, np.random.default_rng(seed), config)
        taken = {p.seat for p in placed}
        for person in (p for p in placed if p.kind == "standing"):
            for seat in (s for s in chaired.seats if s.name not in taken):
                gap = math.dist(person.location[:2], seat.position)
                assert gap >= config.standing_radius_m + config.sitting_radius_m - 1e-9
        # Without chairs the same draws may stand people on empty seats; that is what changed.
        for person in place_people(plain, 1, 3, np.random.default_rng(seed), config):
            if person.kind == "standing":
                near_misses += any(math.dist(person.location[:2], s.position)
                                   < config.standing_radius_m + config.sitting_radius_m for s in plain.seats)
    assert near_misses > 0  # the check above is not vacuous for this room


@pytest.mark.blender
def test_chairs_render_at_every_seat_and_stay_out_of_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("bpy")
    from blender_addon.bl import cli_entry
    from blender_addon.core.render_cli import Backend, run

    # No furniture proxies: nothing but the chairs can hide a person in the chaired render.
    plain_scene = tmp_path / "plain_scene"
    shutil.copytree(SAMPLE, plain_scene)
    document = json.loads((plain_scene / "scene.json").read_text())
    document["furniture"] = []
    (plain_scene / "scene.json").write_text(json.dumps(document))
    chaired_scene = _scene_with_chairs(tmp_path, furniture=False)

    def render(scene: Path, out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
        code = run(["--scene", str(scene), "--count", "1", "--seed", "5", "--human-backend", "proxy",
                    "--preset", "fast", "--resolution", "192", "--samples", "8", "--no-denoise",
                    "--hard-masks", "--sitting", "3,3", "--standing", "0,0", "--workers", "0",
                    "--threads", "2", "--no-progress", "--out", str(out)],
                   Backend(cli_entry.worker_command, cli_entry.render_in_process))
        assert code == 0
        image = np.asarray(Image.open(out / "images" / "000000.png")).astype(int)
        mask = np.asarray(Image.open(out / "masks" / "000000.png")).astype(int)
        return image, mask, json.loads((out / "frames" / "000000.json").read_text())

    # Backrests through the middle of the (proxy) sitters' box bodies and above their tops, so
    # that from the ceiling they surely hide part of them: the masks must show it, the
    # unoccluded silhouettes must not.
    monkeypatch.setattr(ch, "BACKREST_TOP_M", 1.2)
    monkeypatch.setattr(ch, "HIPS_TO_BACKREST_M", 0.0)
    plain, plain_mask, plain_record = render(plain_scene, tmp_path / "plain")
    chaired, chaired_mask, record = render(chaired_scene, tmp_path / "chaired")
    scene = load_scene(chaired_scene)
    chairs = record["manifest"]["chairs"]
    seated = {p["name"]: p["seat"] for p in record["manifest"]["recipe"]["people"]}
    assert len(chairs) == len(scene.seats) and plain_record["manifest"]["chairs"] == []
    assert {c["occupant"]: c["seat"] for c in chairs if c["occupant"]} == seated
    # Chairs only ever hide people: a pixel of a person with chairs is that person's without,
    # and each person's whole (unoccluded) silhouette is the same with and without them.
    person = chaired_mask > 0
    assert person.any() and (chaired_mask[person] == plain_mask[person]).all()
    assert ((plain_mask > 0) & (chaired_mask == 0)).sum() > 10  # backrests do hide the sitters
    full = {a["instance_id"]: a["segmentation_full"] for a in plain_record["annotations"]}
    assert full and {a["instance_id"]: a["segmentation_full"] for a in record["annotations"]} == full
    # An empty chair's cushion shows in the image and belongs to nobody.
    camera = scene.camera_for(192)
    empty = next(c["seat"] for c in chairs if c["occupant"] is None)
    seat = next(s for s in scene.seats if s.name == empty)
    cushion = ch.part_corners(ch.empty_chair(seat)[0]).mean(axis=0)
    pixels, _ = camera.project(cushion[None, :])
    x, y = (int(v) for v in pixels[0])
    assert chaired_mask[y - 1:y + 2, x - 1:x + 2].max() == 0
    assert np.abs(chaired[y - 1:y + 2, x - 1:x + 2] - plain[y - 1:y + 2, x - 1:x + 2]).max() > 20
