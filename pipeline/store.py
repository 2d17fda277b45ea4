"""Files, written once and right: atomic writes, the .npz split store, hashing.

The pipeline's own files (reports, splits, downloads, extracted datasets) are written through
`atomic_write` or `atomic_directory`, so a failure never leaves a truncated report, a
half-written split or a half-extracted dataset behind. Files that libraries write themselves
(Keras models, figures, CSVs) go into a stage's out folder, which DVC discards on failure.

The names of the files inside the folders that `dvc.yaml` passes between stages are also
defined here, once: the stage that writes a folder and the stages that read it
share them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.errors import DataError, PipelineError

SPLITS: tuple[str, ...] = ("train", "val", "test")
PLAN_FILE = "split.json"
"""Written beside the splits: counts and the fractions the split aimed at."""
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
RUN_FILE = "run.json"
"""A strategy's MLflow run id, experiment, model URI and backbone weights, for `evaluate`."""
MANIFEST_FILE = "training_manifest.txt"
"""The content digests (`image_digest`) of the images a model trained on, one per line, sorted:
the promotion gate proves with it that no test image was trained on."""
FIRST_KERNEL_FILE = "first_kernel_before.npy"
"""The scratch model's first conv kernel before training, for the filters figure."""
CLASSES_FILE = "classes.json"
"""Beside a model: its class names, a JSON list in label order (what `predict` answers in)."""
FEATURES_INFO_FILE = "backbone.json"
EXTRACTOR_FILE = "extractor.keras"

_CHUNK_BYTES = 8 << 20


