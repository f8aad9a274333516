"""Fisheye lens models and the exact projection Cycles uses, in numpy.

A ceiling sensor's lens is described in pixel terms at the photo's native resolution
(``LensModel``): the radius ``r_px`` at which a ray ``theta`` radians off the optical axis lands.
``FisheyeCamera`` adds the image size, principal point and mounting pose, and derives two
things from the same numbers:

* ``cycles_settings()``: the Blender camera that renders it (panorama type, ``fisheye_fov``,
  ``fisheye_lens``, ``fisheye_polynomial_k0..k4``, sensor width, render canvas and crop);
* ``project(points)``: world points to pixel coordinates through *the Cycles mapping*, so a
  head point lands exactly where Cycles draws the head.

Cycles' mappings (``intern/cycles/kernel/camera/projection.h``), with u, v in [0, 1] per axis:

* equidistant: radius in u,v units ``= theta / fisheye_fov``;
* equisolid: ``r_mm = 2 fisheye_lens sin(theta / 2)``, ``u = r_mm cos(phi) / sensor_w + 0.5``;
* lens polynomial: ``theta = -(k0 + k1 r + k2 r^2 + k3 r^3 + k4 r^4)``, r in sensor mm; rays with
  ``|theta| > fisheye_fov / 2`` are not traced.

Because u and v are normalised separately, the camera here always renders a *square canvas*
centred on the principal point (then crops to the photo), so the image circle stays round.

Pixel convention: continuous coordinates, (0, 0) is the top-left corner of the top-left
pixel, pixel centres sit at ``i + 0.5`` (COCO). OpenCV calibrations use integer pixel
centres, so their ``cx, cy`` need ``+ 0.5`` (``LensModel.from_opencv_fisheye`` does that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The Cycles camera's sensor width on the render canvas. Any value works (polynomial and
# equisolid parameters are converted to it); 36 mm is Blender's default.
CANVAS_SENSOR_MM = 36.0

LENS_KINDS = ("equidistant", "equisolid", "kannala_brandt", "cycles_polynomial")


class FisheyeError(ValueError):
    """A lens or camera description that cannot be rendered or projected."""


def _check_kind(kind: str) -> None:
    if kind not in LENS_KINDS:
        raise FisheyeError(f"unknown lens model {kind!r}; valid models: {', '.join(LENS_KINDS)}")


@dataclass(frozen=True)
class LensModel:
    """A radially symmetric fisheye lens at the photo's native resolution.

    kind:
        ``equidistant`` (``r = f theta``), ``equisolid`` (``r = 2 f sin(theta / 2)``),
        ``kannala_brandt`` (OpenCV fisheye: ``r = f (theta + k1 theta^3 + ... + k4 theta^9)``)
        or ``cycles_polynomial`` (Blender's own ``theta = -(k0 + k1 r + ... + k4 r^4)`` with
        r in millimetres on a sensor ``sensor_mm`` wide that spans the photo's width).
    focal_px: f in pixels (not used by ``cycles_polynomial``).
    coefficients: k1..k4 for ``kannala_brandt``; k0..k4 for ``cycles_polynomial``.
    fov_deg: the full field of view of the image circle; rays beyond half of it are black.
    """

    kind: str
    focal_px: float = 0.0
    coefficients: tuple[float, ...] = ()
    fov_deg: float = 180.0
    sensor_mm: float = CANVAS_SENSOR_MM

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if not 1.0 <= self.fov_deg <= 360.0:
            raise FisheyeError(f"fov_deg must be in [1, 360], got {self.fov_deg}")
        if self.kind == "cycles_polynomial":
            if len(self.coefficients) != 5:
                raise FisheyeError(
                    f"cycles_polynomial needs 5 coefficients k0..k4, got {len(self.coefficients)}"
                )
            if self.sensor_mm <= 0:
                raise FisheyeError(f"sensor_mm must be > 0, got {self.sensor_mm}")
            if self.coefficients[1] >= 0:
                raise FisheyeError(
                    "cycles_polynomial k1 must be negative (Cycles uses theta = -(k0 + k1 r ...)); "
                    f"got k1={self.coefficients[1]}"
                )
        else:
            if not self.focal_px > 0:
                raise FisheyeError(f"focal_px must be > 0 for {self.kind}, got {self.focal_px}")
            expected = 4 if self.kind == "kannala_brandt" else 0
            if len(self.coefficients) != expected:
                raise FisheyeError(
                    f"{self.kind} takes {expected} coefficients, got {len(self.coefficients)}"
                )

    @property
    def half_fov_rad(self) -> float:
        return math.radians(self.fov_deg) / 2.0

    @staticmethod
    def from_opencv_fisheye(
        fx: float, fy: float, k: tuple[float, float, float, float], fov_deg: float = 180.0
    ) -> LensModel:
        """An OpenCV ``cv2.fisheye`` calibration (K, D). Needs square pixels (fx ~ fy)."""
        if abs(fx - fy) > 0.01 * max(fx, fy):
            raise FisheyeError(
                f"fx={fx} and fy={fy} differ by more than 1%: non-square pixels are not "
                "supported; resample the photo to square pixels first"
            )
        return LensModel("kannala_brandt", (fx + fy) / 2.0, tuple(float(v) for v in k), fov_deg)

    def radius_px(self, theta: np.ndarray, width_px: float) -> np.ndarray:
        """The *true* lens: radius in native pixels for angles ``theta`` (radians).

        ``width_px`` is the photo width, needed only by ``cycles_polynomial`` (its millimetres
        are relative to the photo width).
        """
        theta = np.asarray(theta, dtype=np.float64)
        if self.kind == "equidistant":
            return self.focal_px * theta
        if self.kind == "equisolid":
            return 2.0 * self.focal_px * np.sin(theta / 2.0)
        if self.kind == "kannala_brandt":
            k1, k2, k3, k4 = self.coefficients
            t2 = theta * theta
            return self.focal_px * theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        poly = _CyclesPolynomial(tuple(self.coefficients))
        return poly.radius(theta) * width_px / self.sensor_mm

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "focal_px": self.focal_px,
            "coefficients": list(self.coefficients),
            "fov_deg": self.fov_deg,
            "sensor_mm": self.sensor_mm,
        }


@dataclass(frozen=True)
class _CyclesPolynomial:
    """``theta(r) = -(k0 + k1 r + k2 r^2 + k3 r^3 + k4 r^4)`` and its inverse, r in mm."""

    k: tuple[float, ...]

    def theta(self, r: np.ndarray) -> np.ndarray:
        k0, k1, k2, k3, k4 = self.k
        return -(k0 + r * (k1 + r * (k2 + r * (k3 + r * k4))))

    def dtheta(self, r: np.ndarray) -> np.ndarray:
        _, k1, k2, k3, k4 = self.k
        return -(k1 + r * (2 * k2 + r * (3 * k3 + r * 4 * k4)))

    def radius(self, theta: np.ndarray) -> np.ndarray:
        """Solve ``theta(r) = theta`` by Newton's method (Cycles renders with ``theta(r)``)."""
        theta = np.asarray(theta, dtype=np.float64)
        r = (theta + self.k[0]) / -self.k[1]  # the linear term's answer is a close start
        for _ in range(60):
            step = (self.theta(r) - theta) / self.dtheta(r)
            r = r - step
            if np.all(np.abs(step) < 1e-12):
                break
        return r


def fit_cycles_polynomial(
    lens: LensModel, width_px: float, canvas_px: float, samples: int = 400
) -> tuple[tuple[float, float, float, float, float], dict[str, float]]:
    """Fit Cycles' ``theta(r_mm)`` quartic to ``lens`` on a canvas ``canvas_px`` wide.

    The canvas maps onto a ``CANVAS_SENSOR_MM`` sensor. ``k0`` is fixed at 0 (the optical
    axis maps to the centre). Returns (k0..k4, report) where the report gives the fit error
    in native pixels (max and RMS over the image circle) as measured by projecting through
    the fitted polynomial, exactly as rendered.
    """
    theta = np.linspace(0.0, lens.half_fov_rad, samples)
    r_px = lens.radius_px(theta, width_px)
    if np.any(np.diff(r_px) <= 0):
        raise FisheyeError(
            f"lens {lens.kind} is not monotonic up to fov {lens.fov_deg} deg (radius shrinks "
            "with angle); reduce fov_deg to the calibrated range"
        )
    mm_per_px = CANVAS_SENSOR_MM / canvas_px
    r_mm = r_px * mm_per_px
    # Weighted least squares on theta; the pixel error is checked below through the inverse.
    design = np.stack([r_mm, r_mm**2, r_mm**3, r_mm**4], axis=1)
    solution, *_ = np.linalg.lstsq(design, theta, rcond=None)
    k = (0.0, *(-float(c) for c in solution))
    poly = _CyclesPolynomial(k)
    dense_r = np.linspace(0.0, r_mm[-1] * 1.02, 2000)
    if np.any(np.diff(poly.theta(dense_r)) <= 0):
        raise FisheyeError(
            "the Cycles polynomial fitted to this lens is not monotonic over the image circle; "
            "reduce fov_deg to the calibrated range"
        )
    error_px = np.abs(poly.radius(theta) / mm_per_px - r_px)
    report = {
        "max_error_px": float(error_px.max()),
        "rms_error_px": float(np.sqrt(np.mean(error_px**2))),
        "fit_range_deg": float(np.degrees(theta[-1])),
    }
    return k, report  # type: ignore[return-value]


@dataclass(frozen=True)
class CyclesCameraSettings:
    """Everything the Blender camera and render size need to reproduce ``FisheyeCamera``."""

    panorama_type: str
    fisheye_fov: float
    fisheye_lens: float
    polynomial: tuple[float, float, float, float, float]
    sensor_width: float
    canvas_px: int
    crop_offset_px: tuple[int, int]  # (x, y) of the output image's corner on the canvas
    fit_report: dict[str, float] = field(default_factory=dict)


def blender_euler_xyz_matrix(euler_rad: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix of a Blender ``XYZ`` Euler (applied X, then Y, then Z)."""
    x, y, z = euler_rad
    cx, sx, cy, sy, cz, sz = math.cos(x), math.sin(x), math.cos(y), math.sin(y), math.cos(z), math.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class FisheyeCamera:
    """A fisheye camera producing ``width x height`` images.

    ``lens`` is given at ``native_width`` pixels (the photo's width); rendering at another
    size scales everything. ``principal_point`` is in output pixels (continuous convention).
    The camera sits at ``position`` (metres, Z up) rotated by ``rotation_euler_deg`` (Blender
    XYZ); with zero rotation it looks straight down, image right = world +X, image up = +Y.
    """

    lens: LensModel
    width: int
    height: int
    principal_point: tuple[float, float]
    native_width: float
    position: tuple[float, float, float]
    rotation_euler_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise FisheyeError(f"image size {self.width}x{self.height} is too small (min 8)")

    @property
    def scale(self) -> float:
        """Output pixels per native pixel."""
        return self.width / self.native_width

    @property
    def rotation(self) -> np.ndarray:
        """World-from-camera rotation matrix."""
        return blender_euler_xyz_matrix(tuple(math.radians(a) for a in self.rotation_euler_deg))

    def canvas(self) -> tuple[int, tuple[int, int]]:
        """Square render canvas centred on the principal point, and the output's offset on it."""
        cx, cy = self.principal_point
        half = max(cx, self.width - cx, cy, self.height - cy)
        canvas = int(2 * math.ceil(half))
        return canvas, (round(canvas / 2 - cx), round(canvas / 2 - cy))

    def effective_principal_point(self) -> tuple[float, float]:
        """Where Cycles puts the optical axis in output pixels (after whole-pixel cropping)."""
        canvas, (ox, oy) = self.canvas()
        return canvas / 2 - ox, canvas / 2 - oy

    def cycles_settings(self) -> CyclesCameraSettings:
        canvas, offset = self.canvas()
        lens = self.lens
        none5 = (0.0, 0.0, 0.0, 0.0, 0.0)
        if lens.kind == "equidistant":
            # r_px = theta / fov * canvas, and r_px = f * theta at output scale.
            fov = canvas / (lens.focal_px * self.scale)
            if fov > 2 * math.pi:
                raise FisheyeError(
                    f"equidistant focal_px={lens.focal_px} needs fisheye_fov={math.degrees(fov):.0f}"
                    " deg over the render canvas, more than Blender's 360; raise focal_px"
                )
            return CyclesCameraSettings("FISHEYE_EQUIDISTANT", fov, 10.0, none5,
                                        CANVAS_SENSOR_MM, canvas, offset)
        if lens.kind == "equisolid":
            lens_mm = lens.focal_px * self.scale * CANVAS_SENSOR_MM / canvas
            return CyclesCameraSettings("FISHEYE_EQUISOLID", math.radians(lens.fov_deg), lens_mm,
                                        none5, CANVAS_SENSOR_MM, canvas, offset)
        if lens.kind == "cycles_polynomial":
            # Their millimetres span the native width; ours span the canvas: r_theirs = c r_ours.
            c = (lens.sensor_mm / self.native_width) * (canvas / self.scale) / CANVAS_SENSOR_MM
            k = tuple(float(coef) * c**i for i, coef in enumerate(lens.coefficients))
            return CyclesCameraSettings("FISHEYE_LENS_POLYNOMIAL", math.radians(lens.fov_deg),
                                        10.0, k, CANVAS_SENSOR_MM, canvas, offset)  # type: ignore[arg-type]
        k, report = fit_cycles_polynomial(lens, self.native_width, canvas / self.scale)
        return CyclesCameraSettings("FISHEYE_LENS_POLYNOMIAL", math.radians(lens.fov_deg), 10.0,
                                    k, CANVAS_SENSOR_MM, canvas, offset, report)

    def _radius_canvas_px(self, theta: np.ndarray, settings: CyclesCameraSettings) -> np.ndarray:
        """Radius on the render canvas (output pixels) at which Cycles draws angle theta."""
        canvas = settings.canvas_px
        if settings.panorama_type == "FISHEYE_EQUIDISTANT":
            return theta / settings.fisheye_fov * canvas
        if settings.panorama_type == "FISHEYE_EQUISOLID":
            r_mm = 2.0 * settings.fisheye_lens * np.sin(theta / 2.0)
            return r_mm / settings.sensor_width * canvas
        r_mm = _CyclesPolynomial(settings.polynomial).radius(theta)
        return r_mm / settings.sensor_width * canvas

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return (points - np.asarray(self.position)) @ self.rotation  # R^T (p - c), row form

    def project(
        self, points: np.ndarray, settings: CyclesCameraSettings | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) to output pixels (N, 2) exactly as Cycles renders them.

        Returns (pixels, visible) where ``visible`` is False for points Cycles does not trace
        (outside the image circle) or that fall outside the output image.
        """
        settings = settings or self.cycles_settings()
        cam = self.world_to_camera(points)
        # Blender cameras look down local -Z with +X right and +Y up in the image.
        theta = np.arctan2(np.hypot(cam[:, 0], cam[:, 1]), -cam[:, 2])
        phi = np.arctan2(cam[:, 1], cam[:, 0])
        radius = self._radius_canvas_px(theta, settings)
        half = settings.canvas_px / 2.0
        ox, oy = settings.crop_offset_px
        x = half + radius * np.cos(phi) - ox
        y = half - radius * np.sin(phi) - oy
        pixels = np.stack([x, y], axis=1)
        inside_circle = theta <= settings.fisheye_fov / 2.0 + 1e-12
        inside_image = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height)
        return pixels, inside_circle & inside_image & np.isfinite(radius)

    def pixel_rays(self, pixels: np.ndarray) -> np.ndarray:
        """World directions (N, 3, unit) of rays through output pixels: the inverse mapping."""
        theta, phi = self._pixel_angles(pixels, self.cycles_settings())
        cam = np.stack(
            [np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), -np.cos(theta)], axis=1
        )
        return cam @ self.rotation.T

    def traced(self) -> np.ndarray:
        """(H, W) bool: output pixels whose centre's ray Cycles traces (inside the image
        circle). Outside it every render pass is empty, shadow catcher included."""
        settings = self.cycles_settings()
        ys, xs = np.mgrid[0:self.height, 0:self.width]
        centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
        theta, _ = self._pixel_angles(centres, settings)
        # |theta|: a lens polynomial can map the rim to negative angles, which Cycles skips too.
        return (np.abs(theta) <= settings.fisheye_fov / 2.0 + 1e-12).reshape(self.height, self.width)

    def _pixel_angles(self, pixels: np.ndarray, settings: CyclesCameraSettings) -> tuple[np.ndarray, np.ndarray]:
        """Off-axis angle theta and azimuth phi (camera frame) of output pixels' rays."""
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        half = settings.canvas_px / 2.0
        ox, oy = settings.crop_offset_px
        dx = pixels[:, 0] + ox - half
        dy = half - (pixels[:, 1] + oy)
        radius = np.hypot(dx, dy)
        mm = radius / settings.canvas_px * settings.sensor_width
        if settings.panorama_type == "FISHEYE_EQUIDISTANT":
            theta = radius / settings.canvas_px * settings.fisheye_fov
        elif settings.panorama_type == "FISHEYE_EQUISOLID":
            theta = 2.0 * np.arcsin(np.clip(mm / (2.0 * settings.fisheye_lens), -1, 1))
        else:
            theta = _CyclesPolynomial(settings.polynomial).theta(mm)
        return theta, np.arctan2(dy, dx)

    def to_dict(self) -> dict[str, Any]:
        settings = self.cycles_settings()
        return {
            "lens": self.lens.to_dict(),
            "width": self.width,
            "height": self.height,
            "principal_point": list(self.effective_principal_point()),
            "native_width": self.native_width,
            "position": list(self.position),
            "rotation_euler_deg": list(self.rotation_euler_deg),
            "cycles": {
                "panorama_type": settings.panorama_type,
                "fisheye_fov": settings.fisheye_fov,
                "fisheye_lens": settings.fisheye_lens,
                "polynomial": list(settings.polynomial),
                "sensor_width": settings.sensor_width,
                "canvas_px": settings.canvas_px,
                "crop_offset_px": list(settings.crop_offset_px),
                "fit_report": settings.fit_report,
            },
        }
