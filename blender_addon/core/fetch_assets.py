"""``fetch-assets``: download, check and install the CC0 MakeHuman assets (garments, shoes,
hair, eyebrows, eyelashes and static poses) that dress the rendered people.

The assets come from the makehuman-assets repository at a pinned commit. Only the files the
project uses are taken from the archive, and each must match the SHA-256 in
``core/data/makehuman_assets_manifest.json`` (sizes and hashes only, no asset data), so a
changed upstream file, a truncated download or a Git LFS pointer in place of a file is refused
with its name. The folder is assembled beside its destination and renamed into place, so an
interrupted install leaves nothing half-written.

    fetch-assets                          # download and install into the user data folder
    fetch-assets --archive FILE.tar.gz    # install from an archive downloaded elsewhere (offline)
    fetch-assets --check DIR              # check an existing asset folder against the manifest

Renders find the installed folder without a flag (``core.garments.find_assets_root``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from protocol.cli import CliError, run_main
from protocol.fileio import atomic_write_json

REPOSITORY = "makehumancommunity/makehuman-assets"
COMMIT = "8cf9645b"
ARCHIVE_URL = f"https://github.com/{REPOSITORY}/archive/{COMMIT}.tar.gz"
MANIFEST = Path(__file__).resolve().parent / "data" / "makehuman_assets_manifest.json"
ENV_DATA_HOME = "XDG_DATA_HOME"


def default_install_dir() -> Path:
    """Where ``fetch-assets`` installs by default: the user's data folder."""
    base = os.environ.get(ENV_DATA_HOME) or str(Path.home() / ".local" / "share")
    return Path(base) / "fisheye-synth" / "makehuman_assets"


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    """``{"files": {relative path: {"sha256", "bytes"}}, ...}``."""
    return json.loads(path.read_text(encoding="utf-8"))


def make_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an asset folder as it should be (for maintainers: regenerate it from a
    checked copy when the pinned commit moves)."""
    files = {}
    for path in sorted(p for p in (folder / "base").rglob("*") if p.is_file()):
        data = path.read_bytes()
        files[path.relative_to(folder).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                      "bytes": len(data)}
    return {"repository": REPOSITORY, "commit": COMMIT, "licence": "CC0 1.0", "files": files}


def check_folder(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """What is wrong with ``folder`` against the manifest (empty when it is complete and exact)."""
    problems = []
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            hint = " (a Git LFS pointer, not the file)" if data.startswith(b"version https://git-lfs") else ""
            problems.append(f"{name}: {len(data)} bytes, content differs from the pinned commit{hint}")
    return problems


def download(url: str, to: Path, timeout: float = 60.0) -> Path:
    """Stream ``url`` into the file ``to``; an offline machine gets the manual route."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, to.open("wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise CliError(
            f"could not download {url} ({exc}). On a machine with internet access, download that "
            f"archive and run 'fetch-assets --archive FILE', or unpack the files of its base/ "
            f"folder that the manifest lists into {default_install_dir()} (or any folder named by "
            "--assets or $FISHEYE_SYNTH_MAKEHUMAN_ASSETS)") from exc
    return to


def extract_listed(archive: Path, manifest: dict[str, Any], into: Path) -> None:
    """Write the archive's members that the manifest lists into ``into``. The archive's one top
    folder (``makehuman-assets-<commit>/``) is dropped; nothing else is written, so a member
    with an absolute or ``..`` path cannot land outside ``into``."""
    wanted = manifest["files"]
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = Path(member.name).parts
                name = Path(*parts[1:]).as_posix() if len(parts) > 1 else ""
                if name not in wanted:
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                target = into / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CliError(f"{archive} is not a readable .tar.gz archive ({exc}); download it again") from exc


def install(dest: Path, archive: Path | None = None, manifest_path: Path = MANIFEST,
            url: str = ARCHIVE_URL, force: bool = False) -> str:
    """Install the checked assets into ``dest``; returns what was done, in words."""
    manifest = load_manifest(manifest_path)
    if dest.exists() and not force:
        problems = check_folder(dest, manifest)
        if not problems:
            return f"{dest} already holds the {len(manifest['files'])} checked files"
        raise CliError(f"{dest} exists but does not match the manifest ({problems[0]}; "
                       f"{len(problems)} problem(s)); rerun with --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-assets-", dir=dest.parent) as scratch:
        staging = Path(scratch) / "assets"
        staging.mkdir()
        if archive is None:
            archive = download(url, Path(scratch) / "archive.tar.gz")
        extract_listed(archive, manifest, staging)
        problems = check_folder(staging, manifest)
        if problems:
            listing = "; ".join(problems[:5])
            raise CliError(f"the archive does not hold the pinned assets ({len(problems)} problem(s): "
                           f"{listing}); nothing was installed")
        atomic_write_json(staging / "installed.json", {"repository": manifest.get("repository"),
                                                       "commit": manifest.get("commit"),
                                                       "files": len(manifest["files"])})
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return f"installed {len(manifest['files'])} checked files into {dest}"


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fetch-assets",
        description=f"Download the CC0 MakeHuman assets ({REPOSITORY} at commit {COMMIT}): garments, "
                    "shoes, hair and static poses for the rendered people. Each file is checked "
                    "against the SHA-256 the project pins before anything is installed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""examples:
  fetch-assets                              # into {default_install_dir()}
  fetch-assets --dest assets/makehuman      # elsewhere: then render with --assets assets/makehuman
  fetch-assets --archive makehuman-assets-{COMMIT}.tar.gz   # offline, from {ARCHIVE_URL}
  fetch-assets --check ../shared/data/makehuman_assets""")
    parser.add_argument("--dest", type=Path, help=f"install folder (default {default_install_dir()})")
    parser.add_argument("--archive", type=Path, help="install from this downloaded .tar.gz instead of the network")
    parser.add_argument("--check", type=Path, metavar="DIR", help="only check DIR against the manifest")
    parser.add_argument("--force", action="store_true", help="replace an existing folder that does not match")
    parser.add_argument("--write-manifest", type=Path, metavar="DIR", help=argparse.SUPPRESS)  # maintainers
    args = parser.parse_args(argv)
    if args.write_manifest is not None:
        atomic_write_json(MANIFEST, make_manifest(args.write_manifest))
        print(f"wrote {MANIFEST}")
        return 0
    if args.check is not None:
        manifest = load_manifest()
        problems = check_folder(args.check, manifest)
        for problem in problems:
            print(problem)
        if problems:
            raise CliError(f"{args.check}: {len(problems)} of {len(manifest['files'])} files do not match")
        print(f"{args.check}: all {len(manifest['files'])} files match {REPOSITORY}@{COMMIT}")
        return 0
    if args.archive is not None and not args.archive.is_file():
        raise CliError(f"--archive {args.archive} not found; download it from {ARCHIVE_URL}")
    print(install(args.dest or default_install_dir(), args.archive, force=args.force))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv, prog="fetch-assets")


if __name__ == "__main__":
    raise SystemExit(main())
