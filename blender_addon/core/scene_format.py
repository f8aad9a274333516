"""The scene format: an empty-room photo, its fisheye calibration and the room's 3D proxies.

A scene is a folder ``scenes/<name>/`` with ``scene.json`` and the photo it names. World
coordinates are metres, Z up, floor at z = 0; with zero camera rotation the camera looks
straight down with image right = +X and image up = +Y (see ``core.fisheye``). Everything is
validated on load; an error names the file and the field and says what would be valid.

``scene.json`` (format_version 1)::

    {
      "format_version": 1,
      "name": "sample_office",
      "photo": "empty_room.jpg",
      "camera": {
        "lens": {"model": "kannala_brandt", "focal_px": 330.0,
                 "coefficients": [k1, k2, k3, k4], "fov_deg": 185.0},
        "principal_point_px": [512.0, 512.0],       # optional, default: the photo centre
        "height_m": 2.8,                             # optical centre above the floor
        "position_xy_m": [0.0, 0.0],                 # optional
        "rotation_euler_deg": [0.0, 0.0, 0.0]        # optional, Blender XYZ
      },
      "floor": {"polygons": [[[x, y], ...], ...]},   # where standing people may stand
      "furniture": [{"name": "desk_1", "center": [x, y, z], "size": [sx, sy, sz],
                     "yaw_deg": 0.0, "holdout": true, "obstacle": true}],
      "seats": [{"name": "chair_1", "position": [x, y], "height_m": 0.46,
                 "facing_deg": 90.0, "facing_jitter_deg": 15.0}],
      "occupancy": {"sitting": [5, 7], "standing": [0, 1]},  # optional
      "chairs": {"fabric_srgb": [0.55, 0.26, 0.29], "frame_srgb": [0.05, 0.05, 0.06]}  # optional
    }

``occupancy`` is how many people the room holds in a frame, inclusive ranges per posture (for
a scene built from real frames, what those frames showed). The render CLI uses it when
``--sitting``/``--standing`` are not given; without it, thesis Table 7.2's 1-5 and 0-4.

``chairs`` says the photo shows no chairs at the seats (a clean plate made from real frames
removes them with the people who sat there): the renderer then adds a chair at every seat, in
these colours (sRGB, 0-1, as picked from the photo's empty chairs; ``frame_srgb`` is optional).
See ``core.chairs``.

Lens models: ``equidistant`` and ``equisolid`` (``focal_px``), ``kannala_brandt`` (``focal_px``
and four ``coefficients``: OpenCV fisheye D), ``cycles_polynomial`` (five ``coefficients``
k0..k4 and ``sensor_mm``, as typed into Blender) and ``opencv_fisheye`` (``K`` 3x3 and ``D``;
its principal point is converted to the continuous pixel convention). ``facing_deg`` is the
direction a seated person looks, counter-clockwise from +X.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from blender_addon.core.fisheye import FisheyeCamera, FisheyeError, LensModel

FORMAT_VERSION = 1
SCENE_FILE = "scene.json"


class SceneFormatError(ValueError):
    """A scene file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class FurnitureProxy:
    """A box standing in for a piece of furniture.

    holdout: hides people behind it in the render (the photo shows through).
    obstacle: standing people keep out of its footprint.
    """

    name: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw_deg: float = 0.0
    holdout: bool = True
    obstacle: bool = True

    def footprint(self) -> list[tuple[float, float]]:
        """The box's floor rectangle, counter-clockwise."""
        hx, hy = self.size[0] / 2.0, self.size[1] / 2.0
        c, s = math.cos(math.radians(self.yaw_deg)), math.sin(math.radians(self.yaw_deg))
        return [(self.center[0] + x * c - y * s, self.center[1] + x * s + y * c)
                for x, y in ((-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy))]


@dataclass(frozen=True)
class Seat:
    """Where a seated person's pelvis goes (``position`` at ``height_m``) and where they look."""

    name: str
    position: tuple[float, float]
    height_m: float
    facing_deg: float
    facing_jitter_deg: float = 15.0


