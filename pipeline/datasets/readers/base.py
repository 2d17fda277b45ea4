"""What every reader returns: a `SourceIndex`, and the chunked streaming shared by readers of
arrays stored in files.

Readers index the verified raw files of a dataset, then decode just the images asked for.

A reader first returns a `SourceIndex`: every image's label, class names, the split the source
itself assigns (if any) and a `load` function. Pixels are read only by `load`, straight into
the caller's preallocated uint8 array, streaming through the files in chunks. The split stage
therefore holds one copy of the images it keeps and nothing more, whatever the dataset's size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from pipeline.datasets.images import ResizeMode
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20

Rows = Callable[[], Iterator[np.ndarray]]
"""A factory of uint8 image chunks (k, H, W, C), in file order."""


@dataclass
class SourceIndex:
    """A dataset before its pixels are read.

    `pools` is the split the source itself assigns to each image ("train", "val", "test"), or
    None; "train" without any "val" means val is still to be carved from it.
    `load(indices, out)` decodes the images at the sorted `indices` into `out` (one row per
    index) and returns {row: reason} for the images it could not decode.
    `files`, for datasets of image files, says which file each image is and how it is decoded,
    so that other processes can decode them (`pipeline.datasets.parallel`) exactly as `load`
    does; None for datasets stored as arrays, which have nothing to decode.
    """

    labels: np.ndarray
    class_names: list[str]
    image_shape: tuple[int, int, int]
    pools: np.ndarray | None
    describe: Callable[[int], str]
    load: Callable[[np.ndarray, np.ndarray], dict[int, str]]
    files: ImageFiles | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.pools is not None and len(self.pools) != len(self.labels):
            raise DataError(f"{len(self.pools)} split assignments for {len(self.labels)} images")
        outside = (self.labels < 0) | (self.labels >= len(self.class_names))
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise DataError(
                f"{self.describe(first)}: label {int(self.labels[first])} is outside the "
                f"{len(self.class_names)} classes {self.class_names}; the files disagree"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def load_all(self) -> np.ndarray:
        """Every image, for small datasets and tests."""
        out = np.empty((len(self), *self.image_shape), dtype=np.uint8)
        bad = self.load(np.arange(len(self)), out)
        if bad:
            first, reason = next(iter(bad.items()))
            raise DataError(
                f"{len(bad)} image(s) could not be decoded, e.g. {self.describe(first)}: {reason}"
            )
        return out


@dataclass(frozen=True)
class ReadOptions:
    """How variable-size images become one array: side length and resize mode, and the most
    pixels one file may declare (data.max_pixels) before it is refused unread."""

    image_size: int = 150
    resize: ResizeMode = "stretch"
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class ImageFiles:
    """The image files of a dataset, one per image, and how `load` decodes them."""

    paths: Sequence[Path]
    options: ReadOptions


@dataclass(frozen=True)
class ArrayPart:
    """One file's worth of images: how many, a factory of their chunks, a name for errors."""

    count: int
    rows: Rows
    name: str


def array_index(
    parts: Sequence[ArrayPart],
    labels: np.ndarray,
    class_names: list[str],
    shape: tuple[int, int, int],
    pools: np.ndarray | None = None,
) -> SourceIndex:
    starts = np.cumsum([0] + [part.count for part in parts])

    def describe(index: int) -> str:
        part = int(np.searchsorted(starts, index, side="right")) - 1
        return f"{parts[part].name}[{index - starts[part]}]"

    def load(indices: np.ndarray, out: np.ndarray) -> dict[int, str]:
        for part, start in zip(parts, starts[:-1], strict=True):
            _gather_part(part, int(start), indices, out)
        return {}

    return SourceIndex(labels, class_names, shape, pools, describe, load)


def _gather_part(part: ArrayPart, start: int, indices: np.ndarray, out: np.ndarray) -> None:
    """Copy the images of `part` (global rows start..start+count) that `indices` asks for."""
    lo, hi = np.searchsorted(indices, [start, start + part.count])
    if lo == hi:
        return
    last_needed = int(indices[hi - 1])
    offset = start
    for chunk in part.rows():
        end = offset + len(chunk)
        a, b = np.searchsorted(indices, [offset, end])
        if b > a:
            out[a:b] = chunk[indices[a:b] - offset]
        offset = end
        if offset > last_needed:
            return
    raise DataError(
        f"{part.name}: holds {offset - start} images, fewer than the {part.count} its header or "
        "labels declare; the file is truncated. Delete data/raw and rerun the download stage."
    )


def chunked(stream: IO[bytes], count: int, shape: tuple[int, ...], name: str) -> Iterator:
    """Read `count` uint8 rows of `shape` from a stream, a few MiB at a time."""
    row_bytes = int(np.prod(shape))
    per_chunk = max(1, CHUNK_BYTES // row_bytes)
    remaining = count
    while remaining:
        k = min(per_chunk, remaining)
        data = stream.read(k * row_bytes)
        if len(data) < k * row_bytes:
            raise DataError(
                f"{name}: ends after {count - remaining + len(data) // row_bytes} of {count} "
                "images; the file is truncated. Delete data/raw and rerun the download stage."
            )
        yield np.frombuffer(data, dtype=np.uint8).reshape(k, *shape)
        remaining -= k
