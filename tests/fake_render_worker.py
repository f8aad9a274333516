"""A stand-in for the Blender render worker, for tests of the render CLI and its engines: a
Python process that writes each frame's JSON last (as a real worker does) and exits with code 3
on frame 4, always or only when the output folder holds a ``fail_on_4`` marker file. Every call
appends its frame list to ``chunks.log``, so tests can see how frames were chunked."""

from __future__ import annotations

import sys
from pathlib import Path

from blender_addon.core.render_cli import Backend

FAKE_WORKER = """
import json, sys, pathlib
out, frames, fail_on_4 = pathlib.Path(sys.argv[1]), [int(f) for f in sys.argv[2].split(',')], sys.argv[3]
log = out / 'chunks.log'
log.write_text(log.read_text() + sys.argv[2] + '\\n' if log.exists() else sys.argv[2] + '\\n')
for f in frames:
    if f == 4 and (fail_on_4 == 'always' or (out / 'fail_on_4').exists()):
        sys.exit(3)
    (out / 'frames' / f'{f:06d}.json').write_text(json.dumps({'index': f, 'image': 'i', 'mask': 'm',
        'width': 8, 'height': 8, 'annotations': []}))
"""


def fake_backend(fail_on_4: str = "marker") -> Backend:
    """A render backend running :data:`FAKE_WORKER`; ``fail_on_4`` is "always" or "marker"."""
    if fail_on_4 not in ("always", "marker"):
        raise ValueError(f"fail_on_4 must be 'always' or 'marker', got {fail_on_4!r}")

    def command(out: Path, frames: list[int], threads: int) -> list[str]:
        return [sys.executable, "-c", FAKE_WORKER, str(out), ",".join(map(str, frames)), fail_on_4]

    def in_process(out: Path, frames: list[int], threads: int) -> None:
        raise AssertionError("the fake backend renders in worker processes only")

    return Backend(command, in_process)
