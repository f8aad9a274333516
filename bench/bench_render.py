"""Rendering benchmarks: quality-matched cost, batch throughput, and memory over many frames.

1. Quality-matched cost: one 1024 x 1024 frame of the sample office with five people (3
   sitting, 2 standing) rendered with the thesis's setting (350 samples, no denoiser), with
   our default preset (adaptive sampling up to 64 samples + OpenImageDenoise) and with the
   default minus the denoiser; each scored by PSNR against a 2048-sample reference of the
   same frame (same people and light; its own Cycles seed, so its noise is independent).
   To fit 2 CPU cores only a 256 x 256 window around the people is rendered (Cycles border
   render) in every setting. PSNR is given over the window and over the pixels the people
   change (bodies and shadows). Times are per frame after a warm-up frame (the MakeHuman
   data is parsed once per process) and include building the people and the mask layers.
2. Batch throughput: frames per minute of the CLI with 1 and 2 worker processes.
3. Memory: resident memory of one long-lived renderer after each frame; the last window of
   frames must stay within 10 % of the first window.

Sizes are scaled down from the issue's (a full 1024 px quality frame, 200 frames of memory)
so the benchmark finishes in about 15 minutes on 2 busy CPU cores; the JSON records the
sizes used and the machine's load. Run: ``python -m bench render``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.report import print_table, write_result

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "scenes" / "sample_office")
# The quality frame is 1024 px as the issue asks, but only a window around the people is
# rendered (a 2048-sample full 1024 px reference would take over an hour on 2 cores).
QUALITY_WINDOW = 256
REFERENCE_SAMPLES = 2048
THROUGHPUT_RESOLUTION = 512
THROUGHPUT_FRAMES = 4
MEMORY_FRAMES = 60  # issue: 200
MEMORY_WINDOW = 15  # issue: 50
MEMORY_RESOLUTION = 96


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _config(settings: Any, count: int = 1, seed: int = 3) -> Any:
    from blender_addon.core.batch import BatchConfig
    from blender_addon.core.placement import PlacementConfig

    return BatchConfig(scene=SCENE, count=count, seed=seed, render=settings,
                       placement=PlacementConfig(sitting_range=(3, 3), standing_range=(2, 2)))


def _people_window(settings: Any, size: int) -> tuple[int, int, int, int]:
    """A ``size`` px square (x0, y0, x1, y1) of the frame centred on the people's heads."""
    from blender_addon.core.batch import sample_frame_recipe
    from blender_addon.core.scene_format import load_scene

    scene = load_scene(SCENE)
    camera = scene.camera_for(settings.resolution)
    heads = np.array([[p.location[0], p.location[1], p.location[2] + 0.8]
                      for p in sample_frame_recipe(scene, _config(settings), 0).people])
    centre = camera.project(heads)[0].mean(axis=0)
    x0 = int(np.clip(round(centre[0] - size / 2), 0, camera.width - size))
    y0 = int(np.clip(round(centre[1] - size / 2), 0, camera.height - size))
    return x0, y0, x0 + size, y0 + size


def _render_timed(settings: Any, folder: Path, window: tuple[int, int, int, int],
                  warm_up: bool = True, seed_offset: int = 0) -> tuple[np.ndarray, float]:
    """Render frame 0 inside ``window`` only (Cycles border render), after a warm-up render
    when asked; return the window's pixels and the seconds of the timed render."""
    from blender_addon.bl.render import FrameRenderer
    from blender_addon.core.batch import prepare_run_folder
    from blender_addon.core.render_region import Region

    x0, y0, x1, y1 = window
    config = _config(settings)
    prepare_run_folder(folder, config)
    renderer = FrameRenderer(config, folder, threads=2, cycles_seed_offset=seed_offset,
                             window=Region(*window))
    if warm_up:
        renderer.render_frame(0)
    started = time.perf_counter()
    renderer.render_frame(0)
    seconds = time.perf_counter() - started
    image = np.asarray(Image.open(folder / "images" / "000000.png"), dtype=np.float64)
    # One pixel of margin: the border's edge pixels may be partly rendered.
    return image[y0 + 1:y1 - 1, x0 + 1:x1 - 1], seconds


