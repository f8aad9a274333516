"""The real camera's look, applied to the rendered people of a frame.

A rendered frame is a photo of the room with people composited over it. The photo already went
through the real camera: its white balance and exposure, the lens's darker edges, a little
optical blur, sensor noise and JPEG compression. The rendered people went through none of it,
which is one more way to tell them from real people. This module measures the real camera from
its frames (:func:`measure_profile`) and gives the people the same treatment, weighted by their
coverage so that the photo is not degraded twice (:func:`apply_sensor`), in the camera's order:

1. white balance and exposure: the people's linear light is tinted toward the photo's grey-world
   colour cast and scaled by a small exposure error;
2. vignetting: the people darken with distance from the image centre as ``1 - k (r / R)^2``;
3. optical blur: a Gaussian of ``blur_sigma_px`` over the people and the band around their edges;
4. sensor noise: Gaussian noise of the measured strength on the people's pixels;
5. JPEG: the whole frame is encoded at the camera's quality and decoded again. Re-encoding the
   photo's pixels at the quality they were saved with changes them little; the people get
   the blocking and ringing the real people have.

Each frame draws its own :class:`SensorRecipe` from its seed; the recipe goes into the frame's
manifest. Pure numpy, scipy and Pillow, so the same code post-processes an existing dataset::

    python -m blender_addon.core.camera_sensor measure ../shared/data/real/cepdof_lunch3/Lunch3_00000[1-5].jpg \\
        --out out/lunch3_sensor.json
    python -m blender_addon.core.camera_sensor apply out/S_lunch3 --profile out/lunch3_sensor.json \\
        --out out/S_lunch3_sensor
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from blender_addon.core.dataset import linear_to_srgb, srgb_to_linear
from protocol.cli import CliError, run_main
from protocol.fileio import atomic_write_bytes, atomic_write_json

PROFILE_FORMAT = "fisheye-synth sensor profile v1"
SENSOR_STREAM = 0x5E45  # the seed stream of sensor draws, apart from the frame's other draws

# The IJG quality-50 luminance quantisation table (ITU T.81, Annex K), for quality estimates.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=float)


@dataclass(frozen=True)
class SensorProfile:
    """What was measured on the real camera's frames."""

    noise_sigma: float  # sensor noise, in 8-bit sRGB levels, on flat regions
    jpeg_quality: int | None  # IJG quality of the frames' luminance table; None: not JPEG
    grey_world: tuple[float, float, float]  # mean linear RGB over the frames, normalised to mean 1
    frames: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensorProfile:
        if data.get("format") != PROFILE_FORMAT:
            raise CliError(f"not a sensor profile (format {data.get('format')!r}, expected "
                           f"{PROFILE_FORMAT!r}); make one with 'camera_sensor measure FRAMES --out FILE'")
        grey = tuple(float(v) for v in data["grey_world"])
        if len(grey) != 3 or min(grey) <= 0:
            raise CliError(f"sensor profile grey_world must be 3 positive numbers, got {data['grey_world']}")
        quality = data.get("jpeg_quality")
        if quality is not None and not 1 <= int(quality) <= 100:
            raise CliError(f"sensor profile jpeg_quality must be 1-100 or null, got {quality}")
        return cls(float(data["noise_sigma"]), None if quality is None else int(quality),
                   grey, int(data.get("frames", 1)))  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> SensorProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise CliError(f"sensor profile {path} not found; make one with "
                           "'python -m blender_addon.core.camera_sensor measure FRAMES --out FILE'") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROFILE_FORMAT, **asdict(self)}


@dataclass(frozen=True)
class SensorRecipe:
    """One frame's draw of the camera effects (recorded in the frame's manifest)."""

    exposure: float  # multiplies the people's linear light
    white_balance: tuple[float, float, float]  # per-channel gains on the people's linear light
    vignetting: float  # k in 1 - k (r / R)^2, R the half diagonal
    blur_sigma_px: float
    noise_sigma: float  # 8-bit levels
    jpeg_quality: int | None

    @classmethod
    def sample(cls, profile: SensorProfile, seed: int) -> SensorRecipe:
        """Effects around the measured camera: a white balance part of the way toward the photo's
        cast (real cameras correct some of the light's colour, not all), a small exposure error,
        lens falloff and blur in the range of small fisheye modules, noise near the measured."""
        rng = np.random.default_rng([seed, SENSOR_STREAM])
        strength = rng.uniform(0.25, 0.75)
        gains = np.asarray(profile.grey_world) ** strength
        gains = gains / float(gains @ np.array([0.2126, 0.7152, 0.0722]))  # keep luminance
        return cls(exposure=round(float(np.exp(rng.normal(0.0, 0.1))), 4),
                   white_balance=tuple(round(float(g), 4) for g in gains),  # type: ignore[arg-type]
                   vignetting=round(float(rng.uniform(0.1, 0.3)), 4),
                   blur_sigma_px=round(float(rng.uniform(0.3, 0.8)), 4),
                   noise_sigma=round(float(profile.noise_sigma * rng.uniform(0.8, 1.2)), 4),
                   jpeg_quality=profile.jpeg_quality)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- measuring


