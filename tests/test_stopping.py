"""The stop contract (issue 20): a command that starts processes stops all of them within 2 s
of SIGTERM, SIGINT or SIGHUP sent to its own process alone, logs one line saying so and exits
with 128 + the signal number; after ``kill -9`` of the command its children end by themselves
(parent-death signal, watchdog). Processes are found through /proc (no psutil)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from protocol.processes import descendants, pid_alive

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _all_gone(pids: list[int], within_s: float = 2.0) -> list[int]:
    """The pids still alive ``within_s`` after now (polled: returns early when all are gone)."""
    deadline = time.monotonic() + within_s
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def _wait_for(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


SLEEPER_PARENT = """
    import sys, time
    from protocol import processes
    from protocol.cli import run_main

    def main(argv):
        child = processes.popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
        return 0

    raise SystemExit(run_main(main, [], prog="sleeper"))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_main_stops_children_and_exits_128_plus_n(signum: int) -> None:
    parent = _python(SLEEPER_PARENT)
    child = int(parent.stdout.readline())  # type: ignore[union-attr]
    assert pid_alive(child)
    parent.send_signal(signum)
    assert _all_gone([child]) == []
    _, err = parent.communicate(timeout=10)
    assert parent.returncode == 128 + signum
    lines = [line for line in err.splitlines() if "received" in line]
    expected = (f"sleeper: received {signal.Signals(signum).name}; stopped 1 child process; "
                f"exiting with code {128 + signum}")
    assert lines == [expected], err


def test_popen_child_dies_with_a_killed_parent() -> None:
    parent = _python(SLEEPER_PARENT)
    child = int(parent.stdout.readline())  # type: ignore[union-attr]
    parent.kill()  # SIGKILL: no handler runs; the kernel's parent-death signal does the work
    parent.wait(10)
    assert _all_gone([child]) == []


def test_multiprocessing_worker_watches_its_parent() -> None:
    parent = _python("""
        import multiprocessing, time
        from protocol import processes

        def work():
            processes.die_with_parent()
            time.sleep(60)

        if __name__ == "__main__":
            worker = multiprocessing.get_context("spawn").Process(target=work)
            worker.start()
            print(worker.pid, flush=True)
            time.sleep(60)
    """)
    child = int(parent.stdout.readline())  # type: ignore[union-attr]
    time.sleep(1.0)  # the spawned worker reaches die_with_parent
    parent.kill()
    parent.wait(10)
    assert _all_gone([child]) == []


# --------------------------------------------------------------------------- real commands

def _render_command(out: Path, count: int = 60) -> list[str]:
    return [sys.executable, "-m", "blender_addon.bl.cli_entry", "--scene",
            str(ROOT / "scenes" / "sample_office"), "--count", str(count), "--seed", "3",
            "--preset", "fast", "--resolution", "64", "--samples", "2", "--human-backend", "proxy",
            "--workers", "1", "--frames-per-worker", "30", "--threads", "1", "--no-progress",
            "--out", str(out)]


