"""Synthetic digits: 0-9 rendered from the system's fonts, distorted, normalised like MNIST.

Fonts come from the Debian ``fonts-*`` packages that ``make setup`` installs (as root, when
apt-get exists) under ``/usr/share/fonts`` and ``/usr/share/texmf/fonts``; without them the
fonts that matplotlib ships are used, with a printed note. A font is kept only when its ten
digits render as ten different, non-empty glyphs (symbol and math-extension fonts, and fonts
without ASCII digits, draw the same box or nothing), and fonts whose digits render identically
to an earlier font's (metric clones such as Liberation and Liberation 2) are dropped.

Each sample is a pure function of (font, digit, seed, index): rotation, stroke thickness
(dilation or erosion), shear, scale, elastic distortion and noise are drawn from a generator
seeded by them. The glyph is drawn large (:data:`CANVAS` px), distorted there, then
normalised the way MNIST was: the ink's bounding box is scaled to fit a 20x20 box (times the
sampled scale), anti-aliased, and placed in a 28x28 image with its centre of mass at the centre.
White ink on black, uint8, as MNIST.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_ROOTS = (Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts"))
FONT_SUFFIXES = (".ttf", ".otf")
CANVAS = 96          # px: glyphs are drawn and distorted at this size, then reduced to 28x28
GLYPH_SIZE = 64      # font size in px on the canvas
SIDE = 28            # output size (MNIST)
BOX = 20             # MNIST fits each digit's bounding box into 20x20


@dataclass(frozen=True)
class Augment:
    """Ranges of the per-sample distortions (uniform unless said otherwise)."""

    rotation_deg: float = 15.0           # +- degrees
    shear: float = 0.25                  # +- horizontal shear factor
    thickness: tuple[int, int] = (-1, 2)  # min/max morphological radius in canvas px (<0 erodes)
    scale: tuple[float, float] = (0.8, 1.0)  # fraction of the 20x20 box
    elastic_alpha: float = 2.5           # canvas px of displacement (std of the smoothed field)
    elastic_sigma: float = 10.0          # canvas px: smoothness of the displacement field
    noise_std: float = 8.0               # grey levels of additive Gaussian noise
    blur: tuple[float, float] = (0.0, 0.5)  # Gaussian blur radius in output px

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def font_files(roots: Sequence[Path] = FONT_ROOTS) -> list[Path]:
    """All .ttf/.otf files under ``roots``, sorted (resolved, so symlinked duplicates count once)."""
    found = set()
    for root in roots:
        if root.is_dir():
            found.update(p.resolve() for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
    return sorted(found)


def matplotlib_font_files() -> list[Path]:
    """The fonts matplotlib ships (DejaVu, STIX, Computer Modern): the fallback."""
    import matplotlib

    return sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf"))


def _draw(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((CANVAS / 2, CANVAS / 2), char, fill=255, font=font, anchor="mm")
    return np.asarray(canvas)


def _signature(font: ImageFont.FreeTypeFont) -> list[np.ndarray] | None:
    """The ten digits at canvas size, or None when the font cannot render them."""
    glyphs = [_draw(font, str(d)) for d in range(10)]
    if any((g > 127).sum() < 20 for g in glyphs):
        return None  # nothing drawn (or a hairline)
    for g in glyphs:  # a glyph that spills off the canvas is not a usable digit at this size
        if g[0].any() or g[-1].any() or g[:, 0].any() or g[:, -1].any():
            return None
    binary = [(g > 127) for g in glyphs]
    for i in range(10):
        for j in range(i + 1, 10):
            # Same box for two digits: .notdef or a symbol font.
            if np.mean(binary[i] != binary[j]) < 0.01:
                return None
    return glyphs


@dataclass(frozen=True)
class FontSet:
    paths: tuple[Path, ...]
    source: str          # "system" or "matplotlib (fallback)"
    rejected: int        # files that could not render ten distinct digits
    duplicates: int      # files whose digits render identically to an earlier file's

    def __len__(self) -> int:
        return len(self.paths)


@lru_cache(maxsize=4)
def discover_fonts(roots: tuple[Path, ...] = FONT_ROOTS, *, quiet: bool = False) -> FontSet:
    """The usable digit fonts under ``roots``; matplotlib's fonts when there are fewer than 8."""
    source = "system"
    files = font_files(roots)
    usable, rejected, duplicates = _filter(files)
    if len(usable) < 8:
        if not quiet:
            print(f"note: only {len(usable)} usable digit fonts under "
                  f"{', '.join(map(str, roots))}; using the fonts matplotlib ships. Install the "
                  "Debian font packages (make setup does, as root) for many more.", file=sys.stderr)
        usable, rejected, duplicates, _seen = _filter(sorted(set(files) | set(matplotlib_font_files())))
        source = "system + matplotlib (fallback)" if files else "matplotlib (fallback)"
    if not usable:
        raise RuntimeError("no font can render the digits 0-9; install fonts-dejavu-core or "
                           "matplotlib")
    return FontSet(tuple(usable), source, rejected, duplicates)


