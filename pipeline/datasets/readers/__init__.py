"""The readers, one per dataset: `open_dataset(name, raw_dir)` indexes a dataset's raw files
and returns a `SourceIndex`, reading no pixels until asked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.datasets.readers.arrays import (
    read_cifar10,
    read_digits,
    read_fashion_mnist,
    read_mini_cifar,
    read_mnist,
)
from pipeline.datasets.readers.base import ReadOptions, SourceIndex
from pipeline.datasets.readers.files import read_cats_vs_dogs, read_image_folder, read_malaria
from pipeline.errors import DataError

__all__ = ["READERS", "ReadOptions", "SourceIndex", "open_dataset"]

READERS: dict[str, Callable[[Path, ReadOptions | None], SourceIndex]] = {
    "digits": read_digits,
    "mnist": read_mnist,
    "fashion_mnist": read_fashion_mnist,
    "cifar10": read_cifar10,
    "mini_cifar": read_mini_cifar,
    "cats_vs_dogs": read_cats_vs_dogs,
    "malaria": read_malaria,
    "image_folder": read_image_folder,
}


def open_dataset(name: str, raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """Index dataset `name` from its raw directory, reading no pixels yet."""
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir} does not exist: run the download stage first (dvc repro)")
    return READERS[name](raw_dir, options)
