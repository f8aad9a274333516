"""Content keys for the experiment's stages, so that a rerun skips exactly what is done.

A stage's output folder is named by a hash of everything that determines it: its inputs (the
fingerprints of the folders it reads), its config, preset and seeds, and the version of the code
that computes it (a hash of the stage's source files). A changed config or changed code gives
a new key and so a new folder, which the stage then fills; a resumed run finds the folder of
the same key with its ``stage.json`` marker and skips the stage. An unfinished stage has no
marker; the training stages resume from their own checkpoints inside the folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

from protocol.fileio import atomic_write_json

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STAGE_MARKER = "stage.json"
KEY_LENGTH = 12

# The source each stage's output depends on (folders or files, relative to the project root).
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "render": ("blender_addon/core", "blender_addon/bl", "scenes"),
    "crops": ("protocol",),
    "refiner": ("protocol", "refiner_daemon/common", "refiner_daemon/refiner"),
    "refine": ("protocol", "refiner_daemon/refiner/batch_refine.py",
               "refiner_daemon/refiner/inference.py", "refiner_daemon/refiner/networks.py"),
    "detector": ("protocol", "refiner_daemon/common", "refiner_daemon/detector"),
    "gap": ("protocol", "refiner_daemon/common", "refiner_daemon/evaluation/gap.py"),
}


@cache
def code_version(stage: str) -> str:
    """A hash of the source files a stage depends on (``STAGE_CODE``): Python and JSON files,
    by path and content, so editing a comment in them counts as a new version (safe, if
    sometimes wasteful)."""
    if stage not in STAGE_CODE:
        raise KeyError(f"unknown stage {stage!r}; valid: {sorted(STAGE_CODE)}")
    digest = hashlib.sha256()
    for entry in STAGE_CODE[stage]:
        path = PROJECT_ROOT / entry
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts)
        for file in files:
            digest.update(str(file.relative_to(PROJECT_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:KEY_LENGTH]


def folder_fingerprint(folder: str | Path, frames: list[str] | None = None) -> str:
    """A quick content fingerprint of a dataset or crop folder: its annotation or records
    file's bytes, plus the names and sizes of its images (restricted to ``frames`` when given).
    Re-rendering or re-cutting changes it; reading the same folder twice gives the same key."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in ("coco.json", "annotations.json", "records.json", "refiner.json"):
        if (folder / name).is_file():
            digest.update(name.encode())
            digest.update((folder / name).read_bytes())
    wanted = set(frames) if frames is not None else None
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg") and (wanted is None or path.name in wanted):
            digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:KEY_LENGTH]


def stage_key(stage: str, **inputs: Any) -> str:
    """The key of one stage run: its inputs (JSON-serialisable) and its code version."""
    payload = json.dumps({"stage": stage, "code": code_version(stage), **inputs},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def stage_dir(root: Path, stage: str, name: str, key: str) -> Path:
    """``root/<stage>/<name>-<key>``."""
    return root / stage / f"{name}-{key}"


def is_done(folder: Path) -> bool:
    return (folder / STAGE_MARKER).is_file()


def read_marker(folder: Path) -> dict[str, Any]:
    return json.loads((folder / STAGE_MARKER).read_text(encoding="utf-8"))


def mark_done(folder: Path, **record: Any) -> dict[str, Any]:
    """Write the stage's completion marker (atomically, last): what it made and when."""
    payload = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
    atomic_write_json(folder / STAGE_MARKER, payload)
    return payload


__all__ = ["STAGE_CODE", "code_version", "folder_fingerprint", "is_done", "mark_done",
           "read_marker", "stage_dir", "stage_key"]
