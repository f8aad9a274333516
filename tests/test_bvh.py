"""BVH parser, forward kinematics, naming families, built-in poses, pose library and sampling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import bvh as B
from blender_addon.core.human_params import (
    PHENOTYPES,
    PoseChoice,
    height_macro_for_stature,
    sample_person_params,
    sample_pose,
)

MINI = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT LeftUpLeg
  {
    OFFSET 1 0 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    End Site
    {
      OFFSET 0 -2 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.1
0 10 0 0 0 0 0 0 0
1 10 0 90 0 0 0 0 0
"""


def test_forward_kinematics_on_a_hand_made_file() -> None:
    bvh = B.parse_bvh_text(MINI)
    assert bvh.names == ["Hips", "LeftUpLeg"] and bvh.frame_count == 2
    p0 = bvh.world_positions(0)
    np.testing.assert_allclose(p0["LeftUpLeg"], [1, 10, 0])
    # Frame 1: root moved +1 in x and turned 90 degrees about Z, so the +X offset becomes +Y.
    p1 = bvh.world_positions(1)
    np.testing.assert_allclose(p1["Hips"], [1, 10, 0], atol=1e-12)
    np.testing.assert_allclose(p1["LeftUpLeg"], [1, 11, 0], atol=1e-12)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("NOT A BVH", "does not start with HIERARCHY"),
        (MINI.replace("Frames: 2", "Frames: 3"), "truncated"),
        (MINI.replace("OFFSET 1 0 0", "OFFSET 1 zero 0"), "expected a number"),
        (MINI.replace("Zrotation Yrotation Xrotation\n    End", "Zrotation Yrotation Wrotation\n    End"),
         "unknown channel"),
        (MINI.split("MOTION")[0], "unexpected end of file"),
    ],
)
def test_malformed_files_raise_clear_errors(text: str, needle: str) -> None:
    with pytest.raises(B.BvhError, match=needle):
        B.parse_bvh_text(text, "bad.bvh")


def test_missing_file_and_unknown_naming(tmp_path: Path) -> None:
    with pytest.raises(B.BvhError, match="not found"):
        B.parse_bvh(tmp_path / "nope.bvh")
    odd = B.parse_bvh_text(MINI.replace("LeftUpLeg", "Femur_L"), "odd.bvh")
    with pytest.raises(B.BvhError, match="unknown joint naming.*Femur_L"):
        B.detect_naming(odd)


@pytest.mark.parametrize(("name", "family"), [("cmu_01_01.bvh", "cmu_motionbuilder"),
                                              ("cmu_131_01_3dsmax.bvh", "cmu_3dsmax")])
