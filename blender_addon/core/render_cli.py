"""The render command line, without Blender: options, validation, sharding, resume, progress.

The Blender entry point (``blender_addon/bl/cli_entry.py``) hands this module a backend
that knows how to start a worker process and how to render frames in-process; everything
else (parsing, the run folder, which frames are missing, the worker pool, the progress bar,
rebuilding coco.json) happens here and is testable without Blender.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blender_addon.core import batch
from blender_addon.core.batch import BatchConfig, BatchError
from blender_addon.core.dataset import build_coco, contact_sheet
from blender_addon.core.engines import ENGINES, RAY_INSTALL_HINT, EngineOptions, make_engine
from blender_addon.core.placement import PlacementConfig, PlacementError, check_capacity
from blender_addon.core.scene_format import SceneFormatError, load_scene
from protocol import processes, ray_session
from protocol.coverage import MASK_MODES
from protocol.datacheck import check_image

# How every script of this project runs under a Blender binary (the render CLI, its workers,
# the add-on's preview renders): background, factory settings (no user startup file or add-ons),
# Python that honours PYTHONPATH (Blender ignores it without --python-use-system-env; the
# project's dependencies come from there), and exit code 1 when the script raises (without
# --python-exit-code Blender exits 0 after a Python error, and a failed render looks finished).
BLENDER_BATCH_FLAGS: tuple[str, ...] = ("-b", "--factory-startup", "--python-use-system-env",
                                        "--python-exit-code", "1", "-noaudio")


def blender_script_command(binary: str, script: Path | str) -> list[str]:
    """``blender -b ... -P script --``: append the script's own arguments after it."""
    return [binary, *BLENDER_BATCH_FLAGS, "-P", str(script), "--"]


EPILOG = """\
examples:
  # 8 quick frames of the sample office (the demo's setting)
  python -m blender_addon.bl.cli_entry --scene scenes/sample_office --count 8 \\
      --preset fast --out out/render_demo
  # the same from a Blender 5.0+ binary (dependencies on PYTHONPATH; see docs/rendering.md)
  blender -b --factory-startup --python-use-system-env --python-exit-code 1 \\
      -P blender_addon/bl/cli_entry.py -- \\
      --scene scenes/sample_office --count 8 --preset fast --out out/render_demo
  # 1000 frames at default quality, one worker process per CPU (as memory allows), resumable
  python -m blender_addon.bl.cli_entry --scene scenes/sample_office --count 1000 \\
      --seed 7 --out out/s1000
  # machine 3 of a 16-machine job array (all write into the same --out, or merge after)
  python -m blender_addon.bl.cli_entry ... --shard 3/16
  # the same 1000 frames as Ray tasks on a local Ray instance of 8 CPUs (2 per task)
  python -m blender_addon.bl.cli_entry --scene scenes/sample_office --count 1000 \\
      --seed 7 --engine ray --ray-cpus 8 --threads 2 --out out/s1000
  # ... or on an existing Ray cluster (same environment on every node, --out on a shared disk)
  python -m blender_addon.bl.cli_entry ... --engine ray --address auto
  # a Slurm array task: a local Ray instance on its own shard (README: "Rendering on Ray")
  python -m blender_addon.bl.cli_entry ... --engine ray --ray-cpus $SLURM_CPUS_PER_TASK \\
      --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  # after all shards finished: rebuild coco.json from every frame's JSON
  python -m blender_addon.bl.cli_entry --out out/s1000 --rebuild-coco

Rerunning an interrupted command renders only the missing frames; frame i is the same
whichever shard, worker, engine or attempt renders it (its seed comes from --seed and i).
Each invocation's engine, tasks and retries are appended to
run_reports/render_shard-<i>-of-<N>.json in --out.
"""


def _int_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (e.g. 1,5), got {text!r}") from None
    return low, high


def _frame_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated frame numbers, got {text!r}") from None


