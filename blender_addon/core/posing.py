"""Which BVH frame a person's pose choice means, with its variation applied (numpy only).

Entry points: :func:`resolve_pose`, called before anything of a person is built, so a bad pose
fails without leaving half a person in the scene; :func:`standing_frame_verdicts`, which frames
of a clip are plausible standing poses (used by ``PoseLibrary`` to skip jumps and crouches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blender_addon.core.bvh import (
    NAMING_FAMILIES,
    Bvh,
    BvhError,
    PoseLibrary,
    builtin_pose_bvh,
    detect_naming,
    euler_xyz_degrees,
    matrix_to_zyx_degrees,
    parse_bvh,
)
from blender_addon.core.human_params import PoseChoice


def resolve_pose(pose: PoseChoice, library: PoseLibrary | None) -> tuple[Bvh, int]:
    """The BVH and frame a pose choice refers to, validated before anything is built."""
    if pose.builtin_name is not None:
        bvh = builtin_pose_bvh(pose.builtin_name, pose.variation_degrees())
        return bvh, 0
    assert pose.bvh_path is not None and pose.frame is not None
    bvh = library.get(pose.bvh_path) if library is not None else parse_bvh(pose.bvh_path)
    detect_naming(bvh)
    if not 0 <= pose.frame < bvh.frame_count:
        raise BvhError(f"{pose.bvh_path}: frame {pose.frame} out of range 0..{bvh.frame_count - 1}")
    if pose.variation_degrees():
        # Variation on captured frames is applied as extra local rotations.
        bvh = with_variation(bvh, pose.frame, pose.variation_degrees())
        return bvh, 0
    return bvh, pose.frame


def with_variation(bvh: Bvh, frame: int, extra: dict[str, tuple[float, float, float]]) -> Bvh:
    mapping = NAMING_FAMILIES[detect_naming(bvh)]
    local, root = bvh.local_transforms(frame)
    channels, values = [], []
    for j, name in enumerate(bvh.names):
        rotation = local[j]
        canonical = mapping.get(name)
        if canonical in extra:
            rotation = rotation @ euler_xyz_degrees(extra[canonical])
        z, y, x = matrix_to_zyx_degrees(rotation)
        if bvh.parents[j] == -1:
            channels.append(["Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation"])
            values.extend([*root.tolist(), z, y, x])
        else:
            channels.append(["Zrotation", "Yrotation", "Xrotation"])
            values.extend([z, y, x])
    starts = np.concatenate([[0], np.cumsum([len(c) for c in channels])[:-1]]).astype(int)
    return Bvh(path=bvh.path, names=bvh.names, parents=bvh.parents, offsets=bvh.offsets,
               end_offsets=bvh.end_offsets, channels=channels, motion=np.array([values]),
               frame_time=bvh.frame_time, _channel_start=[int(s) for s in starts],
               unit_metres=bvh.unit_metres)


# ---------------------------------------------------------------------------------------------
# Plausible standing frames: mocap clips jump, crouch and fall; a person standing in an office
# does not. Frames are judged on the capture's own joints (Blender axes, metres), all frames
# at once.

FOOT_LIFT_TOLERANCE_M = 0.10  # a foot joint this far above the clip's floor is off the floor
_FEET = (("LeftFoot", "LeftToeBase"), ("RightFoot", "RightToeBase"))


def all_frame_positions(bvh: Bvh) -> dict[str, np.ndarray]:
    """Canonical joint -> (F, 3) positions over every frame, Blender axes and metres.

    Forward kinematics vectorised over frames (the same maths as ``Bvh.global_transforms``),
    so a 2,752-frame clip is judged in milliseconds rather than one frame at a time."""
    from blender_addon.core.bvh import canonical_index, family_frame

    frames = bvh.frame_count
    eye = np.broadcast_to(np.eye(3), (frames, 3, 3))
    rotations = np.empty((len(bvh.names), frames, 3, 3))
    positions = np.empty((len(bvh.names), frames, 3))
    for joint, parent in enumerate(bvh.parents):
        local = eye.copy()
        translation = np.zeros((frames, 3))
        start = bvh._channel_start[joint]
        for k, channel in enumerate(bvh.channels[joint]):
            values = bvh.motion[:, start + k]
            axis = "XYZ".index(channel[0].upper())
            if channel.endswith("position"):
                translation[:, axis] = values
                continue
            angle = np.radians(values)
            c, s = np.cos(angle), np.sin(angle)
            r = np.zeros((frames, 3, 3))
            i, j = [a for a in range(3) if a != axis]
            r[:, axis, axis] = 1.0
            r[:, i, i] = c
            r[:, j, j] = c
            # Right-handed rotation about `axis` (same sign convention as bvh.axis_rotation).
            sign = -1.0 if axis == 1 else 1.0
            r[:, i, j] = -s * sign
            r[:, j, i] = s * sign
            local = local @ r
        if parent == -1:
            rotations[joint] = local
            positions[joint] = bvh.offsets[joint] + translation
        else:
            rotations[joint] = rotations[parent] @ local
            positions[joint] = positions[parent] + np.einsum("fij,j->fi", rotations[parent], bvh.offsets[joint])
    axes, _, unit = family_frame(detect_naming(bvh), bvh)
    return {name: positions[i] @ axes.T * unit for name, i in canonical_index(bvh).items()}


UPRIGHT_FRACTION = 0.6


def rest_head_height(bvh: Bvh) -> float:
    """Height of the Head joint over the lowest foot joint in the rest pose (metres)."""
    from blender_addon.core.bvh import canonical_index, family_frame

    axes, _, unit = family_frame(detect_naming(bvh), bvh)
    rest = bvh.rest_positions() @ axes.T * unit
    index = canonical_index(bvh)
    feet = [index[j] for pair in _FEET for j in pair if j in index]
    return float(rest[index["Head"], 2] - rest[feet, 2].min())


@dataclass(frozen=True)
class FrameVerdicts:
    """Which frames of one clip may be used as standing poses, and why the others may not."""

    accepted: np.ndarray  # (F,) bool
    reasons: dict[str, np.ndarray]  # rule -> (F,) bool, True where the rule rejects the frame
    floor_z: float  # the clip's floor in the capture (metres, Blender axes)

    def counts(self) -> dict[str, int]:
        out = {"frames": len(self.accepted), "accepted": int(self.accepted.sum()),
               "rejected": int((~self.accepted).sum())}
        out.update({f"rejected_{rule}": int(mask.sum()) for rule, mask in self.reasons.items()})
        return out


def standing_frame_verdicts(bvh: Bvh, lift_tolerance_m: float = FOOT_LIFT_TOLERANCE_M) -> FrameVerdicts:
    """Judge every frame of ``bvh`` as a standing pose.

    Rejected: both feet off the floor (jumps, runs in flight), the hips below knee height
    (crouching, kneeling, sitting on the ground), the head below the hips (handstands,
    falls), a foot above knee height (kicks, high steps), the head under 60% of the rest
    pose's height (lying, deep crouches). The floor is the 1st percentile of the lowest foot point over the
    clip; a one-frame file (a static pose) rests on its lowest joint instead.
    """
    joints = all_frame_positions(bvh)
    foot_low = np.stack([np.minimum(*(joints[j][:, 2] for j in pair if j in joints))
                         if sum(j in joints for j in pair) == 2 else joints[pair[0]][:, 2]
                         for pair in _FEET], axis=1)  # (F, 2): each foot's lowest joint
    if bvh.frame_count == 1:
        floor = float(min(p[0, 2] for p in joints.values()))
    else:
        floor = float(np.percentile(foot_low.min(axis=1), 1.0))
    hips = joints["Hips"][:, 2]
    knees = (joints["LeftLeg"][:, 2] + joints["RightLeg"][:, 2]) / 2
    reasons = {
        "both_feet_off_floor": (foot_low > floor + lift_tolerance_m).all(axis=1),
        "hips_below_knees": hips < knees,
        "head_below_hips": joints["Head"][:, 2] < hips,
        # Kicks and high steps: a foot's lowest joint above knee height.
        "foot_above_knees": foot_low.max(axis=1) > knees,
        # Lying or deep crouch: the head lower than 60% of the skeleton's rest (standing) height.
        "not_upright": joints["Head"][:, 2] - floor < UPRIGHT_FRACTION * rest_head_height(bvh),
    }
    rejected = np.zeros(bvh.frame_count, dtype=bool)
    for mask in reasons.values():
        rejected |= mask
    return FrameVerdicts(accepted=~rejected, reasons=reasons, floor_z=floor)


def pose_library_for(pose_library: str | None, assets: str | None) -> PoseLibrary | None:
    """The pose library a run uses: its BVH folder (e.g. CMU mocap) plus, when a MakeHuman
    asset folder is set, its static poses (``base/poses``) as a second source; None when
    there is neither (built-in poses only)."""
    folders = [pose_library] if pose_library else []
    if assets:
        from blender_addon.core.garments import AssetLibrary

        poses = AssetLibrary(assets).poses_dir()
        if poses is not None:
            folders.append(str(poses))
    return PoseLibrary(*folders) if folders else None
