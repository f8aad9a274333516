"""The humans contact sheet's records name assets relative to where it ran, never by machine path."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("bpy")

from blender_addon.bl.contact_sheet_humans import portable_paths


def test_absolute_paths_become_relative_and_the_rest_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "project"
    assets = tmp_path / "shared" / "assets"
    records = [{"assets_root": str(assets), "pose": {"bvh_path": str(assets / "poses" / "a.bvh"),
                                                     "frame": 3},
                "garments": ["shirt", str(root / "x.obj")], "name": "relative/kept", "height": 1.7}]
    portable = portable_paths(records, root)
    assert portable == [{"assets_root": "../shared/assets",
                         "pose": {"bvh_path": "../shared/assets/poses/a.bvh", "frame": 3},
                         "garments": ["shirt", "x.obj"], "name": "relative/kept", "height": 1.7}]


def test_the_committed_sheet_names_no_machine_path() -> None:
    sheet = Path(__file__).resolve().parents[1] / "docs" / "images" / "humans_contact_sheet.json"
    if not sheet.is_file():
        pytest.skip(f"{sheet} is not in this checkout")
    assert '"/' not in sheet.read_text(), "absolute paths in the committed records"