def _reference_digits() -> np.ndarray:
    """Normalised 28x28 digits of DejaVu Sans (shipped by matplotlib, so always present)."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    font = ImageFont.truetype(str(path), GLYPH_SIZE)
    return np.stack([normalise_mnist(_draw(font, str(d)).astype(np.float64)) for d in range(10)])


def _unit(rows: np.ndarray) -> np.ndarray:
    flat = rows.reshape(len(rows), -1).astype(np.float64)
    flat = flat - flat.mean(1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-9)


def _filter(files: Sequence[Path]) -> tuple[list[Path], int, int]:
    """Keep fonts whose ten digits are ten distinct glyphs that look like digits (at least 8 of
    10 correlate best with the same digit of DejaVu Sans: dingbat and symbol fonts, which map
    the digit code points to other shapes, fail) and that are not near-copies of a kept font."""
    reference = _unit(_reference_digits())
    usable: list[Path] = []
    kept: list[np.ndarray] = []
    rejected = duplicates = 0
    for path in files:
        try:
            glyphs = _signature(ImageFont.truetype(str(path), GLYPH_SIZE))
        except (OSError, ValueError):
            glyphs = None
        if glyphs is None:
            rejected += 1
            continue
        normalised = np.stack([normalise_mnist(g.astype(np.float64)) for g in glyphs])
        matches = (_unit(normalised) @ reference.T).argmax(1) == np.arange(10)
        if matches.sum() < 8:
            rejected += 1
            continue
        # Metric clones (Liberation vs Liberation 2, URW vs TeX Gyre) differ only in hinting.
        if any(np.abs(normalised - other).mean() < 4.0 for other in kept):
            duplicates += 1
            continue
        kept.append(normalised)
        usable.append(path)
    return usable, rejected, duplicates


@lru_cache(maxsize=512)
def _font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, GLYPH_SIZE)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _smooth(field: np.ndarray, sigma: float) -> np.ndarray:
    k = _gaussian_kernel(sigma)
    pad = len(k) // 2
    out = np.pad(field, pad, mode="reflect")
    out = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, out)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, out)


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``image`` at fractional coordinates (zero outside)."""
    h, w = image.shape
    padded = np.pad(image, 1)
    ys = np.clip(ys + 1, 0, h + 0.999)
    xs = np.clip(xs + 1, 0, w + 0.999)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h + 1), np.minimum(x0 + 1, w + 1)
    fy, fx = ys - y0, xs - x0
    return ((1 - fy) * (1 - fx) * padded[y0, x0] + (1 - fy) * fx * padded[y0, x1]
            + fy * (1 - fx) * padded[y1, x0] + fy * fx * padded[y1, x1])


