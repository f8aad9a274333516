"""Preview render latency, cold against warm: the add-on's preview worker asked to render the
sample office with 5 MakeHuman people (3 sitting, 2 standing) at the live preview's setting.

Cold (the baseline, and what every live round cost before the worker stayed up): a fresh
worker process, so Blender starts, the scene is built and the first person builds every human
and garment template. Warm: the same worker rendering again after people moved, as every live
round after the first does. The time is from the request to the reply (the frame, masks and
annotations written).

    python -m bench preview_worker [--resolution 512] [--samples 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.report import print_table, write_result

PROJECT = Path(__file__).resolve().parents[1]


def run_folder(out: Path, resolution: int, samples: int) -> Path:
    from blender_addon.core import batch
    from blender_addon.core.batch import BatchConfig, PlacementConfig
    from blender_addon.core.garments import find_assets_root

    assets = find_assets_root()
    render = batch.with_overrides(batch.preset("fast"), resolution=resolution, samples=samples,
                                  motion_blur_shutter=0.0)
    config = BatchConfig(scene=str(PROJECT / "scenes" / "sample_office"), count=1, seed=3, preset="fast",
                         render=render, placement=PlacementConfig(sitting_range=(3, 3), standing_range=(2, 2)),
                         assets=str(assets) if assets else None)
    batch.prepare_run_folder(out, config)
    return out


def _wait(worker, timeout_s: float = 900.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = worker.poll()
        if reply is not None:
            if not reply.get("ok"):
                raise RuntimeError(f"preview render failed: {reply.get('error')}")
            return reply
        time.sleep(0.01)
    raise TimeoutError(f"no reply in {timeout_s} s")


def measure(resolution: int, samples: int, rounds: int) -> dict:
    from blender_addon.core.preview_pipeline import WarmWorker

    with tempfile.TemporaryDirectory(prefix="bench-preview-") as tmp:
        root = Path(tmp)
        worker = WarmWorker([sys.executable, "-m", "blender_addon.ui.preview_worker", "--serve"],
                            root / "worker.log")
        try:
            times = []
            for index in range(rounds + 1):
                out = run_folder(root / f"round{index}", resolution, samples)
                overrides = None
                if index:
                    # the artist nudged everyone: a new layout, the same config
                    recipe = json.loads((root / "round0" / "frames" / "000000.json").read_text())["manifest"]["recipe"]
                    moved = {p["name"]: {"location": [p["location"][0] + 0.05 * index, *p["location"][1:]],
                                         "heading_rad": p["heading_rad"]} for p in recipe["people"]}
                    overrides = root / f"people{index}.json"
                    overrides.write_text(json.dumps(moved))
                worker.request(out, overrides, threads=0)
                reply = _wait(worker)
                times.append((reply["round_trip_s"], bool(reply["warm"])))
                print(f"  round {index}: {reply['round_trip_s']:.2f} s ({'warm' if reply['warm'] else 'cold'})",
                      flush=True)
        finally:
            worker.close()
    cold = times[0][0]
    warm = [t for t, is_warm in times[1:] if is_warm]
    if len(warm) != rounds:
        raise RuntimeError(f"expected {rounds} warm rounds, got {times}")
    return {"resolution": resolution, "samples": samples, "people": 5, "cold_s": round(cold, 3),
            "warm_s": [round(t, 3) for t in warm], "warm_median_s": round(statistics.median(warm), 3),
            "speedup": round(cold / statistics.median(warm), 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench preview_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512, help="long side (the live preview caps it at 512)")
    parser.add_argument("--samples", type=int, default=8, help="Cycles samples (the live preview caps them at 8)")
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds after the cold one")
    args = parser.parse_args(argv if argv is not None else [])
    import os

    load_before = os.getloadavg()[0]
    result = measure(args.resolution, args.samples, args.rounds)
    # Other work on the machine slows every round alike; the load says how busy it was.
    result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print_table("preview render, request to reply", ["setting", "cold (baseline)", "warm median", "ratio"],
                [[f"{result['resolution']} px, {result['samples']} samples, 5 people",
                  f"{result['cold_s']:.2f} s", f"{result['warm_median_s']:.2f} s", f"{result['speedup']:.1f}x"]])
    write_result("preview_worker", {"baseline": "cold: a fresh worker process (Blender start, scene, "
                                                "human and garment templates)", **result})


if __name__ == "__main__":
    main(sys.argv[1:])
