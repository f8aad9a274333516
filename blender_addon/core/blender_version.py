"""Which Blender the add-on runs in: the minimum it needs, checked before anything registers.

The code uses what exists only from Blender 5.0 on: ``ImageFormatSettings.media_type`` (set
before choosing multilayer EXR output, ``bl/scene_build.render_layers``), the pass names of
5.0's multilayer EXRs (``"Object Index"``, one EXR part per pass, read by
``bl/scene_build.read_multilayer_exr`` and ``bl/render.py``). Compositing is done in numpy, so no
compositor node tree is involved. ``blender_manifest.toml`` declares the same minimum
(``blender_version_min``); ``tests/test_addon_package.py`` keeps the two equal.

No ``bpy`` here: ``check(version)`` takes the version tuple (``bpy.app.version``), so the refusal
is tested without an old Blender.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

MIN_BLENDER_VERSION: tuple[int, int, int] = (5, 0, 0)
WHY = ("it uses Blender 5.0 APIs (image_settings.media_type, the 'Object Index' pass name "
       "of 5.0's multilayer EXR)")


class UnsupportedBlenderError(RuntimeError):
    """The running Blender is older than the add-on's minimum; the message names both."""


def version_text(version: Sequence[int]) -> str:
    return ".".join(str(int(part)) for part in version)


def is_supported(version: Sequence[int], minimum: Sequence[int] = MIN_BLENDER_VERSION) -> bool:
    return tuple(int(v) for v in version[:3]) >= tuple(int(v) for v in minimum)


def check(version: Sequence[int], minimum: Sequence[int] = MIN_BLENDER_VERSION) -> None:
    """Raise ``UnsupportedBlenderError`` when ``version`` (e.g. ``bpy.app.version``) is too old."""
    if not is_supported(version, minimum):
        raise UnsupportedBlenderError(
            f"Fisheye Synth needs Blender {version_text(minimum)} or newer, but this is Blender "
            f"{version_text(version)}: {WHY}. Install Blender {version_text(minimum[:2])} or newer "
            "(https://www.blender.org/download/) and enable the add-on there.")


def exit_if_unsupported(version: Sequence[int]) -> None:
    """For scripts a Blender binary runs (``-P``): print the refusal and exit with code 2 when
    ``version`` is too old, before the script imports anything an old Blender cannot load."""
    try:
        check(version)
    except UnsupportedBlenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
