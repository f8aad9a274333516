"""Benchmark: cost of creating and posing people, first versus tenth, and memory per person.

Baseline: the first person in a fresh Blender scene (it pays for parsing the MakeHuman data
and building template meshes). People wear fitted MakeHuman garments and hair when
``../shared/data/makehuman_assets`` is present: each new garment pays for its own parse and
template on first use. Target: the tenth person at least 5x cheaper, and process RSS
growing by less than 50 MB per added person.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.report import print_table, write_result

PEOPLE = 12
MOCAP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mocap"
# Fitted garments, shoes and hair as batch renders use them (painted clothing without them).
ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "makehuman_assets"


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> None:
    import bpy

    from blender_addon.bl import humans
    from blender_addon.core.garments import AssetLibrary
    from blender_addon.core.human_params import sample_person_params, sample_pose
    from blender_addon.core.posing import pose_library_for

    bpy.ops.wm.read_factory_settings(use_empty=True)
    assets = AssetLibrary(ASSETS) if (ASSETS / "base" / "clothes").is_dir() else None
    library = pose_library_for(str(MOCAP) if MOCAP.is_dir() else None, str(ASSETS) if assets else None)
    rng = np.random.default_rng(0)
    times, rss = [], [_rss_mb()]
    for i in range(PEOPLE):
        params = sample_person_params(rng)
        pose = sample_pose(rng, "sitting" if i % 3 == 2 else "standing", library)
        start = time.perf_counter()
        humans.create_person(params, pose, name=f"bench_{i}", location=(i * 1.0, 0.0, 0.45 if pose.kind == "sitting" else 0.0),
                             heading_rad=0.0, pass_index=i + 1, library=library, asset_library=assets)
        times.append(time.perf_counter() - start)
        rss.append(_rss_mb())
    first, tenth = times[0], times[9]
    later = times[1:]
    growth = np.diff(rss[2:])  # per person once caches and templates exist
    rows = [
        ["first person (baseline)", first, rss[1] - rss[0]],
        ["tenth person", tenth, rss[10] - rss[9]],
        ["median of persons 2..12", float(np.median(later)), float(np.median(growth))],
    ]
    print_table("humans: create + pose one person (seconds, RSS MB added)", ["case", "seconds", "rss_mb"], rows)
    ratio = first / tenth
    print(f"first/tenth speed-up: {ratio:.1f}x (target >= 5x); max RSS growth per person after the "
          f"second: {growth.max():.1f} MB (target < 50 MB); pose library used: {library is not None}; "
          f"garment assets used: {assets is not None}")
    write_result("humans", {
        "people": PEOPLE, "first_person_s": first, "tenth_person_s": tenth, "speedup_first_over_tenth": ratio,
        "median_later_person_s": float(np.median(later)), "per_person_s": times,
        "rss_mb": rss, "max_rss_growth_per_person_mb": float(growth.max()),
        "mean_rss_growth_per_person_mb": float(growth.mean()), "mocap_used": library is not None,
        "assets_used": assets is not None,
        "baseline": "first person in a fresh scene (parses data, builds templates)",
    })


if __name__ == "__main__":
    main()