def build_parser(prog: str = "python -m blender_addon.bl.cli_entry") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Render an annotated synthetic fisheye dataset: people from MakeHuman data "
                    "posed with mocap, placed in a scene's room photo, with head points, boxes, "
                    "instance masks and COCO JSON.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to render")
    what.add_argument("--scene", help="scene folder (with scene.json), e.g. scenes/sample_office")
    what.add_argument("--count", type=int, help="number of frames in the dataset")
    what.add_argument("--seed", type=int, default=0, help="global seed (default 0)")
    what.add_argument("--out", type=Path, required=True, help="output dataset folder")
    what.add_argument("--sitting", type=_int_range,
                      help="sitting people per frame, inclusive MIN,MAX (default: the scene's "
                           "occupancy when it has one, else 1,5: thesis Table 7.2)")
    what.add_argument("--standing", type=_int_range,
                      help="standing people per frame, inclusive MIN,MAX (default: the scene's "
                           "occupancy when it has one, else 0,4)")
    what.add_argument("--human-backend", choices=batch.HUMAN_BACKENDS, default="mpfb2",
                      help="mpfb2: MakeHuman people (default); proxy: box-and-sphere stand-ins "
                           "for fast pipeline tests")
    what.add_argument("--pose-library", help="folder of CMU BVH files for standing poses "
                                             "(default: built-in poses), e.g. ../shared/data/mocap")
    what.add_argument("--assets", metavar="DIR",
                      help="MakeHuman asset folder with fitted garments, shoes, hats and hair (default: "
                           "$FISHEYE_SYNTH_MAKEHUMAN_ASSETS, else ../shared/data/makehuman_assets when present; "
                           "without one, people wear painted clothing)")
    what.add_argument("--no-assets", action="store_true", help="painted clothing even when assets are found")
    quality = parser.add_argument_group("quality (a preset, then overrides)")
    quality.add_argument("--preset", default="default", choices=sorted(batch.PRESETS),
                         help="fast: 512 px, 16 samples; default: 1024 px, adaptive 64 samples + "
                              "denoiser; quality: the thesis's PSNR on the people in about half its "
                              "time (adaptive <=350 samples + denoiser); thesis: 350 samples, no "
                              "denoiser; reference: 2048 samples")
    quality.add_argument("--resolution", type=int, help="output long side in pixels")
    quality.add_argument("--samples", type=int, help="max Cycles samples per pixel")
    quality.add_argument("--adaptive-threshold", type=float, help="adaptive sampling noise threshold (0 = off)")
    quality.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                         help="OpenImageDenoise on/off")
    quality.add_argument("--denoise-quality", choices=batch.DENOISE_QUALITIES,
                         help="OpenImageDenoise's quality (default high; balanced is faster and "
                              "somewhat worse: docs/rendering.md)")
    quality.add_argument("--motion-blur", type=float, help="shutter in frames (0 = off)")
    quality.add_argument("--device", choices=batch.DEVICES, help="Cycles device (default auto: GPU when present)")
    quality.add_argument("--match-photo", action="store_true",
                         help="white-balance and expose the lights as the room photo's camera did "
                              "(its grey-world colour and median brightness; default: the rig as drawn)")
    quality.add_argument("--sensor", metavar="PROFILE",
                         help="give the people the real camera's look (white balance, exposure, "
                              "vignetting, blur, noise, JPEG): a profile from 'python -m "
                              "blender_addon.core.camera_sensor measure REAL_FRAMES --out PROFILE', or "
                              "'photo' to measure the scene's photo (default: off)")
    quality.add_argument("--region", choices=batch.REGIONS,
                         help="people (default): render only the rectangle the people and their "
                              "visible shadows can change, the rest is the photo; full: every pixel")
    masks = quality.add_mutually_exclusive_group()
    masks.add_argument("--mask-mode", choices=MASK_MODES,
                       help="soft (default): also write each person's anti-aliased coverage PNG "
                            "(soft_masks/), used to paste refined crops back; hard: 0/1 coverage "
                            "from the instance ids, no Cryptomatte pass")
    masks.add_argument("--hard-masks", dest="mask_mode", action="store_const", const="hard",
                       help="same as --mask-mode hard")
    run = parser.add_argument_group("how to run")
    run.add_argument("--shard", default="0/1", help="render only shard i of N (i/N, default 0/1)")
    run.add_argument("--workers", type=_workers_option, default="auto",
                     help="local worker processes (default auto: one per CPU, each with one "
                          "Cycles thread, as many as free memory holds; 0 renders in this "
                          "process); with --engine ray, Ray's free CPUs decide how many tasks "
                          "run at once")
    run.add_argument("--frames-per-worker", type=int, default=25,
                     help="a worker process exits after this many frames and a fresh one takes "
                          "over, so memory cannot creep (default 25)")
    run.add_argument("--threads", type=int, default=0,
                     help="Cycles threads per worker (default 0: local: cores / workers; ray: 1); "
                          "with --engine ray, the CPUs each task declares to Ray")
    run.add_argument("--engine", default="local", choices=sorted(ENGINES),
                     help="local: --workers processes on this machine (default); ray: each chunk "
                          f"of --frames-per-worker frames is a Ray task, retried on failure "
                          f"(needs '{RAY_INSTALL_HINT}')")
    run.add_argument("--address", metavar="ADDR",
                     help="ray: join this Ray cluster ('auto', 'HOST:6379' or 'ray://HOST:10001'); "
                          "default: start a local Ray instance for this command")
    run.add_argument("--ray-cpus", type=int, metavar="N",
                     help="ray: CPUs of the local Ray instance (default: all of this machine)")
    run.add_argument("--max-retries", type=int, default=3,
                     help="ray: retries of a failed task (worker error or lost worker; default 3)")
    run.add_argument("--dry-run", action="store_true", help="print the validated config and exit")
    run.add_argument("--rebuild-coco", action="store_true",
                     help="only rebuild coco.json from frames/*.json in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--contact-sheet", type=Path,
                     help="after the run, draw the first frames with their annotations into "
                          "this image (JPEG or PNG) to check them by eye")
    # Internal: how the parent starts a worker on a list of frames of an existing run.
    run.add_argument("--worker-frames", type=_frame_list, help=argparse.SUPPRESS)
    return parser