def test_real_files_parse_map_and_keep_bone_lengths(mocap_dir: Path, name: str, family: str) -> None:
    bvh = B.parse_bvh(mocap_dir / name)
    assert B.detect_naming(bvh) == family
    index = B.canonical_index(bvh)
    assert set(B.REQUIRED_JOINTS) <= set(index)
    frames = [0, bvh.frame_count // 2, bvh.frame_count - 1]
    lengths = []
    for frame in frames:
        pos = B.canonical_world_positions(bvh, frame)
        lengths.append([np.linalg.norm(pos[a] - pos[b]) for a, b in
                        (("LeftUpLeg", "LeftLeg"), ("LeftLeg", "LeftFoot"), ("RightArm", "RightForeArm"))])
        # A standing actor: head well above the feet, in metres.
        assert 1.0 < pos["Head"][2] - min(pos["LeftFoot"][2], pos["RightFoot"][2]) < 1.9
    np.testing.assert_allclose(lengths[0], lengths[1], rtol=1e-9)
    np.testing.assert_allclose(lengths[0], lengths[2], rtol=1e-9)
    # Thigh length of an adult (CMU units converted to metres).
    assert 0.3 < lengths[0][0] < 0.55


def test_pose_library_parses_each_file_once(mocap_dir: Path) -> None:
    library = B.PoseLibrary(mocap_dir)
    rng = np.random.default_rng(0)
    picks = [library.choose(rng) for _ in range(30)]
    assert library.parse_count == len(library.files) == len({p for p, _ in picks})
    for path, frame in picks:
        assert 0 <= frame < library.get(path).frame_count
    with pytest.raises(B.BvhError, match="does not exist"):
        B.PoseLibrary(mocap_dir / "missing")


def test_zyx_round_trip() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        angles = rng.uniform(-80, 80, size=3)
        m = B.euler_xyz_degrees(angles)
        z, y, x = B.matrix_to_zyx_degrees(m)
        rebuilt = B.axis_rotation("Z", math.radians(z)) @ B.axis_rotation("Y", math.radians(y)) @ \
            B.axis_rotation("X", math.radians(x))
        np.testing.assert_allclose(rebuilt, m, atol=1e-9)


def test_builtin_sitting_pose_has_horizontal_thighs_and_vertical_shins() -> None:
    bvh = B.builtin_pose_bvh("sit_upright")
    pos = B.canonical_world_positions(bvh, 0)
    thigh = pos["LeftLeg"] - pos["LeftUpLeg"]
    shin = pos["LeftFoot"] - pos["LeftLeg"]
    assert abs(thigh[2]) < 0.05 * np.linalg.norm(thigh)  # horizontal
    assert thigh[1] < 0  # forward is -Y in Blender axes
    assert shin[2] < -0.95 * np.linalg.norm(shin)  # hanging down
    tilted = B.canonical_world_positions(B.builtin_pose_bvh("sit_upright", {"LowerBack": (20, 0, 0)}), 0)
    assert tilted["Head"][1] < pos["Head"][1] - 0.1  # leaning forward moves the head to the front
    with pytest.raises(B.BvhError, match="unknown built-in pose"):
        B.builtin_pose_bvh("moonwalk")


def test_person_sampling_follows_table_7_1_and_is_seeded() -> None:
    people = [sample_person_params(np.random.default_rng(s)) for s in range(200)]
    melanin = np.array([p.skin_melanin for p in people])
    hue = np.array([p.skin_hue for p in people])
    assert melanin.min() >= 0.2 and melanin.max() <= 1.0 and melanin.std() > 0.15
    assert hue.min() >= 0.49 and hue.max() <= 0.51
    values = np.array([p.top.value for p in people])
    assert abs(np.median(values) - 0.5) < 0.06
    assert {p.phenotype for p in people} <= set(PHENOTYPES) and len({p.phenotype for p in people}) >= 15
    assert {p.hair_style for p in people} == {"none", "short", "medium", "long"}
    assert sample_person_params(np.random.default_rng(7)) == sample_person_params(np.random.default_rng(7))
    assert sample_person_params(np.random.default_rng(7)) != sample_person_params(np.random.default_rng(8))
    # The stature inversion is monotonic and hits MakeHuman's measured anchors.
    assert height_macro_for_stature(1.599, 0.0) == pytest.approx(0.5)
    assert height_macro_for_stature(1.70, 1.0) < height_macro_for_stature(1.85, 1.0)


def test_pose_sampling_and_validation(mocap_dir: Path) -> None:
    library = B.PoseLibrary(mocap_dir)
    standing = sample_pose(np.random.default_rng(0), "standing", library)
    assert standing.bvh_path in library.files and standing.frame is not None
    sitting = sample_pose(np.random.default_rng(0), "sitting", library)
    assert sitting.builtin_name.startswith("sit") and -8 <= sitting.tilt_deg <= 20
    assert sitting.variation_degrees()["LowerBack"][0] == pytest.approx(
        dict(sitting.joint_variation).get("LowerBack", (0, 0, 0))[0] + sitting.tilt_deg)
    with pytest.raises(ValueError, match="unknown pose kind"):
        sample_pose(np.random.default_rng(0), "lying")
    with pytest.raises(ValueError, match="exactly one"):
        PoseChoice(kind="standing", bvh_path=None, frame=None)
