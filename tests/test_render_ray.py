"""The Ray engine of the render CLI: the same frames as the local engine, byte for byte, and a
worker killed in the middle of a task is retried by Ray, recorded in the run report, and leaves
no frame missing or half-written. Each test starts its own local Ray instance of 2 CPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("bpy")
pytest.importorskip("ray", reason="the Ray engine's tests need Ray: pip install ray==2.60.0")

pytestmark = [pytest.mark.blender, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
REPORT = Path("run_reports") / "render_shard-0-of-1.json"


def _command(out: Path, engine: str, count: int, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "blender_addon.bl.cli_entry", "--scene",
               str(ROOT / "scenes" / "sample_office"), "--count", str(count), "--seed", "3",
               "--preset", "fast", "--resolution", "64", "--samples", "2", "--threads", "1",
               "--no-progress", "--engine", engine, "--out", str(out), *extra]
    return command + (["--ray-cpus", "2"] if engine == "ray" else [])


def _env(out: Path) -> dict[str, str]:
    # Scratch EXRs go to the test's folder, so a killed worker's leftovers are cleaned up too.
    # Ray's own session folder stays short: its socket paths must fit in 107 bytes.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(out.parent), "RAY_TMPDIR": "/tmp"}


def _render(out: Path, engine: str, count: int, *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(_command(out, engine, count, *extra), check=False, capture_output=True,
                            text=True, timeout=300, cwd=ROOT, env=_env(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for sub in ("frames", "images", "masks")
                  for p in (out / sub).iterdir())


def _assert_same_dataset(got: Path, want: Path, count: int) -> None:
    assert _files(got) == _files(want)
    assert len(list((got / "frames").glob("*.json"))) == count
    for name in (f"{i:06d}" for i in range(count)):
        # Pixels, not only bytes: a PNG written differently would still be the same image.
        for sub in ("images", "masks"):
            a = np.asarray(Image.open(got / sub / f"{name}.png"))
            b = np.asarray(Image.open(want / sub / f"{name}.png"))
            assert a.shape == b.shape and np.array_equal(a, b), f"{sub}/{name}.png differs"
        # Frame records hold no timings: the whole record must match.
        assert json.loads((got / "frames" / f"{name}.json").read_text()) == \
            json.loads((want / "frames" / f"{name}.json").read_text())
    assert json.loads((got / "coco.json").read_text()) == json.loads((want / "coco.json").read_text())
    # Nothing half-written is left behind (atomic writes leave ".<name>.<random>.tmp" when cut short).
    assert not [p for p in got.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def _last_run(out: Path) -> dict:
    return json.loads((out / REPORT).read_text())["runs"][-1]


def test_ray_engine_renders_the_same_frames_as_the_local_engine(tmp_path: Path) -> None:
    from blender_addon.bl import humans

    try:
        humans.data_root()
    except humans.HumanDataError as exc:
        pytest.skip(f"MakeHuman data missing: {exc}")
    local, ray = tmp_path / "local", tmp_path / "ray"
    # MakeHuman people with painted clothing; 2 frames per task, so 2 tasks run side by side.
    extra = ("--no-assets", "--frames-per-worker", "2")
    _render(local, "local", 4, *extra)
    result = _render(ray, "ray", 4, *extra)
    assert "ray engine, 2 tasks, 0 retries" in result.stdout
    _assert_same_dataset(ray, local, 4)
    run = _last_run(ray)
    assert run["engine"] == "ray" and run["settings"]["cpus_per_task"] == 1
    assert [(t["frames"], t["status"], t["attempts"]) for t in run["tasks"]] == \
        [([0, 1], "ok", 1), ([2, 3], "ok", 1)]
    assert _last_run(local)["engine"] == "local"


def _worker_pids(out: Path) -> list[int]:
    """Blender worker processes of the run in ``out`` (found by their command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-frames" in argv and str(out).encode() in argv:
            pids.append(int(entry.name))
    return pids


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find workers")
@pytest.mark.parametrize("victim", ["blender", "ray_worker"])
def test_a_worker_killed_mid_task_is_retried_and_recorded(tmp_path: Path, victim: str) -> None:
    """``blender``: the Blender process dies, the task fails and Ray retries the exception;
    ``ray_worker``: the Ray worker running the task dies (Blender goes with it through its
    parent-death signal) and Ray retries the lost task."""
    clean, out = tmp_path / "clean", tmp_path / "ray"
    # Box-and-sphere stand-ins keep this about process management, not rendering.
    extra = ("--human-backend", "proxy", "--frames-per-worker", "3")
    _render(clean, "local", 6, *extra)

    driver = subprocess.Popen(_command(out, "ray", 6, *extra), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(out))
    killed = None
    deadline = time.monotonic() + 120
    # Kill the worker of the first task (frames 0..2) as soon as it has finished frame 0, so the
    # task dies with frame 0 done and frames 1 and 2 not.
    while killed is None and time.monotonic() < deadline and driver.poll() is None:
        if (out / "frames" / "000000.json").exists():
            for pid in _worker_pids(out):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[argv.index(b"--worker-frames") + 1] == b"0,1,2":
                    target = pid if victim == "blender" else _parent(pid)
                    os.kill(target, signal.SIGKILL)
                    killed = target
        time.sleep(0.02)
    stdout, stderr = driver.communicate(timeout=240)
    assert killed is not None, f"never saw the first task's worker to kill:\n{stderr[-3000:]}"
    assert driver.returncode == 0, stderr[-3000:]
    _assert_same_dataset(out, clean, 6)

    run = _last_run(out)
    first, second = run["tasks"]
    assert first["frames"] == [0, 1, 2] and first["status"] == "ok"
    assert first["attempts"] == 2 and first["retries"] == 1 and len(first["failures"]) == 1
    expected = "exited with code -9" if victim == "blender" else "Ray worker process died"
    assert expected in first["failures"][0], first["failures"]
    assert second["attempts"] == 1 and second["failures"] == []
    assert run["retries"] == 1 and run["frames_rendered"] == 6
    assert "task 0 (frames 0..2): ok after 2 attempt(s)" in stderr
    assert "ray engine, 2 tasks, 1 retries" in stdout


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find workers")
def test_sigterm_stops_the_ray_run_and_its_workers(tmp_path: Path) -> None:
    """The project's stop contract holds under Ray (whose own handler would exit 1 at once): a
    SIGTERM to the command cancels every task, kills the Blender workers, exits 143."""
    out = tmp_path / "ray"
    driver = subprocess.Popen(_command(out, "ray", 40, "--human-backend", "proxy",
                                       "--frames-per-worker", "20"),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(out))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None and len(_worker_pids(out)) < 2:
        time.sleep(0.05)
    assert len(_worker_pids(out)) == 2, "the two tasks' workers never started"
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 143, stderr[-3000:]
    assert "received SIGTERM; cancelling the Ray tasks; exiting with code 143" in stderr
    for _ in range(60):  # the parent-death signal reaches Blender within moments
        if not _worker_pids(out):
            break
        time.sleep(0.05)
    assert _worker_pids(out) == []
    assert len(list((out / "frames").glob("*.json"))) < 40
