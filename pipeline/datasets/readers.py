"""Readers: turn the verified raw files of a dataset into uint8 images and int64 labels."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError


@dataclass
class RawDataset:
    """A whole dataset in memory: `images` uint8 (N, H, W, C), `labels` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DataError(
                f"{len(self.images)} images but {len(self.labels)} labels: the files disagree"
            )


def read_digits(raw_dir: Path) -> RawDataset:
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
    labels = table[:, 64].astype(np.int64)
    return RawDataset(images=images, labels=labels, class_names=[str(d) for d in range(10)])


READERS: dict[str, Callable[[Path], RawDataset]] = {"digits": read_digits}


def read_dataset(name: str, raw_dir: Path) -> RawDataset:
    """Read dataset `name` from its raw directory."""
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir} does not exist: run the download stage first (dvc repro)")
    return READERS[name](raw_dir)