def config_from_args(args: argparse.Namespace) -> BatchConfig:
    if not args.scene:
        raise BatchError("--scene is required (e.g. --scene scenes/sample_office)")
    if args.count is None:
        raise BatchError("--count is required (number of frames)")
    render = batch.with_overrides(
        batch.preset(args.preset), resolution=args.resolution, samples=args.samples,
        adaptive_threshold=args.adaptive_threshold, denoise=args.denoise,
        denoise_quality=getattr(args, "denoise_quality", None), motion_blur_shutter=args.motion_blur,
        device=args.device,
        mask_mode=getattr(args, "mask_mode", None), region=_region(args))
    sitting, standing = _people_ranges(args.scene, args.sitting, args.standing)
    placement = PlacementConfig(sitting_range=sitting, standing_range=standing)
    assets = None
    if not getattr(args, "no_assets", False) and args.human_backend == "mpfb2":
        from blender_addon.core.garments import AssetError, find_assets_root

        try:
            root = find_assets_root(getattr(args, "assets", None))
        except AssetError as exc:
            raise BatchError(str(exc)) from exc
        assets = str(root.resolve()) if root is not None else None
    return BatchConfig(scene=str(args.scene), count=args.count, seed=args.seed, preset=args.preset,
                       render=render, placement=placement, human_backend=args.human_backend,
                       pose_library=args.pose_library, assets=assets,
                       sensor=_sensor_profile(getattr(args, "sensor", None), args.scene),
                       match_photo=bool(getattr(args, "match_photo", False)))


def _sensor_profile(choice: str | None, scene: str) -> dict[str, Any] | None:
    """``--sensor``: None (off), 'photo' (measured on the scene's photo) or a profile file."""
    if choice is None:
        return None
    from blender_addon.core import camera_sensor

    if choice == "photo":
        from blender_addon.core.scene_format import load_scene

        return camera_sensor.measure_profile([load_scene(scene).photo_path]).to_dict()
    return camera_sensor.SensorProfile.load(choice).to_dict()


@dataclass
class Backend:
    """What the Blender side provides: a worker command line and an in-process renderer."""

    worker_command: Callable[[Path, list[int], int], list[str]]  # (out, frames, threads)
    render_in_process: Callable[[Path, list[int], int], None]  # (out, frames, threads)


TABLE_7_2_SITTING, TABLE_7_2_STANDING = (1, 5), (0, 4)


def _region(args: argparse.Namespace) -> str | None:
    """``--region``, else the region of the run already in ``--out`` (a run made before regions
    existed rendered every pixel and resumes that way), else None (the preset's default)."""
    if getattr(args, "region", None) is not None or not getattr(args, "out", None):
        return getattr(args, "region", None)
    path = Path(args.out) / batch.RUN_CONFIG
    if not path.is_file():
        return None
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # prepare_run_folder reports an unreadable run config
    config = existing.get("config", existing)
    return str(config.get("render", {}).get("region", "full"))


