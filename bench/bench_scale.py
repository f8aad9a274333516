"""Datasets at scale: ``python -m bench scale`` writes ``bench/results/scale.json``.

1. **The whole chain per machine**: render N frames (MakeHuman people, the ``fast`` preset),
   then crop, refine, reinsert and write them (a small untrained refiner: the cost of the
   network is the same whether it was trained or not), once with the local engines (one
   render worker process; refinement in this process) and once with the Ray engines on a
   local Ray instance (render tasks of one CPU each; two refiner actors). Reported as frames
   per minute of the whole chain, the Ray engine's ratio to the local one, and whether the
   two chains wrote identical datasets (every image, mask, frame record and coco.json).
2. **Render cost at equal quality**: the thesis's setting (350 samples, no denoiser, every
   pixel) against settings that render only the people's region (``--region people``) with
   adaptive sampling and OpenImageDenoise. Time is per whole frame; quality is PSNR over the
   pixels the people change, inside a window around them, against a 2048-sample reference of
   that window (its own Cycles seed). Inside the region, a region render's pixels equal the
   full render's (``tests/test_render_region.py``), so the window scores the frame.
   ``speedup_at_equal_psnr_people`` is the thesis time over the fastest setting whose people
   PSNR is at least the thesis's (null when none is); the ``quality`` preset is the setting
   tuned for it. Two rows without the denoiser (1 and 64 samples) show what a frame costs
   whatever is traced, and what the denoiser adds.
3. **Workers per machine**: rendering the chain's frames with 1 and 2 local worker processes
   and on a local Ray instance of 1 and 2 CPUs, against one local worker on one thread; the
   best setting and the Ray engine's scaling from 1 to 2 CPUs.
4. **DDP**: the detector training step in 1 and 2 processes (``bench.bench_ddp_step``).

Sizes are scaled down to fit 2 shared CPU cores (the JSON records them and the load).
``BENCH_SCALE_PARTS=workers python -m bench scale`` runs one part (the others are null).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.report import RESULTS_DIR, print_table, write_result
from blender_addon.core.batch import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SCENE = str(ROOT / "scenes" / "sample_office")
CHAIN_FRAMES = 6
CHAIN_RESOLUTION = 384
CROP = 64
QUALITY_RESOLUTION = 512
QUALITY_WINDOW = 128
REFERENCE_SAMPLES = 2048
QUALITY_PRESET = {k: getattr(PRESETS["quality"], k) for k in ("samples", "adaptive_threshold", "denoise", "region")}
# (name, overrides of the default preset): the thesis's setting, then region renders; the two
# "no denoiser" rows split a frame's cost into what every frame pays (1 sample) and tracing.
QUALITY_SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("thesis: 350 samples, every pixel", {"samples": 350, "adaptive_threshold": 0.0, "denoise": False,
                                         "region": "full"}),
    ("default: adaptive <=64 + OIDN, every pixel", {"region": "full"}),
    ("default + region", {"region": "people"}),
    ("1 sample, no denoiser + region", {"samples": 1, "adaptive_threshold": 0.0, "denoise": False,
                                        "region": "people"}),
    ("64 samples, no denoiser + region", {"samples": 64, "adaptive_threshold": 0.0, "denoise": False,
                                          "region": "people"}),
    ("adaptive <=128 + OIDN + region", {"samples": 128, "adaptive_threshold": 0.02, "region": "people"}),
    ("adaptive <=256 + OIDN + region", {"samples": 256, "adaptive_threshold": 0.01, "region": "people"}),
    ("quality preset: adaptive <=350 (0.007) + OIDN + region", QUALITY_PRESET),
)


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp), "RAY_TMPDIR": "/tmp"}


# ------------------------------------------------------------------------------ 1. the chain


def _tiny_refiner(folder: Path) -> Path:
    import torch

    from refiner_daemon.refiner.networks import ResnetGenerator
    from refiner_daemon.refiner.training import ModelSpec, export_refiner

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.pt"
    export_refiner(path, ModelSpec(width=16, n_blocks=3, crop_size=(CROP, CROP)),
                   ResnetGenerator(width=16, n_blocks=3), name="bench")
    return path


def _render(out: Path, engine: str, tmp: Path, workers: int = 1, threads: int | None = None,
            frames: int = CHAIN_FRAMES, frames_per_worker: int = 1) -> float:
    """Seconds to render ``frames`` frames: ``workers`` local processes, or a local Ray
    instance of ``workers`` CPUs running one-CPU tasks, each process rendering
    ``frames_per_worker`` frames; ``threads`` Cycles threads each (default: the machine's 2
    cores shared among the workers)."""
    threads = threads or max(1, 2 // workers)
    command = [sys.executable, "-m", "blender_addon.bl.cli_entry", "--scene", SCENE,
               "--count", str(frames), "--seed", "5", "--preset", "fast",
               "--resolution", str(CHAIN_RESOLUTION), "--no-progress", "--out", str(out),
               "--engine", engine, "--frames-per-worker", str(frames_per_worker), "--threads", str(threads)]
    command += ["--workers", str(workers)] if engine == "local" else ["--ray-cpus", str(workers)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=_env(tmp), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"render ({engine}) failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started


def _refine(rendered: Path, out: Path, model: Path, engine: str) -> float:
    import torch

    from refiner_daemon.refiner.batch_refine import (
        BatchRefineConfig,
        RefinerIdentity,
        refine_dataset,
    )
    from refiner_daemon.refiner.inference import Refiner
    from refiner_daemon.refiner.ray_refine import RayRefineOptions, refine_dataset_ray

    config = BatchRefineConfig(crop_size=CROP)
    started = time.perf_counter()
    if engine == "local":
        # One thread, fp32: what each Ray actor runs, so the pixels can be compared exactly.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            refiner = Refiner.load(model, device="cpu", precision="fp32")
            refine_dataset(rendered, out, lambda crops: refiner.refine(crops).images,
                           RefinerIdentity(model.stem, refiner.sha256, endpoint="in-process"), config,
                           progress=False)
        finally:
            torch.set_num_threads(threads)
    else:
        refine_dataset_ray(rendered, out, model, config,
                           RayRefineOptions(actors=2, cpus_per_actor=1, frames_per_task=1, ray_cpus=2,
                                            device="cpu"), progress=False)
    return time.perf_counter() - started


def _same_dataset(a: Path, b: Path) -> bool:
    """Every image and mask pixel, frame record and coco.json of two datasets alike."""
    names = sorted(str(p.relative_to(a)) for sub in ("frames", "images", "masks") for p in (a / sub).iterdir())
    if names != sorted(str(p.relative_to(b)) for sub in ("frames", "images", "masks") for p in (b / sub).iterdir()):
        return False
    for name in names:
        if name.endswith(".png"):
            if not np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))):
                return False
        elif json.loads((a / name).read_text()) != json.loads((b / name).read_text()):
            return False
    return json.loads((a / "coco.json").read_text()) == json.loads((b / "coco.json").read_text())


def chain_benchmark(tmp: Path) -> dict[str, Any]:
    model = _tiny_refiner(tmp / "models")
    results: dict[str, Any] = {}
    rows = []
    for engine, workers in (("local", 1), ("ray", 2)):
        render_s = _render(tmp / f"render_{engine}", engine, tmp, workers)
        refine_s = _refine(tmp / f"render_{engine}", tmp / f"refined_{engine}", model, engine)
        total = render_s + refine_s
        results[engine] = {"render_s": render_s, "refine_s": refine_s, "total_s": total,
                           "frames_per_minute": CHAIN_FRAMES / total * 60.0}
        rows.append([engine, CHAIN_FRAMES, render_s, refine_s, results[engine]["frames_per_minute"]])
    identical = (_same_dataset(tmp / "render_local", tmp / "render_ray")
                 and _same_dataset(tmp / "refined_local", tmp / "refined_ray"))
    ratio = results["ray"]["frames_per_minute"] / results["local"]["frames_per_minute"]
    print_table(f"Whole chain (render {CHAIN_RESOLUTION} px fast preset, crop, refine, reinsert, write), "
                f"{CHAIN_FRAMES} frames; local: 1 render worker x 2 threads, refine in process; "
                "ray: 2 one-CPU render tasks, 2 refiner actors",
                ["engine", "frames", "render s", "refine s", "frames/min"], rows)
    print(f"ray / local: {ratio:.2f}x; identical outputs: {identical}")
    return {"frames": CHAIN_FRAMES, "resolution": CHAIN_RESOLUTION, "engines": results,
            "ray_vs_local": ratio, "identical_outputs": identical}


# Render workers per machine: (engine, workers, Cycles threads each). The first is the baseline.
# Each worker process renders WORKER_FRAMES / 2 frames, so two workers can share the frames and
# every setting pays for the same two process starts.
WORKER_FRAMES = 8
WORKER_SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("local", 1, 1), ("local", 1, 2), ("local", 2, 1), ("ray", 1, 1), ("ray", 2, 1),
)


def workers_benchmark(tmp: Path) -> dict[str, Any]:
    """Render throughput with 1 and N workers, local processes and local Ray tasks, against
    one local worker on one thread; and which setting is best on this machine."""
    rows, runs = [], []
    for engine, workers, threads in WORKER_SETTINGS:
        seconds = _render(tmp / f"workers_{engine}_{workers}x{threads}", engine, tmp, workers, threads,
                          frames=WORKER_FRAMES, frames_per_worker=WORKER_FRAMES // 2)
        runs.append({"engine": engine, "workers": workers, "threads": threads, "render_s": seconds,
                     "frames_per_minute": WORKER_FRAMES / seconds * 60.0})
    baseline = runs[0]["frames_per_minute"]
    for run in runs:
        run["vs_one_worker_one_thread"] = run["frames_per_minute"] / baseline
        rows.append([run["engine"], run["workers"], run["threads"], run["render_s"], run["frames_per_minute"],
                     run["vs_one_worker_one_thread"]])
    best = max(runs, key=lambda r: r["frames_per_minute"])
    ray = {r["workers"]: r["frames_per_minute"] for r in runs if r["engine"] == "ray"}
    print_table(f"Render workers ({WORKER_FRAMES} frames, {WORKER_FRAMES // 2} per worker process, "
                f"{CHAIN_RESOLUTION} px, fast preset; baseline: 1 local worker, 1 thread)",
                ["engine", "workers", "threads each", "render s", "frames/min", "vs baseline"], rows)
    print(f"best: {best['engine']} x {best['workers']} ({best['threads']} thread(s) each); "
          f"ray 2 CPUs / 1 CPU: {ray[2] / ray[1]:.2f}x")
    return {"frames": WORKER_FRAMES, "frames_per_worker": WORKER_FRAMES // 2, "resolution": CHAIN_RESOLUTION,
            "runs": runs, "best": {k: best[k] for k in ("engine", "workers", "threads", "frames_per_minute")},
            "ray_scaling_2_vs_1_cpu": ray[2] / ray[1]}


# ------------------------------------------------------------------------------ 2. render cost


def _quality_config(overrides: dict[str, Any]) -> Any:
    from blender_addon.core.batch import PRESETS, BatchConfig, with_overrides
    from blender_addon.core.placement import PlacementConfig

    settings = with_overrides(PRESETS["default"], resolution=QUALITY_RESOLUTION, motion_blur_shutter=0.0,
                              **overrides)
    return BatchConfig(scene=SCENE, count=1, seed=3, render=settings,
                       placement=PlacementConfig(sitting_range=(3, 3), standing_range=(2, 2)))


def _render_frame(overrides: dict[str, Any], folder: Path, window: tuple[int, int, int, int] | None = None,
                  seed_offset: int = 0) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Frame 0 rendered after a warm-up frame (MakeHuman data is parsed once per process);
    ``window`` forces a border render of that window instead (the reference)."""
    from blender_addon.bl.render import FrameRenderer
    from blender_addon.core.batch import prepare_run_folder
    from blender_addon.core.render_region import Region

    config = _quality_config(overrides)
    prepare_run_folder(folder, config)
    renderer = FrameRenderer(config, folder, threads=2, cycles_seed_offset=seed_offset,
                             window=Region(*window) if window is not None else None)
    if window is None:
        renderer.render_frame(1)  # warm-up on another frame
    started = time.perf_counter()
    record = renderer.render_frame(0)
    seconds = time.perf_counter() - started
    image = np.asarray(Image.open(folder / "images" / "000000.png"), dtype=np.float64)
    return image, seconds, record