def noise_sigma(grey: np.ndarray) -> float:
    """Immerkaer's (1996) noise estimate on the flattest half of the image: the mean absolute
    response to a Laplacian-difference kernel that cancels planes, scaled to a Gaussian sigma.
    Texture and edges read as noise, so only pixels with a weak gradient count, and clipped
    pixels (the black outside a fisheye's image circle, blown highlights) carry no noise."""
    grey = grey.astype(np.float64)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = np.abs(ndimage.convolve(grey, kernel, mode="reflect"))[1:-1, 1:-1]
    gradient = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))[1:-1, 1:-1]
    valid = ndimage.minimum_filter((grey > 8) & (grey < 247), size=3)[1:-1, 1:-1]
    if valid.sum() < 64:
        raise CliError("the frame is almost all black or white: nothing to measure noise on")
    flat = valid & (gradient <= np.percentile(gradient[valid], 50))
    return float(np.sqrt(np.pi / 2) * response[flat].mean() / 6.0)


def jpeg_quality(image: Image.Image) -> int | None:
    """The IJG quality whose luminance table is closest to the file's; None for other formats."""
    tables = getattr(image, "quantization", None)
    if not tables:
        return None
    luma = np.array(tables[0], dtype=float)
    best, best_error = None, float("inf")
    for quality in range(1, 101):
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        table = np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255)
        # sorted, so that the coefficient order (zigzag or row-major, by Pillow version) does not matter
        error = float(np.abs(np.sort(table) - np.sort(luma)).mean())
        if error < best_error:
            best, best_error = quality, error
    return best


def measure_profile(paths: Sequence[str | Path]) -> SensorProfile:
    """The camera behind ``paths`` (frames of the real sensor): median noise, JPEG quality of the
    first frame, grey-world cast over all of them."""
    if not paths:
        raise CliError("give at least one frame of the real camera to measure")
    sigmas, means, quality = [], [], None
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                if index == 0:
                    quality = jpeg_quality(image)
                rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read frame {path}: {exc}") from exc
        grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        sigmas.append(noise_sigma(grey))
        means.append(srgb_to_linear(rgb.reshape(-1, 3) / 255.0).mean(axis=0))
    mean = np.mean(means, axis=0)
    grey_world = mean / mean.mean()
    return SensorProfile(round(float(np.median(sigmas)), 4), quality,
                         tuple(round(float(v), 4) for v in grey_world), len(paths))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- applying


