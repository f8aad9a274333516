"""Per-person coverage (soft masks) from Cycles' Cryptomatte passes, in numpy: no Blender needed.

Why Cryptomatte: the Object Index pass is written from one sample per pixel, so its masks are
stair-stepped. Cryptomatte accumulates, over *all* of the main render's samples and through the
same pixel filter as the image, the weight of every object hit first by camera rays: for each
pixel, ranked (id, coverage) pairs. Summing a person's coverage therefore gives the exact
anti-aliased fraction of the pixel that shows that person as the image itself was rendered
(motion blur, occlusion by other people and by furniture holdouts included), at the cost of a
few extra float channels in a render that happens anyway. A per-person view layer with more
samples (the holdout/emission trick) would cost one more render per person and frame.

Layout (Blender 5.0, checked by rendering): the view layer ``main`` with
``use_pass_cryptomatte_asset`` writes passes ``CryptoAsset00``, ``CryptoAsset01``, ... of four
channels ``r, g, b, a`` = (id, coverage, id, coverage); ``pass_cryptomatte_depth`` pairs in all.
The "asset" of an object is its top-most parent, so each person (every mesh is parented to the
person's root or armature) is a single id. An id is the name's MurmurHash3 (32 bit, seed 0)
read as a float32, with the exponent nudged away from 0 and 255 so it is never a denormal,
infinity or NaN (the Cryptomatte specification).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

CRYPTO_PASS_PREFIX = "CryptoAsset"
# Ranked (id, coverage) pairs kept per pixel. A person's edge pixel holds that person, maybe a
# second person, furniture, the floor and nothing (the transparent film): 6 leaves room.
CRYPTOMATTE_DEPTH = 6

_MASK32 = 0xFFFFFFFF


def _rotl32(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _MASK32


def murmurhash3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit of ``data`` (the hash Cryptomatte names objects with)."""
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & _MASK32
    body = len(data) - len(data) % 4
    for start in range(0, body, 4):
        k = int.from_bytes(data[start:start + 4], "little")
        k = _rotl32((k * c1) & _MASK32, 15) * c2 & _MASK32
        h = (_rotl32(h ^ k, 13) * 5 + 0xE6546B64) & _MASK32
    tail = data[body:]
    if tail:
        k = int.from_bytes(tail, "little")
        h ^= _rotl32((k * c1) & _MASK32, 15) * c2 & _MASK32
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def cryptomatte_id(name: str) -> np.float32:
    """The float32 id Cryptomatte stores for an object (or asset) called ``name``."""
    value = murmurhash3_32(name.encode("utf-8"))
    exponent = (value >> 23) & 0xFF
    if exponent in (0, 0xFF):  # keep the float finite and normal
        value ^= 1 << 23
    return np.array([value], dtype=np.uint32).view(np.float32)[0]


def rank_passes(passes: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The Cryptomatte passes of one view layer, in rank order, each (H, W, 4)."""
    names = sorted(name for name in passes if name.startswith(CRYPTO_PASS_PREFIX))
    if not names:
        raise ValueError(f"the render has no {CRYPTO_PASS_PREFIX}* passes; soft masks need the main "
                         "view layer's use_pass_cryptomatte_asset (scene_build.configure_cycles "
                         "with a cryptomatte depth), or render with mask_mode 'hard'")
    ranks = [np.asarray(passes[name], dtype=np.float32) for name in names]
    for name, array in zip(names, ranks):
        if array.ndim != 3 or array.shape[2] != 4:
            raise ValueError(f"Cryptomatte pass {name} has shape {array.shape}; expected (H, W, 4) "
                             "holding (id, coverage, id, coverage)")
    return ranks


def person_coverage(ranks: Sequence[np.ndarray], ids: Iterable[np.float32]) -> np.ndarray:
    """Coverage (H, W) in [0, 1] of everything whose Cryptomatte id is in ``ids``.

    ``ranks`` are ``rank_passes``' arrays; ids compare bit for bit (they are hashes, not
    numbers), so the arrays are viewed as uint32."""
    wanted = np.array(sorted({float(i) for i in ids}), dtype=np.float32).view(np.uint32)
    total = np.zeros(ranks[0].shape[:2], dtype=np.float32)
    for rank in ranks:
        bits = np.ascontiguousarray(rank).view(np.uint32)
        for pair in (0, 2):
            hit = np.isin(bits[..., pair], wanted)
            total += np.where(hit, rank[..., pair + 1], 0.0)
    # Accumulated float weights can overshoot 1 by rounding.
    return np.clip(total, 0.0, 1.0)


def people_coverage(ranks: Sequence[np.ndarray],
                    asset_names: Mapping[int, Iterable[str]]) -> dict[int, np.ndarray]:
    """``{instance_id: coverage}`` for each person, from the names of their assets."""
    return {instance: person_coverage(ranks, [cryptomatte_id(name) for name in names])
            for instance, names in asset_names.items()}


def hard_people_coverage(instance_ids: np.ndarray, instances: Iterable[int]) -> dict[int, np.ndarray]:
    """``{instance_id: 0/1 coverage}`` from the instance-id image: the ``mask_mode="hard"`` masks."""
    return {int(k): (instance_ids == k).astype(np.float32) for k in instances}
