"""Version truth: the add-on needs Blender 5.0 (its APIs), says so in the manifest, and refuses
older versions with a message naming both; checked on version tuples, no old Blender needed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from blender_addon.core import blender_version
from blender_addon.core.blender_version import MIN_BLENDER_VERSION, UnsupportedBlenderError

PROJECT = Path(__file__).resolve().parents[1]


def test_manifest_declares_the_same_minimum_as_the_code() -> None:
    manifest = tomllib.loads((PROJECT / "blender_addon" / "blender_manifest.toml").read_text())
    assert manifest["blender_version_min"] == "5.0.0"
    assert tuple(int(v) for v in manifest["blender_version_min"].split(".")) == MIN_BLENDER_VERSION


@pytest.mark.parametrize("version", [(4, 2, 0), (4, 5, 3), (3, 6, 18), (4, 99, 99)])
def test_older_blenders_are_refused_with_both_versions_named(version: tuple[int, int, int]) -> None:
    assert not blender_version.is_supported(version)
    with pytest.raises(UnsupportedBlenderError) as caught:
        blender_version.check(version)
    message = str(caught.value)
    assert f"Blender {'.'.join(map(str, version))}" in message
    assert "5.0.0 or newer" in message and "media_type" in message


@pytest.mark.parametrize("version", [(5, 0, 0), (5, 0, 1), (5, 1, 0), (6, 0, 0)])
def test_supported_blenders_pass(version: tuple[int, int, int]) -> None:
    assert blender_version.is_supported(version)
    blender_version.check(version)  # no exception


def test_the_apis_that_set_the_minimum_are_used() -> None:
    """The minimum is not arbitrary: the 5.0-only APIs it names are in the render code."""
    render = (PROJECT / "blender_addon" / "bl" / "render.py").read_text()
    scene_build = (PROJECT / "blender_addon" / "bl" / "scene_build.py").read_text()
    assert "media_type" in scene_build and '"Object Index"' in render
