"""Saving a scene an artist edited, and drawing its proxies over the photo to line them up.

``core.scene_format`` loads and validates scenes; this module writes them back. The artist
edits furniture boxes, the floor region and seats; the camera calibration and any fields this
module does not know (``description``, future keys) are kept exactly as they were, and the
written file is validated with ``load_scene`` before it replaces the old one.

``alignment_overlay`` projects the proxies through the calibrated fisheye lens onto the photo
(the same projection Cycles renders with), so furniture can be lined up with the photo even
where the viewport cannot draw a fisheye camera.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from blender_addon.core.scene_format import (
    SCENE_FILE,
    FurnitureProxy,
    SceneFormatError,
    SceneSpec,
    Seat,
    load_scene,
)
from protocol.fileio import atomic_write_bytes, atomic_write_text


def furniture_to_json(item: FurnitureProxy) -> dict[str, Any]:
    return {"name": item.name, "center": [round(float(v), 5) for v in item.center],
            "size": [round(float(v), 5) for v in item.size], "yaw_deg": round(float(item.yaw_deg), 4),
            "holdout": bool(item.holdout), "obstacle": bool(item.obstacle)}


def seat_to_json(seat: Seat) -> dict[str, Any]:
    return {"name": seat.name, "position": [round(float(v), 5) for v in seat.position],
            "height_m": round(float(seat.height_m), 5), "facing_deg": round(float(seat.facing_deg), 4),
            "facing_jitter_deg": round(float(seat.facing_jitter_deg), 4)}


def updated_document(original: dict[str, Any], furniture: Sequence[FurnitureProxy],
                     floor_polygons: Sequence[Sequence[tuple[float, float]]],
                     seats: Sequence[Seat]) -> dict[str, Any]:
    """``original`` (a parsed scene.json) with its proxies replaced; everything else kept."""
    names = [f.name for f in furniture] + [s.name for s in seats]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SceneFormatError(f"proxy names must be unique, these repeat: {duplicates}; rename them")
    document = dict(original)
    document["floor"] = {**original.get("floor", {}), "polygons": [
        [[round(float(x), 5), round(float(y), 5)] for x, y in polygon] for polygon in floor_polygons]}
    document["furniture"] = [furniture_to_json(f) for f in furniture]
    document["seats"] = [seat_to_json(s) for s in seats]
    return document


def save_scene(folder: str | Path, furniture: Sequence[FurnitureProxy],
               floor_polygons: Sequence[Sequence[tuple[float, float]]], seats: Sequence[Seat]) -> SceneSpec:
    """Write the edited proxies into ``folder/scene.json`` atomically; returns the reloaded scene.

    If the result does not validate, the previous file is restored and the error re-raised.
    """
    path = Path(folder) / SCENE_FILE
    if not path.is_file():
        raise SceneFormatError(f"{path} not found: save into a scene folder that was loaded")
    before = path.read_bytes()
    document = updated_document(json.loads(before), furniture, floor_polygons, seats)
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    try:
        return load_scene(folder)
    except SceneFormatError:
        atomic_write_bytes(path, before)
        raise


def write_working_copy(source: str | Path, destination: str | Path, furniture: Sequence[FurnitureProxy],
                       floor_polygons: Sequence[Sequence[tuple[float, float]]], seats: Sequence[Seat]) -> SceneSpec:
    """A scene folder with unsaved edits, for preview renders; the photo stays where it is."""
    original_path = Path(source) / SCENE_FILE
    original = json.loads(original_path.read_text(encoding="utf-8"))
    document = updated_document(original, furniture, floor_polygons, seats)
    document["photo"] = str((Path(source) / original["photo"]).resolve())
    atomic_write_text(Path(destination) / SCENE_FILE, json.dumps(document, indent=2) + "\n")
    return load_scene(destination)


# ---------------------------------------------------------------------------------------------
# Alignment overlay.


def _box_corners(item: FurnitureProxy) -> np.ndarray:
    sx, sy, sz = (s / 2.0 for s in item.size)
    local = np.array([[-sx, -sy, -sz], [sx, -sy, -sz], [sx, sy, -sz], [-sx, sy, -sz],
                      [-sx, -sy, sz], [sx, -sy, sz], [sx, sy, sz], [-sx, sy, sz]])
    yaw = np.radians(item.yaw_deg)
    rot = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    return local @ rot.T + np.asarray(item.center, dtype=np.float64)


_BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4),
              (0, 4), (1, 5), (2, 6), (3, 7))


def _sampled_segment(a: np.ndarray, b: np.ndarray, steps: int = 24) -> np.ndarray:
    # Straight 3D edges are curves in a fisheye image: project many points along them.
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return a[None, :] * (1 - t) + b[None, :] * t


def proxy_polylines(scene: SceneSpec, long_side: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Every proxy edge as (kind, (K, 2) output pixels), projected like Cycles renders it."""
    camera = scene.camera_for(long_side)
    settings = camera.cycles_settings()
    lines: list[tuple[str, np.ndarray]] = []
    for item in scene.furniture:
        corners = _box_corners(item)
        kind = "holdout" if item.holdout else "obstacle"
        for i, j in _BOX_EDGES:
            pixels, _visible = camera.project(_sampled_segment(corners[i], corners[j]), settings)
            lines.append((kind, pixels))
    for polygon in scene.floor_polygons:
        points = [np.array([x, y, 0.0]) for x, y in polygon]
        for a, b in zip(points, points[1:] + points[:1]):
            lines.append(("floor", camera.project(_sampled_segment(a, b), settings)[0]))
    for seat in scene.seats:
        centre = np.array([seat.position[0], seat.position[1], seat.height_m])
        angles = np.linspace(0, 2 * np.pi, 25)
        ring = centre + 0.2 * np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
        lines.append(("seat", camera.project(ring, settings)[0]))
        tip = centre + 0.35 * np.array([np.cos(np.radians(seat.facing_deg)),
                                        np.sin(np.radians(seat.facing_deg)), 0.0])
        lines.append(("seat", camera.project(_sampled_segment(centre, tip, 6), settings)[0]))
    return lines


OVERLAY_COLOURS = {"holdout": (255, 80, 40), "obstacle": (255, 200, 0), "floor": (40, 160, 255),
                   "seat": (60, 230, 90)}


def alignment_overlay(scene: SceneSpec, long_side: int | None = 1024) -> np.ndarray:
    """The scene photo at the output size with every proxy drawn through the fisheye lens."""
    camera = scene.camera_for(long_side)
    with Image.open(scene.photo_path) as photo:
        canvas = photo.convert("RGB").resize((camera.width, camera.height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(camera.width, camera.height) / 512))
    for kind, pixels in proxy_polylines(scene, long_side):
        finite = pixels[np.all(np.isfinite(pixels), axis=1)]
        if len(finite) >= 2:
            draw.line([tuple(map(float, p)) for p in finite], fill=OVERLAY_COLOURS[kind], width=width)
    return np.asarray(canvas)
