"""Readers of datasets stored as arrays in files: scikit-learn's digits CSV, Keras' mnist.npz,
Fashion-MNIST's IDX files, CIFAR-10's binary batches and the course's mini_cifar.h5."""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.datasets.readers.base import (
    CHUNK_BYTES,
    ArrayPart,
    ReadOptions,
    Rows,
    SourceIndex,
    array_index,
    chunked,
)
from pipeline.errors import DataError


def read_digits(raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """scikit-learn's digits CSV: 64 pixels in 0..16 then the label, one image per row."""
    path = raw_dir / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read the digits CSV ({exc}); rerun the download stage"
        ) from None
    if table.ndim != 2 or table.shape[1] != 65:
        raise DataError(f"{path}: expected 65 columns (64 pixels + label), got {table.shape}")
    # 0..16 intensities are spread over 0..255 so every dataset shares one pixel scale.
    pixels = np.rint(table[:, :64] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = pixels.reshape(-1, 8, 8, 1)
    part = ArrayPart(len(images), lambda: iter([images]), path.name)
    labels = table[:, 64].astype(np.int64)
    return array_index([part], labels, [str(d) for d in range(10)], (8, 8, 1))


def read_mnist(raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """Keras' mnist.npz: x_train, y_train, x_test, y_test (uint8 28x28 images)."""
    path = raw_dir / "mnist.npz"
    parts, labels, pools = [], [], []
    for pool in ("train", "test"):
        member = f"x_{pool}"
        y = _npz_array(path, f"y_{pool}").astype(np.int64).reshape(-1)
        count, shape = _npz_header(path, member)
        _check_counts(f"{path}: {member}", count, f"y_{pool}", len(y))
        image_shape = (*shape, 1) if len(shape) == 2 else tuple(shape)
        parts.append(
            ArrayPart(count, _npz_rows(path, member, count, image_shape), f"{path.name}:{member}")
        )
        labels.append(y)
        pools.append(np.full(count, pool))
    return array_index(
        parts,
        np.concatenate(labels),
        [str(d) for d in range(10)],
        (28, 28, 1),
        np.concatenate(pools),
    )


def _npz_open(path: Path, member: str) -> tuple[zipfile.ZipFile, IO[bytes]]:
    try:
        archive = zipfile.ZipFile(path)
        return archive, archive.open(f"{member}.npy")
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the download stage first (dvc repro)") from None
    except KeyError:
        raise DataError(f"{path}: no array named {member!r}; is this Keras' mnist.npz?") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a valid .npz file ({exc})") from None


def _read_npy_header(stream: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        reader = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = reader(stream)
    except ValueError as exc:
        raise DataError(f"{where}: not a valid .npy array ({exc})") from None
    if fortran_order or dtype != np.uint8 or len(shape) not in (3, 4):
        raise DataError(
            f"{where}: expected a C-ordered uint8 array of images, got dtype {dtype} and shape "
            f"{shape}"
        )
    return shape, dtype


def _npz_header(path: Path, member: str) -> tuple[int, tuple[int, ...]]:
    archive, stream = _npz_open(path, member)
    with archive, stream:
        shape, _ = _read_npy_header(stream, f"{path}:{member}")
    return shape[0], shape[1:]


def _npz_rows(path: Path, member: str, count: int, shape: tuple[int, ...]) -> Rows:
    def rows() -> Iterator[np.ndarray]:
        archive, stream = _npz_open(path, member)
        with archive, stream:
            _read_npy_header(stream, f"{path}:{member}")
            yield from chunked(stream, count, shape, f"{path}:{member}")

    return rows


def _npz_array(path: Path, member: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            return data[member]
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the download stage first (dvc repro)") from None
    except KeyError:
        raise DataError(f"{path}: no array named {member!r}") from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a valid .npz file ({exc})") from None


def _check_counts(images_name: str, images: int, labels_name: str, labels: int) -> None:
    if images != labels:
        raise DataError(
            f"{images_name} holds {images} images but {labels_name} holds {labels} labels: the "
            "files disagree. Delete data/raw and rerun the download stage."
        )


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_fashion_mnist(raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """Fashion-MNIST's four gzipped IDX files (train and t10k, images and labels)."""
    parts, labels, pools = [], [], []
    for prefix, pool in (("train", "train"), ("t10k", "test")):
        images_path = raw_dir / f"{prefix}-images-idx3-ubyte.gz"
        labels_path = raw_dir / f"{prefix}-labels-idx1-ubyte.gz"
        label_dims, offset = _idx_header(labels_path)
        try:
            with _idx_stream(labels_path) as stream:
                stream.read(offset)
                y = np.frombuffer(stream.read(), dtype=np.uint8).astype(np.int64)
        except (OSError, EOFError) as exc:
            raise DataError(f"{labels_path}: the gzip stream is damaged ({exc})") from None
        if len(label_dims) != 1 or len(y) != label_dims[0]:
            raise DataError(
                f"{labels_path}: header declares {label_dims} labels, the file holds {len(y)}; "
                "it is truncated or not a label file"
            )
        dims, offset = _idx_header(images_path)
        if len(dims) != 3:
            raise DataError(f"{images_path}: expected 3 IDX dimensions (N, H, W), got {dims}")
        _check_counts(str(images_path), dims[0], str(labels_path), len(y))
        parts.append(ArrayPart(dims[0], _idx_rows(images_path, dims, offset), images_path.name))
        labels.append(y)
        pools.append(np.full(dims[0], pool))
    return array_index(
        parts, np.concatenate(labels), FASHION_CLASSES, (28, 28, 1), np.concatenate(pools)
    )


def _idx_stream(path: Path) -> IO[bytes]:
    if not path.is_file():
        raise DataError(f"{path} not found: run the download stage first (dvc repro)")
    return gzip.open(path, "rb")


def _idx_header(path: Path) -> tuple[tuple[int, ...], int]:
    """The dimensions of an IDX file of unsigned bytes and the header's length."""
    try:
        with _idx_stream(path) as stream:
            magic = stream.read(4)
            if len(magic) < 4 or magic[:3] != b"\x00\x00\x08" or not 1 <= magic[3] <= 4:
                raise DataError(
                    f"{path}: not an IDX file of unsigned bytes (magic {magic.hex() or 'empty'})"
                )
            raw = stream.read(4 * magic[3])
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .gz file ({exc})") from None
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))
    return dims, 4 + 4 * magic[3]


def _idx_rows(path: Path, dims: tuple[int, ...], offset: int) -> Rows:
    def rows() -> Iterator[np.ndarray]:
        try:
            with _idx_stream(path) as stream:
                stream.read(offset)
                yield from chunked(stream, dims[0], (dims[1], dims[2], 1), str(path))
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: the gzip stream is damaged ({exc})") from None

    return rows


CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
_CIFAR_RECORD = 1 + 32 * 32 * 3


def read_cifar10(raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """CIFAR-10's binary batches: records of one label byte then 3,072 pixel bytes (planar
    R, G, B, each 32x32 row-major)."""
    folder = raw_dir / "cifar-10-batches-bin"
    files = [(folder / f"data_batch_{i}.bin", "train") for i in range(1, 6)]
    files.append((folder / "test_batch.bin", "test"))
    parts, labels, pools = [], [], []
    for path, pool in files:
        if not path.is_file():
            raise DataError(f"{path} not found: rerun the download stage (dvc repro)")
        size = path.stat().st_size
        if size == 0 or size % _CIFAR_RECORD:
            raise DataError(
                f"{path}: {size} bytes is not a whole number of {_CIFAR_RECORD}-byte records; "
                "the file is truncated or not a CIFAR-10 binary batch"
            )
        count = size // _CIFAR_RECORD
        y = np.concatenate(
            [chunk[:, 0] for chunk in _records(path, count)] or [np.zeros(0, np.uint8)]
        )
        parts.append(ArrayPart(count, _cifar_rows(path, count), path.name))
        labels.append(y.astype(np.int64))
        pools.append(np.full(count, pool))
    class_names = _cifar_class_names(folder / "batches.meta.txt")
    return array_index(
        parts, np.concatenate(labels), class_names, (32, 32, 3), np.concatenate(pools)
    )


def _records(path: Path, count: int) -> Iterator[np.ndarray]:
    with open(path, "rb") as stream:
        yield from chunked(stream, count, (_CIFAR_RECORD,), str(path))


def _cifar_rows(path: Path, count: int) -> Rows:
    def rows() -> Iterator[np.ndarray]:
        for chunk in _records(path, count):
            yield chunk[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    return rows


def _cifar_class_names(path: Path) -> list[str]:
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != len(CIFAR10_CLASSES):
        raise DataError(f"{path}: expected {len(CIFAR10_CLASSES)} class names, got {len(names)}")
    return names


def read_mini_cifar(raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """The course's mini_cifar.h5: `x` float images in [0, 1] (N, 32, 32, 3) and `y` labels
    (N,), (N, 1) or one-hot (N, C). Optional `class_names` dataset or attribute."""
    import h5py

    path = raw_dir / "mini_cifar.h5"
    if not path.is_file():
        raise DataError(f"{path} not found: run the download stage first (dvc repro)")
    try:
        with h5py.File(path, "r") as handle:
            if "x" not in handle or "y" not in handle:
                raise DataError(f"{path}: expected datasets 'x' and 'y', found {list(handle)}")
            x_shape = handle["x"].shape
            y = np.asarray(handle["y"])
            names = _h5_class_names(handle)
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    if len(x_shape) != 4 or x_shape[-1] not in (1, 3):
        raise DataError(f"{path}: 'x' must hold images (N, H, W, 1 or 3), got shape {x_shape}")
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)  # one-hot
    y = y.reshape(-1).astype(np.int64)
    _check_counts(f"{path}: 'x'", x_shape[0], "'y'", len(y))
    if names is None:
        names = [str(label) for label in range(int(y.max(initial=0)) + 1)]
    shape = tuple(int(d) for d in x_shape[1:])

    def rows() -> Iterator[np.ndarray]:
        with h5py.File(path, "r") as handle:
            data = handle["x"]
            step = max(1, CHUNK_BYTES // (int(np.prod(shape)) * 4))
            for start in range(0, x_shape[0], step):
                yield _unit_floats_to_uint8(data[start : start + step], path, start)

    part = ArrayPart(x_shape[0], rows, f"{path.name}:x")
    return array_index([part], y, names, shape)


def _h5_class_names(handle) -> list[str] | None:
    raw = handle["class_names"][()] if "class_names" in handle else handle.attrs.get("class_names")
    if raw is None:
        return None
    return [item.decode() if isinstance(item, bytes) else str(item) for item in raw]


def _unit_floats_to_uint8(values: np.ndarray, path: Path, start: int) -> np.ndarray:
    if values.dtype == np.uint8:
        return values
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low < 0.0 or high > 1.0 or not np.isfinite([low, high]).all():
        raise DataError(
            f"{path}: 'x' holds values in [{low}, {high}] near image {start}; mini_cifar.h5 stores "
            "floats in [0, 1]. Is this the right file?"
        )
    return np.rint(values * 255.0).astype(np.uint8)
