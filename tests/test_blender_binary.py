"""`blender -b` parity: the render CLI under a real Blender binary gives the same dataset as
under the pip ``bpy`` module, with the one documented command line.

The binary run needs ``BLENDER_BIN`` (a Blender 5.0+ executable) and skips with a message
without it; the check that the documented command is the one the code runs needs nothing.
The binary gets the project's dependencies (Pillow, OpenEXR, tqdm, msgpack) from this Python's
``site-packages`` through ``PYTHONPATH``, which Blender reads because of
``--python-use-system-env``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import blender_version
from blender_addon.core.render_cli import BLENDER_BATCH_FLAGS, blender_script_command

PROJECT = Path(__file__).resolve().parents[1]
ENTRY = "blender_addon/bl/cli_entry.py"
DOCUMENTED = f"blender {' '.join(BLENDER_BATCH_FLAGS)} -P {ENTRY} --"
ARGS = ["--scene", str(PROJECT / "scenes" / "sample_office"), "--count", "2", "--seed", "5",
        "--preset", "fast", "--resolution", "96", "--samples", "2", "--no-denoise", "--motion-blur", "0",
        "--human-backend", "proxy", "--sitting", "2,2", "--standing", "1,1", "--workers", "1",
        "--threads", "2", "--device", "cpu", "--no-progress"]


def test_the_documented_command_is_the_one_the_code_runs() -> None:
    assert {"-b", "--factory-startup", "--python-use-system-env"} <= set(BLENDER_BATCH_FLAGS)
    flags = list(BLENDER_BATCH_FLAGS)
    assert flags[flags.index("--python-exit-code") + 1] == "1"
    assert " ".join(blender_script_command("blender", ENTRY)) == DOCUMENTED
    from blender_addon.core.preview_pipeline import render_cli_prefix

    assert render_cli_prefix("blender")[:-3] == ["blender", *BLENDER_BATCH_FLAGS]
    for doc in ("README.md", "docs/rendering.md"):
        text = (PROJECT / doc).read_text(encoding="utf-8")
        assert DOCUMENTED in text, f"{doc} does not show the command line: {DOCUMENTED}"


def _render(command: list[str], out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    run = subprocess.run([*command, *ARGS, "--out", str(out)], cwd=PROJECT, env=env, capture_output=True,
                         text=True, timeout=1200, check=False)
    assert run.returncode == 0, f"{command[0]} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def _frames(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "frames").glob("*.json"))}


def test_blender_binary_renders_the_same_dataset_as_pip_bpy(tmp_path: Path) -> None:
    binary = os.environ.get("BLENDER_BIN")
    if not binary:
        pytest.skip("no Blender binary: set BLENDER_BIN=/path/to/blender (5.0 or newer) to compare "
                    "`blender -b ... -P blender_addon/bl/cli_entry.py` with the pip bpy module")
    if not Path(binary).is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"BLENDER_BIN={binary} is not an executable file")
    pytest.importorskip("bpy")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    _render([sys.executable, "-m", "blender_addon.bl.cli_entry"], tmp_path / "pip", env)
    paths = [str(PROJECT), *site.getsitepackages()]
    binary_env = {**env, "PYTHONPATH": os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    _render(blender_script_command(binary, ENTRY), tmp_path / "binary", binary_env)

    pip_frames, binary_frames = _frames(tmp_path / "pip"), _frames(tmp_path / "binary")
    assert sorted(pip_frames) == sorted(binary_frames) == ["000000", "000001"]
    for name, ours in pip_frames.items():
        theirs = binary_frames[name]
        assert int(theirs["manifest"]["versions"]["blender"].split(".")[0]) >= 5
        assert theirs["manifest"]["recipe"] == ours["manifest"]["recipe"]
        assert [a["instance_id"] for a in theirs["annotations"]] == [a["instance_id"] for a in ours["annotations"]]
        for a, b in zip(ours["annotations"], theirs["annotations"]):
            assert a["head_point"] == pytest.approx(b["head_point"], abs=1e-6)
            assert a["keypoints"][2] == b["keypoints"][2]
            assert a["bbox"] == pytest.approx(b["bbox"], abs=1.0)
        from PIL import Image

        masks = [np.asarray(Image.open(root / ours["mask"])) for root in (tmp_path / "pip", tmp_path / "binary")]
        assert (masks[0] != masks[1]).mean() < 0.002  # instance masks: the same pixels, up to edge samples
        images = [np.asarray(Image.open(root / ours["image"]), dtype=np.float32)
                  for root in (tmp_path / "pip", tmp_path / "binary")]
        assert np.abs(images[0] - images[1]).mean() < 2.0
    coco = [json.loads((tmp_path / root / "coco.json").read_text()) for root in ("pip", "binary")]
    assert len(coco[0]["annotations"]) == len(coco[1]["annotations"])


def _any_blender() -> tuple[str, tuple[int, ...]]:
    """``BLENDER_BIN``, else a ``blender`` on PATH (any version), with its version; skips
    without one."""
    binary = os.environ.get("BLENDER_BIN") or shutil.which("blender")
    if not binary:
        pytest.skip("no Blender binary: set BLENDER_BIN=/path/to/blender, or put one on PATH")
    run = subprocess.run([binary, "-b", "--factory-startup", "--version"], capture_output=True, text=True,
                         timeout=120, check=False)
    found = re.search(r"Blender (\d+)\.(\d+)(?:\.(\d+))?", run.stdout)
    if found is None:
        pytest.fail(f"{binary} --version printed no Blender version: {run.stdout[-500:]}{run.stderr[-500:]}")
    return binary, tuple(int(v or 0) for v in found.groups())


def test_an_older_blender_refuses_with_a_clear_message_and_exit_code() -> None:
    """The documented command line under a Blender older than 5.0 (e.g. Debian's 3.4 package)
    stops before importing anything an old Blender cannot load, says why, and exits 2."""
    binary, version = _any_blender()
    if version >= blender_version.MIN_BLENDER_VERSION:
        pytest.skip(f"{binary} is Blender {version}: this test needs one older than 5.0")
    for script in (ENTRY, "blender_addon/ui/preview_worker.py"):
        run = subprocess.run([*blender_script_command(binary, script), "--help"], cwd=PROJECT,
                             capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 2, (script, run.returncode, run.stderr[-2000:])
        assert "Fisheye Synth needs Blender 5.0.0 or newer, but this is Blender" in run.stderr
        assert "Traceback" not in run.stderr + run.stdout


def test_a_python_error_under_the_binary_exits_nonzero(tmp_path: Path) -> None:
    """--python-exit-code 1: a failing script must not look like a finished render."""
    binary, _ = _any_blender()
    script = tmp_path / "fail.py"
    script.write_text("raise RuntimeError('boom')\n")
    run = subprocess.run(blender_script_command(binary, script), capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