# --- atomic writes ----------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; it replaces `path` only if the block
    ends without an exception, so readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        # Opened by name, so `stream.name` is the temporary file's path (to hash it, say).
        with open(temporary, mode, **({} if "b" in mode else {"newline": ""})) as stream:
            yield stream
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_directory(target: Path, durable: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; it replaces `target` as a whole when the
    block succeeds, and is deleted, leaving `target` as it was, when it fails.

    `durable`: the staged files and the folders are fsynced before and after the rename, so a
    power cut leaves either the old folder or the whole new one (a training backup needs this;
    an extracted dataset of 25,000 files, which can be extracted again, does not pay for it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield staging
        if durable:
            for path in sorted(staging.rglob("*"), reverse=True):
                fsync_path(path)
            fsync_path(staging)
        previous = None
        if target.exists():
            previous = target.with_name(f".{target.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(target, previous)
        os.replace(staging, target)
        if durable:
            fsync_path(target.parent)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (a folder: where a rename is recorded).
    Folders cannot be opened on Windows: skipped there."""
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as stream:
        stream.write(text)


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_classes(model_dir: Path, classes: Iterable[str]) -> None:
    """Write CLASSES_FILE beside a model, so it can be used without the split it came from."""
    write_json(Path(model_dir) / CLASSES_FILE, [str(name) for name in classes])


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage that writes it (dvc repro)") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(
            f"{path} is not valid JSON ({exc}); rerun the stage that writes it"
        ) from None


def copy_file(origin: Path, target: Path) -> Path:
    """Copy `origin` to `target` atomically, creating folders as needed."""
    with open(origin, "rb") as source, atomic_write(target, "wb") as sink:
        shutil.copyfileobj(source, sink, _CHUNK_BYTES)
    return Path(target)


# --- hashing ----------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks so large archives stay out of memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def image_digest(image: np.ndarray) -> str:
    """The content hash of one image: its shape and uint8 bytes (32 hex digits). Equal images
    have equal digests, whatever file or split they came from: splits, training manifests and
    the data gate's leak check all identify an image by it."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(tuple(int(d) for d in image.shape)).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def image_digests(images: np.ndarray) -> np.ndarray:
    """`image_digest` of every image of a batch, as a fixed-width unicode array."""
    return np.array([image_digest(image) for image in images], dtype="<U32")


def keyed_position(digest: str, seed: int) -> float:
    """Where an image falls in [0, 1) for the seed: a keyed hash (BLAKE2b, key = the seed) of
    its content digest. The split stage buckets images by it, so an image's split depends on
    its content and `data.seed` alone, never on which other images exist."""
    keyed = hashlib.blake2b(digest.encode(), digest_size=8, key=str(int(seed)).encode())
    return int.from_bytes(keyed.digest(), "big") / 2.0**64


def members_digest(digests: Iterable[str]) -> str:
    """One hash of a set of images (their sorted digests): equal sets, equal hash."""
    digest = hashlib.sha256()
    for item in sorted(set(digests)):
        digest.update(item.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def write_manifest(path: Path, digests: Iterable[str]) -> None:
    """A training manifest: the sorted, distinct digests, one per line."""
    write_text(path, "".join(f"{digest}\n" for digest in sorted(set(map(str, digests)))))


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


def store_version(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes, shape) -> str:
    """`StoreIndex.version` of splits given as (digests, labels) per split name."""
    digest = hashlib.sha256(json.dumps([list(classes), list(shape)]).encode())
    for name in sorted(splits):
        digests, labels = splits[name]
        pairs = sorted(zip(map(str, digests), map(int, labels), strict=True))
        digest.update(f"\n[{name}]\n".encode())
        for item, label in pairs:
            digest.update(f"{item} {label}\n".encode())
    return digest.hexdigest()[:12]


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


def write_npy_rows(path: Path, shape: tuple[int, ...], dtype, chunks: Iterable[np.ndarray]) -> None:
    """Write a .npy file of `shape` from `chunks` of rows, holding one chunk at a time."""
    dtype = np.dtype(dtype)
    written = 0
    with open(path, "wb") as stream:
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": tuple(int(d) for d in shape),
        }
        np.lib.format.write_array_header_1_0(stream, header)
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            stream.write(memoryview(chunk).cast("B"))
            written += len(chunk)
    if written != shape[0]:
        raise DataError(f"{path}: wrote {written} rows of the {shape[0]} declared")


@dataclass(frozen=True)
class SplitRows:
    """What the split stage hands the store for one split: where each image is in its source
    (`rows`, for `read_rows`), its label and its digest, in the order to store new images."""

    rows: np.ndarray
    labels: np.ndarray
    digests: np.ndarray


def write_store(
    target: Path,
    splits: dict[str, SplitRows],
    read_rows: Callable[[np.ndarray], np.ndarray],
    image_shape: tuple[int, ...],
    classes: list[str],
    previous: Path | None = None,
    shard_bytes: int = SHARD_BYTES,
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[StoreIndex, dict[str, int]]:
    """Write the store into the empty folder `target`; return its index and, per split, how
    many shards were kept from the `previous` store (linked, byte-identical).

    A previous shard is kept when it has the same image shape, classes and shard size and
    every one of its (digest, label) pairs is still in the same split; the images not in a
    kept shard are read with `read_rows` a chunk at a time and written into new shards. When
    appending would leave a split with more than twice the shards it needs (plus 4), the split
    is written afresh instead, so small additions cannot splinter it without bound.
    """
    target = Path(target)
    (target / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    image_bytes = max(1, int(np.prod(image_shape)))
    per_shard = max(1, shard_bytes // image_bytes)
    old = _reusable_index(previous, image_shape, classes, shard_bytes)
    layout: dict[str, list[Shard]] = {}
    kept_counts: dict[str, int] = {}
    for name, split in splits.items():
        kept, fresh = _keep_shards(previous, old, name, split) if old else ([], None)
        if fresh is None:
            fresh = np.arange(len(split.rows))
        needed = -(-len(split.rows) // per_shard)
        if len(kept) + -(-len(fresh) // per_shard) > 2 * needed + 4:
            kept, fresh = [], np.arange(len(split.rows))
        for shard in kept:
            for part in SHARD_PARTS:
                _link_or_copy(shard.path(previous, part), shard.path(target, part))
        written = [
            _write_shard(
                target,
                name,
                split,
                fresh[start : start + per_shard],
                read_rows,
                image_shape,
                chunk_bytes,
            )
            for start in range(0, len(fresh), per_shard)
        ]
        # Shards of equal content (duplicate images only) share their files; both are listed.
        layout[name] = kept + written
        kept_counts[name] = len(kept)
    version = store_version(
        {name: (split.digests, split.labels) for name, split in splits.items()},
        classes,
        image_shape,
    )
    index = StoreIndex(tuple(image_shape), list(classes), layout, shard_bytes, version)
    write_json(target / STORE_FILE, index.to_json())
    return index, kept_counts


def _reusable_index(
    previous: Path | None, image_shape, classes, shard_bytes: int
) -> StoreIndex | None:
    """The previous store's index, when its shards can be reused as they are."""
    if previous is None or not (Path(previous) / STORE_FILE).is_file():
        return None
    try:
        index = read_store_index(previous)
    except DataError:
        return None
    same = (
        tuple(index.image_shape) == tuple(image_shape)
        and list(index.classes) == list(classes)
        and index.shard_bytes == shard_bytes
    )
    return index if same else None


def _keep_shards(
    previous: Path, index: StoreIndex, name: str, split: SplitRows
) -> tuple[list[Shard], np.ndarray]:
    """The previous shards of split `name` whose images are all still in it, and the positions
    (in `split`) of the images none of them holds."""
    unclaimed: dict[tuple[str, int], list[int]] = {}
    for position, key in enumerate(
        zip(map(str, split.digests), map(int, split.labels), strict=True)
    ):
        unclaimed.setdefault(key, []).append(position)
    kept: list[Shard] = []
    for shard in index.splits.get(name, []):
        pairs = _shard_pairs(previous, shard, index.image_shape)
        if pairs is None:
            continue
        wanted: dict[tuple[str, int], int] = {}
        for key in pairs:
            wanted[key] = wanted.get(key, 0) + 1
        if all(len(unclaimed.get(key, ())) >= count for key, count in wanted.items()):
            for key, count in wanted.items():
                del unclaimed[key][:count]
            kept.append(shard)
    fresh = sorted(position for positions in unclaimed.values() for position in positions)
    return kept, np.array(fresh, dtype=np.int64)


def _shard_pairs(
    root: Path, shard: Shard, image_shape: tuple[int, ...]
) -> list[tuple[str, int]] | None:
    """A previous shard's (digest, label) pairs, or None when any of its files is missing,
    damaged or of another size than the index says: such a shard is written again, never
    reused, so rerunning the split stage repairs it."""
    try:
        digests = np.load(shard.path(root, "digests"), allow_pickle=False)
        labels = np.load(shard.path(root, "labels"), allow_pickle=False)
        images = NpyRows(shard.path(root, "images"))
        images.close()
        if (
            images.shape != (shard.count, *image_shape)
            or images.dtype != np.uint8
            or digests.shape != (shard.count,)
            or labels.shape != (shard.count,)
            or labels.dtype.kind not in "iu"
            or digests.dtype.kind != "U"
        ):
            return None
        return list(zip(map(str, digests), map(int, labels), strict=True))
    except (OSError, ValueError, TypeError, DataError):
        return None


def _write_shard(
    target: Path,
    split_name: str,
    split: SplitRows,
    positions: np.ndarray,
    read_rows: Callable[[np.ndarray], np.ndarray],
    image_shape: tuple[int, ...],
    chunk_bytes: int = _CHUNK_BYTES,
) -> Shard:
    """Write the images at `positions` of `split` as one shard, `chunk_bytes` at a time."""
    labels = np.asarray(split.labels[positions], dtype=np.int64)
    digests = np.asarray(split.digests[positions], dtype="<U32")
    identity = hashlib.sha256(split_name.encode())
    for digest, label in zip(digests.tolist(), labels.tolist(), strict=True):
        identity.update(f"\n{digest} {label}".encode())
    shard = Shard(f"{split_name}-{identity.hexdigest()[:16]}", len(positions))
    if all(shard.path(target, part).exists() for part in SHARD_PARTS):
        # The same content under the same name is already there (a shard kept from the
        # previous store, hard-linked: writing it again would write into the old store).
        return shard
    step = max(1, chunk_bytes // max(1, int(np.prod(image_shape))))
    source_rows = np.asarray(split.rows)[positions]
    chunks = (
        read_rows(source_rows[start : start + step]) for start in range(0, len(positions), step)
    )
    write_npy_rows(shard.path(target, "images"), (len(positions), *image_shape), np.uint8, chunks)
    np.save(shard.path(target, "labels"), labels, allow_pickle=False)
    np.save(shard.path(target, "digests"), digests, allow_pickle=False)
    return shard


def _link_or_copy(origin: Path, target: Path) -> None:
    """A hard link where the file system allows (no copy of a large shard), else a copy."""
    if target.exists():
        return
    try:
        os.link(origin, target)
    except OSError:
        shutil.copy2(origin, target)


def write_store_from_arrays(
    root: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: list[str],
    shard_bytes: int = SHARD_BYTES,
) -> StoreIndex:
    """Write in-memory splits {name: (uint8 images, labels)} as a store under `root`,
    atomically (small data: tests, benchmarks, a reference copy)."""
    arrays = {name: np.asarray(images, dtype=np.uint8) for name, (images, _) in splits.items()}
    shapes = {array.shape[1:] for array in arrays.values() if len(array)}
    if len(shapes) > 1:
        raise DataError(f"the splits' images differ in shape: {sorted(shapes)}")
    shape = next(iter(shapes)) if shapes else next(iter(arrays.values())).shape[1:]
    offsets: dict[str, int] = {}
    total = 0
    for name, array in arrays.items():
        offsets[name] = total
        total += len(array)
    everything = np.concatenate(list(arrays.values())) if total else np.zeros((0, *shape), np.uint8)
    rows = {
        name: SplitRows(
            np.arange(offsets[name], offsets[name] + len(arrays[name])),
            np.asarray(labels, dtype=np.int64),
            image_digests(arrays[name]),
        )
        for name, (_, labels) in splits.items()
    }
    with atomic_directory(root) as staging:
        index, _ = write_store(
            staging,
            rows,
            lambda chosen: everything[chosen],
            tuple(shape),
            classes,
            shard_bytes=shard_bytes,
        )
    return index


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
