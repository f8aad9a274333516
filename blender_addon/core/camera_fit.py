"""A lens and a camera without a checkerboard: ``fit-camera``.

Two steps, both from ordinary frames of the sensor:

1. **The image circle** (:func:`find_image_circle`): the dark border around a fisheye image.
   Along rays from the image centre, the circle's edge is where the image turns dark for good
   (a run of dark pixels); overlays such as a timestamp lie beyond that run and are never
   reached. Rays that leave the photo while still bright (a circle clipped by the sensor) are
   dropped. A circle is fitted to the edge points by least squares with outliers rejected.
2. **The lens and the camera** (:func:`fit_camera`): the principal point is the circle's
   centre; the field of view ``fov`` makes the circle's radius the angle ``fov / 2``, which
   fixes the focal length for an equidistant (``r = f theta``) or equisolid
   (``r = 2 f sin(theta / 2)``) lens. The fov, the mounting height and a small tilt are then
   fitted so that a simple 3D person, projected with ``core.fisheye`` (exactly as Cycles
   renders), has the annotated people's rotated-box length (radial) and width (tangential)
   at their radial distance. Both lens models are fitted and the one with the smaller error
   is kept. The residuals are logs of size ratios with a soft-L1 loss, so a person lying
   across two chairs does not drag the fit.

The person model (:data:`PERSON_MODELS`) is an upright cylinder on the floor whose box, seen
from the ceiling, matches the renderer's own people (:func:`calibrate_person_models` on a
rendered dataset of the sample office, whose camera is known): standing 1.65 m tall and
0.50 m across; sitting 0.90 m tall and 0.80 m across (a seated body is low and deep: head,
torso and thighs seen from above; only the head reaches ~1.3 m, so an effective cylinder
is lower than the head). Which annotation is which posture: an
annotation's own ``posture`` field if it has one, else ``--standing PERSON_ID ...``, else
``default_posture`` (sitting: at a meeting table most people sit).

A user with a real calibration keeps it: ``keep_lens`` fixes the lens and principal point and
fits only the height and tilt (or leave the scene's camera as it is).

Command line::

    python -m blender_addon.core.camera_fit --data FOLDER_WITH_annotations.json \
        --frames-used 1 2 3 4 5 [--scene out/scenes/x] [--report out/fit.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from blender_addon.core.fisheye import FisheyeCamera, FisheyeError, LensModel

LENS_KINDS = ("equidistant", "equisolid")
POSTURES = ("standing", "sitting")
RADIAL_BANDS = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of the image circle's radius
# People alone pin the fov down poorly (a lower fov and a higher camera look alike), so the
# fov is bounded by what a ceiling fisheye with a visible image circle is: the walls reach
# the circle's edge about level with the lens, i.e. the circle is close to a hemisphere.
FOV_RANGE = (170.0, 200.0)


class CameraFitError(ValueError):
    """Frames or annotations a camera cannot be fitted to; the message says what to change."""


# ---------------------------------------------------------------------------------------------
# The image circle.


@dataclass(frozen=True)
class ImageCircle:
    """The fisheye image circle in pixels (continuous convention), and how well it fitted."""

    cx: float
    cy: float
    radius: float
    rms_px: float
    edge_points: int

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.cx, self.cy, self.radius)


def _fit_circle(points: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle through (N, 2) points."""
    x, y = points[:, 0], points[:, 1]
    design = np.stack([x, y, np.ones_like(x)], axis=1)
    rhs = x * x + y * y
    (a, b, c), *_ = np.linalg.lstsq(design, rhs, rcond=None)
    cx, cy = a / 2.0, b / 2.0
    return float(cx), float(cy), float(math.sqrt(max(c + cx * cx + cy * cy, 0.0)))


