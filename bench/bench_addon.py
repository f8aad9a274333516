"""Live preview latency: from the Refine Preview click to the refined image in the Image Editor.

A 1024x1024 frame with 5 MakeHuman people (rendered once by the render CLI and cached in
``out/bench_addon/frame``), a refiner daemon started as its own process on loopback with a
width-32 AGGAN generator (random weights: the timing does not depend on training), and the
add-on registered in pip ``bpy``. Each round presses the operator and drives the timer until
the three result images are in Blender; the split is crop, transfer, refine (the daemon's own
time), reinsert and display. Baseline, same daemon and run: refining the whole 1024x1024 frame
in one piece (what a refiner without person crops would have to do).

    python -m bench addon
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import print_table, write_result

PROJECT = Path(__file__).resolve().parents[1]
FRAME_DIR = PROJECT / "out" / "bench_addon" / "frame"
ROUNDS = 5
RENDER_ARGS = ["--scene", str(PROJECT / "scenes" / "sample_office"), "--count", "1", "--seed", "3",
               "--sitting", "3,3", "--standing", "2,2", "--preset", "fast", "--resolution", "1024",
               "--samples", "4", "--workers", "0", "--no-progress"]


def ensure_frame() -> Path:
    if not (FRAME_DIR / "frames" / "000000.json").is_file():
        print("rendering the benchmark frame once (1024 px, 5 people; a few minutes on 2 cores) ...", flush=True)
        subprocess.run([sys.executable, "-m", "blender_addon.bl.cli_entry", *RENDER_ARGS, "--out", str(FRAME_DIR)],
                       check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return FRAME_DIR


def export_model(models: Path) -> str:
    from refiner_daemon.refiner.training import ModelSpec, export_refiner

    spec = ModelSpec(architecture="aggan", width=32, n_blocks=9, attention_width=32, crop_size=(256, 128))
    export_refiner(models / "aggan32.pt", spec, spec.build_generator(), spec.build_attention(), name="aggan32")
    return "aggan32"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_daemon(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "refiner_daemon.cli", "serve", "--models", str(root / "models"),
         "--state", str(root / "state"), "--bind", endpoint, "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return process, endpoint


def whole_frame_baseline(endpoint: str, image: np.ndarray, model: str, rounds: int) -> list[float]:
    from protocol.messages import RefineRequest
    from protocol.transport import Client

    times = []
    with Client(endpoint, timeout_ms=120000, retries=0) as client:
        for _ in range(rounds + 1):  # the first call decides the precision; not timed
            started = time.perf_counter()
            client.request(RefineRequest(model=model, crops=np.ascontiguousarray(image[None])))
            times.append(time.perf_counter() - started)
    return times[1:]


def main() -> None:
    import bpy

    import blender_addon
    from blender_addon.ui import actions, preferences, runtime

    frame_dir = ensure_frame()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        model = export_model(root / "models")
        os.environ["FISHEYE_SYNTH_USER_DIR"] = str(root / "user")
        daemon, endpoint = start_daemon(root)
        blender_addon.register()
        try:
            preferences.use_settings(preferences.DaemonSettings(endpoint=endpoint, timeout_ms=60000, retries=0))
            bpy.context.scene.fisheye_synth.model = model
            actions.use_preview_frame(frame_dir)
            walls: list[float] = []
            stages: list[dict[str, float]] = []
            people = 0
            for round_index in range(ROUNDS + 1):  # round 0 loads the model: warm-up
                started = time.perf_counter()
                assert bpy.ops.fsynth.refine_preview() == {"FINISHED"}
                while runtime.busy("refine"):
                    runtime.tick()
                    time.sleep(0.002)
                wall = time.perf_counter() - started
                result = actions.last_result()
                if result is None or not runtime.STATUS.get("refine", "").startswith("refined"):
                    raise RuntimeError(f"refine preview failed: {runtime.STATUS}")
                if round_index:
                    walls.append(wall)
                    stages.append(result.times.to_dict())
                people = len(result.crops.records)
            frame = result.frame
            baseline = whole_frame_baseline(endpoint, frame.image, model, 3)
        finally:
            preferences.use_settings(None)
            blender_addon.unregister()
            daemon.terminate()
            daemon.wait(timeout=10)

    median = {key: statistics.median(s[key] for s in stages) for key in stages[0]}
    wall = statistics.median(walls)
    base = statistics.median(baseline)
    share = (median["transfer"] + median["reinsert"]) / wall
    rows = [[name, median[name] * 1000, median[name] / wall * 100]
            for name in ("crop", "transfer", "refine", "reinsert", "display")]
    rows.append(["read frame + timer polling", (wall - median["total"]) * 1000, (wall - median["total"]) / wall * 100])
    rows.append(["click -> images (wall)", wall * 1000, 100.0])
    print_table(f"live preview: {frame.image.shape[1]}x{frame.image.shape[0]} frame, {people} people, "
                f"width-32 AGGAN on CPU, median of {ROUNDS}", ["stage", "ms", "% of wall"], rows)
    print_table("baseline: the whole frame through the same refiner", ["path", "ms", "ratio"],
                [["crops (ours, wall)", wall * 1000, 1.0], ["whole frame", base * 1000, base / wall]])
    print(f"target: wall < 2000 ms -> {'met' if wall < 2.0 else 'missed'}; transfer + reinsert "
          f"{share * 100:.1f}% of wall (< 10% -> {'met' if share < 0.1 else 'missed'})")
    write_result("addon", {
        "frame": list(frame.image.shape[:2]), "people": people, "model": "aggan width 32, 9 blocks, random weights",
        "rounds": ROUNDS, "stage_median_s": median, "wall_median_s": wall, "walls_s": walls,
        "baseline_whole_frame_s": baseline, "baseline_over_ours": base / wall,
        "transfer_plus_reinsert_share": share, "load_average": os.getloadavg(),
    })


if __name__ == "__main__":
    main()
