"""The sharded split store's index and readers: `SplitReader` (shards read with pread) and its
in-memory twin `ArraySplit`."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.store.files import SPLITS
from pipeline.store.hashing import image_digests

# --- the sharded split store ------------------------------------------------------------------
#
# data/prepared/
#   store.json                      the index: image shape, classes, each split's shards in order
#   shards/<shard>.images.npy       uint8 (n, H, W, C): what np.load(..., mmap_mode="r") maps
#   shards/<shard>.labels.npy       int64 (n,)
#   shards/<shard>.digests.npy      <U32 (n,): each image's `image_digest`
#
# A shard is named by its content (split, digests and labels), holds at most SHARD_BYTES of
# images and is never rewritten: the split stage links the shards of the previous store whose
# images all stay in their split and writes only what is new into new shards, so DVC stores and
# pushes only those. Plain .npy files serve NumPy, TensorFlow and JAX alike, need no reader
# library, and are read here with pread, never mapped, so a stage's resident memory holds the
# batch it reads and not the page cache of every shard it has touched.

STORE_FILE = "store.json"
SHARDS_DIR = "shards"
STORE_FORMAT = 1
SHARD_BYTES = 256 << 20
"""The most image bytes one shard holds."""


@dataclass(frozen=True)
class Shard:
    """One shard of a split: its name (the stem of its three files) and its image count."""

    name: str
    count: int

    def path(self, root: Path, part: str) -> Path:
        """The file of `part` ("images", "labels" or "digests") under the store `root`."""
        return Path(root) / SHARDS_DIR / f"{self.name}.{part}.npy"


SHARD_PARTS = ("images", "labels", "digests")


@dataclass(frozen=True)
class StoreIndex:
    """store.json: what the store holds, read without touching a shard."""

    image_shape: tuple[int, ...]
    classes: list[str]
    splits: dict[str, list[Shard]]
    shard_bytes: int
    version: str
    """A hash of every split's (digest, label) pairs, classes and image shape: the data
    version runs are tagged with; equal images in equal splits, equal version, whatever the
    shard layout."""

    def to_json(self) -> dict:
        return {
            "format": STORE_FORMAT,
            "image_shape": list(self.image_shape),
            "classes": list(self.classes),
            "shard_bytes": self.shard_bytes,
            "version": self.version,
            "splits": {
                name: [{"name": shard.name, "count": shard.count} for shard in shards]
                for name, shards in self.splits.items()
            },
        }


def read_store_index(root: Path) -> StoreIndex:
    """The index of the store under `root` (a prepared-data folder), or a DataError saying
    what to run."""
    path = Path(root) / STORE_FILE
    if not path.is_file():
        if (Path(root) / "train.npz").is_file():
            raise DataError(
                f"{root} holds splits in the old .npz format; rerun the split stage "
                "(dvc repro split) to write the sharded store"
            )
        raise DataError(f"{path} not found: run the split stage first (dvc repro)")
    try:
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or not isinstance(payload.get("splits"), dict):
            raise ValueError("expected an object with a 'splits' object")
        if payload.get("format") != STORE_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {STORE_FORMAT}")
        missing = [name for name in SPLITS if name not in payload["splits"]]
        if missing:
            raise ValueError(f"no split {', '.join(missing)}")
        return StoreIndex(
            image_shape=tuple(int(d) for d in payload["image_shape"]),
            classes=[str(name) for name in payload["classes"]],
            splits={
                name: [Shard(str(item["name"]), int(item["count"])) for item in shards]
                for name, shards in payload["splits"].items()
            },
            shard_bytes=int(payload["shard_bytes"]),
            version=str(payload["version"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise DataError(
            f"{path} is not a valid store index ({exc}); rerun the split stage"
        ) from None


class NpyRows:
    """The rows of one .npy file, read with pread into the caller's array: never memory-mapped
    (so the page cache is not counted in this process's memory) and safe to share between
    threads (pread moves no file offset)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                major, _ = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran_order, dtype = read_header(handle)
                self.offset = handle.tell()
        except FileNotFoundError:
            raise DataError(f"{self.path} not found: rerun the stage that writes it") from None
        except (ValueError, OSError) as exc:
            raise DataError(
                f"{self.path} is not a readable .npy file ({exc}); rerun the stage that writes it"
            ) from None
        if fortran_order or dtype.hasobject:
            raise DataError(f"{self.path}: not a C-ordered array of plain values")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype
        self.row_bytes = int(dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64)))
        expected = self.offset + self.row_bytes * self.shape[0]
        if os.path.getsize(self.path) < expected:
            raise DataError(
                f"{self.path} is truncated ({os.path.getsize(self.path)} of {expected} bytes); "
                "rerun the stage that writes it"
            )
        self._descriptor = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Fill `out` (C-contiguous, len(out) rows) with rows start..start+len(out)-1."""
        view = memoryview(out).cast("B")
        position = self.offset + start * self.row_bytes
        done = 0
        while done < len(view):
            count = os.preadv(self._descriptor, [view[done:]], position + done)
            if count <= 0:
                raise DataError(f"{self.path}: unexpected end of file; rerun the stage")
            done += count

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (any order), contiguous runs read at once."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for start, stop, positions in _runs(rows):
            if len(positions) == stop - start and _is_identity(positions):
                self.read_into(start, out[positions[0] : positions[0] + stop - start])
            else:
                block = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
                self.read_into(start, block)
                out[positions] = block[rows[positions] - start]
        return out

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _is_identity(positions: np.ndarray) -> bool:
    return bool((np.diff(positions) == 1).all())


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, last row + 1, positions in `rows`) of each run of consecutive rows, in row
    order: one read per run."""
    if not len(rows):
        return
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    breaks = np.flatnonzero(np.diff(ordered) > 1) + 1
    for chunk_positions, chunk_rows in zip(
        np.split(order, breaks), np.split(ordered, breaks), strict=True
    ):
        yield int(chunk_rows[0]), int(chunk_rows[-1]) + 1, chunk_positions