def find_image_circle(frames: np.ndarray, dark_level: float = 24.0, rays: int = 720,
                      dark_run: float = 0.02) -> ImageCircle:
    """The image circle of (F, H, W, 3) or (H, W, 3) frames: see the module docstring.

    ``dark_level``: brightest grey value (max over channels, median over frames) still counted
    as the black border. ``dark_run``: how long (fraction of the image's short side) a dark
    run must be to end the circle.
    """
    stack = np.asarray(frames)
    if stack.ndim == 3:
        stack = stack[None]
    if stack.ndim != 4:
        raise CameraFitError(f"frames must be (F, H, W, 3) or (H, W, 3), got {stack.shape}")
    brightness = np.median(stack.max(axis=3), axis=0) if len(stack) > 1 else stack[0].max(axis=2)
    height, width = brightness.shape
    bright = brightness > dark_level
    cx0, cy0 = width / 2.0, height / 2.0
    run = max(3, round(dark_run * min(width, height)))
    steps = np.arange(0, int(math.hypot(width, height) / 2) + 2)
    points = []
    for angle in np.linspace(0.0, 2 * math.pi, rays, endpoint=False):
        xs = cx0 + steps * math.cos(angle)
        ys = cy0 + steps * math.sin(angle)
        inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
        n_inside = int(np.argmin(inside)) if not inside.all() else len(inside)
        values = bright[ys[:n_inside].astype(int), xs[:n_inside].astype(int)]
        dark = ~values
        # The first dark run of ``run`` samples after some bright pixels.
        if not values.any():
            continue
        windows = np.convolve(dark.astype(int), np.ones(run, dtype=int), mode="valid")
        first_bright = int(np.argmax(values))
        starts = np.nonzero(windows[first_bright:] == run)[0]
        if len(starts) == 0:
            continue  # left the photo while still bright: the circle is clipped here
        edge = first_bright + int(starts[0])
        points.append((xs[edge] - 0.5 * math.cos(angle), ys[edge] - 0.5 * math.sin(angle)))
    if len(points) < 12:
        raise CameraFitError(
            f"found the dark border on only {len(points)} of {rays} rays: these frames show no "
            "image circle (not a fisheye, or the circle fills the photo); give --circle CX CY R")
    pts = np.asarray(points, dtype=np.float64)
    keep = np.ones(len(pts), dtype=bool)
    for _ in range(5):
        cx, cy, r = _fit_circle(pts[keep])
        residual = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
        mad = float(np.median(residual[keep])) * 1.4826 + 0.5
        new_keep = residual <= 3.0 * mad
        if new_keep.sum() < 12 or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    cx, cy, r = _fit_circle(pts[keep])
    residual = np.hypot(pts[keep, 0] - cx, pts[keep, 1] - cy) - r
    # Pixel centres sit at i + 0.5 (continuous convention).
    return ImageCircle(cx + 0.5, cy + 0.5, r, float(np.sqrt(np.mean(residual**2))), int(keep.sum()))


# ---------------------------------------------------------------------------------------------
# People as seen by a camera.


@dataclass(frozen=True)
class PersonModel:
    """An upright cylinder standing on the floor: what a person's box is made of, from above."""

    height_m: float
    diameter_m: float


PERSON_MODELS: dict[str, PersonModel] = {
    "standing": PersonModel(1.65, 0.50),
    "sitting": PersonModel(0.90, 0.80),
}


@dataclass(frozen=True)
class PersonBox:
    """One annotated person: rotated box centre (px), long and short side (px), posture."""

    cx: float
    cy: float
    length_px: float
    width_px: float
    posture: str
    person_id: int | None = None
    image_id: str | None = None


def person_boxes_from_cepdof(annotations_json: str | Path, image_ids: Sequence[str] | None = None,
                             standing_ids: Sequence[int] = (), default_posture: str = "sitting"
                             ) -> list[PersonBox]:
    """Person boxes from a CEPDOF-style ``annotations.json`` (only ``image_ids`` when given)."""
    if default_posture not in POSTURES:
        raise CameraFitError(f"default posture {default_posture!r}; valid: {', '.join(POSTURES)}")
    data = json.loads(Path(annotations_json).read_text(encoding="utf-8"))
    wanted = None if image_ids is None else {str(i) for i in image_ids}
    boxes = []
    for entry in data["annotations"]:
        if wanted is not None and str(entry["image_id"]) not in wanted:
            continue
        cx, cy, w, h, _ = (float(v) for v in entry["bbox"])
        person_id = entry.get("person_id")
        posture = entry.get("posture") or (
            "standing" if person_id is not None and int(person_id) in set(standing_ids) else default_posture)
        if posture not in POSTURES:
            raise CameraFitError(f"annotation posture {posture!r}; valid: {', '.join(POSTURES)}")
        boxes.append(PersonBox(cx, cy, max(w, h), min(w, h), posture,
                               None if person_id is None else int(person_id), str(entry["image_id"])))
    if not boxes:
        raise CameraFitError(f"{annotations_json} has no person boxes for images {image_ids}")
    return boxes


