"""The real room as the stage: a scene built from annotated frames of a room with people in it.

``build`` makes a complete scene folder (``scene.json`` + ``photo.jpg``) from CEPDOF-style
frames (``annotations.json`` beside them) and a small file of proxies drawn in *image pixels*
(no image inside):

1. the photo: a clean plate of the training frames (``core.clean_plate``);
2. the camera: image circle, lens, height and tilt fitted to the annotated people
   (``core.camera_fit``), or a calibrated camera kept as it is (``--keep-camera``);
3. the proxies: floor polygon and furniture tops drawn over the plate in pixels, cast onto
   the floor (or the furniture's top height) through the fitted camera; seats where the
   annotated people sat (their estimated head, cast to seated-head height, is above the
   seat), facing the nearest table.

Because the proxies are stored in pixels and heights, a refitted camera moves them with it.
The photo is derived from the shared frames at run time and is never committed.

``size-check`` renders the built scene with the batch renderer and compares rendered
person boxes with the real ones per radial band, and rendered heads with real heads on the
same seats.

Frames are split once, here, for every experiment that uses Lunch3 (:data:`LUNCH3_SPLITS`):
the scene is built from ``train`` frames only; ``val`` and ``test`` are for the detector.

Commands::

    python -m blender_addon.core.cepdof_scene build --data ../shared/data/real/cepdof_lunch3 \
        --out out/scenes/cepdof_lunch
    python -m blender_addon.core.cepdof_scene size-check --scene out/scenes/cepdof_lunch \
        --data ../shared/data/real/cepdof_lunch3 --render out/cepdof_lunch_check --count 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blender_addon.core import camera_fit, clean_plate
from blender_addon.core.fisheye import FisheyeCamera
from blender_addon.core.scene_format import SCENE_FILE, SceneSpec, load_scene
from protocol.annotations import head_from_rbox

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROXIES = PROJECT_ROOT / "scenes" / "cepdof_lunch" / "proxies.json"
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real" / "cepdof_lunch3"

# Lunch3 frames by number (Lunch3_000001.jpg = 1). Gaps between the sets: neighbouring frames
# are seconds apart and nearly identical, so a frame next to a training frame is not held out.
LUNCH3_SPLITS: dict[str, tuple[int, ...]] = {"train": (1, 2, 3, 4, 5), "val": (7,), "test": (9, 10)}
# Where a seated person's head centre is above the floor, measured on the renderer's own
# sitting people (sample office, seat height 0.46 m: median 1.33 m, 4 cm from the seat).
SEATED_HEAD_HEIGHT_M = 1.30
SEAT_HEIGHT_M = 0.46
PHOTO_FILE = "photo.jpg"


class SceneBuildError(ValueError):
    """Data or proxies a scene cannot be built from; the message says what to change."""


def lunch3_ids(split: str) -> list[str]:
    if split not in LUNCH3_SPLITS:
        raise SceneBuildError(f"unknown split {split!r}; valid: {', '.join(LUNCH3_SPLITS)}")
    return [f"Lunch3_{n:06d}" for n in LUNCH3_SPLITS[split]]


def _load_annotations(data: Path) -> dict[str, Any]:
    path = data / "annotations.json"
    if not path.is_file():
        raise SceneBuildError(
            f"{path} not found: --data must be a CEPDOF-style folder (frames + annotations.json); "
            "the Lunch3 sample lives in ../shared/data/real/cepdof_lunch3")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_ids(annotations: dict[str, Any], ids: Sequence[str], data: Path) -> dict[str, dict[str, Any]]:
    images = {str(img["id"]): img for img in annotations["images"]}
    missing = [i for i in ids if i not in images]
    if missing:
        raise SceneBuildError(f"frames {missing} are not in {data / 'annotations.json'}; "
                              f"it has {sorted(images)[:5]}...")
    return images


# ---------------------------------------------------------------------------------------------
# Proxies: pixels -> world.


def _rectangle(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Centre, size and yaw (deg) of the rectangle best covering 4 floor points (PCA axes)."""
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre)
    axis = vt[0]
    yaw = math.degrees(math.atan2(axis[1], axis[0]))
    c, s = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    local = (points - centre) @ np.array([[c, -s], [s, c]])
    lo, hi = local.min(axis=0), local.max(axis=0)
    mid = (lo + hi) / 2
    centre = centre + np.array([[c, -s], [s, c]]) @ mid
    return (float(centre[0]), float(centre[1])), (float(hi[0] - lo[0]), float(hi[1] - lo[1])), yaw


