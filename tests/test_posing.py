"""Plausible standing frames (numpy only): jumps, crouches, handstands and lying poses are
rejected per frame; MakeHuman's static poses are a second pose source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import bvh as B
from blender_addon.core import posing


@pytest.fixture(scope="module")
def mh_poses(shared_data: Path) -> Path:
    folder = shared_data / "makehuman_assets" / "base" / "poses"
    if not folder.is_dir():
        pytest.skip(f"MakeHuman poses not found at {folder}; see ../shared/data/README.md")
    return folder


def test_vectorised_forward_kinematics_matches_the_per_frame_one(mocap_dir: Path, mh_poses: Path) -> None:
    for path in (mocap_dir / "cmu_01_01.bvh", mocap_dir / "cmu_131_01_3dsmax.bvh", mh_poses / "run01.bvh"):
        bvh = B.parse_bvh(path)
        every = posing.all_frame_positions(bvh)
        for frame in {0, bvh.frame_count // 2, bvh.frame_count - 1}:
            one = B.canonical_world_positions(bvh, frame)
            assert max(np.abs(one[j] - every[j][frame]).max() for j in one) < 1e-9


def test_jumps_and_crouches_are_rejected(mocap_dir: Path) -> None:
    jumps = B.parse_bvh(mocap_dir / "cmu_01_01.bvh")  # forward jumps
    verdicts = posing.standing_frame_verdicts(jumps)
    counts = verdicts.counts()
    # Measured: 373 of 2752 frames in the air, none crouched.
    assert 0.05 < counts["rejected_both_feet_off_floor"] / counts["frames"] < 0.3
    assert counts["accepted"] + counts["rejected"] == jumps.frame_count
    joints = posing.all_frame_positions(jumps)
    air = np.flatnonzero(verdicts.reasons["both_feet_off_floor"])
    for frame in air[:: max(1, len(air) // 20)]:
        for foot in ("LeftFoot", "LeftToeBase", "RightFoot", "RightToeBase"):
            assert joints[foot][frame, 2] > verdicts.floor_z + posing.FOOT_LIFT_TOLERANCE_M
    crouch = B.parse_bvh(mocap_dir / "cmu_131_01_3dsmax.bvh")  # crouches near frame 400
    low = posing.standing_frame_verdicts(crouch)
    assert 0 < low.counts()["rejected"] < 100
    assert not low.accepted[380:420].all()


def test_makehuman_static_poses_are_retargetable_and_judged(mh_poses: Path) -> None:
    verdicts = {}
    for path in sorted(mh_poses.glob("*.bvh")):
        bvh = B.parse_bvh(path)
        assert B.detect_naming(bvh) == "makehuman_default"
        verdicts[path.stem] = posing.standing_frame_verdicts(bvh)
    accepted = {name for name, v in verdicts.items() if v.accepted[0]}
    assert {f"standing0{i}" for i in range(1, 7)} <= accepted
    assert {"gym01", "sit01", "fly01", "fly02", "fight04"}.isdisjoint(accepted)
    assert verdicts["fight04"].reasons["foot_above_knees"][0]  # a high kick
    assert verdicts["gym01"].reasons["head_below_hips"][0]  # a handstand
    assert verdicts["sit01"].reasons["hips_below_knees"][0]  # sitting on the ground
    standing = B.canonical_world_positions(B.parse_bvh(mh_poses / "standing01.bvh"), 0)
    height = standing["Head"][2] - min(standing["LeftFoot"][2], standing["RightFoot"][2])
    assert 1.3 < height < 1.7  # decimetre files read as metres through the family's frame


def test_library_with_two_sources_reports_and_only_chooses_accepted_frames(mocap_dir: Path, mh_poses: Path) -> None:
    library = B.PoseLibrary(mocap_dir, mh_poses)
    stats = library.stats()
    assert set(stats) == {str(mocap_dir), str(mh_poses)}
    assert stats[str(mh_poses)]["files"] == 15 and stats[str(mh_poses)]["rejected"] == 6
    assert stats[str(mocap_dir)]["rejected_both_feet_off_floor"] > 0
    rng = np.random.default_rng(0)
    picks = [library.choose(rng) for _ in range(200)]
    for path, frame in picks:
        assert frame in library.accepted_frames(path)
    from_mh = sum(path.startswith(str(mh_poses)) for path, _ in picks)
    assert 60 < from_mh < 140  # sources are drawn evenly, not files
    everything = B.PoseLibrary(mocap_dir, standing_only=False)
    assert everything.stats()[str(mocap_dir)]["rejected"] == 0


def test_pose_library_for_adds_the_asset_poses(mocap_dir: Path, mh_poses: Path) -> None:
    assets = mh_poses.parents[1]
    library = posing.pose_library_for(str(mocap_dir), str(assets))
    assert library is not None and list(library.sources) == [str(mocap_dir), str(mh_poses)]
    assert posing.pose_library_for(None, None) is None
    only = posing.pose_library_for(None, str(assets))
    assert only is not None and list(only.sources) == [str(mh_poses)]


def test_joints_that_translate_are_refused() -> None:
    text = ("HIERARCHY\nROOT Hips\n{\n OFFSET 0 0 0\n CHANNELS 6 Xposition Yposition Zposition Zrotation "
            "Yrotation Xrotation\n JOINT Spine\n {\n  OFFSET 0 1 0\n  CHANNELS 6 Xposition Yposition "
            "Zposition Zrotation Yrotation Xrotation\n  End Site\n  {\n   OFFSET 0 1 0\n  }\n }\n}\n"
            "MOTION\nFrames: 2\nFrame Time: 0.1\n0 0 0 0 0 0 0 0 0 0 0 0\n0 0 0 0 0 0 0 0.5 0 0 0 0\n")
    with pytest.raises(B.BvhError, match="'Spine' has moving position channels"):
        B.parse_bvh_text(text)
    still = B.parse_bvh_text(text.replace("0 0 0 0 0 0 0 0.5 0 0 0 0", "0 0 0 0 0 0 0 0 0 0 0 0"))
    assert still.frame_count == 2