def _cylinder_points(base_xy: np.ndarray, model: PersonModel, n: int = 16) -> np.ndarray:
    """(P, n*3, 3): points on three rings (floor, middle, top) of each person's cylinder."""
    angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1) * model.diameter_m / 2
    rings = []
    for z in (0.0, model.height_m / 2, model.height_m):
        xy = base_xy[:, None, :] + ring[None]
        rings.append(np.concatenate([xy, np.full(xy.shape[:2] + (1,), z)], axis=2))
    return np.concatenate(rings, axis=1)


def person_boxes_at(camera: FisheyeCamera, base_xy: np.ndarray, model: PersonModel,
                    directions_from: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where ``model`` people standing at floor points ``base_xy`` (N, 2) appear: box centres
    (N, 2) px, lengths and widths (N,) px.

    Length is the extent along the direction from the principal point (a person seen from the
    ceiling lies along it), width across it; the direction is taken at ``directions_from``
    (N, 2) pixels when given, else at the projection of the person's middle.
    """
    settings = camera.cycles_settings()
    centre = np.asarray(camera.effective_principal_point())
    base_xy = np.asarray(base_xy, dtype=np.float64).reshape(-1, 2)
    points = _cylinder_points(base_xy, model)
    flat, _ = camera.project(points.reshape(-1, 3), settings)
    proj = flat.reshape(points.shape[0], -1, 2)
    if directions_from is None:
        middle = np.concatenate([base_xy, np.full((len(base_xy), 1), model.height_m / 2)], axis=1)
        directions_from = camera.project(middle, settings)[0]
    radial = np.asarray(directions_from, dtype=np.float64) - centre
    norm = np.linalg.norm(radial, axis=1, keepdims=True)
    radial = np.where(norm > 1e-6, radial / np.maximum(norm, 1e-9), np.array([[0.0, 1.0]]))
    tangent = np.stack([-radial[:, 1], radial[:, 0]], axis=1)
    along = np.einsum("npk,nk->np", proj - centre, radial)
    across = np.einsum("npk,nk->np", proj - centre, tangent)
    length = along.max(axis=1) - along.min(axis=1)
    width = across.max(axis=1) - across.min(axis=1)
    box_centre = centre + (radial * ((along.max(axis=1) + along.min(axis=1)) / 2)[:, None]
                           + tangent * ((across.max(axis=1) + across.min(axis=1)) / 2)[:, None])
    return box_centre, length, width


def floor_points_under(camera: FisheyeCamera, pixels: np.ndarray, height_m: float) -> np.ndarray:
    """(N, 2) floor positions whose point ``height_m`` above the floor is seen at ``pixels``."""
    rays = camera.pixel_rays(np.asarray(pixels, dtype=np.float64).reshape(-1, 2))
    origin = np.asarray(camera.position)
    dz = np.where(rays[:, 2] < -1e-6, rays[:, 2], -1e-6)  # rays above the plane: far away
    t = (height_m - origin[2]) / dz
    return origin[None, :2] + rays[:, :2] * t[:, None]


def predicted_boxes(camera: FisheyeCamera, centres_px: np.ndarray, model: PersonModel
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted (length, width) in pixels of ``model`` people whose boxes are centred at
    ``centres_px`` (N, 2), and the floor positions (N, 2) that put them there.

    The floor position is found by casting the box centre's ray to the person's mid-height,
    then correcting twice by the difference between the predicted and the wanted box centre.
    """
    target = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    pixels = target.copy()
    for _ in range(3):
        base = floor_points_under(camera, pixels, model.height_m / 2)
        box_centre, length, width = person_boxes_at(camera, base, model, directions_from=target)
        pixels = pixels + (target - box_centre)
    return length, width, base


def calibrate_person_models(render_dir: str | Path, camera: FisheyeCamera | None = None,
                            min_visibility: float = 0.6,
                            heights: np.ndarray | None = None, diameters: np.ndarray | None = None
                            ) -> tuple[dict[str, PersonModel], dict[str, dict[str, float]]]:
    """The cylinder per posture that best gives the rendered people's box sizes.

    ``render_dir`` is a dataset of the batch renderer (``frames/*.json``, whose manifest says
    who sits and who stands) of a scene whose camera is known; ``camera`` defaults to the one
    recorded in the frames (the scene in ``manifest.scene_dir`` at the rendered size). People
    less than ``min_visibility`` visible are skipped (a table hides their legs). Grid search
    on the median absolute log error of length and width. Returns (models, report).
    """
    from blender_addon.core.scene_format import load_scene

    heights = np.arange(0.7, 1.95, 0.05) if heights is None else heights
    diameters = np.arange(0.3, 1.05, 0.05) if diameters is None else diameters
    rows: dict[str, list[tuple[float, float, float, float]]] = {p: [] for p in POSTURES}
    frames = sorted(Path(render_dir).glob("frames/*.json"))
    if not frames:
        raise CameraFitError(f"{render_dir} has no frames/*.json: render a dataset of a known scene first")
    for path in frames:
        record = json.loads(path.read_text(encoding="utf-8"))
        if camera is None:
            scene = load_scene(record["manifest"]["scene_dir"])
            camera = scene.camera_for(int(record["width"]))
        kinds = {p["pass_index"]: p["kind"] for p in record["manifest"]["recipe"]["people"]}
        for entry in record["annotations"]:
            posture = kinds.get(entry["instance_id"])
            if posture not in rows or entry.get("visibility", 1.0) < min_visibility:
                continue
            cx, cy, w, h, _ = entry["rbox"]
            rows[posture].append((cx, cy, max(w, h), min(w, h)))
    assert camera is not None
    models, report = dict(PERSON_MODELS), {}
    for posture, values in rows.items():
        if len(values) < 3:
            continue
        data = np.asarray(values)
        best = None
        for height in heights:
            for diameter in diameters:
                model = PersonModel(round(float(height), 3), round(float(diameter), 3))
                length, width, _ = predicted_boxes(camera, data[:, :2], model)
                error = np.concatenate([np.log(length / data[:, 2]), np.log(width / data[:, 3])])
                cost = float(np.median(np.abs(error)))
                if best is None or cost < best[0]:
                    best = (cost, model)
        assert best is not None
        models[posture] = best[1]
        report[posture] = {"people": len(values), "median_abs_log_error": round(best[0], 4),
                           **asdict(best[1])}
    return models, report


# ---------------------------------------------------------------------------------------------
# The fit.


def lens_for(kind: str, fov_deg: float, circle_radius_px: float) -> LensModel:
    """The lens whose image circle of ``circle_radius_px`` is the angle ``fov_deg / 2``."""
    half = math.radians(fov_deg) / 2.0
    if kind == "equidistant":
        focal = circle_radius_px / half
    elif kind == "equisolid":
        focal = circle_radius_px / (2.0 * math.sin(half / 2.0))
    else:
        raise CameraFitError(f"unknown lens kind {kind!r}; valid: {', '.join(LENS_KINDS)}")
    return LensModel(kind, focal, (), fov_deg)


def camera_from(lens: LensModel, size: tuple[int, int], principal_point: tuple[float, float],
                height_m: float, tilt_deg: tuple[float, float]) -> FisheyeCamera:
    return FisheyeCamera(lens=lens, width=size[0], height=size[1], principal_point=principal_point,
                         native_width=float(size[0]), position=(0.0, 0.0, height_m),
                         rotation_euler_deg=(tilt_deg[0], tilt_deg[1], 0.0))


@dataclass
class CameraFit:
    """A fitted camera, with its error per radial band."""

    lens: dict[str, Any]
    principal_point_px: tuple[float, float]
    height_m: float
    rotation_euler_deg: tuple[float, float, float]
    circle: dict[str, float]
    bands: list[dict[str, Any]]
    median_abs_error: dict[str, float]
    alternatives: dict[str, float]
    people: int
    posture_counts: dict[str, int]
    person_models: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scene_camera(self) -> dict[str, Any]:
        """The ``camera`` object of a scene.json (format_version 1)."""
        return {
            "lens": self.lens,
            "principal_point_px": [round(v, 3) for v in self.principal_point_px],
            "height_m": round(self.height_m, 4),
            "position_xy_m": [0.0, 0.0],
            "rotation_euler_deg": [round(v, 3) for v in self.rotation_euler_deg],
        }


def _residuals(camera: FisheyeCamera, boxes: Sequence[PersonBox],
               models: dict[str, PersonModel]) -> tuple[np.ndarray, np.ndarray]:
    """log(predicted / real) for length and width, per box."""
    length = np.zeros(len(boxes))
    width = np.zeros(len(boxes))
    for posture in POSTURES:
        index = [i for i, b in enumerate(boxes) if b.posture == posture]
        if not index:
            continue
        centres = np.array([[boxes[i].cx, boxes[i].cy] for i in index])
        pl, pw, _ = predicted_boxes(camera, centres, models[posture])
        length[index] = pl
        width[index] = pw
    real_l = np.array([b.length_px for b in boxes])
    real_w = np.array([b.width_px for b in boxes])
    return np.log(np.maximum(length, 1e-3) / real_l), np.log(np.maximum(width, 1e-3) / real_w)


def band_report(boxes: Sequence[PersonBox], rel_length: np.ndarray, rel_width: np.ndarray,
                centre: tuple[float, float], radius: float, bands: Sequence[float] = RADIAL_BANDS
                ) -> list[dict[str, Any]]:
    """Median relative error (predicted / real - 1) of length, width and size (the geometric
    mean of length and width) per radial band."""
    rho = np.array([math.hypot(b.cx - centre[0], b.cy - centre[1]) / radius for b in boxes])
    rows = []
    for lo, hi in itertools.pairwise(bands):
        inside = (rho >= lo) & (rho < hi)
        rows.append({
            "band": f"{lo:.2f}-{hi:.2f} R",
            "people": int(inside.sum()),
            "median_length_error": None if not inside.any() else round(float(np.median(rel_length[inside])), 4),
            "median_width_error": None if not inside.any() else round(float(np.median(rel_width[inside])), 4),
            "median_size_error": None if not inside.any() else round(float(np.median(
                np.sqrt((1 + rel_length[inside]) * (1 + rel_width[inside])) - 1)), 4),
        })
    return rows


def fit_camera(boxes: Sequence[PersonBox], image_size: tuple[int, int], circle: ImageCircle, *,
               kinds: Sequence[str] = LENS_KINDS, keep_lens: LensModel | None = None,
               principal_point: tuple[float, float] | None = None, fit_tilt: bool = True,
               models: dict[str, PersonModel] | None = None,
               fov_range: tuple[float, float] = FOV_RANGE,
               height_range: tuple[float, float] = (1.8, 8.0), max_tilt_deg: float = 10.0,
               ) -> CameraFit:
    """Fit fov (per lens kind), height and tilt to ``boxes``; see the module docstring.

    ``keep_lens``: a calibrated lens (with ``principal_point``) that is kept; only the
    height and tilt are fitted.
    """
    models = models or PERSON_MODELS
    if len(boxes) < 3:
        raise CameraFitError(f"need at least 3 annotated people, got {len(boxes)}")
    centre = principal_point or (circle.cx, circle.cy)
    candidates: dict[str, tuple[float, np.ndarray, FisheyeCamera]] = {}
    trial_kinds = ["calibrated"] if keep_lens is not None else list(kinds)
    for kind in trial_kinds:
        def build(params: np.ndarray, kind: str = kind) -> FisheyeCamera:
            if keep_lens is not None:
                lens = keep_lens
                height, rx, ry = params[0], *(params[1:3] if fit_tilt else (0.0, 0.0))
            else:
                lens = lens_for(kind, params[0], circle.radius)
                height, rx, ry = params[1], *(params[2:4] if fit_tilt else (0.0, 0.0))
            return camera_from(lens, image_size, centre, float(height), (float(rx), float(ry)))

        def residual(params: np.ndarray) -> np.ndarray:
            try:
                rl, rw = _residuals(build(params), boxes, models)
            except FisheyeError:
                return np.full(2 * len(boxes), 10.0)
            return np.concatenate([rl, rw])

        lower = ([] if keep_lens is not None else [fov_range[0]]) + [height_range[0]]
        upper = ([] if keep_lens is not None else [fov_range[1]]) + [height_range[1]]
        if fit_tilt:
            lower += [-max_tilt_deg, -max_tilt_deg]
            upper += [max_tilt_deg, max_tilt_deg]
        best = None
        # A few starts: height and fov trade off, and the cost has shallow valleys.
        fovs = np.linspace(fov_range[0], fov_range[1], 4)[1:3]
        for fov0 in ([None] if keep_lens is not None else list(fovs)):
            for h0 in (2.6, 3.5):
                start = ([] if fov0 is None else [fov0]) + [h0] + ([0.0, 0.0] if fit_tilt else [])
                start = np.clip(start, np.array(lower) + 1e-6, np.array(upper) - 1e-6)
                solution = optimize.least_squares(residual, start, bounds=(lower, upper),
                                                  loss="soft_l1", f_scale=0.1, diff_step=1e-4)
                if best is None or solution.cost < best.cost:
                    best = solution
        assert best is not None
        candidates[kind] = (float(best.cost), best.x, build(best.x))
    kind = min(candidates, key=lambda k: candidates[k][0])
    camera = candidates[kind][2]
    rl, rw = _residuals(camera, boxes, models)
    rel_l, rel_w = np.exp(rl) - 1, np.exp(rw) - 1
    lens = camera.lens
    lens_json: dict[str, Any] = {"model": lens.kind, "fov_deg": round(lens.fov_deg, 3)}
    if lens.kind == "kannala_brandt":
        lens_json.update(focal_px=round(lens.focal_px, 4), coefficients=list(lens.coefficients))
    elif lens.kind == "cycles_polynomial":
        lens_json.update(coefficients=list(lens.coefficients), sensor_mm=lens.sensor_mm)
    else:
        lens_json["focal_px"] = round(lens.focal_px, 4)
    return CameraFit(
        lens=lens_json,
        principal_point_px=(float(centre[0]), float(centre[1])),
        height_m=float(camera.position[2]),
        rotation_euler_deg=tuple(float(v) for v in camera.rotation_euler_deg),  # type: ignore[arg-type]
        circle=asdict(circle),
        bands=band_report(boxes, rel_l, rel_w, centre, circle.radius),
        median_abs_error={"length": round(float(np.median(np.abs(rel_l))), 4),
                          "width": round(float(np.median(np.abs(rel_w))), 4)},
        alternatives={k: round(v[0], 5) for k, v in candidates.items()},
        people=len(boxes),
        posture_counts={p: sum(b.posture == p for b in boxes) for p in POSTURES},
        person_models={k: asdict(v) for k, v in models.items()},
    )


def format_bands(fit: CameraFit) -> str:
    lines = ["| band | people | median length error | median width error | median size error |",
             "| --- | --- | --- | --- | --- |"]
    for row in fit.bands:
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:+.1f}%"
        lines.append(f"| {row['band']} | {row['people']} | {pct(row['median_length_error'])} | "
                     f"{pct(row['median_width_error'])} | {pct(row['median_size_error'])} |")
    return "\n".join(lines)


