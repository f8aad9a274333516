"""A stand-in "real" domain for demos and tests when no real annotated frames are available.

It imitates what a cheap ceiling camera does to a clean render: optical blur, vignetting, a
colour cast, sensor noise and JPEG compression. It is a stand-in, named as one wherever it
is used: a refiner trained against it learns this camera model, not reality.

Only the people are degraded (:func:`apply_camera_model_to_people`): the renders already sit
on a photo of the real room, and a refiner changes only the people (reinsertion blends under
their masks and leaves the background bit-identical). A stand-in that also changed the
background would put a gap there that no refiner can close, and hide the one it can.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

DEFAULT_FEATHER_PX = 1.5


@dataclass(frozen=True)
class CameraModel:
    """Parameters of the photographic degradation; ``sample`` draws one per image."""

    blur_radius: float = 1.2
    vignette_strength: float = 0.45
    colour_gain: tuple[float, float, float] = (1.08, 1.0, 0.86)
    noise_sigma: float = 6.0
    jpeg_quality: int = 45

    @classmethod
    def sample(cls, rng: np.random.Generator) -> CameraModel:
        """Jitter around a fixed warm, soft, noisy camera so the domain is consistent."""
        return cls(
            blur_radius=float(rng.uniform(0.8, 1.6)),
            vignette_strength=float(rng.uniform(0.35, 0.55)),
            colour_gain=tuple(float(g) for g in rng.normal((1.08, 1.0, 0.86), 0.02)),
            noise_sigma=float(rng.uniform(4.0, 8.0)),
            jpeg_quality=int(rng.integers(35, 56)),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def apply_camera_model(image: np.ndarray, model: CameraModel, rng: np.random.Generator) -> np.ndarray:
    """Degrade an HxWx3 uint8 image with ``model``; returns a new uint8 image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(model.blur_radius))
    pixels = np.asarray(blurred, dtype=np.float32)

    # Radial fall-off measured from the image centre, normalised to the inscribed circle.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = np.hypot((xx - (width - 1) / 2) / (width / 2), (yy - (height - 1) / 2) / (height / 2))
    vignette = 1.0 - model.vignette_strength * np.clip(radius, 0.0, 1.5) ** 2
    pixels *= vignette[..., None] * np.asarray(model.colour_gain, dtype=np.float32)
    pixels += rng.normal(0.0, model.noise_sigma, size=pixels.shape).astype(np.float32)

    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=model.jpeg_quality
    )
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def person_blend_weights(person_mask: np.ndarray, feather_px: float = DEFAULT_FEATHER_PX) -> np.ndarray:
    """Soft blending weights in [0, 1] from a person mask (HxW, any person > 0): exactly 0
    outside every person, rising from about 0.5 on a person's outline to 1 inside over a few
    pixels (a Gaussian of ``feather_px``), so the degraded people have no hard cut-out edge
    and nothing outside them moves."""
    if person_mask.ndim != 2:
        raise ValueError(f"expected an HxW person mask, got {person_mask.shape}")
    inside = person_mask > 0
    if feather_px <= 0:
        return inside.astype(np.float32)
    soft = Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(feather_px))
    return np.where(inside, np.asarray(soft, dtype=np.float32) / 255.0, 0.0).astype(np.float32)


def apply_camera_model_to_people(image: np.ndarray, person_mask: np.ndarray, model: CameraModel,
                                 rng: np.random.Generator, feather_px: float = DEFAULT_FEATHER_PX) -> np.ndarray:
    """The camera model under the people only: the whole frame is degraded with ``model``
    (so blur and vignetting see the real neighbourhood), then blended in with
    :func:`person_blend_weights`. Pixels outside every person's mask are returned unchanged."""
    if person_mask.shape != image.shape[:2]:
        raise ValueError(f"person mask {person_mask.shape} does not match the image {image.shape[:2]}")
    degraded = apply_camera_model(image, model, rng)
    weights = person_blend_weights(person_mask, feather_px)[..., None]
    blended = image.astype(np.float32) + weights * (degraded.astype(np.float32) - image.astype(np.float32))
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out[weights[..., 0] == 0] = image[weights[..., 0] == 0]
    return out
