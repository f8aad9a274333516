"""``make demo``: the whole chain, offline, on the bundled sample scene.

    render -> crop -> train a small refiner -> start the daemon -> refine through it -> summary

Each stage is a separate command-line tool of the project, run as a subprocess exactly as a
user would run it, so the demo doubles as a worked example (``out/demo/commands.sh`` lists
every command it ran). The target ("real") domain comes from ``--real DIR`` (annotated real
frames: CEPDOF-style ``annotations.json`` or our own ``coco.json``); without it the demo
builds a STAND-IN target domain: the same renders with their people (only the people, under
their masks; the background stays as rendered) seen through a photographic camera model
(``refiner_daemon.evaluation.standin_domain``), so the gap it opens is one a refiner, which
only changes people, can close. The stand-in is named as such in every output.

Stages whose outputs already exist are skipped, so an interrupted demo resumes. The daemon
is always shut down when the demo ends, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from protocol import processes
from protocol.cli import run_main
from protocol.fileio import atomic_write_json, atomic_write_text
from refiner_daemon.evaluation.standin_domain import CameraModel, apply_camera_model_to_people

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = PROJECT_ROOT / "scenes" / "sample_office"
MODEL_NAME = "demo"


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does, saved as ``demo_config.json`` beside its outputs."""

    out: str = "out/demo"
    scene: str = str(DEFAULT_SCENE)
    real: str | None = None
    frames: int = 10
    seed: int = 0
    render_preset: str = "fast"
    crop_size: int = 128
    refiner_preset: str = "C_CP+S"
    refiner_width: int = 16
    refiner_blocks: int = 3
    train_steps: int = 1500

    def validate(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frames must be at least 2, got {self.frames}")
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be positive, got {self.train_steps}")
        if not (Path(self.scene) / "scene.json").is_file():
            raise ValueError(f"scene {self.scene!r} has no scene.json; pass a scene folder")
        if self.real is not None and not any(
            (Path(self.real) / name).is_file() for name in ("annotations.json", "coco.json")
        ):
            raise ValueError(
                f"--real {self.real!r} holds neither annotations.json (CEPDOF-style) nor "
                "coco.json (our format); point it at an annotated folder of real frames"
            )


class DemoError(RuntimeError):
    """A stage failed; the message names the stage and the command to rerun by hand."""


class Runner:
    """Runs the stages' commands, logs them to ``commands.sh`` and times them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.timings: dict[str, float] = {}
        self.commands: list[str] = ["#!/usr/bin/env bash", "# Commands run by `make demo`, in order."]

    def run(self, stage: str, argv: list[str], *, log_name: str | None = None) -> None:
        printable = " ".join(shlex.quote(a) for a in argv)
        self.commands.append(printable)
        atomic_write_text(self.out / "commands.sh", "\n".join(self.commands) + "\n")
        print(f"\n== {stage}\n$ {printable}", flush=True)
        started = time.perf_counter()
        log_path = self.out / "logs" / f"{log_name or stage}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            # Tracked, with a parent-death signal: a stop signal or kill -9 of the demo
            # ends the stage too (protocol.processes).
            process = processes.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=PROJECT_ROOT, bufsize=1)
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                print(f"   {line.rstrip()}"[:160], flush=True)
            code = process.wait()
            processes.untrack(process)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started
        if code != 0:
            raise DemoError(f"stage {stage!r} failed (exit {code}); log: {log_path}\nrerun: {printable}")


def _python(*module_args: str) -> list[str]:
    return [sys.executable, "-m", *module_args]


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


STANDIN_LABEL = "STAND-IN (renders whose people are seen through a camera model; background as rendered)"


def make_standin_dataset(rendered: Path, out: Path, seed: int) -> Path:
    """Copy a rendered dataset with every person (under the frame's person mask, blended
    softly) passed through the stand-in camera model; the background is copied unchanged.
    A frame without a mask file has no known people and is copied as it is."""
    coco = json.loads((rendered / "coco.json").read_text())
    rng = np.random.default_rng(seed)
    models = []
    for image in coco["images"]:
        model = CameraModel.sample(rng)
        pixels = np.asarray(Image.open(rendered / image["file_name"]).convert("RGB"))
        target = out / image["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if image.get("mask_file"):
            person_mask = np.asarray(Image.open(rendered / image["mask_file"]))
            if person_mask.ndim == 3:
                person_mask = person_mask.max(axis=2)
            pixels = apply_camera_model_to_people(pixels, person_mask, model, rng)
            (out / image["mask_file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(rendered / image["mask_file"], out / image["mask_file"])
        Image.fromarray(pixels).save(target)
        models.append({"file_name": image["file_name"], "people_only": bool(image.get("mask_file")),
                       **model.to_dict()})
    coco.setdefault("info", {})["description"] = (
        "STAND-IN target domain: synthetic renders whose people (under their masks) went through a "
        "photographic camera model, background as rendered; not real data"
    )
    atomic_write_json(out / "standin_camera_models.json", models)
    atomic_write_json(out / "coco.json", coco)  # written last: marks the folder complete
    return out


@contextmanager
def daemon_process(runner: Runner, models: Path, state: Path) -> Iterator[str]:
    """Start ``refiner-daemon serve`` on a free loopback port; always stop it afterwards."""
    endpoint = f"tcp://127.0.0.1:{_free_loopback_port()}"
    argv = _python("refiner_daemon.cli", "serve", "--bind", endpoint, "--models", str(models),
                   "--state", str(state), "--allow-root", str(runner.out))
    runner.commands.append(" ".join(shlex.quote(a) for a in argv) + " &")
    log_path = runner.out / "logs" / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"\n== daemon\n$ {' '.join(argv)} &", flush=True)
    with log_path.open("w") as log:
        process = processes.popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise DemoError(f"the daemon exited at start (code {process.returncode}); log: {log_path}")
                probe = subprocess.run(
                    _python("refiner_daemon.cli", "status", "--endpoint", endpoint, "--timeout-ms", "1000"),
                    capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
                if probe.returncode == 0:
                    print("   " + probe.stdout.strip().replace("\n", "\n   "), flush=True)
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"the daemon did not answer within 60 s; log: {log_path}")
                time.sleep(1.0)
            yield endpoint
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            processes.untrack(process)
            print(f"   daemon stopped (exit {process.returncode})", flush=True)


def _tile(paths: list[Path], size: int, columns: int) -> Image.Image:
    rows = max(1, -(-len(paths) // columns))
    sheet = Image.new("RGB", (columns * size, rows * size), (24, 24, 24))
    for index, path in enumerate(paths):
        thumb = Image.open(path).convert("RGB")
        thumb.thumbnail((size, size))
        sheet.paste(thumb, ((index % columns) * size, (index // columns) * size))
    return sheet


def _diff_heat(before: Path, after: Path) -> Image.Image:
    a = np.asarray(Image.open(before).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(after).convert("RGB"), dtype=np.int16)
    diff = np.abs(a - b).max(axis=2).astype(np.float32)
    scaled = np.clip(diff * (255.0 / max(1.0, float(diff.max()))), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([scaled, scaled // 3, 255 - scaled], axis=2))


def person_colour_stats(out: Path) -> dict[str, dict[str, float]]:
    """Mean RGB of person pixels before and after refinement, and of the target crops.

    The frames' person masks select the people; the target side uses its crops' masks when it
    has them (rendered or stand-in targets) and whole crops otherwise (real frames). A refiner
    that learned the target's look moves the refined statistics toward the target's.
    """

    def stats(pixels: np.ndarray) -> dict[str, float]:
        mean = pixels.reshape(-1, 3).astype(np.float64).mean(axis=0)
        return {"r": float(mean[0]), "g": float(mean[1]), "b": float(mean[2]),
                "blue_over_red": float(mean[2] / max(mean[0], 1e-6))}

    coco = json.loads((out / "render" / "coco.json").read_text())
    frames: dict[str, list[np.ndarray]] = {"render": [], "refined": []}
    for image in coco["images"]:
        mask = np.asarray(Image.open(out / "render" / image["mask_file"])) > 0
        for name, parts in frames.items():
            parts.append(np.asarray(Image.open(out / name / image["file_name"]).convert("RGB"))[mask])
    target: list[np.ndarray] = []
    for crop_path in sorted((out / "crops_target" / "crops").glob("*.png")):
        pixels = np.asarray(Image.open(crop_path).convert("RGB"))
        mask_path = out / "crops_target" / "masks" / crop_path.name
        target.append(pixels[np.asarray(Image.open(mask_path)) > 127] if mask_path.exists() else pixels)
    result = {name: stats(np.concatenate(parts)) for name, parts in frames.items()}
    result["target"] = stats(np.concatenate(target))
    return result


def write_summary(out: Path, cfg: DemoConfig, timings: dict[str, float], target_label: str) -> Path:
    """One page: before/after frames, a difference map, crops, timings, the commands."""
    rendered, refined = out / "render", out / "refined"
    coco = json.loads((rendered / "coco.json").read_text())
    names = [image["file_name"] for image in coco["images"]][:6]
    figures = out / "summary_files"
    figures.mkdir(parents=True, exist_ok=True)
    _tile([rendered / n for n in names], 256, 3).save(figures / "before.jpg", quality=88)
    _tile([refined / n for n in names], 256, 3).save(figures / "after.jpg", quality=88)
    heat = _diff_heat(rendered / names[0], refined / names[0])
    heat.thumbnail((384, 384))
    heat.save(figures / "difference.png")
    crops = sorted((out / "crops_synthetic" / "crops").glob("*.png"))[:24]
    targets = sorted((out / "crops_target" / "crops").glob("*.png"))[:24]
    _tile(crops, 96, 12).save(figures / "crops_synthetic.jpg", quality=88)
    _tile(targets, 96, 12).save(figures / "crops_target.jpg", quality=88)

    outside = []
    for name in names:  # background must be untouched by construction
        a = np.asarray(Image.open(rendered / name).convert("RGB"))
        b = np.asarray(Image.open(refined / name).convert("RGB"))
        people = np.asarray(Image.open(rendered / name.replace("images/", "masks/"))) > 0
        # Refined crops are blended under anti-aliased coverage, which reaches a pixel past the
        # hard mask: the background is what no person covers at all.
        for soft in (rendered / "soft_masks").glob(f"{Path(name).stem}_*.png"):
            people |= np.asarray(Image.open(soft)) > 0
        outside.append(bool(np.array_equal(a[~people], b[~people])))
    changed = float(np.mean([
        np.abs(np.asarray(Image.open(rendered / n).convert("RGB"), np.int16)
               - np.asarray(Image.open(refined / n).convert("RGB"), np.int16)).mean() for n in names]))
    rows = "\n".join(f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items())
    colours = person_colour_stats(out)
    colour_rows = "\n".join(
        f"| {name} | {c['r']:.1f} | {c['g']:.1f} | {c['b']:.1f} | {c['blue_over_red']:.3f} |"
        for name, c in colours.items())
    markdown = f"""# Demo summary

Scene `{cfg.scene}`, {cfg.frames} frames, seed {cfg.seed}. Target domain: **{target_label}**.
Refiner: preset `{cfg.refiner_preset}`, width {cfg.refiner_width}, {cfg.refiner_blocks} blocks,
{cfg.train_steps} steps (a few minutes on a CPU: it shows the machinery, not a converged model).

| synthetic frames (before) | refined frames (after) |
|---|---|
| ![before](summary_files/before.jpg) | ![after](summary_files/after.jpg) |

Per-pixel change on the first frame (blue: none, red: most): ![difference](summary_files/difference.png)

Background pixels bit-identical to the render on every frame shown: **{all(outside)}**.
Mean absolute change per pixel over those frames: {changed:.2f} grey levels (people cover
a small part of each frame; the table below looks at their pixels only).

Mean colour of person pixels (the refiner should move "refined" from "render" toward "target"):

| set | R | G | B | B/R |
|---|---|---|---|---|
{colour_rows}

Synthetic crops: ![crops](summary_files/crops_synthetic.jpg)

Target crops ({target_label}): ![targets](summary_files/crops_target.jpg)

| stage | seconds |
|---|---|
{rows}

Every command the demo ran is in `commands.sh`; logs are in `logs/`.
"""
    atomic_write_text(out / "summary.md", markdown)
    body = markdown
    for pattern in ("before", "after", "difference", "crops", "targets"):
        body = body.replace(f"![{pattern}](", f'<img alt="{pattern}" src="')
    html = "<!doctype html><meta charset=utf-8><title>Demo summary</title><pre style='white-space:pre-wrap'>"
    atomic_write_text(out / "summary.html", html + body.replace(".jpg)", '.jpg">').replace(".png)", '.png">') + "</pre>")
    atomic_write_json(out / "summary.json", {"config": asdict(cfg), "timings_s": timings,
                                             "target_domain": target_label,
                                             "background_untouched": all(outside),
                                             "person_colour": colours,
                                             "mean_abs_change": changed})
    return out / "summary.md"


def run_demo(cfg: DemoConfig) -> Path:
    cfg.validate()
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "demo_config.json", asdict(cfg))
    runner = Runner(out)

    rendered = out / "render"
    runner.run("render", _python("blender_addon.bl.cli_entry", "--scene", cfg.scene, "--count", str(cfg.frames),
                                 "--seed", str(cfg.seed), "--preset", cfg.render_preset, "--out", str(rendered)))

    if cfg.real:
        target_source, target_label = Path(cfg.real), f"real frames from {cfg.real}"
    else:
        target_source, target_label = out / "standin_target", STANDIN_LABEL
        if not (target_source / "coco.json").is_file():
            print("\n== stand-in target domain (the renders' people through a photographic camera model)",
                  flush=True)
            started = time.perf_counter()
            make_standin_dataset(rendered, target_source, cfg.seed + 1)
            runner.timings["stand-in"] = time.perf_counter() - started

    for name, source in (("crops_synthetic", rendered), ("crops_target", target_source)):
        if not (out / name / "records.json").is_file():
            runner.run(f"crop {name}", _python("protocol.crop_dataset", str(source), str(out / name),
                                               "--size", str(cfg.crop_size), "--quiet"))

    run_dir, models = out / "refiner_run", out / "models"
    if not (run_dir / "refiner.pt").is_file():
        runner.run("train refiner", _python(
            "refiner_daemon.refiner.train", "--run-dir", str(run_dir),
            "--synthetic", str(out / "crops_synthetic"), "--real", str(out / "crops_target"),
            "--preset", cfg.refiner_preset, "--width", str(cfg.refiner_width),
            "--disc-width", str(cfg.refiner_width), "--n-blocks", str(cfg.refiner_blocks),
            "--crop-size", f"{cfg.crop_size}x{cfg.crop_size}", "--max-steps", str(cfg.train_steps),
            "--seed", str(cfg.seed), "--checkpoint-every", "100", "--resume", "--no-progress"))
    models.mkdir(exist_ok=True)
    shutil.copyfile(run_dir / "refiner.pt", models / f"{MODEL_NAME}.pt")

    with daemon_process(runner, models, out / "daemon_state") as endpoint:
        runner.run("refine via daemon", _python(
            "refiner_daemon.cli", "refine", str(rendered), str(out / "refined"),
            "--model", MODEL_NAME, "--endpoint", endpoint, "--size", str(cfg.crop_size)))

    summary = write_summary(out, cfg, runner.timings, target_label)
    print(f"\nsummary: {summary}\nrefined dataset: {out / 'refined'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """The demo under ``protocol.cli.run_main``: one-line errors; SIGTERM/SIGINT/SIGHUP stop
    every stage's process and the daemon and exit 128 + N (a rerun resumes)."""
    return run_main(_main, argv, prog="demo")


def _main(argv: list[str]) -> int:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m refiner_daemon.demo",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  make demo\n  make demo REAL=../shared/data/real/cepdof_lunch3\n"
               "  python -m refiner_daemon.demo --out out/demo --frames 20 --train-steps 1000",
    )
    parser.add_argument("--out", default=defaults.out, help=f"output folder (default {defaults.out})")
    parser.add_argument("--scene", default=defaults.scene, help="scene folder (default: the bundled sample office)")
    parser.add_argument("--real", default=None, help="annotated real frames for the target domain "
                        "(default: a stand-in made from the renders)")
    parser.add_argument("--frames", type=int, default=defaults.frames, help=f"frames to render (default {defaults.frames})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--train-steps", type=int, default=defaults.train_steps,
                        help=f"refiner training steps (default {defaults.train_steps})")
    parser.add_argument("--refiner-preset", default=defaults.refiner_preset,
                        help=f"thesis Table 3.2 preset (default {defaults.refiner_preset})")
    args = parser.parse_args(argv)
    cfg = DemoConfig(out=args.out, scene=args.scene, real=args.real or None, frames=args.frames,
                     seed=args.seed, train_steps=args.train_steps, refiner_preset=args.refiner_preset)
    try:
        run_demo(cfg)
    except (DemoError, ValueError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, processes.Stopped):
        print("\ndemo interrupted; rerun the same command to resume", file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
