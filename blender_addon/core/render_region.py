"""The part of a frame that rendering can change: the people and the shadows they cast.

The background of every frame is the room photo, so a pixel that neither a person nor a
person's shadow reaches comes out of compositing as the photo itself, whatever Cycles traced
there. :func:`people_region` bounds the pixels that can differ: the people's world-space
boxes (padded for contact shadows under the ambient light) and, for every light, the shadow
those boxes cast onto the floor and the furniture on the way, projected through the fisheye
camera. Rendering only that rectangle (a Cycles border render) costs a fraction of the
frame: the people of a ceiling view cover a small part of it.

A shadow is counted where it can be seen: a light's shadow at a floor point is drawn only when
that light gives at least ``min_shadow_share`` of the point's direct irradiance from the rig
(below that, blocking it darkens the photo by less than the share, under one grey level at
the default 1%). Far, faint shadows of the window or of panels across the room are left out;
near ones, under their own light, always count. Numpy only; ``bl/render.py`` applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from blender_addon.core.fisheye import FisheyeCamera
from blender_addon.core.lighting import LightingRig, facing

CONTACT_PAD_M = 0.3  # ambient occlusion and soft contact shadows reach this far past a body
MIN_SHADOW_SHARE = 0.01
MARGIN_PX_AT_1024 = 8  # pixel filter (1.5 px), motion blur and the denoiser's reach, at 1024 px
SEGMENT_STEPS = 6  # points along each occluder-to-floor ray (shadows on tables lie on it)


@dataclass(frozen=True)
class Region:
    """A rectangle of output pixels, ``x0 <= x < x1``, ``y0 <= y < y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def share_of(self, width: int, height: int) -> float:
        return self.area / float(width * height)

    def mask(self, width: int, height: int) -> np.ndarray:
        inside = np.zeros((height, width), dtype=bool)
        inside[self.y0:self.y1, self.x0:self.x1] = True
        return inside

    def to_dict(self) -> dict[str, int]:
        return {"x0": self.x0, "y0": self.y0, "x1": self.x1, "y1": self.y1}


def box_corners(low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    """The 8 corners (8, 3) of an axis-aligned box."""
    (x0, y0, z0), (x1, y1, z1) = low, high
    return np.array([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)], dtype=np.float64)


def padded(corners: np.ndarray, pad_m: float = CONTACT_PAD_M) -> np.ndarray:
    """The axis-aligned box around ``corners`` grown by ``pad_m`` sideways and down to the floor."""
    low, high = corners.min(axis=0), corners.max(axis=0)
    return box_corners((low[0] - pad_m, low[1] - pad_m, min(0.0, low[2])),
                       (high[0] + pad_m, high[1] + pad_m, high[2]))


def _light_points(rig: LightingRig) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    """Per light: its corners and centre (5, 3), its emitting direction, power and centre."""
    lights = []
    for light in rig.lights:
        rx, ry, rz = np.radians(light.rotation_deg)
        cz, sz = np.cos(rz), np.sin(rz)
        cy, sy = np.cos(ry), np.sin(ry)
        cx, sx = np.cos(rx), np.sin(rx)
        rotation = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
                    @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                    @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
        hx, hy = light.size[0] / 2.0, light.size[1] / 2.0
        local = np.array([[-hx, -hy, 0], [hx, -hy, 0], [hx, hy, 0], [-hx, hy, 0], [0, 0, 0]])
        centre = np.asarray(light.position, dtype=np.float64)
        lights.append((centre + local @ rotation.T, facing(light), light.power_w, centre))
    return lights


def _irradiance(points: np.ndarray, centre: np.ndarray, direction: np.ndarray, power: float) -> np.ndarray:
    """Direct irradiance (up to a constant) of a small Lambertian emitter on upward floor points."""
    offset = points - centre
    distance = np.maximum(np.linalg.norm(offset, axis=1), 1e-6)
    cos_light = np.clip(offset @ direction / distance, 0.0, None)
    cos_floor = np.clip(-offset[:, 2] / distance, 0.0, None)
    return power * cos_light * cos_floor / distance**2