def _psnr(image: np.ndarray, reference: np.ndarray, region: np.ndarray | None = None) -> float:
    diff = (image - reference) ** 2
    mse = float(diff[region].mean() if region is not None else diff.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def quality_benchmark(tmp: Path) -> dict[str, Any]:
    from blender_addon.core.batch import PRESETS, with_overrides
    from blender_addon.core.dataset import linear_to_srgb, load_photo_linear

    runs = {
        "thesis (350 samples, no denoiser)": PRESETS["thesis"],
        "default preset (adaptive <=64 + OIDN)": PRESETS["default"],
        "default without denoiser": with_overrides(PRESETS["default"], denoise=False),
    }
    reference_settings = with_overrides(PRESETS["reference"], samples=REFERENCE_SAMPLES)
    size = reference_settings.resolution
    window = _people_window(reference_settings, QUALITY_WINDOW)
    # The reference gets its own Cycles seed, so its samples are independent of the others'.
    reference, reference_seconds = _render_timed(reference_settings, tmp / "reference", window,
                                                 warm_up=False, seed_offset=7919)
    x0, y0, x1, y1 = window
    photo = np.round(linear_to_srgb(load_photo_linear(Path(SCENE) / "empty_room.jpg", (size, size))) * 255)
    photo = photo[y0 + 1:y1 - 1, x0 + 1:x1 - 1]
    changed = np.abs(reference - photo).max(axis=2) > 2.0
    results: dict[str, Any] = {"reference_seconds": reference_seconds, "window_xyxy": list(window),
                               "changed_pixels": int(changed.sum())}
    rows = []
    for index, (name, settings) in enumerate(runs.items()):
        image, seconds = _render_timed(settings, tmp / f"q{index}", window)
        entry = {"seconds": seconds, "psnr_db": _psnr(image, reference),
                 "psnr_people_db": _psnr(image, reference, changed),
                 "samples": settings.samples, "adaptive_threshold": settings.adaptive_threshold,
                 "denoise": settings.denoise}
        results[name] = entry
        rows.append([name, seconds, entry["psnr_db"], entry["psnr_people_db"]])
    thesis, ours = (results[name] for name in list(runs)[:2])
    results["speedup_default_vs_thesis"] = thesis["seconds"] / ours["seconds"]
    results["psnr_gain_people_db"] = ours["psnr_people_db"] - thesis["psnr_people_db"]
    print_table(f"Quality-matched cost: {size}x{size} frame, 5 people, rendered in a "
                f"{QUALITY_WINDOW}x{QUALITY_WINDOW} window around them; PSNR vs a "
                f"{REFERENCE_SAMPLES}-sample reference ({reference_seconds:.0f} s)",
                ["setting", "seconds/frame", "PSNR dB", "PSNR people dB"], rows)
    print(f"default is {results['speedup_default_vs_thesis']:.2f}x faster than the thesis setting, "
          f"{results['psnr_gain_people_db']:+.2f} dB on the people")
    return results


def throughput_benchmark(tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rows = []
    for workers in (1, 2):
        out = tmp / f"throughput_{workers}"
        command = [sys.executable, "-m", "blender_addon.bl.cli_entry", "--scene", SCENE,
                   "--count", str(THROUGHPUT_FRAMES), "--preset", "fast", "--resolution",
                   str(THROUGHPUT_RESOLUTION), "--workers", str(workers), "--no-progress",
                   "--out", str(out)]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
        seconds = time.perf_counter() - started
        per_minute = THROUGHPUT_FRAMES / seconds * 60.0
        results[f"workers_{workers}"] = {"seconds": seconds, "frames_per_minute": per_minute}
        rows.append([workers, THROUGHPUT_FRAMES, seconds, per_minute])
    results["speedup_2_vs_1_workers"] = (results["workers_2"]["frames_per_minute"]
                                         / results["workers_1"]["frames_per_minute"])
    print_table(f"Batch throughput: fast preset, {THROUGHPUT_RESOLUTION}x{THROUGHPUT_RESOLUTION}, "
                "including process start-up", ["workers", "frames", "seconds", "frames/min"], rows)
    return results


def memory_benchmark(tmp: Path) -> dict[str, Any]:
    from blender_addon.bl.render import FrameRenderer
    from blender_addon.core.batch import PRESETS, prepare_run_folder, with_overrides

    settings = with_overrides(PRESETS["fast"], resolution=MEMORY_RESOLUTION, samples=1)
    config = _config(settings, count=MEMORY_FRAMES)
    out = tmp / "memory"
    prepare_run_folder(out, config)
    renderer = FrameRenderer(config, out, threads=2)
    rss = []
    for index in range(MEMORY_FRAMES):
        renderer.render_frame(index)
        rss.append(_rss_mib())
    first, last = max(rss[:MEMORY_WINDOW]), max(rss[-MEMORY_WINDOW:])
    growth = last / first - 1.0
    print_table(f"Memory of one renderer over {MEMORY_FRAMES} frames ({MEMORY_RESOLUTION} px, "
                "no recycling)", ["window", "peak RSS MiB"],
                [[f"first {MEMORY_WINDOW}", first], [f"last {MEMORY_WINDOW}", last],
                 ["growth", f"{growth * 100:+.1f} %"]])
    return {"frames": MEMORY_FRAMES, "window": MEMORY_WINDOW, "first_window_peak_mib": first,
            "last_window_peak_mib": last, "growth_fraction": growth,
            "within_10_percent": growth <= 0.10, "rss_mib_per_frame": [round(v, 1) for v in rss]}


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_render_") as name:
        tmp = Path(name)
        memory = memory_benchmark(tmp)
        throughput = throughput_benchmark(tmp)
        quality = quality_benchmark(tmp)
    write_result("render", {
        "device": "cpu",
        # Other jobs on a shared machine slow every number here; this says how busy it was.
        "load_average_1_5_15_min": {"before": list(load_before), "after": list(os.getloadavg())},
        "cpu_count": os.cpu_count(),
        "scaled_down": {
            "quality_window_px": QUALITY_WINDOW, "quality_frame_px": 1024,
            "memory_frames": MEMORY_FRAMES, "issue_memory_frames": 200,
            "memory_window": MEMORY_WINDOW, "issue_memory_window": 50,
            "throughput_frames": THROUGHPUT_FRAMES,
            "why": "2 shared CPU cores: a full 2048-sample 1024 px reference and 200 frames "
                   "would take well over an hour",
        },
        "quality": quality,
        "throughput": throughput,
        "memory": memory,
    })


if __name__ == "__main__":
    main()