def proxies_to_world(proxies: dict[str, Any], camera: FisheyeCamera, frame_width: int
                     ) -> tuple[list[list[list[float]]], list[dict[str, Any]]]:
    """Floor polygons and furniture boxes from pixel proxies, through ``camera``.

    ``proxies`` pixel coordinates are on a view ``proxies["pixel_width"]`` wide (so proxies
    drawn on a half-size view work on full-size frames).
    """
    scale = frame_width / float(proxies.get("pixel_width", frame_width))
    floors = []
    for polygon in proxies.get("floor_px", []):
        pts = np.asarray(polygon, dtype=np.float64) * scale
        world = camera_fit.floor_points_under(camera, pts, 0.0)
        floors.append([[round(float(x), 4), round(float(y), 4)] for x, y in world])
    furniture = []
    for index, item in enumerate(proxies.get("furniture", [])):
        top = float(item["top_height_m"])
        pts = np.asarray(item["top_px"], dtype=np.float64) * scale
        if pts.shape != (4, 2):
            raise SceneBuildError(f"furniture[{index}].top_px must be 4 [x, y] corners, got {pts.shape}")
        world = camera_fit.floor_points_under(camera, pts, top)
        (cx, cy), (sx, sy), yaw = _rectangle(world)
        furniture.append({
            "name": str(item.get("name", f"furniture_{index}")),
            "center": [round(cx, 4), round(cy, 4), round(top / 2, 4)],
            "size": [round(max(sx, 0.05), 4), round(max(sy, 0.05), 4), round(top, 4)],
            "yaw_deg": round(yaw, 3),
            "holdout": bool(item.get("holdout", True)),
            "obstacle": bool(item.get("obstacle", True)),
        })
    return floors, furniture


def real_heads(annotations: dict[str, Any], ids: Sequence[str], centre: tuple[float, float]
               ) -> dict[int, list[tuple[float, float]]]:
    """Estimated head points (px) per person_id over the frames ``ids``."""
    heads: dict[int, list[tuple[float, float]]] = {}
    wanted = set(ids)
    for entry in annotations["annotations"]:
        if str(entry["image_id"]) not in wanted or entry.get("person_id") is None:
            continue
        head, _ = head_from_rbox(tuple(float(v) for v in entry["bbox"]), centre)
        heads.setdefault(int(entry["person_id"]), []).append(head)
    return heads


def seats_from_people(annotations: dict[str, Any], ids: Sequence[str], camera: FisheyeCamera,
                      furniture: Sequence[dict[str, Any]], standing: Sequence[int] = ()
                      ) -> list[dict[str, Any]]:
    """A seat under each sitting person's head (median over the frames), facing the nearest
    holdout furniture (a table), or the camera's foot where there is none."""
    centre = camera.effective_principal_point()
    seats = []
    for person_id, heads in sorted(real_heads(annotations, ids, centre).items()):
        if person_id in set(standing):
            continue
        head = np.median(np.asarray(heads), axis=0)
        x, y = camera_fit.floor_points_under(camera, head[None], SEATED_HEAD_HEIGHT_M)[0]
        tables = [f for f in furniture if f["holdout"]]
        if tables:
            nearest = min(tables, key=lambda f: math.hypot(f["center"][0] - x, f["center"][1] - y))
            tx, ty = _closest_point_on_box(nearest, (x, y))
        else:
            tx, ty = camera.position[0], camera.position[1]
        facing = math.degrees(math.atan2(ty - y, tx - x))
        seats.append({"name": f"seat_person_{person_id}", "position": [round(float(x), 4), round(float(y), 4)],
                      "height_m": SEAT_HEIGHT_M, "facing_deg": round(facing, 2), "facing_jitter_deg": 20.0,
                      "person_id": person_id, "head_px": [round(float(v), 2) for v in head]})
    return seats