@dataclass(frozen=True)
class Occupancy:
    """People per frame the room usually holds: inclusive (min, max) per posture."""

    sitting: tuple[int, int]
    standing: tuple[int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {"sitting": list(self.sitting), "standing": list(self.standing)}


@dataclass(frozen=True)
class ChairStyle:
    """The colours of the chairs a scene asks to be rendered at its seats (sRGB, 0-1)."""

    fabric_srgb: tuple[float, float, float]
    frame_srgb: tuple[float, float, float] = (0.05, 0.05, 0.06)

    def to_dict(self) -> dict[str, list[float]]:
        return {"fabric_srgb": list(self.fabric_srgb), "frame_srgb": list(self.frame_srgb)}


@dataclass(frozen=True)
class SceneSpec:
    """A validated scene. ``camera_for(width)`` gives the fisheye camera at an output size."""

    name: str
    root: Path
    photo_path: Path
    photo_size: tuple[int, int]
    lens: LensModel
    principal_point_px: tuple[float, float]
    camera_position: tuple[float, float, float]
    camera_rotation_deg: tuple[float, float, float]
    floor_polygons: tuple[tuple[tuple[float, float], ...], ...]
    furniture: tuple[FurnitureProxy, ...]
    seats: tuple[Seat, ...]
    occupancy: Occupancy | None = None
    chairs: ChairStyle | None = None

    def output_size(self, long_side: int | None) -> tuple[int, int]:
        """Output image size with the photo's aspect ratio and ``long_side`` pixels (or native)."""
        width, height = self.photo_size
        if long_side is None:
            return width, height
        scale = long_side / max(width, height)
        return max(8, round(width * scale)), max(8, round(height * scale))

    def camera_for(self, long_side: int | None = None) -> FisheyeCamera:
        width, height = self.output_size(long_side)
        scale = width / self.photo_size[0]
        cx, cy = self.principal_point_px
        return FisheyeCamera(
            lens=self.lens,
            width=width,
            height=height,
            principal_point=(cx * scale, cy * scale),
            native_width=float(self.photo_size[0]),
            position=self.camera_position,
            rotation_euler_deg=self.camera_rotation_deg,
        )

    def floor_extent(self, margin: float = 1.0) -> tuple[float, float, float, float]:
        """Bounding rectangle of the floor, furniture and seats, grown by ``margin`` metres."""
        xs = [p[0] for poly in self.floor_polygons for p in poly]
        ys = [p[1] for poly in self.floor_polygons for p in poly]
        for item in self.furniture:
            for x, y in item.footprint():
                xs.append(x)
                ys.append(y)
        return min(xs) - margin, min(ys) - margin, max(xs) + margin, max(ys) + margin

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "photo": self.photo_path.name,
            "photo_size": list(self.photo_size),
            "lens": self.lens.to_dict(),
            "principal_point_px": list(self.principal_point_px),
            "camera_position": list(self.camera_position),
            "camera_rotation_deg": list(self.camera_rotation_deg),
            "n_furniture": len(self.furniture),
            "n_seats": len(self.seats),
            "occupancy": self.occupancy.to_dict() if self.occupancy is not None else None,
            "chairs": self.chairs.to_dict() if self.chairs is not None else None,
        }


class _Fields:
    """Typed access to a JSON object that reports ``file: path.to.field`` on every error."""

    def __init__(self, source: Path, data: Any, path: str) -> None:
        self.source, self.data, self.path = source, data, path
        if not isinstance(data, dict):
            self.fail(f"must be a JSON object, got {type(data).__name__}")

    def fail(self, message: str, key: str | None = None) -> None:
        where = f"{self.path}.{key}" if key and self.path else (key or self.path or "<top level>")
        raise SceneFormatError(f"{self.source}: {where}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                self.fail("is missing", key)
            return default
        return self.data[key]

    def number(self, key: str, default: Any = ..., *, positive: bool = False,
               minimum: float | None = None) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"must be a finite number, got {value!r}", key)
        if positive and value <= 0:
            self.fail(f"must be > 0, got {value}", key)
        if minimum is not None and value < minimum:
            self.fail(f"must be >= {minimum}, got {value}", key)
        return float(value)

    def vector(self, key: str, length: int, default: Any = ...) -> tuple[float, ...]:
        value = self.raw(key, default)
        if (not isinstance(value, (list, tuple)) or len(value) != length
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in value)):
            self.fail(f"must be a list of {length} numbers, got {value!r}", key)
        return tuple(float(v) for v in value)

    def text(self, key: str, default: Any = ...) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or not value:
            self.fail(f"must be a non-empty string, got {value!r}", key)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            self.fail(f"must be true or false, got {value!r}", key)
        return value

    def items(self, key: str, default: Any = ...) -> list[Any]:
        value = self.raw(key, default)
        if not isinstance(value, list):
            self.fail(f"must be a list, got {type(value).__name__}", key)
        return value

    def child(self, key: str) -> _Fields:
        return _Fields(self.source, self.raw(key), f"{self.path}.{key}" if self.path else key)