def _people_window(record: dict[str, Any]) -> tuple[int, int, int, int]:
    """A square window centred on the people's head points."""
    heads = np.array([a["head_point"] for a in record["annotations"]], dtype=np.float64)
    centre = heads.mean(axis=0)
    size = QUALITY_RESOLUTION
    x0 = int(np.clip(round(centre[0] - QUALITY_WINDOW / 2), 0, size - QUALITY_WINDOW))
    y0 = int(np.clip(round(centre[1] - QUALITY_WINDOW / 2), 0, size - QUALITY_WINDOW))
    return x0, y0, x0 + QUALITY_WINDOW, y0 + QUALITY_WINDOW


def _psnr(image: np.ndarray, reference: np.ndarray, where: np.ndarray | None = None) -> float:
    diff = (image - reference) ** 2
    mse = float(diff[where].mean() if where is not None else diff.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def quality_benchmark(tmp: Path) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    images: dict[str, np.ndarray] = {}
    window: tuple[int, int, int, int] | None = None
    for index, (name, overrides) in enumerate(QUALITY_SETTINGS):
        image, seconds, record = _render_frame(overrides, tmp / f"quality_{index}")
        window = window or _people_window(record)
        region = record["manifest"]["render_region"]
        runs[name] = {"seconds": seconds, **overrides, "render_region": region,
                      "region_share": (None if region is None else
                                       (region["x1"] - region["x0"]) * (region["y1"] - region["y0"])
                                       / QUALITY_RESOLUTION**2)}
        images[name] = image
    assert window is not None
    x0, y0, x1, y1 = window
    # The reference: the thesis's setting at 2048 samples, the window only, its own Cycles seed.
    reference, reference_s, _ = _render_frame({"samples": REFERENCE_SAMPLES, "adaptive_threshold": 0.0,
                                               "denoise": False}, tmp / "reference", window, seed_offset=7919)
    inner = (slice(y0 + 1, y1 - 1), slice(x0 + 1, x1 - 1))  # the border's edge pixels may be partial
    # "People": the pixels the people change (bodies and shadows): where the reference differs
    # from the bare room photo, as the compositing writes it (8-bit sRGB).
    from blender_addon.core.dataset import linear_to_srgb, load_photo_linear
    from blender_addon.core.scene_format import load_scene

    photo_linear = load_photo_linear(load_scene(SCENE).photo_path, (QUALITY_RESOLUTION, QUALITY_RESOLUTION))
    photo = (np.clip(linear_to_srgb(photo_linear), 0.0, 1.0) * 255.0 + 0.5).astype(np.int64).astype(np.float64)
    people = np.abs(reference[inner] - photo[inner]).max(axis=2) > 2.0
    rows = []
    for name, run in runs.items():
        for key, where in (("psnr_window_db", None), ("psnr_people_db", people)):
            run[key] = _psnr(images[name][inner], reference[inner], where)
        rows.append([name, run["seconds"], run["psnr_window_db"], run["psnr_people_db"],
                     run["region_share"] if run["region_share"] is not None else 1.0])
    thesis = runs[QUALITY_SETTINGS[0][0]]
    for run in runs.values():
        run["speedup_vs_thesis"] = thesis["seconds"] / run["seconds"]
    matched = [run for run in list(runs.values())[1:] if run["psnr_people_db"] >= thesis["psnr_people_db"]]
    best = max(matched, key=lambda r: r["speedup_vs_thesis"]) if matched else None
    print_table(f"Render cost per {QUALITY_RESOLUTION} px frame (5 people); PSNR in a {QUALITY_WINDOW} px "
                f"window around them vs a {REFERENCE_SAMPLES}-sample reference ({reference_s:.0f} s)",
                ["setting", "s/frame", "PSNR window dB", "PSNR people dB", "share rendered"], rows)
    speedup = best["speedup_vs_thesis"] if best else None
    print(f"speed-up at equal or better people PSNR than the thesis setting: "
          f"{'none reaches it' if speedup is None else f'{speedup:.2f}x'}")
    return {"resolution": QUALITY_RESOLUTION, "window_xyxy": list(window), "people_pixels": int(people.sum()),
            "reference_samples": REFERENCE_SAMPLES, "reference_seconds": reference_s, "settings": runs,
            "speedup_at_equal_psnr_people": speedup,
            "best_at_equal_psnr": next((n for n, r in runs.items() if r is best), None)}


# ------------------------------------------------------------------------------ 3. DDP


def ddp_benchmark(tmp: Path) -> dict[str, Any]:
    from bench import bench_ddp_step
    from refiner_daemon.detector.toydata import write_disc_dataset

    data = write_disc_dataset(tmp / "discs", images=bench_ddp_step.IMAGES, size=bench_ddp_step.IMAGE_SIZE, seed=0)
    rows = [bench_ddp_step.measure(n, True, data, tmp) for n in (1, 2)]
    print_table("Detector training step (DDP, gloo, 1 thread a process)",
                ["processes", "global batch", "step s (median)", "images/s"],
                [[r["processes"], r["global_batch"], r["step_s_median"], r["images_per_s"]] for r in rows])
    return {"step_s_1_process": rows[0]["step_s_median"], "step_s_2_processes": rows[1]["step_s_median"],
            "images_per_s_ratio_2_vs_1": rows[1]["images_per_s"] / rows[0]["images_per_s"], "runs": rows}


def main() -> None:
    load_before = os.getloadavg()
    # BENCH_SCALE_PARTS=chain,workers,quality,ddp (default all) reruns some parts; the others keep the
    # results (and the time, under "measured") of the last run that measured them.
    parts = os.environ.get("BENCH_SCALE_PARTS", "chain,workers,quality,ddp").split(",")
    previous_path = RESULTS_DIR / "scale.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    measured = dict(previous.get("measured", {}))
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as name:
        tmp = Path(name)
        results: dict[str, Any] = {}
        for part, bench, key in (("chain", chain_benchmark, "chain"), ("workers", workers_benchmark, "workers"),
                                 ("quality", quality_benchmark, "render_quality"), ("ddp", ddp_benchmark, "ddp")):
            if part in parts:
                results[key] = bench(tmp)
                measured[key] = {"at": stamp, "load_average_1min_before": load_before[0]}
            else:
                results[key] = previous.get(key)
                if results[key] is not None and key not in measured:  # from a run before "measured"
                    measured[key] = {"at": previous.get("timestamp")}
        chain, workers, quality, ddp = (results[k] for k in ("chain", "workers", "render_quality", "ddp"))
    write_result("scale", {
        "cpu_count": os.cpu_count(),
        "measured": measured,
        "load_average_1_5_15_min": {"before": list(load_before), "after": list(os.getloadavg())},
        "frames_per_minute": None if chain is None else {
            "local": chain["engines"]["local"]["frames_per_minute"],
            "ray": chain["engines"]["ray"]["frames_per_minute"]},
        "identical_outputs": None if chain is None else chain["identical_outputs"],
        "render_workers": None if workers is None else {
            "best": workers["best"], "ray_scaling_2_vs_1_cpu": workers["ray_scaling_2_vs_1_cpu"]},
        "speedup_at_equal_psnr_people": None if quality is None else quality["speedup_at_equal_psnr_people"],
        "ddp_step_s": None if ddp is None else {"1": ddp["step_s_1_process"], "2": ddp["step_s_2_processes"]},
        "chain": chain, "workers": workers, "render_quality": quality, "ddp": ddp,
        "scaled_down": {"chain_frames": CHAIN_FRAMES, "chain_resolution": CHAIN_RESOLUTION,
                        "quality_resolution": QUALITY_RESOLUTION, "quality_window": QUALITY_WINDOW,
                        "why": "2 shared CPU cores; a 1024 px thesis frame alone takes over 10 minutes"},
    })


if __name__ == "__main__":
    main()