def occupancy_from_frames(annotations: dict[str, Any], ids: Sequence[str], standing: Sequence[int],
                          seats: int) -> dict[str, list[int]]:
    """The fewest and most sitting and standing people in one of the frames ``ids`` (people in
    ``standing`` stand, the rest sit), sitting capped at the number of seats."""
    counts = {str(i): [0, 0] for i in ids}
    for entry in annotations["annotations"]:
        image = str(entry["image_id"])
        if image in counts:
            counts[image][int(entry.get("person_id") in set(standing))] += 1
    sitting = [min(c[0], seats) for c in counts.values()]
    upright = [c[1] for c in counts.values()]
    return {"sitting": [min(sitting), max(sitting)], "standing": [min(upright), max(upright)]}


def _closest_point_on_box(box: dict[str, Any], point: tuple[float, float]) -> tuple[float, float]:
    yaw = math.radians(box["yaw_deg"])
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = point[0] - box["center"][0], point[1] - box["center"][1]
    lx, ly = dx * c + dy * s, -dx * s + dy * c
    lx = min(max(lx, -box["size"][0] / 2), box["size"][0] / 2)
    ly = min(max(ly, -box["size"][1] / 2), box["size"][1] / 2)
    return box["center"][0] + lx * c - ly * s, box["center"][1] + lx * s + ly * c


# ---------------------------------------------------------------------------------------------
# Build.