LENS_MODELS = ("equidistant", "equisolid", "kannala_brandt", "cycles_polynomial", "opencv_fisheye")


def _parse_lens(fields: _Fields, photo_size: tuple[int, int]) -> tuple[LensModel, tuple[float, float] | None]:
    """The lens, plus a principal point when the model carries one (OpenCV's K)."""
    model = fields.text("model")
    if model not in LENS_MODELS:
        fields.fail(f"unknown model {model!r}; valid: {', '.join(LENS_MODELS)}", "model")
    fov = fields.number("fov_deg", 180.0, positive=True)
    try:
        if model in ("equidistant", "equisolid"):
            return LensModel(model, fields.number("focal_px", positive=True), (), fov), None
        if model == "kannala_brandt":
            return LensModel(model, fields.number("focal_px", positive=True),
                             fields.vector("coefficients", 4), fov), None
        if model == "cycles_polynomial":
            return LensModel(model, 0.0, fields.vector("coefficients", 5), fov,
                             fields.number("sensor_mm", positive=True)), None
        matrix = fields.raw("K")
        if (not isinstance(matrix, list) or len(matrix) != 3
                or not all(isinstance(r, list) and len(r) == 3 for r in matrix)):
            fields.fail("must be a 3x3 list of lists [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]", "K")
        fx, fy = float(matrix[0][0]), float(matrix[1][1])
        # OpenCV puts pixel centres on integers; this project puts them at +0.5.
        centre = (float(matrix[0][2]) + 0.5, float(matrix[1][2]) + 0.5)
        distortion = fields.vector("D", 4)
        return LensModel.from_opencv_fisheye(fx, fy, distortion, fov), centre  # type: ignore[arg-type]
    except FisheyeError as exc:
        fields.fail(str(exc))
    raise AssertionError("unreachable")


def _polygon(fields: _Fields, value: Any, where: str) -> tuple[tuple[float, float], ...]:
    if (not isinstance(value, list) or len(value) < 3
            or not all(isinstance(p, list) and len(p) == 2 for p in value)):
        fields.fail("must be a list of at least 3 [x, y] points", where)
    points = tuple((float(p[0]), float(p[1])) for p in value)
    area = 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))
    if abs(area) < 1e-6:
        fields.fail("has zero area", where)
    return points