def shadow_points(occluders: np.ndarray, rig: LightingRig | None,
                  floor_box: tuple[float, float, float, float],
                  min_share: float = MIN_SHADOW_SHARE) -> np.ndarray:
    """Points (M, 3) that bound the visible shadows ``occluders`` (N, 3) cast in ``rig``: along
    each ray from a light's corner through an occluder point down to the floor (z = 0), the
    points cut to ``floor_box`` (xmin, ymin, xmax, ymax: the room, where the catchers are)."""
    if rig is None or not rig.lights:
        return np.empty((0, 3))
    lights = _light_points(rig)
    xmin, ymin, xmax, ymax = floor_box
    found = []
    for corners, direction, power, centre in lights:
        for corner in corners:
            above = corner[2] - occluders[:, 2] > 1e-3
            if not above.any():
                continue  # light below the occluder points (a low window): no floor shadow
            points = occluders[above]
            t = corner[2] / (corner[2] - points[:, 2])  # corner + t (p - corner) reaches z = 0
            hits = corner + t[:, None] * (points - corner)
            own = _irradiance(hits, centre, direction, power)
            total = sum(_irradiance(hits, c, d, p) for _, d, p, c in lights)
            visible = own >= min_share * np.maximum(total, 1e-12)
            if not visible.any():
                continue
            # Along the true ray (furniture on the way catches it too), then cut to the room.
            steps = np.linspace(0.0, 1.0, SEGMENT_STEPS)[:, None, None]
            segment = (points[visible] + steps * (hits[visible] - points[visible])).reshape(-1, 3)
            segment[:, 0] = np.clip(segment[:, 0], xmin, xmax)
            segment[:, 1] = np.clip(segment[:, 1], ymin, ymax)
            found.append(segment)
    return np.concatenate(found) if found else np.empty((0, 3))


def people_region(camera: FisheyeCamera, people_boxes: Sequence[np.ndarray], rig: LightingRig | None,
                  floor_polygons: Sequence[Sequence[Sequence[float]]],
                  min_shadow_share: float = MIN_SHADOW_SHARE,
                  margin_px: float | None = None) -> Region | None:
    """The output rectangle that holds every pixel the people and their visible shadows can
    change, or None when there are no people (nothing to render: the frame is the photo).
    ``people_boxes``: each person's world-space box corners (8, 3), e.g. from Blender's
    evaluated bounding boxes."""
    if not people_boxes:
        return None
    floor = np.asarray([p for polygon in floor_polygons for p in polygon], dtype=np.float64)
    floor_box = (float(floor[:, 0].min()), float(floor[:, 1].min()),
                 float(floor[:, 0].max()), float(floor[:, 1].max()))
    occluders = np.concatenate([padded(np.asarray(box, dtype=np.float64)) for box in people_boxes])
    # The boxes' faces too, not only their corners: straight edges bulge in a fisheye image.
    faces = [_face_grid(box) for box in np.split(occluders, len(people_boxes))]
    points = np.concatenate([occluders, *faces, shadow_points(occluders, rig, floor_box, min_shadow_share)])
    pixels, _ = camera.project(points)
    pixels = pixels[np.isfinite(pixels).all(axis=1)]
    margin = MARGIN_PX_AT_1024 * max(camera.width, camera.height) / 1024.0 if margin_px is None else margin_px
    x0 = int(np.clip(np.floor(pixels[:, 0].min() - margin), 0, camera.width))
    y0 = int(np.clip(np.floor(pixels[:, 1].min() - margin), 0, camera.height))
    x1 = int(np.clip(np.ceil(pixels[:, 0].max() + margin), 0, camera.width))
    y1 = int(np.clip(np.ceil(pixels[:, 1].max() + margin), 0, camera.height))
    if x1 <= x0 or y1 <= y0:
        return None
    return Region(x0, y0, x1, y1)


def _face_grid(corners: np.ndarray, steps: int = 5) -> np.ndarray:
    """Points on a grid over the faces of the box spanned by ``corners``."""
    low, high = corners.min(axis=0), corners.max(axis=0)
    axes = [np.linspace(low[i], high[i], steps) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    on_face = ((np.isclose(grid, low) | np.isclose(grid, high)).any(axis=1))
    return grid[on_face]


__all__ = ["Region", "box_corners", "padded", "people_region", "shadow_points"]