def build_scene(data: str | Path, out: str | Path, train_ids: Sequence[str],
                proxies: dict[str, Any], *, name: str = "cepdof_lunch", standing: Sequence[int] = (),
                keep_camera: dict[str, Any] | None = None, method: str = "patchmatch",
                fov_range: tuple[float, float] = camera_fit.FOV_RANGE) -> SceneSpec:
    """Build ``out/scene.json`` and ``out/photo.jpg`` from the frames ``train_ids`` only."""
    data, out = Path(data), Path(out)
    annotations = _load_annotations(data)
    images = _check_ids(annotations, train_ids, data)
    frame_paths = [data / images[i]["file_name"] for i in train_ids]
    frames = clean_plate.load_frames(frame_paths)
    height_px, width_px = frames.shape[1:3]
    circle = camera_fit.find_image_circle(frames)
    rboxes = clean_plate.rboxes_for_frames(data / "annotations.json", frame_paths)
    masks = clean_plate.masks_from_rboxes(rboxes, width_px, height_px)
    plate = clean_plate.make_plate(frames, masks, circle=circle.as_tuple(), method=method)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(plate.plate).save(out / PHOTO_FILE, quality=93)

    boxes = camera_fit.person_boxes_from_cepdof(data / "annotations.json", train_ids, standing)
    if keep_camera is not None:
        camera_json = keep_camera
        fit_report: dict[str, Any] = {"kept": "calibrated camera from --keep-camera"}
    else:
        fit = camera_fit.fit_camera(boxes, (width_px, height_px), circle, fov_range=fov_range)
        camera_json = fit.scene_camera()
        fit_report = fit.to_dict()
    # A throwaway scene with no proxies gives the camera the proxies are cast through.
    document: dict[str, Any] = {
        "format_version": 1, "name": name,
        "description": (f"{name}: clean plate and fitted camera from frames {list(train_ids)} of "
                        f"{data.name}; built by python -m blender_addon.core.cepdof_scene build"),
        "photo": PHOTO_FILE, "camera": camera_json,
        "floor": {"polygons": [[[-1, -1], [1, -1], [1, 1], [-1, 1]]]}, "furniture": [], "seats": [],
    }
    (out / SCENE_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    camera = load_scene(out).camera_for(None)
    floors, furniture = proxies_to_world(proxies, camera, width_px)
    if not floors:
        raise SceneBuildError("the proxies have no floor_px polygon: draw the floor over the plate")
    seats = seats_from_people(annotations, train_ids, camera, furniture, standing)
    document["floor"] = {"polygons": floors}
    document["furniture"] = furniture
    document["seats"] = [{k: v for k, v in s.items() if k not in ("person_id", "head_px")} for s in seats]
    # The render CLI's default people per frame: what the real frames showed.
    document["occupancy"] = occupancy_from_frames(annotations, train_ids, standing, len(seats))
    if "chairs" in proxies:
        # The plate removed the chairs with their sitters: the renderer puts them back.
        document["chairs"] = proxies["chairs"]
    document["build_report"] = {
        "train_frames": list(train_ids),
        "plate": plate.report,
        "camera_fit": fit_report,
        "seat_people": {s["name"]: {"person_id": s["person_id"], "head_px": s["head_px"]} for s in seats},
    }
    (out / SCENE_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return load_scene(out)  # validates everything


# ---------------------------------------------------------------------------------------------
# Size check.



def compare_sizes(real: np.ndarray, rendered: np.ndarray, bands: Sequence[float] = camera_fit.RADIAL_BANDS,
                  tolerance: float = 0.15, min_people: int = 3) -> dict[str, Any]:
    """Per radial band, median box length, width and size (sqrt(length * width)) of rendered
    vs real people. ``real``/``rendered``: rows of (radius / R, length, width), both in the same
    pixel scale; ``real`` may carry a 4th column, the person id. A band passes when its median
    size is within ``tolerance`` of the real one. A band is judged only with at least
    ``min_people`` *different* real people (the same person in five frames is one sample) and
    ``min_people`` rendered boxes; the others are reported, not judged."""
    rows = []
    passed = True
    for lo, hi in itertools.pairwise(bands):
        r = real[(real[:, 0] >= lo) & (real[:, 0] < hi)] if len(real) else real
        s = rendered[(rendered[:, 0] >= lo) & (rendered[:, 0] < hi)] if len(rendered) else rendered
        row: dict[str, Any] = {"band": f"{lo:.2f}-{hi:.2f} R", "real": len(r), "rendered": len(s)}
        if len(r) and len(s):
            for key, col in (("length", 1), ("width", 2)):
                row[f"real_{key}_px"] = round(float(np.median(r[:, col])), 1)
                row[f"rendered_{key}_px"] = round(float(np.median(s[:, col])), 1)
                row[f"{key}_error"] = round(float(np.median(s[:, col]) / np.median(r[:, col]) - 1), 4)
            real_size = float(np.median(np.sqrt(r[:, 1] * r[:, 2])))
            ren_size = float(np.median(np.sqrt(s[:, 1] * s[:, 2])))
            row["real_size_px"], row["rendered_size_px"] = round(real_size, 1), round(ren_size, 1)
            row["size_error"] = round(ren_size / real_size - 1, 4)
            people = len(np.unique(r[:, 3])) if r.shape[1] > 3 else len(r)
            row["real_people"] = int(people)
            judged = people >= min_people and len(s) >= min_people
            row["judged"] = judged
            row["pass"] = (abs(row["size_error"]) <= tolerance) if judged else None
            if judged and not row["pass"]:
                passed = False
        rows.append(row)
    judged_any = any(row.get("judged") for row in rows)
    return {"bands": rows, "tolerance": tolerance, "pass": bool(passed and judged_any)}


def real_box_rows(annotations: dict[str, Any], ids: Sequence[str], centre: tuple[float, float],
                  radius: float) -> np.ndarray:
    rows = []
    for entry in annotations["annotations"]:
        if str(entry["image_id"]) in set(ids):
            cx, cy, w, h, _ = (float(v) for v in entry["bbox"])
            person = entry.get("person_id")
            rows.append((math.hypot(cx - centre[0], cy - centre[1]) / radius, max(w, h), min(w, h),
                         -1 - len(rows) if person is None else int(person)))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def rendered_box_rows(render_dir: Path, centre: tuple[float, float], radius: float, scale: float,
                      min_visibility: float = 0.0) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Rendered rotated boxes as (radius / R, length, width) rows in photo pixels, and the
    sitting people's rendered heads with their seats."""
    rows, heads = [], []
    for path in sorted((render_dir / "frames").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        people = {p["pass_index"]: p for p in record["manifest"]["recipe"]["people"]}
        for a in record["annotations"]:
            if a.get("visibility", 1.0) < min_visibility:
                continue
            cx, cy, w, h, _ = (float(v) * (scale if i < 4 else 1.0) for i, v in enumerate(a["rbox"]))
            rows.append((math.hypot(cx - centre[0], cy - centre[1]) / radius, max(w, h), min(w, h)))
            person = people.get(a["instance_id"], {})
            if person.get("seat"):
                heads.append({"frame": record["index"], "seat": person["seat"],
                              "head_px": [float(a["head_point"][0]) * scale, float(a["head_point"][1]) * scale],
                              "box_length_px": max(w, h)})
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3), heads


def size_check(scene_dir: str | Path, data: str | Path, render_dir: str | Path, *, count: int = 4,
               resolution: int = 512, seed: int = 0, real_ids: Sequence[str] | None = None,
               render: bool = True, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Render ``count`` frames of the scene (only sitting people, as in the real frames) and
    compare box sizes per radial band and heads per seat with the real annotations."""
    scene_dir, data, render_dir = Path(scene_dir), Path(data), Path(render_dir)
    scene = load_scene(scene_dir)
    document = json.loads((scene_dir / SCENE_FILE).read_text(encoding="utf-8"))
    seat_people = document.get("build_report", {}).get("seat_people", {})
    n_seats = len(scene.seats)
    if render:
        command = [sys.executable, "-m", "blender_addon.bl.cli_entry", "--scene", str(scene_dir),
                   "--count", str(count), "--seed", str(seed), "--preset", "fast",
                   "--resolution", str(resolution), "--sitting", f"{max(1, n_seats - 2)},{n_seats}",
                   "--standing", "0,0", "--out", str(render_dir), "--no-progress",
                   "--contact-sheet", str(render_dir / "contact_sheet.jpg"), *extra_args]
        completed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                                   check=False)
        if completed.returncode != 0:
            raise SceneBuildError(f"render failed ({completed.returncode}): {completed.stderr[-2000:]}")
    annotations = _load_annotations(data)
    ids = list(real_ids) if real_ids is not None else document.get("build_report", {}).get(
        "train_frames") or lunch3_ids("train")
    circle = document.get("build_report", {}).get("camera_fit", {}).get("circle")
    centre = scene.principal_point_px
    radius = float(circle["radius"]) if circle else min(scene.photo_size) / 2.0
    real = real_box_rows(annotations, ids, centre, radius)
    coco = json.loads((render_dir / "coco.json").read_text(encoding="utf-8"))
    scale = scene.photo_size[0] / float(coco["images"][0]["width"])
    rendered, heads = rendered_box_rows(render_dir, centre, radius, scale)
    result = compare_sizes(real, rendered)
    # Heads: rendered head vs the real head of the person the seat was made from.
    distances = []
    for head in heads:
        info = seat_people.get(head["seat"])
        if not info:
            continue
        d = math.hypot(head["head_px"][0] - info["head_px"][0], head["head_px"][1] - info["head_px"][1])
        distances.append({"seat": head["seat"], "distance_px": round(d, 1),
                          "relative_to_box_length": round(d / max(head["box_length_px"], 1e-6), 3)})
    result["heads"] = {
        "people": len(distances),
        "median_distance_px": round(float(np.median([d["distance_px"] for d in distances])), 1) if distances else None,
        "median_relative_to_box_length": round(float(np.median([d["relative_to_box_length"] for d in distances])), 3)
        if distances else None,
        "per_person": distances,
    }
    result.update(scene=str(scene_dir), real_frames=ids, rendered_frames=len(coco["images"]),
                  resolution=resolution, photo_px=list(scene.photo_size), circle_radius_px=radius)
    render_dir.mkdir(parents=True, exist_ok=True)
    (render_dir / "size_check.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def format_size_table(result: dict[str, Any]) -> str:
    lines = [("| band | real boxes (people) / rendered | length real -> rendered | width real -> rendered "
              "| size real -> rendered | size error | pass |"),
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["bands"]:
        if "size_error" not in row:
            lines.append(f"| {row['band']} | {row['real']} / {row['rendered']} | - | - | - | - | - |")
            continue
        verdict = {True: "yes", False: "NO", None: "not judged (too few)"}[row["pass"]]
        lines.append(
            f"| {row['band']} | {row['real']} ({row['real_people']}) / {row['rendered']} | {row['real_length_px']:.0f} -> "
            f"{row['rendered_length_px']:.0f} ({100 * row['length_error']:+.0f}%) | {row['real_width_px']:.0f} -> "
            f"{row['rendered_width_px']:.0f} ({100 * row['width_error']:+.0f}%) | {row['real_size_px']:.0f} -> "
            f"{row['rendered_size_px']:.0f} | {100 * row['size_error']:+.1f}% | {verdict} |")
    heads = result.get("heads", {})
    lines.append("")
    lines.append(f"heads: {heads.get('people')} rendered sitting people, median distance to the real "
                 f"head on the same seat {heads.get('median_distance_px')} px "
                 f"({heads.get('median_relative_to_box_length')} of the box length); "
                 f"size check {'PASSED' if result['pass'] else 'FAILED'} "
                 f"(median size within {100 * result['tolerance']:.0f}% in every judged band)")
    lines.append("a band is judged with at least 3 different real people and 3 rendered ones")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.


def main(argv: Sequence[str] | None = None) -> int:
    """Under ``protocol.cli.run_main``: one-line errors (exit 2), --debug for the traceback,
    exit 128 + N on SIGTERM/SIGINT/SIGHUP."""
    from protocol.cli import run_main

    return run_main(_main, argv, prog="cepdof_scene")


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blender_addon.core.cepdof_scene",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a scene folder from annotated frames")
    build.add_argument("--data", type=Path, default=DEFAULT_DATA,
                       help="CEPDOF-style folder (frames + annotations.json); default ../shared/data/real/cepdof_lunch3")
    build.add_argument("--out", type=Path, default=Path("out/scenes/cepdof_lunch"))
    build.add_argument("--frames", nargs="+",
                       help="image ids to build from (default: the Lunch3 train split "
                            f"{lunch3_ids('train')})")
    build.add_argument("--proxies", type=Path, default=DEFAULT_PROXIES,
                       help="floor and furniture drawn in pixels (default scenes/cepdof_lunch/proxies.json)")
    build.add_argument("--standing", type=int, nargs="*", default=[], help="person_ids that stand")
    build.add_argument("--keep-camera", type=Path,
                       help="a calibrated scene.json whose camera is used instead of fitting one")
    build.add_argument("--method", choices=clean_plate.INPAINT_METHODS, default="patchmatch")
    check = sub.add_parser("size-check", help="render the scene and compare people with the real ones")
    check.add_argument("--scene", type=Path, default=Path("out/scenes/cepdof_lunch"))
    check.add_argument("--data", type=Path, default=DEFAULT_DATA)
    check.add_argument("--render", type=Path, default=Path("out/cepdof_lunch_check"))
    check.add_argument("--count", type=int, default=4)
    check.add_argument("--resolution", type=int, default=512)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--no-render", action="store_true", help="reuse the frames already in --render")
    check.add_argument("--real-frames", nargs="+", help="real image ids to compare with (default: the build's)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            ids = args.frames or lunch3_ids("train")
            proxies = json.loads(args.proxies.read_text(encoding="utf-8"))
            keep = None
            if args.keep_camera:
                keep = json.loads(args.keep_camera.read_text(encoding="utf-8"))["camera"]
            scene = build_scene(args.data, args.out, ids, proxies, standing=args.standing,
                                keep_camera=keep, method=args.method)
            report = json.loads((args.out / SCENE_FILE).read_text(encoding="utf-8"))["build_report"]
            plate = report["plate"]
            print(f"scene {args.out}: {scene.photo_size[0]}x{scene.photo_size[1]} plate from "
                  f"{len(ids)} frames, inpainted {100 * plate['inpainted_share']:.2f}% of the image "
                  f"({100 * plate['inpainted_share_of_circle']:.2f}% of the circle) in {plate['seconds']} s; "
                  f"{len(scene.furniture)} furniture, {len(scene.seats)} seats")
            fit = report["camera_fit"]
            if "bands" in fit:
                print(f"camera: {fit['lens']}, height {fit['height_m']:.3f} m, tilt "
                      f"{[round(v, 2) for v in fit['rotation_euler_deg'][:2]]} deg")
                print(camera_fit.format_bands(camera_fit.CameraFit(**fit)))
        else:
            result = size_check(args.scene, args.data, args.render, count=args.count,
                                resolution=args.resolution, seed=args.seed, real_ids=args.real_frames,
                                render=not args.no_render)
            print(format_size_table(result))
            print(f"written {args.render / 'size_check.json'}")
            return 0 if result["pass"] else 1
    except (SceneBuildError, camera_fit.CameraFitError, clean_plate.PlateError) as exc:
        print(f"cepdof_scene: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
