"""A corpus of broken datasets, for the bad-data contract of every command that reads data.

    python tests/broken_datasets.py OUT      # writes every case into OUT/<kind>/<case>/

Three kinds, each a small valid base plus one defect per case:

- ``dataset``: annotated frames (CEPDOF-style ``annotations.json``, or a rendered ``coco.json``)
  read by crops, detector training and evaluation, the gap report and the daemon's detector job;
- ``crops``: a crop folder (``crops/*.png``) read by refiner training and the daemon's refiner job;
- ``scene``: a scene folder (``scene.json`` + photo) read by the renderer's scene loader.

Each case is ``make(root) -> (path, named)``: the folder to hand to the command and a string the
one-line error must contain (the bad file or folder). ``GOOD_*`` build the valid bases.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIZE = 96


def _jpeg(seed: int, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    pixels = np.stack([xs * 2 % 256, ys * 2 % 256, (xs + ys) % 256], -1).astype(np.uint8)
    pixels = np.clip(pixels + rng.integers(0, 30, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- valid bases

FRAMES = ("frame_0001.jpg", "frame_0002.jpg", "frame_0003.jpg", "frame_0004.jpg")


def good_cepdof(folder: Path) -> Path:
    """Four 96x96 frames with two people each (rotated boxes), CEPDOF layout."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, name in enumerate(FRAMES, start=1):
        (folder / name).write_bytes(_jpeg(index))
        images.append({"id": index, "file_name": name, "width": SIZE, "height": SIZE})
        for k, (cx, cy, angle) in enumerate(((30.0, 40.0, 20.0), (64.0, 60.0, -35.0))):
            annotations.append({"id": index * 10 + k, "image_id": index, "person_id": k,
                                "bbox": [cx, cy, 14.0, 28.0, angle]})
    (folder / "annotations.json").write_text(json.dumps({"images": images,
                                                         "annotations": annotations}))
    return folder


def good_coco(folder: Path) -> Path:
    """The same frames as a rendered set: coco.json with head points and rotated boxes."""
    good_cepdof(folder)
    data = json.loads((folder / "annotations.json").read_text())
    (folder / "annotations.json").unlink()
    for entry in data["annotations"]:
        cx, cy, w, h, angle = entry.pop("bbox")
        entry.update({"category_id": 1, "rbox": [cx, cy, w, h, angle], "head_point": [cx, cy - 10],
                      "head_bbox": [cx - 4, cy - 14, 8, 8], "bbox": [cx - 10, cy - 16, 20, 32],
                      "iscrowd": 0, "instance_id": entry.pop("person_id")})
    data["categories"] = [{"id": 1, "name": "person"}]
    (folder / "coco.json").write_text(json.dumps(data))
    return folder


def good_crops(folder: Path, count: int = 4) -> Path:
    (folder / "crops").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / "crops" / f"crop_{index}.png").write_bytes(_png(index))
    return folder


def good_scene(folder: Path) -> Path:
    shutil.copytree(ROOT / "scenes" / "sample_office", folder)
    return folder


# --------------------------------------------------------------------------- defects

