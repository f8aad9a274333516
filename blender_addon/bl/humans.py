"""Built-in human backend: posed, clothed, textured MakeHuman/MPFB2 people in a Blender scene.

This module only builds Blender objects: shared materials, template meshes with vertex groups
and material slots (built once per scene and copied for each person, so the tenth person costs
a fraction of the first), the armature, its pose, and the placement on the floor or a seat.
The numbers come from :mod:`blender_addon.core.body` (data loading, shape, joints, parts,
clothes, skin) and :mod:`blender_addon.core.posing` (which BVH frame a pose means), both
testable without Blender.

World: metres, Z up, floor at z = 0. ``heading_rad`` is the direction the person faces,
measured from +X about +Z. Standing: ``location`` is the floor point under the pelvis.
Sitting: ``location`` is the seat point under the hips, its z the seat height.

Entry points: :func:`create_person`, :func:`remove_person`, :func:`posed_bone_world`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Matrix, Quaternion, Vector

from blender_addon.core import garments
from blender_addon.core.body import (  # noqa: F401  (re-exported: the names this module had)
    HAIR_CUTS,
    INSTALL_HINT,
    MATERIAL_SLOTS,
    REGIONS,
    SEAT_REGIONS,
    HumanDataError,
    assets,
    body_material_indices,
    data_root,
    dress,
    hair_vertices,
    joint_positions,
    macro_target_weights,
    parts,
    region_mask,
    rig_tail_children,
    shader_values,
    shaped_vertices,
    skin_colour,
    warm_targets,
)
from blender_addon.core.bvh import Bvh, PoseLibrary, retarget, rotation_to_quaternion
from blender_addon.core.garments import AssetLibrary, Fitting, Outfit
from blender_addon.core.human_params import PersonParams, PoseChoice
from blender_addon.core.posing import resolve_pose

BACKEND_NAME = "builtin_mpfb2"
_TEMPLATE_PREFIX = "FH_template_"
_MATERIAL_PREFIX = "FH_"


def warm_caches() -> None:
    """Parse every adult macro and expression target and build all template meshes now.

    Called by the first :func:`create_person`, so that person pays for all data reading and
    every later person costs the same small amount whatever phenotype it draws.
    """
    warm_targets()
    for part_name in parts():
        _template(part_name)  # cheap when the template already exists in this session


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
    _fabric_surface(nodes, links, bsdf)
    return material


def _fabric_surface(nodes: bpy.types.Nodes, links: bpy.types.NodeLinks, bsdf: bpy.types.Node,
                    thread_scale: float = 350.0) -> None:
    """Woven cloth without texture images: a weave of crossed thread bands as a bump, fibre
    noise on top, patchy roughness (worn and creased areas shine differently) and sheen."""
    coords = nodes.new("ShaderNodeTexCoord").outputs["Object"]
    bands = []
    for direction in ("X", "Z"):
        wave = nodes.new("ShaderNodeTexWave")
        wave.wave_type = "BANDS"
        wave.bands_direction = direction
        wave.wave_profile = "SIN"
        wave.inputs["Scale"].default_value = thread_scale
        links.new(coords, wave.inputs["Vector"])
        bands.append(wave.outputs["Fac"])
    weave = _math(nodes, links, "MULTIPLY", bands[0], bands[1])
    fibres = nodes.new("ShaderNodeTexNoise")
    fibres.inputs["Scale"].default_value = 900.0
    links.new(coords, fibres.inputs["Vector"])
    height = _math(nodes, links, "ADD", weave, _math(nodes, links, "MULTIPLY", fibres.outputs["Fac"], 0.5))
    bump = nodes.new("ShaderNodeBump")
    bump.inputs["Strength"].default_value = 0.2
    bump.inputs["Distance"].default_value = 0.001
    links.new(height, bump.inputs["Height"])
    links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    patches = nodes.new("ShaderNodeTexNoise")
    patches.inputs["Scale"].default_value = 6.0
    links.new(coords, patches.inputs["Vector"])
    roughness = nodes.new("ShaderNodeMapRange")
    roughness.inputs["To Min"].default_value = 0.68
    roughness.inputs["To Max"].default_value = 0.95
    links.new(patches.outputs["Fac"], roughness.inputs["Value"])
    links.new(roughness.outputs["Result"], bsdf.inputs["Roughness"])
    bsdf.inputs["Sheen Weight"].default_value = 0.35
    bsdf.inputs["Sheen Roughness"].default_value = 0.4


def _skin_material(name: str) -> bpy.types.Material:
    """MPFB2's enhanced skin without its texture images: Principled BSDF with subsurface
    scattering (radius 1.0 / 0.2 / 0.1 as in MPFB2, scaled to about a centimetre in metres),
    a thin coat (0.1, roughness 0.3), fine pore bump, and a low-frequency redder mottling
    (MPFB2's colorMixIn) so the tone is not one flat colour."""
    material, nodes, links, bsdf = _new_material(name)
    tone = _attribute(nodes, "fh_skin")
    mottling = nodes.new("ShaderNodeTexNoise")
    mottling.inputs["Scale"].default_value = 9.0
    mottling.inputs["Detail"].default_value = 3.0
    redder = nodes.new("ShaderNodeMix")
    redder.data_type = "RGBA"
    redder.blend_type = "MULTIPLY"
    redder.inputs["Factor"].default_value = 1.0
    links.new(tone, redder.inputs["A"])
    redder.inputs["B"].default_value = (1.0, 0.78, 0.74, 1.0)
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    links.new(_math(nodes, links, "MULTIPLY", mottling.outputs["Fac"], 0.6), mix.inputs["Factor"])
    links.new(tone, mix.inputs["A"])
    links.new(redder.outputs["Result"], mix.inputs["B"])
    links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    links.new(_attribute(nodes, "fh_skin_sss", "Fac"), bsdf.inputs["Subsurface Weight"])
    bsdf.inputs["Subsurface Radius"].default_value = (1.0, 0.2, 0.1)
    bsdf.inputs["Subsurface Scale"].default_value = 0.012
    bsdf.inputs["Coat Weight"].default_value = 0.1
    bsdf.inputs["Coat Roughness"].default_value = 0.3
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


def _mh_hair_material(name: str) -> bpy.types.Material:
    """MakeHuman hair meshes: Principled Hair BSDF (Chiang), melanin parametrisation, so the
    colour comes from melanin and redness like real hair (see ``garments.hair_pigment``)."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    for node in [n for n in nodes if n.type == "BSDF_PRINCIPLED"]:
        nodes.remove(node)
    output = next(n for n in nodes if n.type == "OUTPUT_MATERIAL")
    hair = nodes.new("ShaderNodeBsdfHairPrincipled")
    hair.parametrization = "MELANIN"
    links.new(_attribute(nodes, "fh_hair_melanin", "Fac"), hair.inputs["Melanin"])
    links.new(_attribute(nodes, "fh_hair_redness", "Fac"), hair.inputs["Melanin Redness"])
    links.new(_attribute(nodes, "fh_hair_roughness", "Fac"), hair.inputs["Roughness"])
    hair.inputs["Random Color"].default_value = 0.1
    links.new(hair.outputs[0], output.inputs["Surface"])
    return material


def _hat_material(name: str) -> bpy.types.Material:
    material, nodes, links, bsdf = _new_material(name)
    links.new(_attribute(nodes, "fh_hat"), bsdf.inputs["Base Color"])
    _fabric_surface(nodes, links, bsdf, thread_scale=500.0)
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
        "hair_mh": lambda n: _mh_hair_material(n),
        "hat": lambda n: _hat_material(n),
    }
    out = {}
    for key, build in builders.items():
        name = f"{_MATERIAL_PREFIX}{key}"
        out[key] = bpy.data.materials.get(name) or build(name)
    return out


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



def _add_vertex_groups(mesh: bpy.types.Mesh, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    # Vertex groups live on the mesh since Blender 3.0; a throwaway object writes them.
    holder = bpy.data.objects.new(mesh.name, mesh)
    for bone, (idx, w) in weights.items():
        group = holder.vertex_groups.new(name=bone)
        for vertex, weight in zip(idx.tolist(), w.tolist()):
            group.add([vertex], weight, "REPLACE")
    bpy.data.objects.remove(holder)


def _asset_template(fitting: Fitting) -> bpy.types.Mesh:
    """A MakeHuman asset fitted to the base mesh, with UVs, transferred skin weights and its
    material slots; built once per session and copied per person like the body."""
    name = f"{_TEMPLATE_PREFIX}{fitting.category}_{fitting.name}"
    existing = bpy.data.meshes.get(name)
    if existing is not None:
        return existing
    data = assets()
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(garments.fit(fitting, data.base).tolist(), [], fitting.faces())
    mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), dtype=bool))
    uv = mesh.uv_layers.new(name="UVMap")
    uv.data.foreach_set("uv", fitting.uv.astype(np.float32).ravel())
    mesh.use_fake_user = True
    _add_vertex_groups(mesh, garments.transfer_weights(fitting, data.weights, len(data.base)))
    mats = materials()
    if fitting.category == "hair":
        mesh.materials.append(mats["hair_mh"])
    elif "hats" in fitting.tags:
        mesh.materials.append(mats["hat"])
    elif "shoes" in fitting.tags or fitting.name.startswith("shoes"):
        mesh.materials.append(mats["shoes"])
    else:
        # A suit: the faces over the pelvis and legs are its trousers or skirt (second colour).
        mesh.materials.append(mats["top"])
        mesh.materials.append(mats["bottom"])
        lower = garments.lower_body_vertices(data.weights, len(data.base)).astype(np.int64)
        mesh.polygons.foreach_set("material_index", garments.face_slots(fitting, lower))
    mesh.update()
    return mesh


def _warm_assets(library: AssetLibrary) -> None:
    """Parse every garment, shoe, hat and hair of ``library`` and build its template now.

    Like :func:`warm_caches`, the first person pays for all of it (about 10 s for the 29
    shared assets), so later people cost the same whatever they wear."""
    for category in ("clothes", "hair"):
        for name in library.names(category):
            _asset_template(library.get(category, name))


def _body_template(hidden: np.ndarray, key: str) -> bpy.types.Mesh:
    """The body template without the faces the worn garments hide (cached per garment set).

    Only faces go; every vertex stays, so vertex indices (regions, the seat and foot masks)
    mean the same on every body."""
    if not hidden.any():
        return _template("body")
    name = f"{_TEMPLATE_PREFIX}body_minus_{key}"
    existing = bpy.data.meshes.get(name)
    if existing is not None:
        return existing
    import bmesh  # Blender-only module

    mesh = _template("body").copy()
    mesh.name = name
    bm = bmesh.new()
    bm.from_mesh(mesh)
    bm.faces.ensure_lookup_table()
    bmesh.ops.delete(bm, geom=[bm.faces[i] for i in np.flatnonzero(hidden).tolist()], context="FACES_ONLY")
    bm.to_mesh(mesh)
    bm.free()
    mesh.use_fake_user = True
    return mesh


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


def _mesh_object(name: str, part_name: str | bpy.types.Mesh, verts: np.ndarray, arm: bpy.types.Object,
                 collection: bpy.types.Collection) -> bpy.types.Object:
    mesh = (_template(part_name) if isinstance(part_name, str) else part_name).copy()
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
    values = shader_values(params)
    values.update(garments.outfit_shader_values(params))
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
    asset_library: AssetLibrary | None = None,
) -> PersonHandle:
    """Build one posed, clothed person; on any error nothing of it is left in the scene.

    With ``asset_library`` (MakeHuman garments, shoes, hats, hair) the person wears fitted
    assets chosen from their parameters (:func:`garments.choose_outfit`); without it, or for
    a piece the library lacks, the painted clothing and the hair shell of ``core.body``.
    """
    if not 0 <= pass_index < 2**15:
        raise ValueError(f"pass_index {pass_index} out of range 0..32767")
    bvh, frame = resolve_pose(pose, library)  # validates the pose before building anything
    warm_caches()  # raises HumanDataError before anything is created
    outfit: Outfit | None = None
    worn: list[Fitting] = []
    if asset_library is not None:
        _warm_assets(asset_library)
        outfit = garments.choose_outfit(params, asset_library)
        worn = [asset_library.get(category, asset) for category, asset in outfit.assets()]  # parse errors here
    collection = collection or bpy.context.scene.collection
    created: list[bpy.types.Object] = []
    try:
        verts = shaped_vertices(params)
        joints = joint_positions(verts)
        arm = _build_armature(f"{name}_rig", joints, collection)
        created.append(arm)
        slots = body_material_indices(params.top.style, params.bottom.style)
        skin = MATERIAL_SLOTS.index("skin")
        if outfit is not None and outfit.suit:
            slots = np.where(np.isin(slots, [MATERIAL_SLOTS.index("top"), MATERIAL_SLOTS.index("bottom")]),
                             skin, slots)
        if outfit is not None and outfit.shoes:
            slots = np.where(slots == MATERIAL_SLOTS.index("shoes"), skin, slots)
        body_part = parts()["body"]
        body_verts = dress(verts[body_part.vertex_index], slots, params)
        hidden = garments.hidden_body_faces(body_part.faces, body_part.vertex_index, worn)
        body_mesh = _body_template(hidden, "+".join(f.name for f in worn if len(f.delete_verts)))
        body = _mesh_object(f"{name}_body", body_mesh, body_verts, arm, collection)
        created.append(body)
        body.data.polygons.foreach_set("material_index", slots[~hidden])
        feet: list[bpy.types.Object] = []
        for fitting in worn:
            obj = _mesh_object(f"{name}_{fitting.category}_{fitting.name}", _asset_template(fitting),
                               garments.fit(fitting, verts), arm, collection)
            created.append(obj)
            if fitting.name == outfit.shoes:
                feet.append(obj)
        mesh_hair = outfit is not None and outfit.hair is not None
        if params.hair_style != "none" and not mesh_hair:
            hair_verts = hair_vertices(verts, joints, params.hair_style, params.hair_volume)
            created.append(_mesh_object(f"{name}_hair", f"hair_{params.hair_style}", hair_verts, arm, collection))
        if params.bottom.style == "skirt" and not (outfit is not None and outfit.suit):
            skirt_verts = verts[parts()["skirt"].vertex_index]
            created.append(_mesh_object(f"{name}_skirt", "skirt", skirt_verts, arm, collection))
        _set_person_properties(created, params)
        _pose_armature(arm, bvh, frame)
        leg_fit = _fit_sitting_legs(arm, body, location[2], feet) if pose.kind == "sitting" else None
        head_world, top_world, pelvis_world = _place(arm, body, pose.kind, location, heading_rad,
                                                     leg_fit["seat_offset_m"] if leg_fit else 0.0, feet)
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
        "outfit": None if outfit is None else {
            **outfit.to_dict(), "assets_root": str(asset_library.root),
            "hair_pigment": garments.hair_pigment(params) if outfit.hair else None},
    }
    return PersonHandle(name=name, objects=created, armature=arm, head_world=head_world,
                        pass_index=pass_index, record=record)


FOOT_DANGLE_TOLERANCE = 0.02  # metres a seated person's lowest foot point may float


def _fit_sitting_legs(arm: bpy.types.Object, body: bpy.types.Object, seat_height: float,
                      feet: list | None = None) -> dict[str, float]:
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
    seat_mask, pelvis_mask, foot_mask = region_mask(*SEAT_REGIONS), region_mask("pelvis"), region_mask("foot")
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
        lowest = min([float(world[foot_mask, 2].min())] + [float(_world_vertices(o)[:, 2].min()) for o in feet or ()])
        return float(lowest - (world[pelvis_mask, 2].min() - seat_offset) + seat_height)

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
           heading_rad: float, seat_offset: float = 0.0,
           feet: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the person to ``heading_rad`` and put feet on the floor or hips on the seat."""
    # Posed bodies face the armature's +X, so facing (cos h, sin h) is a turn of h about +Z.
    arm.rotation_euler = (0.0, 0.0, heading_rad)
    arm.location = (0.0, 0.0, 0.0)
    bpy.context.view_layer.update()
    pelvis = np.array(arm.matrix_world @ arm.pose.bones["Hips"].head)
    world = _world_vertices(body)
    if kind == "sitting":
        bottom = world[region_mask("pelvis"), 2].min() - seat_offset
    else:
        # Shoes reach below the (hidden) soles of the feet: the lowest of both stands on z = 0.
        bottom = min([float(world[:, 2].min())] + [float(_world_vertices(o)[:, 2].min()) for o in feet or ()])
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
