"""Shared fixtures: where the real data lives, and skips that say why."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FISHEYE_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data not found at {path}; put the shared data folder beside the project "
            "or set FISHEYE_SHARED_DATA"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder (CMU mocap, CEPDOF frames)."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def cepdof_dir(shared_data: Path) -> Path:
    return _require(shared_data / "real" / "cepdof_lunch3")


@pytest.fixture(scope="session")
def mocap_dir(shared_data: Path) -> Path:
    return _require(shared_data / "mocap")
