"""Refine preview without Blender: rendered frame -> crops -> daemon -> reinsertion -> images.

This is the glue the add-on's panel, its live preview and headless scripts share. It reads a
frame the render CLI wrote (``images/``, ``masks/``, ``frames/<name>.json``), cuts one upright
crop per visible person (``protocol.crops.crop_person``, thesis Algorithm 5), sends them in one
``RefineRequest``, and blends the refined crops back under each person's own mask
(``protocol.crops.reinsert``, Algorithm 6): the anti-aliased coverage from ``soft_masks/`` as
alpha where the frame has it, else the hard instance mask, so pixels no person covers stay bit
for bit.

Everything that waits on the daemon is a non-blocking state machine (``RefinePreview.poll``),
because Blender calls it from a ``bpy.app.timers`` callback that must return within
milliseconds; ``refine_frame`` drives the same machine to completion for scripts and benches.
Render jobs (preview and batch) are subprocesses of the render CLI (``RenderProcess``), polled
the same way, so the UI never waits on Cycles.

    frame = load_rendered_frame(Path("out/preview"), 0)
    with Client("tcp://127.0.0.1:5555") as client:
        result = refine_frame(client, frame, model="aggan32")
    side_by_side(frame.image, result.refined)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from protocol.annotations import head_from_rbox, image_centre, rbox_mask
from protocol.coverage import CoverageError, read_coverage
from protocol.crops import CropRecord, crop_person, reinsert
from protocol.errors import ProtocolError
from protocol.messages import ErrorReply, RefineReply, RefineRequest

# Crop (width, height): people seen from the ceiling are long and thin along the radius.
PREVIEW_CROP_SIZE: tuple[int, int] = (128, 256)
DISPLAY_MODES = ("synthetic", "refined", "attention")


class PreviewError(RuntimeError):
    """The preview could not be made; the message says what failed and what to do."""


# ---------------------------------------------------------------------------------------------
# A rendered frame.


@dataclass(frozen=True)
class PersonBoxes:
    """What the overlay and the crops need of one annotated person."""

    instance_id: int
    head_xy: tuple[float, float]
    bbox: tuple[float, float, float, float]  # x, y, w, h (COCO)
    head_bbox: tuple[float, float, float, float] | None
    rbox: tuple[float, float, float, float, float] | None = None  # cx, cy, w, h, angle_deg


@dataclass(frozen=True)
class RenderedFrame:
    """One frame as the render CLI wrote it: RGB, instance ids and the annotated people."""

    name: str
    image: np.ndarray  # uint8 (H, W, 3)
    instance_ids: np.ndarray  # uint16 (H, W), 0 = no person
    people: tuple[PersonBoxes, ...]
    center_xy: tuple[float, float]  # where bodies point to (the lens' principal point)
    # {instance_id: float32 coverage in [0, 1]} from soft_masks/; empty for frames rendered
    # before soft masks (the hard mask is then used).
    coverage: dict[int, np.ndarray] = field(default_factory=dict)

    def blend_mask(self, instance_id: int) -> np.ndarray:
        """What a refined crop of this person is pasted back under: soft coverage or hard mask."""
        soft = self.coverage.get(instance_id)
        return soft if soft is not None else self.instance_ids == instance_id

    def people_pixels(self) -> np.ndarray:
        """Every pixel a person touches: the hard masks and any soft coverage beyond them (the
        pixels a refined paste may change; all others are background)."""
        touched = self.instance_ids > 0
        for soft in self.coverage.values():
            touched |= soft > 0
        return touched


def _boxes(annotation: dict[str, Any]) -> PersonBoxes:
    head_bbox = annotation.get("head_bbox")
    rbox = annotation.get("rbox")
    return PersonBoxes(
        instance_id=int(annotation["instance_id"]),
        head_xy=(float(annotation["head_point"][0]), float(annotation["head_point"][1])),
        bbox=tuple(float(v) for v in annotation["bbox"]),  # type: ignore[arg-type]
        head_bbox=tuple(float(v) for v in head_bbox) if head_bbox else None,  # type: ignore[arg-type]
        rbox=tuple(float(v) for v in rbox) if rbox else None,  # type: ignore[arg-type]
    )


def frame_from_record(image: np.ndarray, instance_ids: np.ndarray, record: dict[str, Any]) -> RenderedFrame:
    """Build a ``RenderedFrame`` from arrays and a per-frame record (``frames/<name>.json``)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise PreviewError(f"frame image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    ids = np.asarray(instance_ids)
    if ids.shape != image.shape[:2]:
        raise PreviewError(f"instance mask {ids.shape} does not match the image {image.shape[:2]}")
    camera = record.get("camera", {})
    principal = camera.get("principal_point")
    height, width = ids.shape
    center = ((float(principal[0]), float(principal[1])) if principal
              else ((width - 1) / 2.0, (height - 1) / 2.0))
    people = tuple(_boxes(a) for a in record.get("annotations", []))
    return RenderedFrame(str(record.get("frame", "")), np.ascontiguousarray(image[..., :3]),
                         ids.astype(np.uint16), people, center)


def load_rendered_frame(out_dir: Path, index: int | None = None) -> RenderedFrame:
    """Read frame ``index`` (or the only/first frame) of a render CLI output folder."""
    frames_dir = Path(out_dir) / "frames"
    records = sorted(frames_dir.glob("*.json")) if frames_dir.is_dir() else []
    if not records:
        raise PreviewError(f"no rendered frame in {out_dir} (frames/*.json missing); "
                           "render a preview first")
    path = records[0] if index is None else frames_dir / f"{index:06d}.json"
    if not path.is_file():
        raise PreviewError(f"frame {index} not found in {frames_dir}; have {[p.stem for p in records]}")
    record = json.loads(path.read_text(encoding="utf-8"))
    root = Path(out_dir)
    with Image.open(root / record["image"]) as img:
        image = np.asarray(img.convert("RGB"))
    with Image.open(root / record["mask"]) as img:
        ids = np.asarray(img).astype(np.uint16)
    frame = frame_from_record(image, ids, record)
    try:
        coverage = {int(a["instance_id"]): read_coverage(root / a["soft_mask"], ids.shape)
                    for a in record.get("annotations", []) if a.get("soft_mask")}
    except CoverageError as exc:
        raise PreviewError(str(exc)) from None
    return dataclasses.replace(frame, coverage=coverage)


# ---------------------------------------------------------------------------------------------
# Crops and reinsertion.


@dataclass(frozen=True)
class CropSet:
    """The crops of one frame and what is needed to put them back."""

    crops: np.ndarray  # uint8 (N, h, w, 3)
    records: tuple[CropRecord, ...]
    instance_ids: tuple[int, ...]


def cut_crops(frame: RenderedFrame, crop_size: Sequence[int] = PREVIEW_CROP_SIZE) -> CropSet:
    """One upright crop per visible person, cut by the crop rule the refiner was trained with
    (``protocol.crop_dataset``: head and scale from the rotated person box), or fitted to the
    visible mask for a frame written before rotated boxes existed."""
    crops: list[np.ndarray] = []
    records: list[CropRecord] = []
    ids: list[int] = []
    height, width = frame.instance_ids.shape
    for person in frame.people:
        mask = frame.instance_ids == person.instance_id
        if not mask.any():
            continue
        head_xy, region = person.head_xy, mask
        if person.rbox is not None:
            head_xy, _ = head_from_rbox(person.rbox, image_centre(width, height))
            region = rbox_mask(person.rbox, width, height)
        crop, record = crop_person(frame.image, head_xy, size=tuple(crop_size), mask=region,
                                   image_id=f"{frame.name}:{person.instance_id}")
        crops.append(crop)
        records.append(record)
        ids.append(person.instance_id)
    width, height = int(crop_size[0]), int(crop_size[1])
    stacked = np.stack(crops) if crops else np.zeros((0, height, width, 3), np.uint8)
    return CropSet(np.ascontiguousarray(stacked), tuple(records), tuple(ids))


def make_request(crops: CropSet, model: str) -> RefineRequest:
    return RefineRequest(model=model, crops=crops.crops,
                         meta=[{**r.to_dict(), "instance_id": i} for r, i in zip(crops.records, crops.instance_ids)])


def reinsert_refined(frame: RenderedFrame, crops: CropSet, refined: np.ndarray) -> np.ndarray:
    """Blend refined crops back into the frame, each only under its own person's mask."""
    if len(refined) != len(crops.records):
        raise PreviewError(f"the daemon returned {len(refined)} crops for {len(crops.records)} sent")
    masks = [frame.blend_mask(i) for i in crops.instance_ids]
    return reinsert(frame.image, list(refined), list(crops.records), masks)


def attention_image(frame: RenderedFrame, crops: CropSet, attention: np.ndarray | None) -> np.ndarray:
    """The refined frame's attention maps put back into the frame and tinted red over it.

    Without attention maps (a CycleGAN refiner) the frame comes back unchanged.
    """
    if attention is None or len(crops.records) == 0:
        return frame.image.copy()
    maps = [np.repeat((np.clip(a, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2) for a in attention]
    masks = [frame.blend_mask(i) for i in crops.instance_ids]
    heat = reinsert(np.zeros_like(frame.image), maps, list(crops.records), masks)[..., 0]
    alpha = heat.astype(np.float32)[..., None] / 255.0
    red = np.array([255.0, 0.0, 0.0], np.float32)
    blended = frame.image.astype(np.float32) * (1 - 0.6 * alpha) + red * 0.6 * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Images for the Image Editor.


def draw_annotations(image: np.ndarray, people: Sequence[PersonBoxes]) -> np.ndarray:
    """The frame with person boxes (green), head boxes (yellow) and head points (red)."""
    canvas = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    draw = ImageDraw.Draw(canvas)
    radius = max(2, round(max(canvas.size) / 256))
    for person in people:
        x, y, w, h = person.bbox
        draw.rectangle((x, y, x + w, y + h), outline=(0, 230, 0), width=max(1, radius // 2))
        if person.head_bbox is not None:
            hx, hy, hw, hh = person.head_bbox
            draw.rectangle((hx, hy, hx + hw, hy + hh), outline=(255, 220, 0), width=max(1, radius // 2))
        px, py = person.head_xy
        draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=(255, 0, 0))
        draw.text((x + 2, y + 2), str(person.instance_id), fill=(255, 255, 255))
    return np.asarray(canvas)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    """Two equal-height images next to each other with a dark gap."""
    if left.shape[0] != right.shape[0]:
        raise PreviewError(f"side_by_side needs equal heights, got {left.shape[0]} and {right.shape[0]}")
    spacer = np.full((left.shape[0], gap, 3), 32, np.uint8)
    return np.concatenate([left[..., :3], spacer, right[..., :3]], axis=1)


def to_blender_pixels(image: np.ndarray) -> np.ndarray:
    """Flat float32 RGBA in Blender's bottom-up row order, for ``Image.pixels.foreach_set``."""
    height, width = image.shape[:2]
    rgba = np.empty((height, width, 4), np.float32)
    rgba[..., :3] = image[::-1, :, :3]
    rgba[..., :3] *= 1.0 / 255.0
    rgba[..., 3] = 1.0
    return rgba.ravel()


# ---------------------------------------------------------------------------------------------
# The refine round trip, polled.


@dataclass
class StageTimes:
    """Where the time of one preview went, in seconds."""

    crop: float = 0.0
    transfer: float = 0.0  # round trip minus the daemon's own refine time
    refine: float = 0.0  # the daemon's elapsed_ms
    reinsert: float = 0.0
    display: float = 0.0

    @property
    def total(self) -> float:
        return self.crop + self.transfer + self.refine + self.reinsert + self.display

    def to_dict(self) -> dict[str, float]:
        return {"crop": self.crop, "transfer": self.transfer, "refine": self.refine,
                "reinsert": self.reinsert, "display": self.display, "total": self.total}


@dataclass
class PreviewResult:
    frame: RenderedFrame
    crops: CropSet
    refined: np.ndarray  # uint8 (H, W, 3): the frame with refined people
    attention: np.ndarray | None  # per-crop maps as the daemon sent them
    model_sha256: str
    times: StageTimes = field(default_factory=StageTimes)

    def display_image(self, mode: str) -> np.ndarray:
        """The image to show for a display mode (``DISPLAY_MODES``)."""
        if mode == "synthetic":
            return self.frame.image
        if mode == "refined":
            return self.refined
        if mode == "attention":
            shown = dataclasses.replace(self.frame, image=self.refined)
            return attention_image(shown, self.crops, self.attention)
        raise PreviewError(f"unknown display mode {mode!r}; valid: {list(DISPLAY_MODES)}")


class RefinePreview:
    """Cut crops, send them, and (from repeated ``poll()`` calls) reinsert the reply.

    ``client`` is a ``protocol.transport.Client`` (or anything with ``send_request`` and
    ``poll_reply``). ``deadline_s`` bounds the whole wait, whatever the client's retries.
    """

    def __init__(self, client: Any, frame: RenderedFrame, model: str, *,
                 crop_size: Sequence[int] = PREVIEW_CROP_SIZE, deadline_s: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.client = client
        self.frame = frame
        self.model = model
        self.crop_size = tuple(crop_size)
        self.deadline_s = deadline_s
        self.clock = clock
        self.times = StageTimes()
        self.crops: CropSet | None = None
        self.request_id: str | None = None
        self.result: PreviewResult | None = None
        self._sent_at = 0.0

    def start(self) -> None:
        t0 = self.clock()
        self.crops = cut_crops(self.frame, self.crop_size)
        self.times.crop = self.clock() - t0
        if len(self.crops.records) == 0:
            raise PreviewError("no visible person in the frame to refine; populate the scene first")
        request = make_request(self.crops, self.model)
        self._sent_at = self.clock()
        try:
            self.request_id = self.client.send_request(request)
        except ProtocolError as exc:
            raise PreviewError(f"could not send the crops: {exc}") from None

    def poll(self) -> PreviewResult | None:
        """The finished result, or None while waiting. Never blocks."""
        if self.result is not None:
            return self.result
        if self.request_id is None or self.crops is None:
            raise PreviewError("RefinePreview.poll() before start()")
        try:
            message = self.client.poll_reply(timeout_ms=0)
        except ProtocolError as exc:
            self.cancel()
            raise PreviewError(f"the daemon did not answer: {exc}") from None
        now = self.clock()
        if message is None:
            if now - self._sent_at > self.deadline_s:
                self.cancel()
                raise PreviewError(f"no reply from the daemon within {self.deadline_s:.1f} s; is "
                                   "`refiner-daemon serve` running, and is the endpoint right?")
            return None
        if message.request_id != self.request_id:
            return None  # a stale reply to an earlier preview
        if isinstance(message, ErrorReply):
            raise PreviewError(f"the daemon refused the crops ({message.code}): {message.message}"
                               + (f"; {message.hint}" if message.hint else ""))
        if not isinstance(message, RefineReply):
            raise PreviewError(f"unexpected reply {type(message).__name__} to a refine request")
        round_trip = now - self._sent_at
        self.times.refine = message.elapsed_ms / 1000.0
        self.times.transfer = max(0.0, round_trip - self.times.refine)
        t0 = self.clock()
        refined = reinsert_refined(self.frame, self.crops, np.asarray(message.images))
        self.times.reinsert = self.clock() - t0
        attention = None if message.attention is None else np.asarray(message.attention)
        self.result = PreviewResult(self.frame, self.crops, refined, attention,
                                    message.model_sha256, self.times)
        return self.result

    def cancel(self) -> None:
        """Forget the request (a late reply is then ignored)."""
        if self.request_id is None:
            return
        if hasattr(self.client, "forget"):
            self.client.forget(self.request_id)
        elif isinstance(getattr(self.client, "_pending", None), dict):
            # A bare Client would otherwise keep resending it on every poll.
            self.client._pending.pop(self.request_id, None)


def refine_frame(client: Any, frame: RenderedFrame, model: str, *,
                 crop_size: Sequence[int] = PREVIEW_CROP_SIZE, deadline_s: float = 30.0,
                 poll_interval_s: float = 0.002) -> PreviewResult:
    """Blocking version of ``RefinePreview`` for scripts, tests and benchmarks."""
    preview = RefinePreview(client, frame, model, crop_size=crop_size, deadline_s=deadline_s)
    preview.start()
    while True:
        result = preview.poll()
        if result is not None:
            return result
        time.sleep(poll_interval_s)


class MessageRouter:
    """Shares one client between tasks: replies and events go to whoever sent the request.

    ``view()`` gives a task an object with the client's ``send_request``/``poll_reply`` that
    only sees its own messages. A transport failure is delivered to every waiting view.
    """

    def __init__(self, client: Any, max_messages_per_poll: int = 64) -> None:
        self.client = client
        self.max_messages_per_poll = max_messages_per_poll
        self._boxes: dict[str, collections.deque[Any]] = {}
        self._errors: dict[str, ProtocolError] = {}

    def send(self, message: Any) -> str:
        request_id = self.client.send_request(message)
        self._boxes.setdefault(request_id, collections.deque())
        return request_id

    def _pump(self) -> None:
        for _ in range(self.max_messages_per_poll):
            try:
                message = self.client.poll_reply(timeout_ms=0)
            except ProtocolError as exc:
                for request_id in self._boxes:
                    self._errors.setdefault(request_id, exc)
                return
            if message is None:
                return
            box = self._boxes.get(message.request_id)
            if box is not None:  # otherwise: a reply nobody waits for any more
                box.append(message)

    def receive(self, request_id: str) -> Any:
        self._pump()
        box = self._boxes.get(request_id)
        if box:
            return box.popleft()
        error = self._errors.pop(request_id, None)
        if error is not None:
            self.forget(request_id)
            raise error
        return None

    def forget(self, request_id: str) -> None:
        self._boxes.pop(request_id, None)
        self._errors.pop(request_id, None)
        pending = getattr(self.client, "_pending", None)
        if isinstance(pending, dict):
            pending.pop(request_id, None)  # or the client would keep resending it
        unsubscribe = getattr(self.client, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(request_id)

    def view(self) -> _RoutedClient:
        return _RoutedClient(self)


class _RoutedClient:
    def __init__(self, router: MessageRouter) -> None:
        self.router = router
        self.request_ids: list[str] = []

    def send_request(self, message: Any) -> str:
        request_id = self.router.send(message)
        self.request_ids.append(request_id)
        return request_id

    def poll_reply(self, timeout_ms: int = 0) -> Any:
        for request_id in self.request_ids:
            message = self.router.receive(request_id)
            if message is not None:
                return message
        return None

    def forget(self, request_id: str) -> None:
        self.router.forget(request_id)
        if request_id in self.request_ids:
            self.request_ids.remove(request_id)


# ---------------------------------------------------------------------------------------------
# Debouncing scene changes for the live preview.


class Debouncer:
    """Fires once ``delay_s`` after the last ``touch()``; never while ``busy``."""

    def __init__(self, delay_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.delay_s = delay_s
        self.clock = clock
        self._last: float | None = None

    def touch(self) -> None:
        self._last = self.clock()

    @property
    def pending(self) -> bool:
        return self._last is not None

    def due(self, busy: bool = False) -> bool:
        """True (once) when the quiet period is over and nothing is running."""
        if self._last is None or busy or self.clock() - self._last < self.delay_s:
            return False
        self._last = None
        return True


# ---------------------------------------------------------------------------------------------
# Render jobs as subprocesses of the render CLI.


def render_cli_prefix(blender_binary: str | None) -> list[str]:
    """How to start the render CLI: a Blender binary runs the entry script, pip bpy the module."""
    if blender_binary:
        from blender_addon.core.render_cli import blender_script_command

        return blender_script_command(blender_binary, Path(__file__).resolve().parents[1] / "bl" / "cli_entry.py")
    return [sys.executable, "-m", "blender_addon.bl.cli_entry"]


@dataclass(frozen=True)
class RenderJobSpec:
    """The render CLI's options as the panel sets them (see ``render_cli.build_parser``)."""

    scene_dir: str
    out_dir: str
    count: int = 1
    seed: int = 0
    preset: str = "fast"
    resolution: int | None = None
    samples: int | None = None
    sitting: tuple[int, int] = (1, 5)
    standing: tuple[int, int] = (0, 4)
    human_backend: str = "mpfb2"
    pose_library: str = ""
    workers: int | None = None  # None: --workers auto (one per CPU, as memory allows)
    denoise: bool | None = None
    motion_blur: float | None = None
    mask_mode: str = "soft"  # soft: anti-aliased coverage PNGs too; hard: instance ids only
    sensor: str = ""  # the real camera's look: "" off, "photo", or a camera_sensor profile file

    def __post_init__(self) -> None:
        if self.mask_mode not in ("soft", "hard"):
            raise PreviewError(f"RenderJobSpec.mask_mode must be 'soft' or 'hard', got {self.mask_mode!r}")
        if not self.scene_dir:
            raise PreviewError("RenderJobSpec.scene_dir is empty: load a scene first")
        if not self.out_dir:
            raise PreviewError("RenderJobSpec.out_dir is empty: choose an output folder")
        if self.count < 1:
            raise PreviewError(f"RenderJobSpec.count must be >= 1, got {self.count}")
        for name in ("sitting", "standing"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise PreviewError(f"RenderJobSpec.{name} must be 0 <= MIN <= MAX, got {(low, high)}")

    def arguments(self) -> list[str]:
        args = ["--scene", self.scene_dir, "--out", self.out_dir, "--count", str(self.count),
                "--seed", str(self.seed), "--preset", self.preset,
                "--sitting", f"{self.sitting[0]},{self.sitting[1]}",
                "--standing", f"{self.standing[0]},{self.standing[1]}",
                "--human-backend", self.human_backend,
                "--workers", "auto" if self.workers is None else str(self.workers), "--no-progress"]
        if self.resolution:
            args += ["--resolution", str(self.resolution)]
        if self.samples:
            args += ["--samples", str(self.samples)]
        if self.pose_library:
            args += ["--pose-library", self.pose_library]
        if self.denoise is not None:
            args.append("--denoise" if self.denoise else "--no-denoise")
        if self.motion_blur is not None:
            args += ["--motion-blur", str(self.motion_blur)]
        args += ["--mask-mode", self.mask_mode]
        if self.sensor:
            args += ["--sensor", self.sensor]
        return args


def log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` lines of a subprocess's log ('' when it cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class RenderProcess:
    """A render subprocess: progress from the frames on disk, its log, and cancel.

    ``command`` is a render CLI (``render_cli_prefix() + spec.arguments()``) or preview worker
    command line; ``out_dir`` is where it writes ``frames/*.json``; ``count`` frames are expected.
    """

    def __init__(self, command: Sequence[str], out_dir: str | Path, count: int, *,
                 env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.out_dir = Path(out_dir)
        self.count = count
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out_dir / "render_log.txt"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed when the process ends)
        self.started = time.monotonic()
        self.returncode: int | None = None
        self.cancelled = False
        self._process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True)

    @classmethod
    def for_spec(cls, spec: RenderJobSpec, prefix: Sequence[str], **kwargs: Any) -> RenderProcess:
        return cls([*prefix, *spec.arguments()], spec.out_dir, spec.count, **kwargs)

    @property
    def frames_done(self) -> int:
        frames = self.out_dir / "frames"
        return len(list(frames.glob("*.json"))) if frames.is_dir() else 0

    @property
    def progress(self) -> float:
        return min(1.0, self.frames_done / max(1, self.count))

    def poll(self) -> int | None:
        """The exit code once finished, else None. Never blocks."""
        if self.returncode is None:
            code = self._process.poll()
            if code is not None:
                self.returncode = code
                self._log.close()
        return self.returncode

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the render and its worker processes (the whole process group)."""
        if self.poll() is not None:
            return
        self.cancelled = True
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=grace_s)
        except ProcessLookupError:
            pass
        self.poll()

    def log_tail(self, lines: int = 8) -> str:
        return log_tail(self.log_path, lines)


# ---------------------------------------------------------------------------------------------
# The warm preview worker: one Blender process that stays up between preview renders.

WORKER_REPLY = "FSYNTH_PREVIEW "  # prefix of the worker's reply lines among Blender's own output


class WarmWorker:
    """A persistent preview worker (``blender_addon.ui.preview_worker --serve``).

    Each :meth:`request` asks it to render frame 0 of a prepared run folder with the people where
    the artist put them; the reply comes back as one prefixed JSON line on its stdout and is
    picked up by :meth:`poll` without blocking (a reader thread queues the lines). The process
    keeps its Blender scene, human templates and parsed assets between requests, so only the
    first render pays for them. One request at a time; :meth:`close` ends it.
    """

    def __init__(self, command: Sequence[str], log_path: str | Path, *, env: dict[str, str] | None = None) -> None:
        import queue
        import threading

        self.command = list(command)
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed by close())
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env={**os.environ, **(env or {})}, start_new_session=True)
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.pending: dict[str, Any] | None = None
        self.requests = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode("utf-8", errors="replace")
            if line.startswith(WORKER_REPLY):
                try:
                    self._replies.put(json.loads(line[len(WORKER_REPLY):]))
                except json.JSONDecodeError:
                    self._replies.put({"ok": False, "error": f"unreadable reply: {line.strip()[:200]}"})
            else:
                self._log.write(raw)
                self._log.flush()

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def request(self, out: str | Path, overrides: str | Path | None, threads: int = 0) -> None:
        """Render frame 0 of the run folder ``out`` (prepared with ``prepare_run_folder``)."""
        if self.pending is not None:
            raise PreviewError("the preview worker is still rendering the previous request")
        if not self.alive:
            raise PreviewError(f"the preview worker has exited: {self.log_tail(3)}")
        message = {"out": str(out), "overrides": str(overrides) if overrides else None, "threads": threads}
        assert self._process.stdin is not None
        try:
            self._process.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise PreviewError(f"the preview worker stopped listening ({exc}): {self.log_tail(3)}") from exc
        self.pending = {**message, "sent": time.monotonic()}
        self.requests += 1

    def poll(self) -> dict[str, Any] | None:
        """The reply to the pending request once it came (``ok``, ``seconds``, ``warm``, or
        ``error``), else None. A worker that died mid-request gives an error reply."""
        import queue

        if self.pending is None:
            return None
        try:
            reply = self._replies.get_nowait()
        except queue.Empty:
            if self.alive:
                return None
            self._reader.join(timeout=1.0)  # the last lines may still be in the pipe
            try:
                reply = self._replies.get_nowait()
            except queue.Empty:
                reply = {"ok": False, "error": f"the preview worker exited with code "
                                                f"{self._process.returncode}: {self.log_tail(3)}"}
        reply["round_trip_s"] = time.monotonic() - self.pending["sent"]
        self.pending = None
        return reply

    def close(self, grace_s: float = 3.0) -> None:
        """End the worker: its stdin closes (it exits after the current render), then SIGTERM
        and SIGKILL to its process group if it lingers."""
        if self.alive:
            try:
                assert self._process.stdin is not None
                self._process.stdin.close()
                self._process.wait(timeout=grace_s if self.pending is None else 0.1)
            except (subprocess.TimeoutExpired, OSError):
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(self._process.pid, sig)
                        self._process.wait(timeout=grace_s)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                    except ProcessLookupError:
                        break
        self.pending = None
        if not self._log.closed:
            self._reader.join(timeout=1.0)
            self._log.close()

    def log_tail(self, lines: int = 8) -> str:
        return log_tail(self.log_path, lines)