def normalise_mnist(ink: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """MNIST's normalisation of a white-on-black float image: bounding box fitted into a
    ``BOX * scale`` square keeping the aspect ratio, anti-aliased, centred by centre of mass in
    28x28. Returns float32 in [0, 255]."""
    mask = ink > 8
    if not mask.any():
        return np.zeros((SIDE, SIDE), np.float32)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    target = BOX * scale
    factor = target / max(h, w)
    new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
    small = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F")
                       .resize((new_w, new_h), Image.LANCZOS), dtype=np.float32).clip(0, 255)
    total = small.sum()
    yy, xx = np.mgrid[:new_h, :new_w]
    cy, cx = (yy * small).sum() / total, (xx * small).sum() / total
    top = round(SIDE / 2 - cy - 0.5 + 0.5)
    left = round(SIDE / 2 - cx - 0.5 + 0.5)
    top = min(max(top, 0), SIDE - new_h)
    left = min(max(left, 0), SIDE - new_w)
    out = np.zeros((SIDE, SIDE), np.float32)
    out[top:top + new_h, left:left + new_w] = small
    return out


def render_digit(font_path: str | Path, digit: int, rng: np.random.Generator,
                 augment: Augment = Augment()) -> np.ndarray:
    """One distorted, MNIST-normalised digit: uint8 (28, 28), white ink on black."""
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0-9, got {digit}")
    glyph = Image.fromarray(_draw(_font(str(font_path)), str(digit)))
    radius = int(rng.integers(augment.thickness[0], augment.thickness[1] + 1))
    if radius > 0:
        glyph = glyph.filter(ImageFilter.MaxFilter(2 * radius + 1))
    elif radius < 0:
        eroded = glyph.filter(ImageFilter.MinFilter(2 * -radius + 1))
        if (np.asarray(eroded) > 127).sum() >= 40:  # keep thin fonts legible
            glyph = eroded
    angle = float(rng.uniform(-augment.rotation_deg, augment.rotation_deg))
    shear = float(rng.uniform(-augment.shear, augment.shear))
    # Affine about the canvas centre: PIL maps output -> input coordinates.
    c = CANVAS / 2
    glyph = glyph.transform((CANVAS, CANVAS), Image.AFFINE,
                            (1, shear, -shear * c, 0, 1, 0), resample=Image.BILINEAR)
    glyph = glyph.rotate(angle, resample=Image.BILINEAR, center=(c, c))
    image = np.asarray(glyph, dtype=np.float64)
    if augment.elastic_alpha > 0:
        dy = _smooth(rng.standard_normal((CANVAS, CANVAS)), augment.elastic_sigma)
        dx = _smooth(rng.standard_normal((CANVAS, CANVAS)), augment.elastic_sigma)
        norm = max(dy.std(), dx.std(), 1e-9)
        yy, xx = np.mgrid[:CANVAS, :CANVAS].astype(np.float64)
        image = _bilinear(image, yy + dy / norm * augment.elastic_alpha,
                          xx + dx / norm * augment.elastic_alpha)
    scale = float(rng.uniform(*augment.scale))
    out = normalise_mnist(image, scale)
    blur = float(rng.uniform(*augment.blur))
    if blur > 0.05:
        out = _smooth(out.astype(np.float64), blur).astype(np.float32)
    # MNIST strokes saturate: stretch so the darkest ink is white whatever the font's weight,
    # blur and erosion left (a hairline font must not come out as a faint smudge).
    peak = float(out.max())
    if peak > 0:
        out = out * (255.0 / peak)
    if augment.noise_std > 0:
        out = out + rng.normal(0.0, augment.noise_std, out.shape) * (out > 0)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render_dataset(n: int, seed: int, fonts: Sequence[Path] | None = None,
                   augment: Augment = Augment()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` synthetic digits, balanced over 0-9: (images uint8 (n, 28, 28), labels int64 (n,),
    font index int64 (n,)). Sample ``i`` depends only on (seed, i) and the font list."""
    fonts = list(fonts if fonts is not None else discover_fonts().paths)
    images = np.zeros((n, SIDE, SIDE), np.uint8)
    labels = np.arange(n, dtype=np.int64) % 10
    font_index = np.zeros(n, np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        font_index[i] = int(rng.integers(len(fonts)))
        images[i] = render_digit(fonts[font_index[i]], int(labels[i]), rng, augment)
    return images, labels, font_index
