"""BVH motion capture: a pure-numpy parser, forward kinematics, joint naming and retargeting.

Why our own parser instead of Blender's ``io_anim_bvh``: it runs without Blender, so the
reference joint positions that the Blender retarget is tested against come from independent
code, and a batch can parse a file once and pick frames from it for many people.

Conventions
- A :class:`Bvh` keeps the file's own joint names, axes (CMU: Y up, the actor faces +Z,
  the actor's left is +X) and units. :meth:`Bvh.world_positions` returns positions in those
  units and axes. :data:`BVH_TO_BLENDER` turns BVH axes into Blender's (Z up, front -Y).
- Rotation channels compose in the order they are listed: ``Zrotation Yrotation Xrotation``
  gives ``R = Rz @ Ry @ Rx``; a joint's global rotation is ``G = G_parent @ R`` and its
  position ``p = p_parent + G_parent @ offset``.
- Canonical joint names are the CMU MotionBuilder names used by the body's rig
  (``Hips, LHipJoint, LeftUpLeg, ... Head``); :data:`NAMING_FAMILIES` maps each supported file
  naming onto them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Rotate BVH axes (Y up, front +Z) into Blender axes (Z up, front -Y): (x, y, z) -> (x, -z, y).
BVH_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

# CMU's BVH release uses a length unit of 1/0.45 inch.
CMU_UNIT_METRES = 0.0254 / 0.45

_CANONICAL = (
    "Hips", "LHipJoint", "LeftUpLeg", "LeftLeg", "LeftFoot", "LeftToeBase",
    "RHipJoint", "RightUpLeg", "RightLeg", "RightFoot", "RightToeBase",
    "LowerBack", "Spine", "Spine1", "Neck", "Neck1", "Head",
    "LeftShoulder", "LeftArm", "LeftForeArm", "LeftHand", "LeftFingerBase",
    "LeftHandFinger1", "LThumb",
    "RightShoulder", "RightArm", "RightForeArm", "RightHand", "RightFingerBase",
    "RightHandFinger1", "RThumb",
)
CANONICAL_JOINTS: tuple[str, ...] = _CANONICAL

# Joints a file must provide (after mapping) to drive a body: trunk, legs, arms and head.
REQUIRED_JOINTS: tuple[str, ...] = (
    "Hips", "LeftUpLeg", "LeftLeg", "LeftFoot", "RightUpLeg", "RightLeg", "RightFoot",
    "Spine", "Head", "LeftArm", "LeftForeArm", "RightArm", "RightForeArm",
)

NAMING_FAMILIES: dict[str, dict[str, str]] = {
    # CMU converted through MotionBuilder (e.g. cmu_01_01.bvh); finger tips are "LFingers".
    "cmu_motionbuilder": {
        **{name: name for name in _CANONICAL},
        "LFingers": "LeftHandFinger1",
        "RFingers": "RightHandFinger1",
    },
    # CMU converted for 3ds Max (e.g. cmu_131_01_3dsmax.bvh): note that "LeftShoulder" and
    # "Neck" mean different joints here than in the MotionBuilder naming.
    "cmu_3dsmax": {
        "Hips": "Hips", "LHipJoint": "LHipJoint", "RHipJoint": "RHipJoint",
        "LeftHip": "LeftUpLeg", "LeftKnee": "LeftLeg", "LeftAnkle": "LeftFoot",
        "LeftToe": "LeftToeBase",
        "RightHip": "RightUpLeg", "RightKnee": "RightLeg", "RightAnkle": "RightFoot",
        "RightToe": "RightToeBase",
        "lowerback": "LowerBack", "Chest": "Spine", "Chest2": "Spine1",
        "lowerneck": "Neck", "Neck": "Neck1", "Head": "Head",
        "LeftCollar": "LeftShoulder", "LeftShoulder": "LeftArm", "LeftElbow": "LeftForeArm",
        "LeftWrist": "LeftHand", "lhand": "LeftFingerBase", "LFingers": "LeftHandFinger1",
        "LThumb": "LThumb",
        "RightCollar": "RightShoulder", "RightShoulder": "RightArm",
        "RightElbow": "RightForeArm", "RightWrist": "RightHand", "rhand": "RightFingerBase",
        "RFingers": "RightHandFinger1", "RThumb": "RThumb",
    },
}

# MakeHuman's default skeleton (the CC0 static poses in makehuman_assets/base/poses): bones
# split in two (upperleg01/02, ...), so the second halves, fingers, toes, face and breast
# joints carry no canonical joint (their rotations still reach the mapped children through
# forward kinematics).
_MAKEHUMAN_MAP: dict[str, str] = {
    "root": "Hips", "pelvis.L": "LHipJoint", "pelvis.R": "RHipJoint",
    "spine05": "LowerBack", "spine03": "Spine", "spine01": "Spine1", "neck01": "Neck", "neck02": "Neck1",
    "head": "Head",
}
for _side, _bvh_side in (("Left", "L"), ("Right", "R")):
    _MAKEHUMAN_MAP.update({
        f"upperleg01.{_bvh_side}": f"{_side}UpLeg", f"lowerleg01.{_bvh_side}": f"{_side}Leg",
        f"foot.{_bvh_side}": f"{_side}Foot", f"toe3-1.{_bvh_side}": f"{_side}ToeBase",
        f"clavicle.{_bvh_side}": f"{_side}Shoulder", f"upperarm01.{_bvh_side}": f"{_side}Arm",
        f"lowerarm01.{_bvh_side}": f"{_side}ForeArm", f"wrist.{_bvh_side}": f"{_side}Hand",
        f"finger3-1.{_bvh_side}": f"{_side}FingerBase", f"finger1-1.{_bvh_side}": f"{_bvh_side}Thumb",
    })
NAMING_FAMILIES["makehuman_default"] = _MAKEHUMAN_MAP

# Joints a family knows but does not map (value None in the canonical index).
_FAMILY_IGNORED: dict[str, re.Pattern[str]] = {
    "makehuman_default": re.compile(
        r"^(pelvis|upperleg0\d|lowerleg0\d|foot|toe\d-\d|spine0\d|neck0\d|breast|clavicle|shoulder0\d|"
        r"upperarm0\d|lowerarm0\d|wrist|metacarpal\d|finger\d-\d|jaw|tongue\d\d|eye|temporalis0\d|"
        r"oculi0\d|risorius0\d|levator0\d|orbicularis0\d|oris0\d|special0\d)(\.[LR])?$"),
}

# Per family: file axes -> Blender axes, the rest pose's front in file axes, metres per unit
# (None: the file's own ``unit_metres``). CMU files are Y up and face +Z; MakeHuman's are
# already Z up, facing -Y, in decimetres.
FAMILY_FRAMES: dict[str, tuple[np.ndarray, np.ndarray, float | None]] = {
    "makehuman_default": (np.eye(3), np.array([0.0, -1.0, 0.0]), 0.1),
}

# Joint names that only one family uses; they decide between families that share names.
_FAMILY_MARKERS: dict[str, tuple[str, ...]] = {
    "cmu_motionbuilder": ("LeftUpLeg", "LeftArm", "Spine1", "LowerBack"),
    "cmu_3dsmax": ("LeftHip", "LeftKnee", "Chest2", "lowerneck", "LeftCollar"),
    "makehuman_default": ("upperleg01.L", "spine05", "lowerarm01.L"),
}


def family_frame(family: str, bvh: Bvh) -> tuple[np.ndarray, np.ndarray, float]:
    """(file axes -> Blender axes, rest front in file axes, metres per file unit)."""
    axes, front, unit = FAMILY_FRAMES.get(family, (BVH_TO_BLENDER, np.array([0.0, 0.0, 1.0]), None))
    return axes, front, unit if unit is not None else bvh.unit_metres


class BvhError(ValueError):
    """A BVH file that cannot be parsed or mapped; the message names the file and the fix."""


@dataclass
class Bvh:
    """A parsed BVH file: skeleton (in file order, parents before children) and motion."""

    path: str
    names: list[str]
    parents: list[int]  # -1 for the root
    offsets: np.ndarray  # (J, 3) rest offsets from the parent, file units
    end_offsets: np.ndarray  # (J, 3) offset of the joint's End Site, NaN when it has none
    channels: list[list[str]]  # per joint, e.g. ["Xposition", ..., "Zrotation", ...]
    motion: np.ndarray  # (F, C) float64
    frame_time: float
    _channel_start: list[int] = field(default_factory=list, repr=False)
    unit_metres: float = CMU_UNIT_METRES  # metres per file unit

    @property
    def frame_count(self) -> int:
        return int(self.motion.shape[0])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise BvhError(f"{self.path}: no joint named {name!r}; joints: {self.names}") from None

    def children(self, joint: int) -> list[int]:
        return [j for j, p in enumerate(self.parents) if p == joint]

    def _check_frame(self, frame: int) -> None:
        if not 0 <= frame < self.frame_count:
            raise BvhError(
                f"{self.path}: frame {frame} out of range; the file has {self.frame_count} "
                f"frames (0..{self.frame_count - 1})"
            )

    def local_transforms(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Per joint local rotation (J, 3, 3) and root translation (3,) at ``frame``."""
        self._check_frame(frame)
        values = self.motion[frame]
        rotations = np.repeat(np.eye(3)[None], len(self.names), axis=0)
        root_translation = np.zeros(3)
        for joint, channel_names in enumerate(self.channels):
            start = self._channel_start[joint]
            rotation = np.eye(3)
            for k, channel in enumerate(channel_names):
                value = float(values[start + k])
                axis = channel[0].upper()
                if channel.endswith("position"):
                    if self.parents[joint] == -1:
                        root_translation["XYZ".index(axis)] = value
                else:
                    rotation = rotation @ axis_rotation(axis, math.radians(value))
            rotations[joint] = rotation
        return rotations, root_translation

    def global_transforms(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Global rotations (J, 3, 3) and positions (J, 3) at ``frame`` by forward kinematics."""
        local, root_translation = self.local_transforms(frame)
        rotations = np.empty_like(local)
        positions = np.empty((len(self.names), 3))
        for joint, parent in enumerate(self.parents):
            if parent == -1:
                rotations[joint] = local[joint]
                positions[joint] = self.offsets[joint] + root_translation
            else:
                rotations[joint] = rotations[parent] @ local[joint]
                positions[joint] = positions[parent] + rotations[parent] @ self.offsets[joint]
        return rotations, positions

    def world_positions(self, frame: int) -> dict[str, np.ndarray]:
        """Joint positions at ``frame`` in the file's units and axes, keyed by file joint name."""
        _, positions = self.global_transforms(frame)
        return {name: positions[i].copy() for i, name in enumerate(self.names)}

    def rest_positions(self) -> np.ndarray:
        """Joint positions (J, 3) of the rest pose (all rotations identity, root at its offset)."""
        positions = np.zeros((len(self.names), 3))
        for joint, parent in enumerate(self.parents):
            positions[joint] = self.offsets[joint] + (positions[parent] if parent >= 0 else 0.0)
        return positions


def axis_rotation(axis: str, angle: float) -> np.ndarray:
    """Right-handed rotation matrix about ``axis`` ('X', 'Y' or 'Z') by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    if axis == "X":
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == "Y":
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    if axis == "Z":
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    raise ValueError(f"unknown rotation axis {axis!r}; valid: 'X', 'Y', 'Z'")


def euler_xyz_degrees(angles: tuple[float, float, float] | list[float]) -> np.ndarray:
    """Rotation ``Rx @ Ry @ Rz`` from three angles in degrees (the order the pose JSON uses)."""
    x, y, z = (math.radians(float(a)) for a in angles)
    return axis_rotation("X", x) @ axis_rotation("Y", y) @ axis_rotation("Z", z)


_VALID_CHANNELS = {f"{a}{kind}" for a in "XYZ" for kind in ("position", "rotation")}


def parse_bvh_text(text: str, path: str = "<string>") -> Bvh:
    """Parse BVH text. Raises :class:`BvhError` naming the file, line and problem."""
    tokens: list[tuple[str, int]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        tokens.extend((tok, line_number) for tok in line.split())
    pos = 0

    def fail(message: str) -> BvhError:
        line = tokens[min(pos, len(tokens) - 1)][1] if tokens else 0
        return BvhError(f"{path}: line {line}: {message}; is this a valid BVH file?")

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise fail("unexpected end of file")
        pos += 1
        return tokens[pos - 1][0]

    def expect(word: str) -> None:
        got = take()
        if got != word:
            raise fail(f"expected {word!r}, found {got!r}")

    def number() -> float:
        word = take()
        try:
            return float(word)
        except ValueError:
            raise fail(f"expected a number, found {word!r}") from None

    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    end_offsets: list[list[float]] = []
    channels: list[list[str]] = []

    def parse_joint(parent: int, is_root: bool) -> None:
        name = take()
        joint = len(names)
        if name in names:
            raise fail(f"joint name {name!r} appears twice")
        names.append(name)
        parents.append(parent)
        end_offsets.append([math.nan] * 3)
        expect("{")
        expect("OFFSET")
        offsets.append([number(), number(), number()])
        expect("CHANNELS")
        count_word = take()
        if not count_word.isdigit():
            raise fail(f"expected a channel count, found {count_word!r}")
        joint_channels = [take() for _ in range(int(count_word))]
        bad = [c for c in joint_channels if c not in _VALID_CHANNELS]
        if bad:
            raise fail(f"unknown channel(s) {bad} on joint {name!r}; valid: {sorted(_VALID_CHANNELS)}")
        channels.append(joint_channels)
        while True:
            word = take()
            if word == "}":
                return
            if word == "JOINT":
                parse_joint(joint, False)
            elif word == "End":
                expect("Site")
                expect("{")
                expect("OFFSET")
                end_offsets[joint] = [number(), number(), number()]
                expect("}")
            else:
                raise fail(f"expected JOINT, End Site or '}}' in joint {name!r}, found {word!r}")

    if not tokens or tokens[0][0] != "HIERARCHY":
        raise BvhError(f"{path}: does not start with HIERARCHY; is this a BVH file?")
    pos = 1
    expect("ROOT")
    parse_joint(-1, True)
    expect("MOTION")
    expect("Frames:")
    frame_word = take()
    if not frame_word.isdigit():
        raise fail(f"expected a frame count, found {frame_word!r}")
    frame_count = int(frame_word)
    expect("Frame")
    expect("Time:")
    frame_time = number()
    channel_count = sum(len(c) for c in channels)
    values = [t for t, _ in tokens[pos:]]
    if frame_count < 1:
        raise BvhError(f"{path}: the MOTION section has no frames")
    if len(values) != frame_count * channel_count:
        raise BvhError(
            f"{path}: the MOTION section has {len(values)} numbers but {frame_count} frames x "
            f"{channel_count} channels = {frame_count * channel_count} were declared; the file "
            "is truncated or its hierarchy does not match its motion"
        )
    try:
        motion = np.asarray(values, dtype=np.float64).reshape(frame_count, channel_count)
    except ValueError:
        raise BvhError(f"{path}: the MOTION section contains a value that is not a number") from None
    if not np.all(np.isfinite(motion)):
        raise BvhError(f"{path}: the MOTION section contains NaN or infinite values")
    starts = np.concatenate([[0], np.cumsum([len(c) for c in channels])[:-1]]).astype(int)
    # Only a root translation is meaningful for a body. MakeHuman's exporter writes position
    # channels on every joint, all zero (no stretch): those are accepted and ignored; any
    # joint that really moves is refused rather than silently ignored.
    for joint, joint_channels in enumerate(channels):
        if parents[joint] == -1:
            continue
        moving = [k for k, c in enumerate(joint_channels) if c.endswith("position")
                  and np.abs(motion[:, starts[joint] + k]).max() > 1e-3]
        if moving:
            raise BvhError(f"{path}: joint {names[joint]!r} has moving position channels; only the root may "
                           "translate; is this a valid BVH file?")
    return Bvh(
        path=path, names=names, parents=parents, offsets=np.asarray(offsets, dtype=np.float64),
        end_offsets=np.asarray(end_offsets, dtype=np.float64), channels=channels, motion=motion,
        frame_time=frame_time, _channel_start=[int(s) for s in starts],
    )


def parse_bvh(path: str | os.PathLike[str]) -> Bvh:
    """Read and parse a BVH file (see :func:`parse_bvh_text`)."""
    file_path = Path(path)
    if not file_path.is_file():
        raise BvhError(f"{file_path}: BVH file not found")
    try:
        text = file_path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BvhError(f"{file_path}: not a text file; is this a BVH file?") from None
    return parse_bvh_text(text, str(file_path))


def detect_naming(bvh: Bvh) -> str:
    """The naming family whose map covers every joint of ``bvh``, or a :class:`BvhError`.

    The error lists the joints no family maps, so a user can see what their file calls things.
    """
    file_names = set(bvh.names)
    scored = []
    for family, mapping in NAMING_FAMILIES.items():
        ignored = _FAMILY_IGNORED.get(family)
        unmapped = sorted(n for n in file_names - set(mapping) if ignored is None or not ignored.match(n))
        markers = sum(1 for m in _FAMILY_MARKERS[family] if m in file_names)
        scored.append((len(unmapped), -markers, family, unmapped))
    scored.sort()
    best_unmapped_count, neg_markers, family, unmapped = scored[0]
    if best_unmapped_count or neg_markers == 0:
        raise BvhError(
            f"{bvh.path}: unknown joint naming; joints not mapped by the closest family "
            f"{family!r}: {unmapped or sorted(file_names)}. Supported families: "
            f"{sorted(NAMING_FAMILIES)}; add a mapping to NAMING_FAMILIES in "
            "blender_addon/core/bvh.py for this naming"
        )
    mapped = {NAMING_FAMILIES[family].get(n) for n in bvh.names}
    missing = [j for j in REQUIRED_JOINTS if j not in mapped]
    if missing:
        raise BvhError(f"{bvh.path}: naming {family!r} but required joints are missing: {missing}")
    return family


def canonical_index(bvh: Bvh) -> dict[str, int]:
    """Canonical joint name -> index into ``bvh.names`` (only joints the file has)."""
    mapping = NAMING_FAMILIES[detect_naming(bvh)]
    return {mapping[name]: i for i, name in enumerate(bvh.names) if name in mapping}


def canonical_world_positions(bvh: Bvh, frame: int) -> dict[str, np.ndarray]:
    """Joint positions keyed by canonical name, in Blender axes and metres (CMU units)."""
    index = canonical_index(bvh)
    axes, _, unit = family_frame(detect_naming(bvh), bvh)
    _, positions = bvh.global_transforms(frame)
    return {name: axes @ positions[i] * unit for name, i in index.items()}


# ---------------------------------------------------------------------------------------------
# Retargeting: pure maths shared by the Blender backend and its tests.


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` onto unit vector ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    axis = np.cross(a, b)
    sin = float(np.linalg.norm(axis))
    cos = float(np.dot(a, b))
    if sin < 1e-9:
        if cos > 0:
            return np.eye(3)
        # Opposite vectors: turn half a turn about any axis perpendicular to a.
        helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        axis = np.cross(a, helper)
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    axis /= sin
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.atan2(sin, cos)
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def segment_rest_direction(bvh: Bvh, index: dict[str, int], joint: str,
                           tail_child: str | None) -> np.ndarray | None:
    """Rest direction (file axes) of the segment that leaves ``joint`` toward ``tail_child``.

    Zero-length links (CMU's ``LowerBack`` sits on ``Hips``) are walked through to the first
    joint with a real offset. Bones without a tail child in the file use the End Site, else
    their first child. None when there is no segment at all.
    """
    j = index[joint]
    target = index.get(tail_child) if tail_child is not None else None
    if target is not None and j in _ancestors(bvh, target):
        current = target
        vector = bvh.rest_positions()[target] - bvh.rest_positions()[j]
    else:
        end = bvh.end_offsets[j]
        if np.all(np.isfinite(end)) and np.linalg.norm(end) > 1e-9:
            return end / np.linalg.norm(end)
        kids = bvh.children(j)
        if not kids:
            return None
        current = kids[0]
        vector = bvh.offsets[current].copy()
    while np.linalg.norm(vector) < 1e-9:
        kids = bvh.children(current)
        if not kids:
            end = bvh.end_offsets[current]
            if np.all(np.isfinite(end)):
                vector = vector + end
            break
        current = kids[0]
        vector = vector + bvh.offsets[current]
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-9 else None


def _ancestors(bvh: Bvh, joint: int) -> list[int]:
    chain = []
    current = bvh.parents[joint]
    while current != -1:
        chain.append(current)
        current = bvh.parents[current]
    return chain


def facing_yaw(forward: np.ndarray) -> float:
    """Angle about +Z of a direction's horizontal part, measured from +X (radians)."""
    return math.atan2(float(forward[1]), float(forward[0]))


@dataclass(frozen=True)
class RetargetResult:
    """Armature-space rotations for each rig bone and the yaw removed from the capture."""

    pose_rotations: dict[str, np.ndarray]  # bone -> posed armature-space 3x3 (bone axes)
    basis_rotations: dict[str, np.ndarray]  # bone -> local rotation Blender's pose bone needs
    capture_to_armature: np.ndarray  # 3x3: BVH file axes -> armature axes, yaw removed


def retarget(
    bvh: Bvh,
    frame: int,
    rest_rotations: dict[str, np.ndarray],
    bone_parents: dict[str, str | None],
    tail_children: dict[str, str | None],
    *,
    front: tuple[float, float, float] = (0.0, -1.0, 0.0),
) -> RetargetResult:
    """Turn one BVH frame into pose-bone rotations for a rig with different rest pose.

    ``rest_rotations[b]`` is bone b's rest orientation in armature space (Blender's
    ``bone.matrix_local`` 3x3; its Y column points head to tail). Every rig bone whose
    canonical joint the file has gets ``P_b = Y @ G_b @ A_b @ Q_b``: ``G_b`` the joint's
    global rotation in Blender axes, ``A_b`` the smallest rotation taking the rig's rest bone
    direction onto the capture's rest segment direction (so A-pose rigs follow T-pose data),
    ``Y`` a yaw about +Z that turns the capture's pelvis to face ``front``. The bone then
    points along the captured segment at ``frame``. Bones the file lacks keep their rest
    orientation relative to their parent. ``basis_rotations`` are the local rotations
    ``Q_b^T Q_p P_p^T P_b`` that Blender's pose bones take.
    """
    index = canonical_index(bvh)
    global_rot, _ = bvh.global_transforms(frame)
    axes, rest_front, _ = family_frame(detect_naming(bvh), bvh)
    hips = global_rot[index["Hips"]]
    # The capture's rest front (+Z in CMU file axes, i.e. -Y in Blender axes).
    capture_front = axes @ hips @ rest_front
    yaw = facing_yaw(np.asarray(front)) - facing_yaw(capture_front)
    capture_to_armature = axis_rotation("Z", yaw) @ axes

    pose: dict[str, np.ndarray] = {}
    basis: dict[str, np.ndarray] = {}
    for bone in _parents_first(bone_parents):
        parent = bone_parents[bone]
        rest = rest_rotations[bone]
        direction = None
        if bone in index:
            direction = segment_rest_direction(bvh, index, bone, tail_children.get(bone))
        if direction is None:
            # Keep the rest relation to the parent (no capture for this bone).
            pose[bone] = (pose[parent] @ rest_rotations[parent].T @ rest if parent else rest)
        else:
            align = _rotation_between(rest[:, 1], axes @ direction)
            g = capture_to_armature @ global_rot[index[bone]] @ axes.T
            pose[bone] = g @ align @ rest
        if parent:
            basis[bone] = rest.T @ rest_rotations[parent] @ pose[parent].T @ pose[bone]
        else:
            basis[bone] = rest.T @ pose[bone]
    return RetargetResult(pose, basis, capture_to_armature)


def _parents_first(bone_parents: dict[str, str | None]) -> list[str]:
    ordered: list[str] = []
    placed: set[str] = set()
    pending = list(bone_parents)
    while pending:
        progressed = False
        for bone in list(pending):
            parent = bone_parents[bone]
            if not parent or parent in placed:
                ordered.append(bone)
                placed.add(bone)
                pending.remove(bone)
                progressed = True
        if not progressed:
            raise ValueError(f"bone parents form a cycle or name unknown bones: {pending}")
    return ordered


def rotation_to_quaternion(matrix: np.ndarray) -> tuple[float, float, float, float]:
    """(w, x, y, z) unit quaternion of a proper rotation matrix (Shepperd's method)."""
    m = np.asarray(matrix, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = math.sqrt(trace + 1.0) * 2
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    return (w / norm, x / norm, y / norm, z / norm)


# ---------------------------------------------------------------------------------------------
# Pose library: a folder of BVH files, parsed once per batch.


class PoseLibrary:
    """Folders of BVH files whose parses are cached, so a batch reads each file once.

    ``PoseLibrary(folder, *more_folders)`` lists ``*.bvh`` (recursively) in each folder (a
    *source*, e.g. CMU mocap and MakeHuman's static poses) at construction; files are parsed
    on first use and checked for a supported joint naming then. With ``standing_only`` (the
    default) only frames that pass :func:`blender_addon.core.posing.standing_frame_verdicts`
    are chosen: no jumps, crouches, handstands or lying poses. :meth:`stats` reports the
    accepted and rejected frame counts per source.
    """

    def __init__(self, folder: str | os.PathLike[str], *more_folders: str | os.PathLike[str],
                 standing_only: bool = True) -> None:
        self.sources: dict[str, list[str]] = {}
        for source in (folder, *more_folders):
            path = Path(source)
            if not path.is_dir():
                raise BvhError(f"pose library folder {path} does not exist; point it at a "
                               "folder of .bvh files (e.g. ../shared/data/mocap)")
            files = sorted(str(p) for p in path.rglob("*.bvh"))
            if not files:
                raise BvhError(f"pose library folder {path} contains no .bvh files")
            self.sources[str(path)] = files
        self.folder = Path(folder)
        self.files = sorted({f for files in self.sources.values() for f in files})
        self.standing_only = standing_only
        self._cache: dict[str, Bvh] = {}
        self._accepted: dict[str, np.ndarray] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self.parse_count = 0

    def get(self, path: str | os.PathLike[str]) -> Bvh:
        key = str(Path(path))
        if key not in self._cache:
            bvh = parse_bvh(key)
            detect_naming(bvh)
            self._cache[key] = bvh
            self.parse_count += 1
        return self._cache[key]

    def accepted_frames(self, path: str) -> np.ndarray:
        """Indices of the frames of ``path`` that may be chosen (all when not standing_only)."""
        if path not in self._accepted:
            bvh = self.get(path)
            if self.standing_only:
                # posing imports this module, so it is imported here.
                from blender_addon.core.posing import standing_frame_verdicts

                verdicts = standing_frame_verdicts(bvh)
                self._accepted[path] = np.flatnonzero(verdicts.accepted)
                self._counts[path] = verdicts.counts()
            else:
                self._accepted[path] = np.arange(bvh.frame_count)
                self._counts[path] = {"frames": bvh.frame_count, "accepted": bvh.frame_count, "rejected": 0}
        return self._accepted[path]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per source: files, frames, accepted and rejected frames, and rejections per rule."""
        out: dict[str, dict[str, int]] = {}
        for source, files in self.sources.items():
            total: dict[str, int] = {"files": len(files)}
            for path in files:
                self.accepted_frames(path)
                for key, value in self._counts[path].items():
                    total[key] = total.get(key, 0) + value
            out[source] = total
        return out

    def choose(self, rng: np.random.Generator) -> tuple[str, int]:
        """A random (file, frame) pair: a uniform source, a uniform file of it, then a uniform
        accepted frame. Files without an accepted frame are skipped."""
        sources = list(self.sources.values())
        files = list(sources[int(rng.integers(len(sources)))] if len(sources) > 1 else sources[0])
        while files:
            path = files[int(rng.integers(len(files)))]
            frames = self.accepted_frames(path)
            if len(frames):
                return path, int(frames[int(rng.integers(len(frames)))])
            files.remove(path)
            if not files and len(sources) > 1 and len(self.files) > 1:
                # This whole source was rejected: fall back to every source's files.
                sources, files = [self.files], [f for f in self.files if f != path and len(self.accepted_frames(f))]
        raise BvhError(f"no plausible standing frame in {sorted(self.sources)}: every frame jumps, "
                       "crouches or lies down (see PoseLibrary.stats())")


# ---------------------------------------------------------------------------------------------
# The project's own small pose set (data/poses_builtin.json), expressed as one-frame BVHs so
# built-in and captured poses take the same retarget path.

BUILTIN_POSES_PATH = Path(__file__).resolve().parent / "data" / "poses_builtin.json"
_BUILTIN_CACHE: dict[str, object] = {}


def builtin_pose_data() -> dict:
    """The parsed built-in pose file (cached)."""
    if "data" not in _BUILTIN_CACHE:
        import json

        _BUILTIN_CACHE["data"] = json.loads(BUILTIN_POSES_PATH.read_text(encoding="utf-8"))
    return _BUILTIN_CACHE["data"]  # type: ignore[return-value]


def builtin_pose_names(kind: str | None = None) -> list[str]:
    """Names of the built-in poses, optionally only those of ``kind`` (standing/sitting)."""
    poses = builtin_pose_data()["poses"]
    return sorted(n for n, p in poses.items() if kind is None or p["kind"] == kind)


def builtin_pose_bvh(name: str, extra_degrees: dict[str, tuple[float, float, float]] | None = None) -> Bvh:
    """A one-frame :class:`Bvh` of built-in pose ``name``, with optional added joint rotations.

    ``extra_degrees[joint]`` is composed after the pose's own rotation of that joint (both
    ``Rx Ry Rz`` in degrees), which is how sitting tilt and arm variation are applied.
    """
    data = builtin_pose_data()
    poses = data["poses"]
    if name not in poses:
        raise BvhError(f"unknown built-in pose {name!r}; valid: {sorted(poses)}")
    skeleton = data["skeleton"]
    names = list(skeleton)
    unknown = sorted(set(extra_degrees or {}) - set(names))
    if unknown:
        raise BvhError(f"built-in pose variation names unknown joints {unknown}; valid: {names}")
    parents = [names.index(skeleton[n]["parent"]) if skeleton[n]["parent"] else -1 for n in names]
    offsets = np.array([skeleton[n]["offset"] for n in names], dtype=np.float64)
    end_offsets = np.array([skeleton[n].get("end", [math.nan] * 3) for n in names], dtype=np.float64)
    channels: list[list[str]] = []
    values: list[float] = []
    for joint, parent in zip(names, parents):
        rotation = euler_xyz_degrees(poses[name]["joints"].get(joint, (0.0, 0.0, 0.0)))
        if extra_degrees and joint in extra_degrees:
            rotation = rotation @ euler_xyz_degrees(extra_degrees[joint])
        # Store as ZYX Euler channels, which reproduce the matrix exactly.
        z, y, x = matrix_to_zyx_degrees(rotation)
        if parent == -1:
            channels.append(["Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation"])
            values.extend([0.0, 0.0, 0.0, z, y, x])
        else:
            channels.append(["Zrotation", "Yrotation", "Xrotation"])
            values.extend([z, y, x])
    starts = np.concatenate([[0], np.cumsum([len(c) for c in channels])[:-1]]).astype(int)
    return Bvh(path=f"builtin:{name}", names=names, parents=parents, offsets=offsets,
               end_offsets=end_offsets, channels=channels, motion=np.array([values]),
               frame_time=1.0, _channel_start=[int(s) for s in starts], unit_metres=1.0)


def matrix_to_zyx_degrees(m: np.ndarray) -> tuple[float, float, float]:
    """Angles (z, y, x) in degrees with ``m = Rz @ Ry @ Rx``."""
    sy = -float(m[2, 0])
    y = math.asin(max(-1.0, min(1.0, sy)))
    if abs(sy) < 0.999999:
        x = math.atan2(m[2, 1], m[2, 2])
        z = math.atan2(m[1, 0], m[0, 0])
    else:  # gimbal lock: put everything into z
        x = 0.0
        z = math.atan2(-m[0, 1], m[1, 1])
    return math.degrees(z), math.degrees(y), math.degrees(x)