class SplitReader:
    """One split of the store. Labels and digests are held (tens of bytes an image); images are
    read on demand, by row: `read(rows)`, `batches(size)`. Rows are numbered across the split's
    shards in store order. Safe to read from several threads."""

    def __init__(self, root: Path, name: str, index: StoreIndex) -> None:
        self.root = Path(root)
        self.name = name
        self.classes = list(index.classes)
        self.image_shape = tuple(index.image_shape)
        self.shards = list(index.splits.get(name, []))
        counts = [shard.count for shard in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.y = _concat(
            [_load_small(shard.path(root, "labels")) for shard in self.shards], np.int64
        )
        self._digests = _concat(
            [_load_small(shard.path(root, "digests")) for shard in self.shards], "<U32"
        )
        if len(self.y) != self.starts[-1] or len(self._digests) != self.starts[-1]:
            raise DataError(
                f"{self.root}: the shards of split '{name}' disagree with {STORE_FILE}; "
                "rerun the split stage"
            )
        self._files: dict[int, NpyRows] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        """The uint8 bytes of the split's images."""
        return len(self) * int(np.prod(self.image_shape))

    def digests(self) -> np.ndarray:
        """Each image's content digest (`image_digest`), in row order."""
        return self._digests

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        """The index (in `shards`) of the shard each row lies in."""
        return np.searchsorted(self.starts, np.asarray(rows), side="right") - 1

    def read(self, rows) -> np.ndarray:
        """The images at `rows` (any order, repeats allowed), uint8 (len(rows), H, W, C)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1} of split '{self.name}'")
        owners = self.shard_of(rows)
        shards = np.unique(owners)
        if len(shards) == 1:
            # All in one shard (most batches): its reader's array is the answer, no copy.
            return self._file(int(shards[0])).read(rows - self.starts[shards[0]])
        out = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
        for shard in shards:
            positions = np.flatnonzero(owners == shard)
            out[positions] = self._file(int(shard)).read(rows[positions] - self.starts[shard])
        return out

    def batches(self, batch_size: int, rows=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, images) of consecutive batches of `rows` (all rows, in order, by default)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), max(1, int(batch_size))):
            chosen = rows[start : start + batch_size]
            yield chosen, self.read(chosen)

    def _file(self, shard: int) -> NpyRows:
        reader = self._files.get(shard)
        if reader is None:
            reader = NpyRows(self.shards[shard].path(self.root, "images"))
            expected = (self.shards[shard].count, *self.image_shape)
            if reader.shape != expected or reader.dtype != np.uint8:
                raise DataError(
                    f"{reader.path} holds {reader.dtype} {reader.shape}, expected uint8 "
                    f"{expected}; rerun the split stage"
                )
            # Two threads may open the same shard at once; the first one kept wins.
            kept = self._files.setdefault(shard, reader)
            if kept is not reader:
                reader.close()
            reader = kept
        return reader

    def close(self) -> None:
        for reader in self._files.values():
            reader.close()
        self._files.clear()


def _load_small(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path} not found: rerun the split stage (dvc repro)") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} is not a valid .npy file ({exc}); rerun the split stage") from None


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def open_split(root: Path, name: str) -> SplitReader:
    """Split `name` of the store under `root`: labels and digests now, images on demand."""
    return SplitReader(root, name, read_store_index(root))


def open_splits(root: Path) -> dict[str, SplitReader]:
    """Every split of the store under `root`."""
    index = read_store_index(root)
    return {name: SplitReader(root, name, index) for name in SPLITS}


def data_version(root: Path) -> str:
    """The version of the data under `root` (`StoreIndex.version`)."""
    return read_store_index(root).version


class ArraySplit:
    """A split held in memory, with `SplitReader`'s reading interface (`read`, `batches`,
    `y`, `classes`, `image_shape`, `digests`): for tests, benchmarks and the few images a
    figure needs, so the functions that read splits take either."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: list[str], name: str = "split"):
        self.x = np.asarray(x, dtype=np.uint8)
        self.y = np.asarray(y, dtype=np.int64)
        self.classes = list(classes)
        self.name = name
        self.image_shape = tuple(self.x.shape[1:])
        self._digests: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes)

    def digests(self) -> np.ndarray:
        if self._digests is None:
            self._digests = image_digests(self.x)
        return self._digests

    def read(self, rows) -> np.ndarray:
        return self.x[np.asarray(rows, dtype=np.int64).reshape(-1)]

    def batches(self, batch_size: int, rows=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), max(1, int(batch_size))):
            chosen = rows[start : start + batch_size]
            yield chosen, self.read(chosen)

    def close(self) -> None:
        """Nothing to release (`SplitReader` closes its files)."""


ImageSplit = SplitReader | ArraySplit
"""What reads a split: the store's `SplitReader`, or an `ArraySplit` in memory."""
