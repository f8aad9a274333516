"""Render one preview frame of the artist's edited layout (a subprocess, like the render CLI).

    python -m blender_addon.ui.preview_worker --out RUN --overrides people.json
    blender -b --factory-startup --python-use-system-env --python-exit-code 1 \
        -P blender_addon/ui/preview_worker.py -- --out RUN ...

``RUN`` is a run folder prepared with ``core.batch.prepare_run_folder`` (count 1); frame 0's
recipe is the one the panel populated the viewport with, and ``people.json`` says where each
person's root is now (people moved, turned or deleted in the viewport). Rendering goes through
``bl.render.FrameRenderer`` exactly like the batch CLI.

With ``--serve`` the worker stays up: it reads one JSON request per line on stdin
(``{"out": RUN, "overrides": people.json, "threads": 0}``), renders, and answers each with one
line ``FSYNTH_PREVIEW {"ok": true, "seconds": ..., "warm": ...}`` (or ``"ok": false`` and the
error; a bad request never ends it). Its renderer, with the scene, the human templates and the
parsed assets, is kept while the run config and the scene file stay the same, so only the
first render pays for them (``core.preview_pipeline.WarmWorker`` is the client). It exits when
stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script by a Blender binary (-P): make the add-on's packages importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import bpy

from blender_addon.core import blender_version

blender_version.exit_if_unsupported(bpy.app.version)  # before what an old Blender cannot load

from blender_addon.core import batch
from blender_addon.core.batch import FrameRecipe


def edited_recipe(recipe: FrameRecipe, overrides: dict[str, dict[str, Any]] | None) -> FrameRecipe:
    """Frame ``recipe`` with people moved to where the artist put them (absent ones dropped)."""
    if overrides is None:
        return recipe
    people = tuple(replace(p, location=tuple(float(v) for v in overrides[p.name]["location"]),
                           heading_rad=float(overrides[p.name]["heading_rad"]))
                   for p in recipe.people if p.name in overrides)
    return replace(recipe, people=people)


def render_preview(out: Path, overrides: dict[str, dict[str, Any]] | None, threads: int = 0,
                   in_place: bool = False) -> dict[str, Any]:
    """Render the preview frame. In its own process (the default) Blender is reset first;
    ``in_place=True`` renders inside the calling session and leaves its scene exactly as it was
    (``bl.render.render_in_place``)."""
    from blender_addon.bl import render

    config = batch.load_run_config(out)
    sample = batch.sample_frame_recipe

    def sample_edited(*args: Any, **kwargs: Any) -> FrameRecipe:
        return edited_recipe(sample(*args, **kwargs), overrides)

    # FrameRenderer draws its recipe itself; this process renders nothing but this preview,
    # so the recipe function is swapped for its duration (a recipe argument would be cleaner).
    batch.sample_frame_recipe = sample_edited
    try:
        if in_place:
            return render.render_in_place(config, out, 0, threads=threads)
        return render.FrameRenderer(config, out, threads=threads).render_frame(0)
    finally:
        batch.sample_frame_recipe = sample


_WARM: dict[str, Any] = {}  # the kept renderer and what it was built for


def render_warm(out: Path, overrides: dict[str, dict[str, Any]] | None, threads: int = 0) -> bool:
    """Render the preview frame with the kept renderer when the run config and scene file are
    the ones it was built for, else with a new one (which is then kept). True when warm."""
    from blender_addon.bl import render

    config = batch.load_run_config(out)
    scene_file = Path(config.scene) / "scene.json"
    key = json.dumps([config.to_dict(), batch.file_sha256(scene_file), threads], sort_keys=True, default=str)
    warm = _WARM.get("key") == key
    if not warm:
        _WARM.clear()
        _WARM.update(key=key, renderer=render.FrameRenderer(config, out, threads=threads))
    renderer = _WARM["renderer"]
    renderer.out = Path(out)
    sample = batch.sample_frame_recipe
    batch.sample_frame_recipe = lambda *a, **k: edited_recipe(sample(*a, **k), overrides)
    try:
        renderer.render_frame(0)
    except BaseException:
        _WARM.clear()  # a render that failed half-way may have left people in the scene
        raise
    finally:
        batch.sample_frame_recipe = sample
    return warm


def serve(reply_prefix: str = "FSYNTH_PREVIEW ") -> int:
    """Answer render requests from stdin until it closes (module docstring)."""
    for line in sys.stdin:
        if not line.strip():
            continue
        started = time.monotonic()
        try:
            request = json.loads(line)
            overrides_path = request.get("overrides")
            overrides = (json.loads(Path(overrides_path).read_text(encoding="utf-8"))
                         if overrides_path else None)
            warm = render_warm(Path(request["out"]), overrides, int(request.get("threads", 0)))
            reply: dict[str, Any] = {"ok": True, "warm": warm, "out": request["out"]}
        except Exception as exc:  # noqa: BLE001  (one bad request must not end the worker)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply["seconds"] = round(time.monotonic() - started, 3)
        print(reply_prefix + json.dumps(reply), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
        if bpy.app.binary_path and "--" not in sys.argv:
            argv = []
    parser = argparse.ArgumentParser(prog="python -m blender_addon.ui.preview_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true",
                        help="stay up and render one request per stdin line (see the module docstring)")
    parser.add_argument("--out", type=Path, help="prepared run folder (run_config.json)")
    parser.add_argument("--overrides", type=Path, help="JSON {person: {location, heading_rad}}")
    parser.add_argument("--threads", type=int, default=0, help="Cycles threads (0: all)")
    args = parser.parse_args(argv)
    if args.serve:
        from blender_addon.core.preview_pipeline import WORKER_REPLY

        return serve(WORKER_REPLY)
    if args.out is None:
        parser.error("--out is required (or --serve)")
    overrides = json.loads(args.overrides.read_text(encoding="utf-8")) if args.overrides else None
    try:
        render_preview(args.out, overrides, args.threads)
    except (batch.BatchError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    if bpy.app.binary_path:
        sys.stdout.flush()
        import os

        os._exit(code)
    raise SystemExit(code)