def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _zero(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _text(path: Path) -> Path:
    path.write_text("this is not an image, whatever its name says\n")
    return path


def _edit_json(path: Path, change: Callable[[dict], None]) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


Case = Callable[[Path], tuple[Path, str]]


def _missing_folder(root: Path) -> tuple[Path, str]:
    return root / "no_such_folder", str(root / "no_such_folder")


def _empty_folder(root: Path) -> tuple[Path, str]:
    (root / "empty").mkdir(parents=True)
    return root / "empty", str(root / "empty")


def _dataset_file(defect: Callable[[Path], Path]) -> Case:
    def make(root: Path) -> tuple[Path, str]:
        folder = good_cepdof(root / "set")
        return folder, str(defect(folder / FRAMES[1]))
    return make


def _dataset_json(change: Callable[[dict], None], fmt: str = "cepdof") -> Case:
    def make(root: Path) -> tuple[Path, str]:
        folder = (good_cepdof if fmt == "cepdof" else good_coco)(root / "set")
        name = "annotations.json" if fmt == "cepdof" else "coco.json"
        return folder, str(_edit_json(folder / name, change))
    return make


def _missing_image(root: Path) -> tuple[Path, str]:
    folder = good_cepdof(root / "set")
    (folder / FRAMES[2]).unlink()
    return folder, str(folder / FRAMES[2])


def _set_first_box(value: list) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["annotations"][0]["bbox"] = value
    return change


def _drop_key(key: str) -> Callable[[dict], None]:
    return lambda data: data.pop(key)


def _nan_head(data: dict) -> None:
    data["annotations"][0]["head_point"] = [float("nan"), 3.0]


DATASET_CASES: dict[str, Case] = {
    "missing_folder": _missing_folder,
    "empty_folder": _empty_folder,
    "truncated_jpeg": _dataset_file(_truncate),
    "zero_byte_image": _dataset_file(_zero),
    "text_named_jpg": _dataset_file(_text),
    "annotation_names_missing_file": _missing_image,
    "nan_box": _dataset_json(_set_first_box([float("nan"), 40.0, 14.0, 28.0, 0.0])),
    "negative_box": _dataset_json(_set_first_box([30.0, 40.0, -14.0, 28.0, 0.0])),
    "coco_missing_keys": _dataset_json(_drop_key("annotations"), "coco"),
    "coco_nan_head_point": _dataset_json(_nan_head, "coco"),
}


def _crop_file(defect: Callable[[Path], Path]) -> Case:
    def make(root: Path) -> tuple[Path, str]:
        folder = good_crops(root / "crops_set")
        return folder, str(defect(folder / "crops" / "crop_1.png"))
    return make


CROP_CASES: dict[str, Case] = {
    "missing_folder": _missing_folder,
    "empty_folder": _empty_folder,
    "truncated_png": _crop_file(_truncate),
    "zero_byte_png": _crop_file(_zero),
    "text_named_png": _crop_file(_text),
}


def _scene_photo(defect: Callable[[Path], Path]) -> Case:
    def make(root: Path) -> tuple[Path, str]:
        folder = good_scene(root / "scene")
        photo = json.loads((folder / "scene.json").read_text())["photo"]
        return folder, str(defect(folder / photo))
    return make


def _scene_json(change: Callable[[dict], None]) -> Case:
    def make(root: Path) -> tuple[Path, str]:
        folder = good_scene(root / "scene")
        return folder, str(_edit_json(folder / "scene.json", change))
    return make


def _wrong_version(data: dict) -> None:
    data["format_version"] = 99


SCENE_CASES: dict[str, Case] = {
    "missing_folder": _missing_folder,
    "empty_folder": _empty_folder,
    "truncated_photo": _scene_photo(_truncate),
    "zero_byte_photo": _scene_photo(_zero),
    "text_named_photo": _scene_photo(_text),
    "wrong_format_version": _scene_json(_wrong_version),
    "missing_camera_key": _scene_json(_drop_key("camera")),
}

KINDS: dict[str, dict[str, Case]] = {"dataset": DATASET_CASES, "crops": CROP_CASES,
                                     "scene": SCENE_CASES}


def make_all(out: Path) -> dict[str, dict[str, tuple[Path, str]]]:
    """Every case of every kind under ``out/<kind>/<case>/``."""
    made: dict[str, dict[str, tuple[Path, str]]] = {}
    for kind, cases in KINDS.items():
        made[kind] = {}
        for name, make in cases.items():
            root = out / kind / name
            root.mkdir(parents=True, exist_ok=True)
            made[kind][name] = make(root)
    return made


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/broken_datasets.py OUT")
    for kind, cases in make_all(Path(sys.argv[1])).items():
        for name, (path, named) in cases.items():
            print(f"{kind:8} {name:30} {path}  (the error must name {named})")