def load_scene(folder: str | Path) -> SceneSpec:
    """Load and validate ``folder/scene.json`` (or a path to the JSON file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / SCENE_FILE
    if not path.exists():
        raise SceneFormatError(
            f"{path}: no scene file here; a scene is a folder with {SCENE_FILE} and its photo "
            "(see docs/scenes.md; build the sample with "
            "`python -m blender_addon.bl.make_sample_scene scenes/sample_office`)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SceneFormatError(f"{path}: not valid JSON ({exc})") from exc
    top = _Fields(path, data, "")
    version = top.raw("format_version")
    if version != FORMAT_VERSION:
        top.fail(f"must be {FORMAT_VERSION}, got {version!r}", "format_version")
    name = top.text("name", path.parent.name)
    photo_path = path.parent / top.text("photo")
    if not photo_path.is_file():
        top.fail(f"names {photo_path.name!r} but {photo_path} does not exist", "photo")
    try:
        with Image.open(photo_path) as image:
            photo_size = (int(image.width), int(image.height))
    except OSError as exc:
        top.fail(f"{photo_path} is not a readable image ({exc})", "photo")

    camera = top.child("camera")
    lens, lens_centre = _parse_lens(camera.child("lens"), photo_size)
    if camera.has("principal_point_px"):
        centre = camera.vector("principal_point_px", 2)
    else:
        centre = lens_centre or (photo_size[0] / 2.0, photo_size[1] / 2.0)
    if not (0 < centre[0] < photo_size[0] and 0 < centre[1] < photo_size[1]):
        camera.fail(f"principal point {centre} lies outside the {photo_size[0]}x{photo_size[1]} "
                    "photo", "principal_point_px")
    height = camera.number("height_m", positive=True)
    xy = camera.vector("position_xy_m", 2, [0.0, 0.0])
    rotation = camera.vector("rotation_euler_deg", 3, [0.0, 0.0, 0.0])

    floor = top.child("floor")
    raw_polygons = floor.items("polygons")
    if not raw_polygons:
        floor.fail("needs at least one polygon", "polygons")
    polygons = tuple(_polygon(floor, poly, f"polygons[{i}]") for i, poly in enumerate(raw_polygons))

    furniture: list[FurnitureProxy] = []
    names: set[str] = set()
    for index, raw in enumerate(top.items("furniture", [])):
        item = _Fields(path, raw, f"furniture[{index}]")
        size = item.vector("size", 3)
        if min(size) <= 0:
            item.fail(f"all sizes must be > 0, got {list(size)}", "size")
        entry = FurnitureProxy(
            name=item.text("name", f"furniture_{index}"),
            center=item.vector("center", 3),  # type: ignore[arg-type]
            size=size,  # type: ignore[arg-type]
            yaw_deg=item.number("yaw_deg", 0.0),
            holdout=item.flag("holdout", True),
            obstacle=item.flag("obstacle", True),
        )
        if entry.name in names:
            item.fail(f"duplicate name {entry.name!r}", "name")
        names.add(entry.name)
        furniture.append(entry)

    seats: list[Seat] = []
    for index, raw in enumerate(top.items("seats", [])):
        item = _Fields(path, raw, f"seats[{index}]")
        seat_height = item.number("height_m", positive=True)
        if seat_height >= height:
            item.fail(f"seat height {seat_height} m is not below the camera ({height} m)", "height_m")
        seats.append(Seat(
            name=item.text("name", f"seat_{index}"),
            position=item.vector("position", 2),  # type: ignore[arg-type]
            height_m=seat_height,
            facing_deg=item.number("facing_deg"),
            facing_jitter_deg=item.number("facing_jitter_deg", 15.0, minimum=0.0),
        ))

    occupancy = None
    if top.has("occupancy"):
        fields = top.child("occupancy")
        ranges = {}
        for posture in ("sitting", "standing"):
            low, high = fields.vector(posture, 2)
            if low != int(low) or high != int(high) or not 0 <= low <= high:
                fields.fail(f"must be [MIN, MAX] whole numbers with 0 <= MIN <= MAX, got {[low, high]}",
                            posture)
            ranges[posture] = (int(low), int(high))
        if ranges["sitting"][1] > len(seats):
            fields.fail(f"up to {ranges['sitting'][1]} sitting people but the scene has {len(seats)} "
                        "seats", "sitting")
        occupancy = Occupancy(ranges["sitting"], ranges["standing"])

    chairs = None
    if top.has("chairs"):
        fields = top.child("chairs")
        colours = {}
        for key in ("fabric_srgb", "frame_srgb"):
            if key == "frame_srgb" and not fields.has(key):
                continue
            colour = fields.vector(key, 3)
            if not all(0.0 <= c <= 1.0 for c in colour):
                fields.fail(f"must be three sRGB values in 0..1, got {list(colour)}", key)
            colours[key] = colour
        chairs = ChairStyle(**colours)  # type: ignore[arg-type]

    return SceneSpec(
        name=name,
        root=path.parent,
        photo_path=photo_path,
        photo_size=photo_size,
        lens=lens,
        principal_point_px=centre,  # type: ignore[arg-type]
        camera_position=(xy[0], xy[1], height),
        camera_rotation_deg=rotation,  # type: ignore[arg-type]
        floor_polygons=polygons,
        furniture=tuple(furniture),
        seats=tuple(seats),
        occupancy=occupancy,
        chairs=chairs,
    )
