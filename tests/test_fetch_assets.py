"""fetch-assets: only the pinned, hash-checked files are installed, atomically; bad archives,
offline machines and mismatching folders get clear errors; renders find the installed folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from blender_addon.core import fetch_assets
from blender_addon.core.garments import find_assets_root
from protocol.cli import CliError

FILES = {"base/clothes/shirt01/shirt01.mhclo": b"verts 0\n", "base/clothes/shirt01/shirt01.obj": b"v 0 0 0\n",
         "base/hair/short01/short01.mhclo": b"verts 0\n", "base/poses/standing01.bvh": b"HIERARCHY\n"}


def _manifest(tmp_path: Path) -> Path:
    folder = tmp_path / "reference"
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(fetch_assets.make_manifest(folder)))
    return path


def _archive(tmp_path: Path, files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> Path:
    path = tmp_path / "assets.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**{f"makehuman-assets-8cf9645b/{k}": v for k, v in files.items()},
                           **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_install_from_an_archive_takes_only_listed_files_and_checks_them(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    archive = _archive(tmp_path, {**FILES, "base/clothes/big.png": b"x" * 100},
                       extra={"../evil.txt": b"no", "/abs.txt": b"no"})
    dest = tmp_path / "installed"
    message = fetch_assets.install(dest, archive, manifest_path=manifest)
    assert "installed 4 checked files" in message
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        [*FILES, "installed.json"])
    assert not (tmp_path / "evil.txt").exists()
    assert fetch_assets.check_folder(dest, json.loads(manifest.read_text())) == []
    assert "already holds" in fetch_assets.install(dest, archive, manifest_path=manifest)


def test_a_changed_file_or_lfs_pointer_installs_nothing(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 9\n"
    archive = _archive(tmp_path, {**FILES, "base/poses/standing01.bvh": pointer})
    dest = tmp_path / "installed"
    with pytest.raises(CliError, match="standing01.bvh.*Git LFS pointer.*nothing was installed"):
        fetch_assets.install(dest, archive, manifest_path=manifest)
    assert not dest.exists() and not list(tmp_path.glob(".fetch-assets-*"))
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(CliError, match="not a readable .tar.gz"):
        fetch_assets.install(dest, tmp_path / "bad.tar.gz", manifest_path=manifest)


def test_an_existing_folder_that_differs_needs_force(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    dest = tmp_path / "installed"
    (dest / "base").mkdir(parents=True)
    with pytest.raises(CliError, match="--force"):
        fetch_assets.install(dest, _archive(tmp_path, FILES), manifest_path=manifest)
    assert "installed" in fetch_assets.install(dest, _archive(tmp_path, FILES), manifest_path=manifest, force=True)


def test_offline_download_says_what_to_fetch_and_where(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="could not download.*--archive FILE"):
        fetch_assets.install(tmp_path / "dest", manifest_path=_manifest(tmp_path),
                             url="http://127.0.0.1:9/makehuman-assets.tar.gz")


def test_renders_find_the_installed_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("FISHEYE_SYNTH_MAKEHUMAN_ASSETS", raising=False)
    installed = tmp_path / "fisheye-synth" / "makehuman_assets"
    (installed / "base" / "clothes").mkdir(parents=True)
    assert fetch_assets.default_install_dir() == installed
    assert find_assets_root() == installed


def test_the_shipped_manifest_matches_the_shared_copy() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "makehuman_assets"
    if not shared.is_dir():
        pytest.skip(f"{shared} is absent (the shared MakeHuman assets)")
    manifest = fetch_assets.load_manifest()
    assert manifest["commit"] == fetch_assets.COMMIT and len(manifest["files"]) > 200
    assert fetch_assets.check_folder(shared, manifest) == []
    assert fetch_assets.main(["--check", str(shared)]) == 0
