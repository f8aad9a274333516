"""Which BVH frame a person's pose choice means, with its variation applied (numpy only).

Entry point: :func:`resolve_pose`, called before anything of a person is built, so a bad pose
fails without leaving half a person in the scene.
"""

from __future__ import annotations

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
        canonical = mapping[name]
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
