"""Resume after a kill: a worker process is killed mid-run; rerunning the same command renders
only the missing frames, and every frame's annotations are byte-identical to a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("bpy")

pytestmark = [pytest.mark.blender, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 6


def _command(out: Path) -> list[str]:
    # Box-and-sphere stand-ins keep this about process management, not rendering.
    return [sys.executable, "-m", "blender_addon.bl.cli_entry", "--scene",
            str(ROOT / "scenes" / "sample_office"), "--count", str(FRAMES), "--seed", "11",
            "--preset", "fast", "--resolution", "64", "--samples", "2", "--human-backend", "proxy",
            "--workers", "1", "--frames-per-worker", "2", "--threads", "1", "--no-progress",
            "--out", str(out)]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _env(out: Path) -> dict[str, str]:
    # Scratch EXRs go to the test's folder, so a killed worker's leftover is cleaned up too.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(out.parent)}


def _run(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(out), check=False, capture_output=True, text=True, timeout=240,
                          cwd=ROOT, env=_env(out))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find workers")
def test_killed_worker_then_rerun_matches_a_clean_run(tmp_path: Path) -> None:
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    assert _run(clean).returncode == 0

    parent = subprocess.Popen(_command(resumed), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(resumed))
    killed = False
    deadline = time.monotonic() + 180
    # Frames go to workers in chunks of two: kill the worker that holds frames 2 and 3 as soon
    # as it has finished frame 2, so frame 3 is lost mid-chunk.
    while time.monotonic() < deadline and parent.poll() is None:
        if (resumed / "frames" / "000002.json").exists() and not killed:
            for child in _children(parent.pid):
                os.kill(child, signal.SIGKILL)
                killed = True
        time.sleep(0.05)
    _, stderr = parent.communicate(timeout=180)
    assert killed, "never saw a worker to kill"
    assert parent.returncode == 1, stderr
    assert "missing" in stderr and "rerun the same command" in stderr
    done = sorted(p.name for p in (resumed / "frames").glob("*.json"))
    assert "000003.json" not in done and len(done) < FRAMES

    second = _run(resumed)
    assert second.returncode == 0, second.stderr
    assert f"{len(done)} already done, {FRAMES - len(done)} to render" in second.stdout
    for index in range(FRAMES):
        name = f"{index:06d}"
        assert (resumed / "frames" / f"{name}.json").read_bytes() == \
            (clean / "frames" / f"{name}.json").read_bytes()
        assert (resumed / "masks" / f"{name}.png").read_bytes() == \
            (clean / "masks" / f"{name}.png").read_bytes()
    assert (resumed / "coco.json").read_bytes() == (clean / "coco.json").read_bytes()
    # No half-written files are left behind.
    assert not [p for p in resumed.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