def _people_ranges(scene: str, sitting: tuple[int, int] | None,
                   standing: tuple[int, int] | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """People per frame: the flags, else the scene's occupancy, else thesis Table 7.2."""
    if sitting is not None and standing is not None:
        return tuple(sitting), tuple(standing)  # type: ignore[return-value]
    try:
        occupancy = load_scene(scene).occupancy
    except SceneFormatError as exc:
        raise BatchError(str(exc)) from exc
    defaults = ((occupancy.sitting, occupancy.standing) if occupancy is not None
                else (TABLE_7_2_SITTING, TABLE_7_2_STANDING))
    return (tuple(sitting) if sitting is not None else defaults[0],  # type: ignore[return-value]
            tuple(standing) if standing is not None else defaults[1])


def _workers_option(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', got {text!r}") from None


def _write_contact_sheet(out: Path, path: Path) -> None:
    import io

    from protocol.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    sheet = contact_sheet(out)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        sheet.save(buffer, format="JPEG", quality=85)
    else:
        sheet.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    print(f"wrote {path}")


def run(argv: Sequence[str], backend: Backend) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    out: Path = args.out
    try:
        if args.worker_frames is not None:
            # A worker never outlives the command that started it, and a stop signal ends it
            # at once: frames are written atomically, and Blender's render loop would swallow
            # the exception a graceful stop raises. The parent's death kills it outright: a
            # Python handler waits until Blender's C code returns (seconds into a render).
            processes.die_with_parent(signal.SIGKILL)
            processes.install_stop_handlers("render worker", exit_after_s=0)
            backend.render_in_process(out, args.worker_frames, args.threads)
            return 0
        if args.rebuild_coco:
            coco = build_coco(out)
            print(f"{out / 'coco.json'}: {len(coco['images'])} images, {len(coco['annotations'])} people")
            return 0
        config = config_from_args(args)
        scene = load_scene(config.scene)
        photo_problem = check_image(scene.photo_path)
        if photo_problem is not None:
            raise SceneFormatError(f"{photo_problem}, {scene.photo_path} (the scene's photo); "
                                   "replace it with a complete image of the empty room")
        check_capacity(scene, config.placement)
        shard = batch.parse_shard(args.shard)
        auto_workers = None  # why --workers auto chose its count, for the log
        if args.workers == "auto":
            args.workers = 1
            if args.engine == "local":
                args.workers, auto_workers = batch.auto_workers(
                    ray_session.cpu_count(), config.render.resolution, batch.available_memory_bytes(),
                    threads=args.threads or 1)
        if args.workers < 0:
            raise BatchError(f"--workers must be >= 0, got {args.workers}")
        if args.engine != "local" and args.workers == 0:
            raise BatchError(f"--workers 0 renders in this process, which only --engine local "
                             f"does; drop --workers 0 to use --engine {args.engine}")
        if args.engine == "local" and (args.address is not None or args.ray_cpus is not None):
            raise BatchError("--address and --ray-cpus are for --engine ray; add --engine ray")
        threads = args.threads or (1 if args.engine == "ray"
                                   else max(1, ray_session.cpu_count() // max(1, args.workers)))
        engine = make_engine(args.engine, EngineOptions(
            workers=max(1, args.workers), frames_per_worker=args.frames_per_worker,
            threads=threads, address=args.address, ray_cpus=args.ray_cpus,
            max_retries=args.max_retries)) if args.workers > 0 else None
        if args.dry_run:
            print(json.dumps({"config": config.to_dict(), "scene": scene.to_dict(),
                              "camera": scene.camera_for(config.render.resolution).to_dict()}, indent=2))
            return 0
        batch.prepare_run_folder(out, config)
        if auto_workers is not None:
            print(f"--workers auto: {args.workers} ({auto_workers})", flush=True)
    except (BatchError, SceneFormatError, PlacementError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    frames = batch.shard_frames(config.count, shard)
    pending = batch.missing_frames(out, frames)
    print(f"{out}: shard {shard[0]}/{shard[1]} has {len(frames)} frames, "
          f"{len(frames) - len(pending)} already done, {len(pending)} to render", flush=True)
    if pending:
        from tqdm import tqdm

        with tqdm(total=len(frames), initial=len(frames) - len(pending), unit="frame",
                  disable=args.no_progress, desc="render") as progress:
            if engine is None:
                processes.install_stop_handlers("render", exit_after_s=0)  # as a worker
                backend.render_in_process(out, pending, threads)
                progress.update(len(pending))
            else:
                started = datetime.now(UTC).isoformat(timespec="seconds")
                try:
                    report = engine.run(out, pending,
                                        lambda chunk: backend.worker_command(out, chunk, threads),
                                        progress)
                except BatchError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                path = batch.append_run_report(out, shard, {"started": started, **report.to_dict()})
                for task in report.tasks:
                    if task.retries or task.status != "ok":
                        print(f"{'warning' if task.status == 'ok' else 'error'}: task {task.task} "
                              f"(frames {task.frames[0]}..{task.frames[-1]}): {task.status} after "
                              f"{task.attempts} attempt(s): {'; '.join(task.failures)}",
                              file=sys.stderr)
                print(f"{path}: {args.engine} engine, {len(report.tasks)} tasks, "
                      f"{report.to_dict()['retries']} retries", flush=True)
    coco = build_coco(out)
    still_missing = batch.missing_frames(out, frames)
    print(f"{out / 'coco.json'}: {len(coco['images'])} images, {len(coco['annotations'])} people")
    if args.contact_sheet is not None:
        _write_contact_sheet(out, args.contact_sheet)
    if still_missing:
        print(f"error: {len(still_missing)} frames of this shard are missing (first: "
              f"{still_missing[:5]}); rerun the same command to render them", file=sys.stderr)
        return 1
    return 0