def vignetting_falloff(shape: tuple[int, int], k: float) -> np.ndarray:
    """``1 - k (r / R)^2`` over an image, ``R`` its half diagonal."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width]
    r2 = ((xs + 0.5 - width / 2) ** 2 + (ys + 0.5 - height / 2) ** 2) / ((width / 2) ** 2 + (height / 2) ** 2)
    return 1.0 - k * r2


def apply_sensor(image: np.ndarray, coverage: np.ndarray, recipe: SensorRecipe, seed: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 sRGB with the people's ``coverage`` (H, W) in [0, 1] ->
    the same frame seen through the camera of ``recipe``, uint8. Pixels away from every person
    change only through the frame's JPEG pass."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"apply_sensor needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if coverage.shape != image.shape[:2]:
        raise ValueError(f"coverage {coverage.shape} does not match the image {image.shape[:2]}")
    weight = np.clip(coverage.astype(np.float64), 0.0, 1.0)[..., None]
    linear = srgb_to_linear(image / 255.0)
    people = linear * (np.asarray(recipe.white_balance) * recipe.exposure)
    people *= vignetting_falloff(image.shape[:2], recipe.vignetting)[..., None]
    linear = linear + weight * (people - linear)
    srgb = linear_to_srgb(np.clip(linear, 0.0, 1.0)) * 255.0
    if recipe.blur_sigma_px > 0:
        # The blur spreads each person over the band just outside their mask too.
        blurred = ndimage.gaussian_filter(srgb, sigma=(recipe.blur_sigma_px, recipe.blur_sigma_px, 0))
        band = np.maximum(weight, np.clip(2.0 * ndimage.gaussian_filter(weight, sigma=(
            recipe.blur_sigma_px, recipe.blur_sigma_px, 0)), 0.0, 1.0))
        srgb = srgb + band * (blurred - srgb)
    if recipe.noise_sigma > 0:
        noise = np.random.default_rng([seed, SENSOR_STREAM, 1]).normal(0.0, recipe.noise_sigma, srgb.shape)
        srgb = srgb + weight * noise
    out = np.clip(srgb + 0.5, 0, 255).astype(np.uint8)
    if recipe.jpeg_quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=recipe.jpeg_quality)
        out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).copy()
    return out


# --------------------------------------------------------------------------- datasets


def people_coverage(dataset: Path, record: dict[str, Any]) -> np.ndarray:
    """All people's coverage in one rendered frame: their soft masks where the frame has them,
    else the instance mask (every person, annotated or hidden, counts)."""
    from blender_addon.core.dataset import read_mask

    coverage = (read_mask(dataset / record["mask"]) > 0).astype(np.float64)
    for annotation in record.get("annotations", []):
        soft = annotation.get("soft_mask")
        if soft and (dataset / soft).is_file():
            coverage = np.maximum(coverage, np.asarray(Image.open(dataset / soft), dtype=np.float64) / 255.0)
    return coverage


def apply_to_dataset(source: Path, profile: SensorProfile, out: Path) -> int:
    """A copy of the rendered dataset ``source`` in ``out`` with the camera applied to every frame
    (each frame's recipe drawn from its frame seed and recorded in its manifest). Masks and soft
    masks are linked, not copied; frames already in ``out`` are kept, so a stopped run resumes."""
    frames = sorted((source / "frames").glob("*.json"))
    if not frames:
        raise CliError(f"{source} has no frames/*.json: give a dataset written by the render CLI")
    if out.resolve() == source.resolve():
        raise CliError("--out must be a new folder: the source dataset is never changed")
    for sub in ("images", "frames"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("masks", "soft_masks"):
        if (source / sub).is_dir() and not (out / sub).exists():
            os.symlink((source / sub).resolve(), out / sub)
    if (source / "run_config.json").is_file():
        shutil.copyfile(source / "run_config.json", out / "run_config.json")
    done = 0
    for frame_path in frames:
        target = out / "frames" / frame_path.name
        if target.exists():
            continue
        record = json.loads(frame_path.read_text(encoding="utf-8"))
        seed = int(record.get("manifest", {}).get("frame_seed", record["index"]))
        recipe = SensorRecipe.sample(profile, seed)
        image = np.asarray(Image.open(source / record["image"]).convert("RGB"))
        processed = apply_sensor(image, people_coverage(source, record), recipe, seed)
        buffer = io.BytesIO()
        Image.fromarray(processed).save(buffer, format="PNG")
        atomic_write_bytes(out / record["image"], buffer.getvalue())
        record.setdefault("manifest", {})["sensor"] = {"profile": profile.to_dict(), **recipe.to_dict()}
        atomic_write_json(target, record)  # written last: a frame exists once its image does
        done += 1
    from blender_addon.core.dataset import build_coco

    build_coco(out)
    return done


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m blender_addon.core.camera_sensor",
        description="Measure a real camera from its frames, and give rendered people its look "
                    "(white balance, exposure, vignetting, blur, noise, JPEG).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python -m blender_addon.core.camera_sensor measure REAL/*.jpg --out out/sensor.json
  python -m blender_addon.core.camera_sensor apply out/S --profile out/sensor.json --out out/S_sensor
The render CLI applies the same while rendering: --sensor out/sensor.json (or 'photo').""")
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("measure", help="measure noise, JPEG quality and colour cast of real frames")
    measure.add_argument("frames", nargs="+", help="frames of the real camera (JPEG or PNG)")
    measure.add_argument("--out", type=Path, help="write the profile here (JSON)")
    apply = commands.add_parser("apply", help="apply a profile to a rendered dataset, into a new folder")
    apply.add_argument("dataset", type=Path, help="a dataset folder written by the render CLI")
    apply.add_argument("--profile", type=Path, required=True, help="a profile written by 'measure'")
    apply.add_argument("--out", type=Path, required=True, help="the new dataset folder")
    args = parser.parse_args(argv)
    if args.command == "measure":
        profile = measure_profile(args.frames)
        if args.out is not None:
            atomic_write_json(args.out, profile.to_dict())
        print(json.dumps(profile.to_dict(), indent=2))
        return 0
    done = apply_to_dataset(args.dataset, SensorProfile.load(args.profile), args.out)
    print(f"{args.out}: {done} frames processed")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, prog="camera_sensor")


if __name__ == "__main__":
    raise SystemExit(main())
