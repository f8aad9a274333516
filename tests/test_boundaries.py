"""Package boundaries: bpy only in blender_addon/bl, torch only in refiner_daemon, zmq only in
protocol/transport.py. Checked on the source text so a violation fails without Blender.
Benchmarks are outside the product and may measure Blender or torch directly."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("module", ["bpy", "mathutils"])
def test_blender_imports_stay_in_backend(module: str) -> None:
    allowed = {ROOT / "blender_addon" / "bl", ROOT / "blender_addon" / "ui"}
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("blender_addon", "protocol", "refiner_daemon")
        if module in _imports(p) and not any(a in p.parents for a in allowed)
    ]
    assert offenders == [], f"{module} imported outside the Blender backend: {offenders}"


def test_torch_stays_in_refiner_daemon() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("blender_addon", "protocol")
        if {"torch", "torchvision"} & _imports(p)
    ]
    assert offenders == [], f"torch imported outside refiner_daemon: {offenders}"


def test_zmq_only_in_transport() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("protocol")
        if "zmq" in _imports(p) and p.name != "transport.py"
    ]
    assert offenders == [], f"zmq imported outside protocol/transport.py: {offenders}"


# Ray is optional: only the engine modules may import it (inside functions, see test_engines.py).
RAY_MODULES = {"protocol/ray_session.py", "blender_addon/core/engines.py",
               "refiner_daemon/evaluation/sweep.py"}


def test_ray_only_in_engine_modules() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources("blender_addon", "protocol", "refiner_daemon")
        if "ray" in _imports(p) and str(p.relative_to(ROOT)) not in RAY_MODULES
    ]
    assert offenders == [], f"ray imported outside {sorted(RAY_MODULES)}: {offenders}"


def test_import_blender_addon_does_not_import_bpy() -> None:
    import subprocess
    import sys

    code = "import sys, blender_addon, blender_addon.core; print('bpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