def write_into_scene(fit: CameraFit, scene_json: str | Path) -> None:
    """Replace the camera of an existing scene.json by the fitted one (everything else kept)."""
    path = Path(scene_json)
    document = json.loads(path.read_text(encoding="utf-8"))
    document["camera"] = fit.scene_camera()
    document.setdefault("calibration_report", {})["fit_camera"] = {
        "bands": fit.bands, "median_abs_error": fit.median_abs_error, "circle": fit.circle,
        "alternatives": fit.alternatives}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Under ``protocol.cli.run_main``: one-line errors (exit 2), --debug for the traceback,
    exit 128 + N on SIGTERM/SIGINT/SIGHUP."""
    from protocol.cli import run_main

    return run_main(_main, argv, prog="fit-camera")


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fit-camera",
        description="Fit a fisheye lens, mounting height and tilt from frames and person boxes.")
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with the frames and a CEPDOF-style annotations.json")
    parser.add_argument("--images", nargs="+", required=True,
                        help="image ids (or file names) to use: training frames only")
    parser.add_argument("--standing", type=int, nargs="*", default=[],
                        help="person_ids that stand (everyone else: --default-posture)")
    parser.add_argument("--default-posture", choices=POSTURES, default="sitting")
    parser.add_argument("--circle", type=float, nargs=3, metavar=("CX", "CY", "R"),
                        help="the image circle, if known (default: found from the frames)")
    parser.add_argument("--no-tilt", action="store_true", help="fit height and fov only")
    parser.add_argument("--fov-range", type=float, nargs=2, default=FOV_RANGE, metavar=("MIN", "MAX"),
                        help=f"bounds of the fitted field of view in degrees (default {FOV_RANGE})")
    parser.add_argument("--scene", type=Path, help="write the camera into this scene folder's scene.json")
    parser.add_argument("--keep-lens", action="store_true",
                        help="keep the --scene's calibrated lens; fit only height and tilt")
    parser.add_argument("--person-models-from", type=Path, metavar="RENDER_DIR",
                        help="measure the person cylinders on a rendered dataset of a scene with a "
                             "known camera (default: the built-in sizes, measured this way)")
    parser.add_argument("--report", type=Path, help="write the fit as JSON here")
    args = parser.parse_args(argv)
    from blender_addon.core.clean_plate import load_frames

    annotations = args.data / "annotations.json"
    data = json.loads(annotations.read_text(encoding="utf-8"))
    names = {str(img["id"]): img for img in data["images"]}
    by_file = {str(img["file_name"]): str(img["id"]) for img in data["images"]}
    ids = [by_file.get(i, i) for i in args.images]
    missing = [i for i in ids if i not in names]
    if missing:
        print(f"fit-camera: images {missing} are not in {annotations}", file=sys.stderr)
        return 2
    try:
        frames = load_frames([args.data / names[i]["file_name"] for i in ids])
        size = (frames.shape[2], frames.shape[1])
        circle = (ImageCircle(*args.circle, 0.0, 0) if args.circle else find_image_circle(frames))
        boxes = person_boxes_from_cepdof(annotations, ids, args.standing, args.default_posture)
        keep_lens = principal = None
        if args.keep_lens:
            if not args.scene:
                raise CameraFitError("--keep-lens needs --scene (the calibrated scene)")
            from blender_addon.core.scene_format import load_scene

            spec = load_scene(args.scene)
            keep_lens, principal = spec.lens, spec.principal_point_px
        models = None
        if args.person_models_from:
            models, calibration = calibrate_person_models(args.person_models_from)
            print(f"person models from {args.person_models_from}: {calibration}")
        fit = fit_camera(boxes, size, circle, keep_lens=keep_lens, principal_point=principal,
                         fit_tilt=not args.no_tilt, fov_range=tuple(args.fov_range), models=models)
    except CameraFitError as exc:
        print(f"fit-camera: {exc}", file=sys.stderr)
        return 2
    print(f"image circle: centre ({circle.cx:.1f}, {circle.cy:.1f}) px, radius {circle.radius:.1f} px "
          f"(rms {circle.rms_px:.2f} px over {circle.edge_points} edge points)")
    print(f"lens: {fit.lens}; height {fit.height_m:.3f} m; tilt {fit.rotation_euler_deg[:2]} deg; "
          f"{fit.people} people ({fit.posture_counts})")
    print(format_bands(fit))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(fit.to_dict(), indent=2) + "\n", encoding="utf-8")
    if args.scene:
        write_into_scene(fit, args.scene / "scene.json")
        print(f"camera written into {args.scene / 'scene.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