def _frames_valid(out: Path) -> list[int]:
    """Every finished frame's JSON parses and its image and mask are complete."""
    done = []
    for path in sorted((out / "frames").glob("*.json")):
        record = json.loads(path.read_text())
        assert record
        for image in (out / "images").glob(f"{path.stem}.*"):
            with Image.open(image) as handle:
                handle.load()
        done.append(int(path.stem))
    return done


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_batch_render_leaves_no_worker_and_resumes(signum: int, tmp_path: Path) -> None:
    pytest.importorskip("bpy")
    out = tmp_path / "render"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    parent = subprocess.Popen(_render_command(out), cwd=ROOT, text=True, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = _wait_for(lambda: (out / "frames").is_dir() and any((out / "frames").iterdir())
                        and descendants(parent.pid), 180, "a worker with one frame done")
    parent.send_signal(signum)
    assert _all_gone(workers) == [], "a worker outlived the render command"
    _, err = parent.communicate(timeout=10)
    assert parent.returncode == (128 + signum if signum != signal.SIGKILL else -signal.SIGKILL)
    if signum == signal.SIGTERM:
        assert "render: received SIGTERM; stopped 1 child process; exiting with code 143" in err
    done = _frames_valid(out)
    assert done, "no frame finished"
    # A rerun resumes: the finished frames are kept, only the rest is rendered.
    count = max(done) + 2
    rerun = subprocess.run(_render_command(out, count), cwd=ROOT, text=True, env=env,
                           capture_output=True, timeout=240, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len([d for d in done if d < count])} already done" in rerun.stdout
    assert _frames_valid(out) == list(range(count))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
def test_daemon_serve_exits_128_plus_n(signum: int, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "refiner_daemon.cli", "serve", "--bind", "tcp://127.0.0.1:*",
         "--models", str(tmp_path / "models"), "--state", str(tmp_path / "state"),
         "--device", "cpu"], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    banner = daemon.stdout.readline()  # type: ignore[union-attr]
    assert banner.startswith("refiner daemon on"), daemon.stderr.read()  # type: ignore[union-attr]
    below = descendants(daemon.pid)
    daemon.send_signal(signum)
    _, err = daemon.communicate(timeout=30)
    assert _all_gone(below) == []
    if signum == signal.SIGKILL:
        assert daemon.returncode == -signal.SIGKILL
        return
    assert daemon.returncode == 128 + signum, err
    assert f"refiner-daemon serve: received {signal.Signals(signum).name}" in err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_demo_stops_its_stage_and_the_stage_workers(signum: int, tmp_path: Path) -> None:
    """The demo runs the render command, which runs a worker: a signal to the demo alone
    leaves neither running (the render stage covers the demo's process handling)."""
    pytest.importorskip("bpy")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    demo = subprocess.Popen([sys.executable, "-m", "refiner_daemon.demo", "--out",
                             str(tmp_path / "demo"), "--frames", "40", "--train-steps", "1"],
                            cwd=ROOT, text=True, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    # demo -> render command -> render worker
    def stage_with_worker() -> list[int] | None:
        found = descendants(demo.pid)
        return found if len(found) >= 2 else None

    tree = _wait_for(stage_with_worker, 120, "the render stage's worker")
    time.sleep(0.5)
    tree = descendants(demo.pid) or tree
    demo.send_signal(signum)
    assert _all_gone(tree) == [], "a stage process outlived the demo"
    _, err = demo.communicate(timeout=10)
    if signum == signal.SIGKILL:
        assert demo.returncode == -signal.SIGKILL
    else:
        assert demo.returncode == 128 + signum, err
        assert "demo: received SIGTERM; stopped 1 child process" in err


def test_run_main_stops_only_the_children_it_started() -> None:
    """An in-process command (the pipeline calling another command's main) ends the children
    it started, never those its caller tracked before."""
    from protocol import processes
    from protocol.cli import run_main

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    outer = processes.popen(sleeper)
    inner: list[subprocess.Popen[bytes]] = []
    try:
        assert run_main(lambda argv: inner.append(processes.popen(sleeper)) or 0, []) == 0
        assert _all_gone([inner[0].pid]) == [] and inner[0].returncode is not None
        assert outer.poll() is None
    finally:
        processes.stop_children(which=[outer])
    assert outer.returncode is not None and outer not in processes.tracked()


@pytest.mark.slow
def test_refiner_training_stops_with_a_checkpoint(tmp_path: Path) -> None:
    """Training starts no processes: a stop signal ends it after the current step, with a
    checkpoint to resume from, and the command exits with 128 + N."""
    import broken_datasets as bd

    synthetic, real = bd.good_crops(tmp_path / "S", 6), bd.good_crops(tmp_path / "R", 6)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "refiner_daemon.refiner.train", "--run-dir", str(run),
               "--synthetic", str(synthetic), "--real", str(real), "--preset", "C_CP",
               "--width", "4", "--disc-width", "4", "--n-blocks", "1", "--crop-size", "32x32",
               "--max-steps", "100000", "--checkpoint-every", "100000", "--device", "cpu",
               "--no-tensorboard", "--no-progress"]
    trainer = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for(lambda: (run / "config.json").exists(), 120, "training to start")
    time.sleep(2.0)
    trainer.send_signal(signal.SIGTERM)
    _, err = trainer.communicate(timeout=60)
    assert trainer.returncode == 128 + signal.SIGTERM, err
    assert "train-refiner: received SIGTERM" in err and "--resume" in err
    assert (run / "checkpoints" / "latest.pt").is_file()
