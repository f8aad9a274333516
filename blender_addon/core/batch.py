"""Headless batch rendering without Blender: configs, presets, per-frame recipes, sharding,
resume and the pool of recycled worker processes.

A run is a validated ``BatchConfig`` saved as ``run_config.json`` in the output folder.
Frame ``i`` is fully determined by ``(config, i)``: its seed is derived from the global seed
and the frame index (never from execution order), and ``sample_frame_recipe`` draws every
random choice of the frame (people, poses, placements, lighting, motion, Cycles seed) from
it. So shards, worker counts and interruptions never change what a frame contains.

A frame is complete when ``frames/<frame>.json`` exists; it is written last, after the
image and mask (each written atomically). Rerunning the same command renders only the
frames that lack it. Workers are separate processes that render at most
``frames_per_worker`` frames and exit, so memory cannot creep; the parent needs no Blender.
Workers never outlive the parent: they are tracked by ``protocol.processes`` (a stop signal
to the parent ends them) and get a parent-death signal (``kill -9`` of the parent ends them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from blender_addon.core.placement import PlacementConfig, place_people, sample_counts
from blender_addon.core.scene_format import SceneSpec
from protocol import processes
from protocol.coverage import MASK_MODES
from protocol.fileio import atomic_write_json

RUN_CONFIG = "run_config.json"
RUN_REPORTS_DIR = "run_reports"  # one JSON per shard: every invocation's engine, tasks, retries
FRAMES_DIR, IMAGES_DIR, MASKS_DIR = "frames", "images", "masks"
HUMAN_BACKENDS = ("mpfb2", "proxy")
DEVICES = ("auto", "cpu", "gpu")
# people: render only the rectangle the people and their visible shadows can change (the rest
# of the frame is the photo; core.render_region); full: every pixel, as runs made before it did.
REGIONS = ("people", "full")
# OpenImageDenoise's quality (Cycles' denoising_quality): "high" is Blender's default and
# costs about a third of a `fast` frame; "balanced" saves about a quarter of that frame for
# about 1 dB less on the people (docs/rendering.md).
DENOISE_QUALITIES = ("high", "balanced", "fast")


class BatchError(ValueError):
    """A batch request that cannot run; the message names the option and how to fix it."""


@dataclass(frozen=True)
class RenderSettings:
    """Cycles quality knobs. ``resolution`` is the output's long side in pixels.

    ``mask_mode``: "soft" also writes each person's anti-aliased coverage (from a Cryptomatte
    pass of the main render; ``protocol.coverage``), "hard" writes 0/1 coverage from the
    instance ids and skips the Cryptomatte pass. Annotations are the same in both."""

    resolution: int = 1024
    samples: int = 64
    adaptive_threshold: float = 0.05  # 0 = off
    denoise: bool = True
    denoise_quality: str = "high"
    motion_blur_shutter: float = 0.5  # in frames; 0 = off
    device: str = "auto"
    mask_mode: str = "soft"
    region: str = "people"

    def __post_init__(self) -> None:
        if not 16 <= self.resolution <= 8192:
            raise BatchError(f"resolution must be in [16, 8192], got {self.resolution}")
        if not 1 <= self.samples <= 1 << 16:
            raise BatchError(f"samples must be in [1, 65536], got {self.samples}")
        if not 0 <= self.adaptive_threshold < 1:
            raise BatchError(f"adaptive_threshold must be in [0, 1), got {self.adaptive_threshold}")
        if self.denoise_quality not in DENOISE_QUALITIES:
            raise BatchError(f"denoise_quality must be one of {DENOISE_QUALITIES}, got {self.denoise_quality!r}")
        if not 0 <= self.motion_blur_shutter <= 2:
            raise BatchError(f"motion_blur_shutter must be in [0, 2] frames, got {self.motion_blur_shutter}")
        if self.device not in DEVICES:
            raise BatchError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.mask_mode not in MASK_MODES:
            raise BatchError(f"mask_mode must be one of {MASK_MODES}, got {self.mask_mode!r}")
        if self.region not in REGIONS:
            raise BatchError(f"region must be one of {REGIONS}, got {self.region!r}")


# Named quality presets. "thesis" is Table 7.2's setting (350 samples, no denoiser, every
# pixel); "quality" matches its PSNR on the people in about half the time (adaptive sampling
# tuned on the people, OpenImageDenoise, the people's region: bench scale, part quality);
# "default" is about 6x faster than "thesis" and about 5 dB worse on the people.
PRESETS: dict[str, RenderSettings] = {
    "fast": RenderSettings(resolution=512, samples=16, adaptive_threshold=0.1, denoise=True,
                           motion_blur_shutter=0.0),
    "default": RenderSettings(resolution=1024, samples=64, adaptive_threshold=0.05, denoise=True),
    "quality": RenderSettings(resolution=1024, samples=350, adaptive_threshold=0.007, denoise=True),
    "thesis": RenderSettings(resolution=1024, samples=350, adaptive_threshold=0.0, denoise=False),
    "reference": RenderSettings(resolution=1024, samples=2048, adaptive_threshold=0.0, denoise=False),
}


def preset(name: str) -> RenderSettings:
    if name not in PRESETS:
        raise BatchError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class BatchConfig:
    """Everything that decides a dataset's content (saved as run_config.json)."""

    scene: str
    count: int
    seed: int = 0
    preset: str = "default"
    render: RenderSettings = field(default_factory=RenderSettings)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    human_backend: str = "mpfb2"
    pose_library: str | None = None  # folder of BVH files for standing poses; None = built-ins
    head_radius_m: float = 0.11
    # MakeHuman asset folder (fitted garments, shoes, hats, hair); None = painted clothing.
    assets: str | None = None
    # The real camera's look for the rendered people (a camera_sensor profile, kept in the run
    # config so that every worker applies the same); None = the render as Cycles made it.
    sensor: dict[str, Any] | None = None
    # Light colour and power matched to the room photo (white balance and exposure from its
    # statistics; core.lighting.match_to_photo), else the sampled rig as drawn.
    match_photo: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise BatchError(f"count must be >= 1, got {self.count}")
        if not 0 <= self.seed < 2**63:
            raise BatchError(f"seed must be in [0, 2^63), got {self.seed}")
        if self.human_backend not in HUMAN_BACKENDS:
            raise BatchError(f"human_backend must be one of {HUMAN_BACKENDS}, got {self.human_backend!r}")
        if self.pose_library is not None and not Path(self.pose_library).is_dir():
            raise BatchError(f"pose_library {self.pose_library!r} is not a folder of .bvh files")
        if self.assets is not None and not (Path(self.assets) / "base" / "clothes").is_dir():
            raise BatchError(f"assets {self.assets!r} is not a MakeHuman asset folder (expected base/clothes "
                             "inside it); see ../shared/data/README.md, or render without assets")
        if not 0.02 <= self.head_radius_m <= 0.3:
            raise BatchError(f"head_radius_m must be in [0.02, 0.3], got {self.head_radius_m}")
        if self.sensor is not None:
            from blender_addon.core.camera_sensor import SensorProfile

            try:
                SensorProfile.from_dict(self.sensor)
            except (KeyError, TypeError, ValueError) as exc:
                raise BatchError(f"sensor: not a valid camera_sensor profile ({exc})") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> BatchConfig:
        known = {f.name for f in fields(BatchConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BatchError(f"run config has unknown fields {unknown}; valid: {sorted(known)}")
        values = dict(data)
        # A run config written before render regions existed rendered every pixel.
        values["render"] = RenderSettings(**{"region": "full", **values.get("render", {})})
        placement = dict(values.get("placement", {}))
        for key in ("sitting_range", "standing_range"):
            if key in placement:
                placement[key] = tuple(placement[key])
        values["placement"] = PlacementConfig(**placement)
        return BatchConfig(**values)


def frame_name(index: int) -> str:
    return f"{index:06d}"


def frame_seed(global_seed: int, index: int) -> int:
    """A 63-bit seed from (global seed, frame index) alone, well mixed by SeedSequence."""
    state = np.random.SeedSequence([int(global_seed), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` with 0 <= i < N."""
    try:
        left, right = text.split("/")
        index, total = int(left), int(right)
    except ValueError:
        raise BatchError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if total < 1 or not 0 <= index < total:
        raise BatchError(f"--shard {text}: need N >= 1 and 0 <= i < N")
    return index, total


def shard_frames(count: int, shard: tuple[int, int]) -> list[int]:
    """Frames of shard i/N: every N-th frame starting at i, so shards interleave evenly."""
    index, total = shard
    return list(range(index, count, total))


def frame_done(out: Path, index: int) -> bool:
    return (out / FRAMES_DIR / f"{frame_name(index)}.json").is_file()


def missing_frames(out: Path, frames: Sequence[int]) -> list[int]:
    return [i for i in frames if not frame_done(out, i)]


# ---------------------------------------------------------------------------------------------
# Per-frame recipe: every random choice of a frame, drawn from its own seed.


@dataclass(frozen=True)
class LightingRecipe:
    sun_elevation_deg: float
    sun_azimuth_deg: float
    sun_strength: float
    sun_angle_deg: float
    sun_color: tuple[float, float, float]
    ambient_color: tuple[float, float, float]
    ambient_strength: float


def _kelvin_to_rgb(kelvin: float) -> tuple[float, float, float]:
    """Approximate linear RGB of a black body (normalised so the largest channel is 1)."""
    t = kelvin / 100.0
    red = 1.0 if t <= 66 else min(1.0, 1.2929 * (t - 60) ** -0.1332)
    green = (0.3901 * math.log(t) - 0.6318) if t <= 66 else 1.1298 * (t - 60) ** -0.0755
    blue = 1.0 if t >= 66 else (0.0 if t <= 19 else 0.5432 * math.log(t - 10) - 1.1962)
    rgb = [min(1.0, max(0.0, c)) for c in (red, green, blue)]
    # sRGB-ish values to linear, so the light's colour means what it says.
    return tuple(round(c**2.2, 5) for c in rgb)  # type: ignore[return-value]


def sample_lighting(rng: np.random.Generator) -> LightingRecipe:
    """Randomised lighting: a sun (direction, strength, softness, colour) and ambient fill."""
    ambient_kelvin = float(rng.uniform(3500, 7500))
    return LightingRecipe(
        sun_elevation_deg=round(float(rng.uniform(35.0, 85.0)), 4),
        sun_azimuth_deg=round(float(rng.uniform(0.0, 360.0)), 4),
        sun_strength=round(float(rng.uniform(0.5, 3.0)), 4),
        sun_angle_deg=round(float(rng.uniform(1.0, 15.0)), 4),
        sun_color=_kelvin_to_rgb(float(rng.uniform(3000, 6500))),
        ambient_color=_kelvin_to_rgb(ambient_kelvin),
        ambient_strength=round(float(rng.uniform(0.3, 1.0)), 4),
    )


@dataclass(frozen=True)
class PersonRecipe:
    name: str
    pass_index: int
    kind: str
    location: tuple[float, float, float]
    heading_rad: float
    velocity_mps: tuple[float, float, float]  # for motion blur
    seat: str | None
    params: Any  # human_params.PersonParams (None for the proxy backend)
    pose: Any  # human_params.PoseChoice (None for the proxy backend)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "pass_index": self.pass_index, "kind": self.kind,
            "location": list(self.location), "heading_rad": self.heading_rad,
            "velocity_mps": list(self.velocity_mps), "seat": self.seat,
            "params": self.params.to_dict() if self.params is not None else None,
            "pose": self.pose.to_dict() if self.pose is not None else None,
        }


@dataclass(frozen=True)
class FrameRecipe:
    index: int
    seed: int
    cycles_seed: int
    people: tuple[PersonRecipe, ...]
    lighting: LightingRecipe

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "seed": self.seed, "cycles_seed": self.cycles_seed,
                "people": [p.to_dict() for p in self.people], "lighting": asdict(self.lighting)}


def sample_frame_recipe(scene: SceneSpec, config: BatchConfig, index: int,
                        pose_library: Any = None) -> FrameRecipe:
    """Every random choice of frame ``index``; the same inputs always give the same recipe."""
    seed = frame_seed(config.seed, index)
    rng = np.random.default_rng(seed)
    n_sitting, n_standing = sample_counts(config.placement, rng)
    placements = place_people(scene, n_sitting, n_standing, rng, config.placement)
    people: list[PersonRecipe] = []
    for number, spot in enumerate(placements, start=1):
        params = pose = None
        if config.human_backend == "mpfb2":
            from blender_addon.core.human_params import sample_person_params, sample_pose

            params = sample_person_params(rng)
            pose = sample_pose(rng, spot.kind, pose_library if spot.kind == "standing" else None)
        # People shift a little while the shutter is open: walkers more than sitters.
        speed = float(rng.uniform(0.0, 1.2 if spot.kind == "standing" else 0.1))
        direction = spot.heading_rad if spot.kind == "standing" else float(rng.uniform(0, 2 * math.pi))
        velocity = (round(speed * math.cos(direction), 5), round(speed * math.sin(direction), 5), 0.0)
        people.append(PersonRecipe(f"person_{number}", number, spot.kind, spot.location,
                                   spot.heading_rad, velocity, spot.seat, params, pose))
    lighting = sample_lighting(rng)
    cycles_seed = int(rng.integers(0, 2**31 - 1))
    return FrameRecipe(index, seed, cycles_seed, tuple(people), lighting)


# ---------------------------------------------------------------------------------------------
# Run folder: config identity and resume safety.


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_run_folder(out: Path, config: BatchConfig) -> None:
    """Create the folders and write run_config.json, or check an existing one matches."""
    out.mkdir(parents=True, exist_ok=True)
    for sub in (FRAMES_DIR, IMAGES_DIR, MASKS_DIR):
        (out / sub).mkdir(exist_ok=True)
    path = out / RUN_CONFIG
    wanted = config.to_dict()
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
        existing_config = existing.get("config", existing)
        try:
            # A run started before a setting existed gets that setting's default, as its
            # workers do (load_run_config), so it still resumes (e.g. render.mask_mode).
            existing_config = json.loads(json.dumps(BatchConfig.from_dict(existing_config).to_dict()))
        except (BatchError, TypeError, ValueError):
            pass  # compared as written: the message below names what differs
        # The frame count may grow: frames 0..n-1 are the same in any longer run.
        compare_old = {k: v for k, v in existing_config.items() if k != "count"}
        compare_new = {k: v for k, v in json.loads(json.dumps(wanted)).items() if k != "count"}
        if compare_old != compare_new:
            changed = sorted(k for k in set(compare_old) | set(compare_new)
                             if compare_old.get(k) != compare_new.get(k))
            raise BatchError(
                f"{out} holds a run with a different configuration (differs in: {', '.join(changed)}); "
                "rerun with the same options to resume it, or choose a new --out folder"
            )
        if existing_config.get("count", 0) >= config.count:
            return
    atomic_write_json(path, {"config": wanted, "format": "fisheye-synth run config v1"})


def load_run_config(out: Path) -> BatchConfig:
    path = out / RUN_CONFIG
    if not path.exists():
        raise BatchError(f"{path} not found; start the run with the render CLI first")
    data = json.loads(path.read_text(encoding="utf-8"))
    return BatchConfig.from_dict(data.get("config", data))


# ---------------------------------------------------------------------------------------------
# Worker pool: recycled subprocesses, progress from completion markers.


@dataclass
class PoolReport:
    rendered: list[int]
    failed_workers: list[tuple[list[int], int]]  # (frames it was given, exit code)
    seconds: float


def chunk_frames(frames: Sequence[int], frames_per_worker: int, parallel: int = 1) -> list[list[int]]:
    """Consecutive chunks of ``frames_per_worker`` frames (the last may be shorter); when that
    gives fewer chunks than ``parallel`` workers, ``parallel`` chunks whose sizes differ by at
    most one instead: 10 frames for 2 workers are 2 chunks of 5, not one chunk of 10 that
    leaves a worker idle."""
    size = frames_per_worker
    if 0 < len(frames) and math.ceil(len(frames) / size) < parallel:
        chunks = min(parallel, len(frames))
        base, extra = divmod(len(frames), chunks)
        bounds = [0, *itertools.accumulate(base + (i < extra) for i in range(chunks))]
        return [list(frames[a:b]) for a, b in itertools.pairwise(bounds)]
    return [list(frames[i:i + size]) for i in range(0, len(frames), size)]


# Peak resident memory of one render worker process, measured: 894 MiB at 512 px and
# 1455 MiB at 1024 px (8 dressed MakeHuman people in the real Lunch3 room, soft masks; see
# docs/rendering.md). Modelled as a fixed part plus a part per output pixel, with headroom
# for bigger crowds and garments.
WORKER_MEMORY_FIXED_BYTES = 741_000_000
WORKER_MEMORY_BYTES_PER_PIXEL = 750
WORKER_MEMORY_HEADROOM = 1.25


def worker_memory_bytes(resolution: int) -> int:
    """What one render worker may need at ``resolution`` px (the long side of a square frame)."""
    need = WORKER_MEMORY_FIXED_BYTES + WORKER_MEMORY_BYTES_PER_PIXEL * resolution * resolution
    return int(need * WORKER_MEMORY_HEADROOM)


def available_memory_bytes() -> int | None:
    """Memory the kernel can give new processes without swapping (Linux ``MemAvailable``);
    None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def auto_workers(cpus: int, resolution: int, available: int | None, threads: int = 1) -> tuple[int, str]:
    """``--workers auto``: one worker per ``threads`` CPUs (one Cycles thread each unless told
    otherwise, the fastest setting measured: ``bench scale``, part ``workers``), but no more
    than ``available`` memory holds. Returns the count and a sentence that says why."""
    per_worker = worker_memory_bytes(resolution)
    workers = max(1, cpus // max(1, threads))
    why = f"{cpus} CPUs" + (f", {threads} threads per worker" if threads > 1 else "")
    if available is not None:
        fit = max(1, available // per_worker)
        if fit < workers:
            workers = fit
            why = (f"{cpus} CPUs, but {available / 2**30:.1f} GiB free holds {fit} at about "
                   f"{per_worker / 2**30:.1f} GiB per worker at {resolution} px")
        else:
            why += f", {available / 2**30:.1f} GiB free (about {per_worker / 2**30:.1f} GiB per worker)"
    return workers, why


def run_worker_pool(
    out: Path,
    frames: Sequence[int],
    worker_command: Callable[[list[int]], list[str]],
    workers: int,
    frames_per_worker: int,
    progress: Any = None,
    poll_seconds: float = 0.25,
    env: dict[str, str] | None = None,
) -> PoolReport:
    """Render ``frames`` with up to ``workers`` concurrent processes.

    Each process gets at most ``frames_per_worker`` frames, then exits and is replaced (so
    memory cannot creep across a long run). A worker that dies loses only its unfinished
    frames; they stay missing and a rerun renders them. ``progress`` is a tqdm-like object.
    """
    if workers < 1:
        raise BatchError(f"--workers must be >= 1, got {workers}")
    if frames_per_worker < 1:
        raise BatchError(f"--frames-per-worker must be >= 1, got {frames_per_worker}")
    queue = chunk_frames(frames, frames_per_worker, workers)
    running: list[tuple[subprocess.Popen[bytes], list[int]]] = []
    failed: list[tuple[list[int], int]] = []
    done: set[int] = set()
    start = time.monotonic()
    child_env = dict(os.environ if env is None else env)
    try:
        while queue or running:
            while queue and len(running) < workers:
                chunk = queue.pop(0)
                process = processes.popen(worker_command(chunk), env=child_env)
                running.append((process, chunk))
            time.sleep(poll_seconds)
            for process, chunk in list(running):
                code = process.poll()
                if code is None:
                    continue
                running.remove((process, chunk))
                processes.untrack(process)
                if code != 0:
                    failed.append((chunk, code))
            newly = [i for i in frames if i not in done and frame_done(out, i)]
            done.update(newly)
            if progress is not None and newly:
                progress.update(len(newly))
    except BaseException:
        # An error, Ctrl-C or a stop signal: no worker may keep rendering without us. Frames
        # are written atomically, so what is on disk stays valid and a rerun resumes.
        processes.stop_children(which=[process for process, _ in running])
        raise
    return PoolReport(sorted(done), failed, time.monotonic() - start)


def run_report_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / RUN_REPORTS_DIR / f"render_shard-{shard[0]}-of-{shard[1]}.json"


def append_run_report(out: Path, shard: tuple[int, int], entry: dict[str, Any]) -> Path:
    """Add one invocation's report (engine, settings, tasks with their attempts and retries)
    to the shard's report file, atomically. One file per shard, because shards of one dataset
    may run at the same time on different machines and write into the same folder."""
    path = run_report_path(out, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    if path.exists():
        runs = list(json.loads(path.read_text(encoding="utf-8")).get("runs", []))
    runs.append(entry)
    atomic_write_json(path, {"format": "fisheye-synth render run report v1",
                             "shard": list(shard), "runs": runs})
    return path


def versions() -> dict[str, str]:
    """Software versions for the manifest (bpy only when it is already imported)."""
    info = {"python": sys.version.split()[0], "numpy": np.__version__}
    from importlib.metadata import PackageNotFoundError, version

    try:
        info["fisheye_synth"] = version("fisheye-synth")
    except PackageNotFoundError:
        info["fisheye_synth"] = "not installed"
    bpy = sys.modules.get("bpy")
    if bpy is not None:
        info["blender"] = bpy.app.version_string
    return info


def with_overrides(settings: RenderSettings, **overrides: Any) -> RenderSettings:
    """``settings`` with the given fields replaced (None values are ignored)."""
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
