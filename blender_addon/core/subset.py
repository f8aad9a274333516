"""The first N frames of a rendered dataset, as a dataset of their own.

Frame ``i`` of a run depends only on its configuration and ``i`` (``batch.frame_seed``), so the
first N frames of a ``--count 500`` run are what ``--count N`` with the same options renders:
the same people, pixels and annotations (each frame record's manifest still names the run it
was rendered in, count included). Experiments that compare dataset sizes need those subsets; rendering them again costs
hours, and copying files by hand forgets soft masks or leaves stale ``coco.json`` files.

``subset(source, out, first)`` hard-links (or, with ``link=False`` or across file systems,
copies) every file of frames ``0..first-1`` (image, mask, soft masks, then the frame record,
which marks the frame complete, last), writes the run's ``run_config.json`` with
``count = first``, and rebuilds ``coco.json``. The result is an ordinary run folder: the render
CLI resumes and extends it (``--count M`` with the same options renders frames N..M-1), and a
rerun of the same subset finishes an interrupted one.

    python -m blender_addon.core.subset out/S500 --first 100 --out out/S100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from blender_addon.core import batch
from blender_addon.core.batch import FRAMES_DIR, RUN_CONFIG, BatchError
from blender_addon.core.dataset import build_coco


def frame_files(record: dict[str, Any]) -> list[str]:
    """The files a frame record names, relative to its run folder (the record itself not)."""
    files = [record["image"], record["mask"]]
    files += [a["soft_mask"] for a in record.get("annotations", []) if a.get("soft_mask")]
    return files


def _place(source: Path, target: Path, link: bool) -> None:
    """``target`` becomes ``source``'s bytes, atomically: a hard link where allowed, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.partial")
    temporary.unlink(missing_ok=True)
    if link:
        try:
            os.link(source, temporary)
        except OSError:  # another file system, or links not allowed there
            shutil.copyfile(source, temporary)
    else:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def subset(source: Path, out: Path, first: int, link: bool = True, progress: Any = None) -> dict[str, Any]:
    """Make ``out`` the run of ``source``'s first ``first`` frames; returns its coco.json."""
    source, out = Path(source), Path(out)
    config = batch.load_run_config(source)
    if not 1 <= first <= config.count:
        raise BatchError(f"--first must be in [1, {config.count}] (the frames {source} was asked to "
                         f"render), got {first}")
    if out.resolve() == source.resolve():
        raise BatchError(f"--out {out} is the source run itself; choose a new folder")
    frames = list(range(first))
    missing = batch.missing_frames(source, frames)
    if missing:
        raise BatchError(f"{source} lacks {len(missing)} of its first {first} frames (first: "
                         f"{missing[:5]}); rerun its render command to finish them, or take fewer")
    wanted = replace(config, count=first)
    if (out / RUN_CONFIG).exists():
        existing = batch.load_run_config(out)
        if existing.count != first:
            raise BatchError(f"{out} holds a run of {existing.count} frames, not {first}; "
                             "choose a new --out folder")
    batch.prepare_run_folder(out, wanted)  # refuses a folder that holds another run
    for index in frames:
        name = f"{batch.frame_name(index)}.json"
        if not batch.frame_done(out, index):
            record = json.loads((source / FRAMES_DIR / name).read_text(encoding="utf-8"))
            for relative in frame_files(record):
                if not (source / relative).is_file():
                    raise BatchError(f"{source / relative} is missing although frame {index}'s record "
                                     "names it; rerender that frame (delete its frames/ record and rerun)")
                _place(source / relative, out / relative, link)
            _place(source / FRAMES_DIR / name, out / FRAMES_DIR / name, link)  # last: frame complete
        if progress is not None:
            progress.update(1)
    return build_coco(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m blender_addon.core.subset",
        description="Make a run folder of the first N frames of a rendered run: the same frames "
                    "a --count N render with its options makes, without rendering them again.",
        epilog="example:\n  python -m blender_addon.core.subset out/S500 --first 100 --out out/S100\n"
               "Files are hard links (no extra disk space) unless --copy; the new folder resumes "
               "and extends like any run.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a run folder written by the render CLI")
    parser.add_argument("--first", type=int, required=True, help="how many frames to take (frames 0..N-1)")
    parser.add_argument("--out", type=Path, required=True, help="the new run folder")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    try:
        with tqdm(total=args.first, unit="frame", desc="subset", disable=args.no_progress) as progress:
            coco = subset(args.source, args.out, args.first, link=not args.copy, progress=progress)
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out / 'coco.json'}: {len(coco['images'])} images, {len(coco['annotations'])} people")
    return 0


if __name__ == "__main__":
    sys.exit(main())
