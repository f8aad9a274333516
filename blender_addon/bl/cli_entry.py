"""Entry point of the render CLI, for both ways of running Blender headless.

    python -m blender_addon.bl.cli_entry --help                       # the pip ``bpy`` module
    blender -b --factory-startup --python-use-system-env --python-exit-code 1 \
        -P blender_addon/bl/cli_entry.py -- --help                    # a Blender 5.0+ binary

Run from a Blender binary, Blender's own Python needs this project's dependencies (numpy
ships with Blender; Pillow, OpenEXR, tqdm and msgpack must be importable, e.g. by putting
a Python 3.11 ``site-packages`` that has them on ``PYTHONPATH``, which Blender reads only with
``--python-use-system-env``). Worker processes are started the same way the parent was started
(``core.render_cli.blender_script_command``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script by Blender (-P): make the project importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import bpy

from blender_addon.core import blender_version

# Before anything else of the project is imported: an older Blender (or its Python) would not
# get as far as a clear message otherwise.
blender_version.exit_if_unsupported(bpy.app.version)

from blender_addon.core.render_cli import Backend, blender_script_command, run
from protocol.cli import run_main

ENTRY_FILE = Path(__file__).resolve()


def _script_args() -> list[str]:
    """Arguments meant for us: after ``--`` under a Blender binary, else all of them."""
    if bpy.app.binary_path and "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1:]
    if bpy.app.binary_path:
        return []
    return sys.argv[1:]


def worker_command(out: Path, frames: list[int], threads: int) -> list[str]:
    tail = ["--out", str(out), "--worker-frames", ",".join(map(str, frames)),
            "--threads", str(threads)]
    if bpy.app.binary_path:
        return [*blender_script_command(bpy.app.binary_path, ENTRY_FILE), *tail]
    return [sys.executable, "-m", "blender_addon.bl.cli_entry", *tail]


def render_in_process(out: Path, frames: list[int], threads: int) -> None:
    from blender_addon.bl.render import render_frames

    render_frames(out, frames, threads)


def main(argv: list[str] | None = None) -> int:
    """The render command under the project's error and stop contract (``protocol.cli``):
    bad input exits 2 with one line, SIGTERM/SIGINT/SIGHUP stop the workers and exit 128+N."""
    backend = Backend(worker_command, render_in_process)
    return run_main(lambda args: run(args, backend), _script_args() if argv is None else argv,
                    prog="render")


if __name__ == "__main__":
    code = main()
    if bpy.app.binary_path:
        # Under a Blender binary a script's exit code is lost unless we exit explicitly.
        sys.stdout.flush()
        import os

        os._exit(code)
    raise SystemExit(code)
