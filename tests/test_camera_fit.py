"""fit-camera on generated data: an image circle to find, and person boxes made by a known camera."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from blender_addon.core import camera_fit as cf


def circle_frames(size: int = 256, centre: tuple[float, float] = (131.0, 124.0), radius: float = 110.0,
                  count: int = 3) -> np.ndarray:
    """A textured disc on black, with a bright 'timestamp' in the dark corner."""
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:size, 0:size]
    inside = (xs + 0.5 - centre[0]) ** 2 + (ys + 0.5 - centre[1]) ** 2 <= radius**2
    frames = rng.integers(40, 220, (count, size, size, 3)).astype(np.uint8)
    frames[:, ~inside] = rng.integers(0, 8, (count, int((~inside).sum()), 3))
    frames[:, 4:16, 4:60] = 255  # overlay text outside the circle
    return frames


def test_image_circle_is_found_despite_an_overlay() -> None:
    circle = cf.find_image_circle(circle_frames())
    assert circle.cx == pytest.approx(131.0, abs=1.0)
    assert circle.cy == pytest.approx(124.0, abs=1.0)
    assert circle.radius == pytest.approx(110.0, abs=1.0)


def test_a_clipped_circle_uses_the_rays_that_find_an_edge() -> None:
    # The circle runs off the top and bottom of the photo, as in CEPDOF's frames.
    circle = cf.find_image_circle(circle_frames(centre=(128.0, 128.0), radius=135.0))
    assert circle.radius == pytest.approx(135.0, abs=1.5)
    assert circle.cx == pytest.approx(128.0, abs=1.5)


def test_no_circle_is_a_clear_error() -> None:
    with pytest.raises(cf.CameraFitError, match="--circle"):
        cf.find_image_circle(np.full((64, 64, 3), 128, np.uint8))


def generated_boxes(camera, circle_radius: float, count: int = 60, seed: int = 0) -> list[cf.PersonBox]:
    """People at random floor spots seen by ``camera``; a third of them standing."""
    rng = np.random.default_rng(seed)
    boxes = []
    for posture in cf.POSTURES:
        n = count // 3 if posture == "standing" else count - count // 3
        radius = rng.uniform(0.3, 4.5, n)
        angle = rng.uniform(0, 2 * math.pi, n)
        base = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        centres, length, width = cf.person_boxes_at(camera, base, cf.PERSON_MODELS[posture])
        centre = np.asarray(camera.effective_principal_point())
        for c, ln, w in zip(centres, length, width):
            if np.hypot(*(c - centre)) < 0.95 * circle_radius:
                boxes.append(cf.PersonBox(float(c[0]), float(c[1]), float(ln), float(w), posture))
    return boxes


@pytest.mark.parametrize("kind,fov,height,tilt", [
    ("equidistant", 185.0, 2.9, (3.0, -2.0)),
    ("equisolid", 178.0, 3.4, (0.0, 0.0)),
])
def test_fit_recovers_a_known_camera(kind: str, fov: float, height: float, tilt: tuple[float, float]) -> None:
    size, radius = (1024, 1024), 500.0
    lens = cf.lens_for(kind, fov, radius)
    truth = cf.camera_from(lens, size, (512.0, 512.0), height, tilt)
    boxes = generated_boxes(truth, radius)
    circle = cf.ImageCircle(512.0, 512.0, radius, 0.0, 0)
    fit = cf.fit_camera(boxes, size, circle)
    assert fit.lens["model"] == kind
    assert fit.lens["fov_deg"] == pytest.approx(fov, abs=3.0)
    assert fit.height_m == pytest.approx(height, abs=0.08)
    assert fit.rotation_euler_deg[0] == pytest.approx(tilt[0], abs=1.0)
    assert fit.rotation_euler_deg[1] == pytest.approx(tilt[1], abs=1.0)
    for band in fit.bands:
        if band["people"]:
            assert abs(band["median_length_error"]) < 0.02 and abs(band["median_width_error"]) < 0.02
    assert fit.scene_camera()["lens"]["model"] == kind


def test_a_calibrated_lens_is_kept() -> None:
    size, radius = (1024, 1024), 500.0
    calibrated = cf.LensModel("kannala_brandt", 330.0, (-0.03, 0.004, -0.0005, 0.00002), 180.0)
    truth = cf.camera_from(calibrated, size, (510.0, 515.0), 2.7, (0.0, 0.0))
    boxes = generated_boxes(truth, radius, seed=3)
    fit = cf.fit_camera(boxes, size, cf.ImageCircle(512.0, 512.0, radius, 0.0, 0), keep_lens=calibrated,
                        principal_point=(510.0, 515.0), fit_tilt=False)
    assert fit.lens["model"] == "kannala_brandt" and fit.lens["focal_px"] == 330.0
    assert fit.principal_point_px == (510.0, 515.0)
    assert fit.height_m == pytest.approx(2.7, abs=0.03)


def test_postures_from_annotations(tmp_path) -> None:
    data = {"images": [{"id": "a", "file_name": "a.jpg", "width": 100, "height": 100}],
            "annotations": [{"image_id": "a", "bbox": [50, 20, 10, 30, 0], "person_id": 1},
                            {"image_id": "a", "bbox": [20, 50, 30, 12, 90], "person_id": 2},
                            {"image_id": "a", "bbox": [70, 70, 10, 20, 0], "person_id": 3,
                             "posture": "standing"}]}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    boxes = cf.person_boxes_from_cepdof(path, ["a"], standing_ids=[2])
    assert [b.posture for b in boxes] == ["sitting", "standing", "standing"]
    assert (boxes[1].length_px, boxes[1].width_px) == (30.0, 12.0)
    with pytest.raises(cf.CameraFitError, match="no person boxes"):
        cf.person_boxes_from_cepdof(path, ["b"])


def test_person_models_are_measured_on_rendered_people(tmp_path) -> None:
    """A rendered dataset of a known camera: the cylinders that made its boxes come back."""
    camera = cf.camera_from(cf.lens_for("equidistant", 180.0, 250.0), (512, 512), (256.0, 256.0),
                            2.8, (0.0, 0.0))
    truth = {"standing": cf.PersonModel(1.75, 0.45), "sitting": cf.PersonModel(1.0, 0.7)}
    rng = np.random.default_rng(2)
    (tmp_path / "frames").mkdir()
    for index in range(3):
        people, annotations = [], []
        for posture, model in truth.items():
            radius, angle = rng.uniform(0.5, 3.5, 4), rng.uniform(0, 2 * math.pi, 4)
            base = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
            centres, length, width = cf.person_boxes_at(camera, base, model)
            for c, ln, w in zip(centres, length, width):
                instance = len(people) + 1
                people.append({"pass_index": instance, "kind": posture})
                annotations.append({"instance_id": instance, "visibility": 1.0,
                                    "rbox": [float(c[0]), float(c[1]), float(w), float(ln), 0.0]})
        record = {"width": 512, "annotations": annotations,
                  "manifest": {"scene_dir": "unused", "recipe": {"people": people}}}
        (tmp_path / "frames" / f"{index:06d}.json").write_text(json.dumps(record))
    models, report = cf.calibrate_person_models(tmp_path, camera)
    for posture, model in truth.items():
        assert models[posture].height_m == pytest.approx(model.height_m, abs=0.051)
        assert models[posture].diameter_m == pytest.approx(model.diameter_m, abs=0.051)
        assert report[posture]["people"] == 12
    with pytest.raises(cf.CameraFitError, match="no frames"):
        cf.calibrate_person_models(tmp_path / "empty", camera)
