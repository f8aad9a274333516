"""make-plate on small generated frames: a textured room with people (blobs) walking through."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from blender_addon.core import clean_plate as cp

SIZE = 128


def background(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A textured 'carpet': stripes plus fine noise, so a smudge is easy to tell from texture."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    stripes = 60 + 40 * (((xs + ys) // 4) % 2)
    noise = rng.integers(0, 30, (size, size))
    base = np.stack([stripes + noise, stripes // 2 + noise + 40, 140 - noise], axis=2)
    return np.clip(base, 0, 255).astype(np.uint8)


def frames_with_people(count: int = 6, static_person: bool = True
                       ) -> tuple[np.ndarray, list[list[list[float]]], np.ndarray]:
    """Frames of the background with a walking person and (optionally) one who never moves.

    Returns (frames, rotated boxes per frame, background)."""
    bg = background()
    frames, boxes = [], []
    for k in range(count):
        frame = bg.copy()
        rboxes = []
        walker = (20 + k * 17, 40 + k * 8, 14, 30, 30.0)
        people = [walker] + ([(90, 90, 16, 26, -20.0)] if static_person else [])
        for rbox in people:
            mask = cp.rbox_mask(rbox, SIZE, SIZE)
            frame[mask] = (200, 30, 30)
            rboxes.append(list(rbox))
        frames.append(frame)
        boxes.append(rboxes)
    return np.stack(frames), boxes, bg


def test_masked_median_is_exact_where_a_frame_shows_the_room() -> None:
    frames, boxes, bg = frames_with_people()
    masks = cp.masks_from_rboxes(boxes, SIZE, SIZE)
    median, holes = cp.masked_median(frames, masks)
    seen = ~holes
    assert np.abs(median[seen] - bg[seen]).max() <= 0.5
    # The static person (grown by a quarter) is never seen behind.
    static = cp.rbox_mask((90, 90, 16 * 1.25, 26 * 1.25, -20.0), SIZE, SIZE)
    assert holes[static].all()


def test_plate_recovers_the_room_and_reports_the_holes() -> None:
    frames, boxes, bg = frames_with_people()
    masks = cp.masks_from_rboxes(boxes, SIZE, SIZE)
    result = cp.make_plate(frames, masks, method="patchmatch", patch=5, work_side=64)
    holes = result.inpainted
    assert result.report["inpainted_share"] == pytest.approx(holes.mean(), abs=1e-5)
    assert 0.01 < result.report["inpainted_share"] < 0.1
    assert result.report["mask_source"] == "annotations"
    error = np.abs(result.plate.astype(float) - bg.astype(float)).mean(axis=2)
    assert error[~holes].max() <= 1.0
    # No person colour is left, and the hole holds texture, not a smudge: its spread is like
    # the room's, while a flat fill has none.
    assert not ((result.plate[..., 0] > 180) & (result.plate[..., 1] < 60)).any()
    filled = result.plate[holes].astype(float)
    assert filled.std(axis=0).mean() > 0.5 * bg.reshape(-1, 3).std(axis=0).mean()
    # And it is closer to the room than the average colour is.
    flat = np.abs(bg[holes].astype(float) - bg.reshape(-1, 3).mean(axis=0)).mean()
    assert error[holes].mean() < 1.3 * flat


def test_plate_without_annotations_uses_the_frames_disagreement() -> None:
    frames, _, bg = frames_with_people(count=7, static_person=False)
    result = cp.make_plate(frames, None, patch=5, work_side=64)
    assert result.report["mask_source"] == "disagreement"
    error = np.abs(result.plate.astype(float) - bg.astype(float)).mean(axis=2)
    assert np.median(error) <= 1.0
    assert (error > 20).mean() < 0.01  # the walker is gone


def test_opencv_fallback_and_bad_method() -> None:
    frames, boxes, bg = frames_with_people()
    masks = cp.masks_from_rboxes(boxes, SIZE, SIZE)
    result = cp.make_plate(frames, masks, method="telea")
    assert result.report["method"] == "telea"
    assert result.inpainted.any() and result.plate.shape == bg.shape
    with pytest.raises(cp.PlateError, match="valid: patchmatch, telea, ns"):
        cp.make_plate(frames, masks, method="magic")


def test_image_circle_limits_the_sources_and_the_share() -> None:
    frames, boxes, _ = frames_with_people()
    masks = cp.masks_from_rboxes(boxes, SIZE, SIZE)
    frames[:, cp.image_circle_mask(SIZE, SIZE, (64, 64, 60)) == 0] = 0
    result = cp.make_plate(frames, masks, circle=(64, 64, 60), patch=5, work_side=64)
    circle = cp.image_circle_mask(SIZE, SIZE, (64, 64, 60))
    # Sources come from inside the circle only: the hole is never filled with the black border.
    assert result.plate[result.inpainted].mean() > 30
    assert result.report["inpainted_share_of_circle"] == pytest.approx(
        result.inpainted[circle].mean(), abs=1e-5)


def test_command_line_writes_plate_mask_and_report(tmp_path) -> None:
    frames, boxes, _ = frames_with_people()
    paths = []
    images, annotations = [], []
    for k, frame in enumerate(frames):
        path = tmp_path / f"f{k}.png"
        Image.fromarray(frame).save(path)
        paths.append(str(path))
        images.append({"id": f"f{k}", "file_name": path.name, "width": SIZE, "height": SIZE})
        annotations += [{"image_id": f"f{k}", "bbox": b, "person_id": i} for i, b in enumerate(boxes[k])]
    (tmp_path / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    out = tmp_path / "plate.png"
    code = cp.main(["--frames", *paths, "--annotations", str(tmp_path / "annotations.json"),
                    "--circle", "64", "64", str(64 * math.sqrt(2) + 1), "--out", str(out)])
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["frames"] == len(frames) and report["inpainted_share"] > 0
    assert (tmp_path / "plate_inpainted.png").is_file()
    # A frame the annotations do not know is refused rather than leaking its people.
    Image.fromarray(frames[0]).save(tmp_path / "other.png")
    assert cp.main(["--frames", str(tmp_path / "other.png"), "--annotations",
                    str(tmp_path / "annotations.json"), "--out", str(out)]) == 2
