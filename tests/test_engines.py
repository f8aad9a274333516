"""The render engines' registry and options, without Blender or Ray: a wrong engine name lists
the valid ones, --engine local runs (and writes its run report) with Ray unimportable, and
--engine ray without Ray says how to install it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_render_worker import fake_backend

from blender_addon.core import engines
from blender_addon.core.batch import BatchError
from blender_addon.core.render_cli import run

ROOT = Path(__file__).resolve().parents[1]

def _args(out: Path, *extra: str) -> list[str]:
    return ["--scene", str(ROOT / "scenes" / "sample_office"), "--count", "6", "--out", str(out),
            "--no-progress", "--human-backend", "proxy", *extra]


def test_unknown_engine_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BatchError, match="unknown engine 'dask'; valid engines: local, ray"):
        engines.make_engine("dask", engines.EngineOptions())
    with pytest.raises(SystemExit):
        run(_args(Path("unused"), "--engine", "dask"), fake_backend("always"))
    assert "invalid choice: 'dask' (choose from 'local', 'ray')" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (("--engine", "ray", "--workers", "0"), "--workers 0 renders in this process"),
    (("--address", "auto"), "--address and --ray-cpus are for --engine ray"),
    (("--engine", "ray", "--address", "auto", "--ray-cpus", "2"), "--ray-cpus sizes a local Ray"),
    (("--engine", "ray", "--max-retries", "-1"), "--max-retries must be >= 0"),
])
def test_bad_engine_options_fail_with_clear_messages(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str) -> None:
    assert run(_args(tmp_path / "o", *extra), fake_backend("always")) == 2
    assert message in capsys.readouterr().err


def test_local_engine_needs_no_ray_and_reports_its_tasks(tmp_path: Path) -> None:
    # In a fresh interpreter where `import ray` fails, the local engine renders (with the fake
    # worker) and records per-task outcomes; the failed chunk is reported, not retried.
    out = tmp_path / "o"
    code = (
        "import sys; sys.modules['ray'] = None; sys.path.insert(0, 'tests')\n"
        "from test_engines import _args\n"
        "from fake_render_worker import fake_backend\n"
        "from blender_addon.core.render_cli import run\n"
        f"code = run(_args({str(out)!r}, '--workers', '2', '--frames-per-worker', '2'), fake_backend('always'))\n"
        "assert 'ray' not in sys.modules or sys.modules['ray'] is None\n"
        "raise SystemExit(code)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 1, result.stderr  # frames 4 and 5 are missing
    assert "error: task 2 (frames 4..5): failed after 1 attempt(s): worker exited with code 3" in result.stderr
    report = json.loads((out / "run_reports" / "render_shard-0-of-1.json").read_text())
    (entry,) = report["runs"]
    assert entry["engine"] == "local" and entry["frames_rendered"] == 4
    assert [(t["frames"], t["status"], t["attempts"]) for t in entry["tasks"]] == \
        [([0, 1], "ok", 1), ([2, 3], "ok", 1), ([4, 5], "failed", 1)]
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"{i:06d}.json" for i in range(4)]


def test_ray_engine_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert run(_args(tmp_path / "o", "--engine", "ray"), fake_backend("always")) == 2
    err = capsys.readouterr().err
    assert "--engine ray needs Ray" in err and "pip install ray==2.60.0" in err
    assert not list((tmp_path / "o" / "frames").iterdir())


def test_readme_ray_commands_parse() -> None:
    """Every render command in the README's "Rendering on Ray" section is accepted by the CLI's
    parser (with placeholder values for the shell variables), so the docs cannot drift."""
    import re
    import shlex

    from blender_addon.core.render_cli import build_parser

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Rendering on Ray", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1].replace("\\\n", " ")
    commands = [line.split("cli_entry", 1)[1] for line in block.splitlines()
                if line.startswith("python -m blender_addon.bl.cli_entry")]
    assert len(commands) == 4
    values = {"SHARED": "/data", "SLURM_CPUS_PER_TASK": "16", "SLURM_ARRAY_TASK_ID": "3",
              "SLURM_ARRAY_TASK_COUNT": "16"}
    parsed = [build_parser().parse_args(shlex.split(re.sub(r"\$(\w+)", lambda m: values[m.group(1)], c)))
              for c in commands]
    assert [a.engine for a in parsed] == ["ray", "ray", "ray", "local"]  # last: --rebuild-coco
    assert parsed[1].address == "auto" and parsed[2].shard == "3/16" and parsed[2].ray_cpus == 16
