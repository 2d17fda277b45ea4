"""Writing the sharded split store: new shards written once, valid shards of the previous store
kept (hard links), a compaction when too many small ones pile up."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.store.files import _CHUNK_BYTES, atomic_directory, write_json
from pipeline.store.hashing import image_digests, store_version
from pipeline.store.reading import (
    SHARD_BYTES,
    SHARD_PARTS,
    SHARDS_DIR,
    STORE_FILE,
    Shard,
    StoreIndex,
    read_store_index,
)

logger = logging.getLogger(__name__)


def write_npy_rows(path: Path, shape: tuple[int, ...], dtype, chunks: Iterable[np.ndarray]) -> None:
    """Write a .npy file of `shape` from `chunks` of rows, holding one chunk at a time."""
    dtype = np.dtype(dtype)
    written = 0
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, _header(shape, dtype))
        for chunk in chunks:
            rows = np.ascontiguousarray(chunk, dtype=dtype)
            stream.write(memoryview(rows).cast("B"))
            written += len(rows)
            # Dropped before the next chunk is made: one chunk in memory at a time, not two.
            del chunk, rows
    if written != shape[0]:
        raise DataError(f"{path}: wrote {written} rows of the {shape[0]} declared")


def allocate_npy_rows(path: Path, shape: tuple[int, ...], dtype) -> int:
    """Create the .npy file of `shape` that `write_npy_rows` would write, its rows all zero
    (a sparse file: nothing is written but the header), for writers that fill its rows in any
    order; return the offset of row 0."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(stream, _header(shape, dtype))
        offset = stream.tell()
        stream.truncate(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return offset


@dataclass(frozen=True)
class SplitRows:
    """What the split stage hands the store for one split: where each image is in its source
    (`rows`, for `read_rows`), its label and its digest, in the order to store new images."""

    rows: np.ndarray
    labels: np.ndarray
    digests: np.ndarray


@dataclass(frozen=True)
class StoreReport:
    """What `write_store` made of the previous store: per split, how many shards it kept
    (linked, verified byte for byte), and the previous shards it found damaged and so wrote
    again. Run-dependent, so logged, never written into the store or split.json."""

    kept: dict[str, int]
    damaged: list[str]


def write_store(
    target: Path,
    splits: dict[str, SplitRows],
    read_rows: Callable[[np.ndarray], np.ndarray],
    image_shape: tuple[int, ...],
    classes: list[str],
    previous: Path | None = None,
    shard_bytes: int = SHARD_BYTES,
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[StoreIndex, StoreReport]:
    """Write the store into the empty folder `target`; return its index and what was kept
    from the `previous` store.

    A previous shard is kept when it has the same image shape, classes and shard size, every
    one of its (digest, label) pairs is still in the same split, and its bytes hash to its name
    (`verify_shard`); the images not in a kept shard are read with `read_rows` a chunk at a
    time, checked against their digests, and written into new shards. A damaged shard is so
    written again from the source; where the source no longer gives its images, the run stops
    naming it. When appending would leave a split with more than twice the shards it needs
    (plus 4), the split is written afresh instead, so small additions cannot splinter it.
    """
    target = Path(target)
    (target / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    image_bytes = max(1, int(np.prod(image_shape)))
    per_shard = max(1, shard_bytes // image_bytes)
    old = _reusable_index(previous, image_shape, classes, shard_bytes)
    layout: dict[str, list[Shard]] = {}
    kept_counts: dict[str, int] = {}
    damaged: list[str] = []
    for name, split in splits.items():
        kept, fresh = (
            _keep_shards(previous, old, name, split, damaged, chunk_bytes) if old else ([], None)
        )
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
                damaged,
            )
            for start in range(0, len(fresh), per_shard)
        ]
        # Shards of equal content (duplicate images only) share their files; both are listed.
        # A shard written again under its previous name (a repair) takes its previous place,
        # so a repaired store's index is byte-identical to the one it repairs.
        place: dict[str, int] = {}
        for position, shard in enumerate(old.splits.get(name, []) if old else []):
            place.setdefault(shard.name, position)
        layout[name] = sorted(kept + written, key=lambda shard: place.get(shard.name, len(place)))
        kept_counts[name] = len(kept)
    version = store_version(
        {name: (split.digests, split.labels) for name, split in splits.items()},
        classes,
        image_shape,
    )
    index = StoreIndex(tuple(image_shape), list(classes), layout, shard_bytes, version)
    write_json(target / STORE_FILE, index.to_json())
    return index, StoreReport(kept_counts, sorted(set(damaged)))


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
    previous: Path,
    index: StoreIndex,
    name: str,
    split: SplitRows,
    damaged: list[str],
    chunk_bytes: int = _CHUNK_BYTES,
) -> tuple[list[Shard], np.ndarray]:
    """The previous shards of split `name` whose images are all still in it and whose bytes
    are verified, and the positions (in `split`) of the images none of them holds. A shard
    found damaged is named in `damaged` (and logged); its images are written again."""
    unclaimed: dict[tuple[str, int], list[int]] = {}
    for position, key in enumerate(
        zip(map(str, split.digests), map(int, split.labels), strict=True)
    ):
        unclaimed.setdefault(key, []).append(position)
    kept: list[Shard] = []
    for shard in index.splits.get(name, []):
        pairs, problem = _shard_pairs(previous, shard, name, index.image_shape)
        if pairs is None:
            _note_damaged(shard, problem, damaged)
            continue
        wanted: dict[tuple[str, int], int] = {}
        for key in pairs:
            wanted[key] = wanted.get(key, 0) + 1
        if not all(len(unclaimed.get(key, ())) >= count for key, count in wanted.items()):
            continue
        # Only a shard that would be kept is hashed whole: one pass over its images.
        problem = verify_images(
            shard.path(previous, "images"),
            np.array([digest for digest, _ in pairs], dtype="<U32"),
            index.image_shape,
            chunk_bytes,
        )
        if problem is not None:
            _note_damaged(shard, problem, damaged)
            continue
        for key, count in wanted.items():
            del unclaimed[key][:count]
        kept.append(shard)
    fresh = sorted(position for positions in unclaimed.values() for position in positions)
    return kept, np.array(fresh, dtype=np.int64)


def _note_damaged(shard: Shard, problem: str | None, damaged: list[str]) -> None:
    if problem is None:
        return
    damaged.append(shard.name)
    logger.warning(
        "shard %s of the previous store is damaged (%s): not kept; its images are written "
        "again from the source",
        shard.name,
        problem,
    )


def shard_name(split_name: str, digests: np.ndarray, labels: np.ndarray) -> str:
    """A shard's name: its split and a hash of its (digest, label) pairs in order. Each digest
    is itself a hash of an image's bytes, so a shard's every byte hashes to its name."""
    identity = hashlib.sha256(split_name.encode())
    for digest, label in zip(
        np.asarray(digests).tolist(), np.asarray(labels).tolist(), strict=True
    ):
        identity.update(f"\n{digest} {label}".encode())
    return f"{split_name}-{identity.hexdigest()[:16]}"


def _shard_pairs(
    root: Path, shard: Shard, split_name: str, image_shape: tuple[int, ...]
) -> tuple[list[tuple[str, int]] | None, str | None]:
    """A previous shard's (digest, label) pairs, or None and why (None when its files are
    simply gone). Its labels and digests files must be exactly what `_write_shard` writes
    and hash to its name, and its images file must have the exact header and size; its
    images' bytes are hashed by `verify_images`, only if it is to be kept."""
    paths = {part: shard.path(root, part) for part in SHARD_PARTS}
    if not all(path.is_file() for path in paths.values()):
        return None, f"{', '.join(p.name for p in paths.values() if not p.is_file())} missing"
    try:
        labels = _load_canonical(paths["labels"], np.dtype(np.int64), shard.count)
        digests = _load_canonical(paths["digests"], np.dtype("<U32"), shard.count)
    except ValueError as exc:
        return None, str(exc)
    if shard_name(split_name, digests, labels) != shard.name:
        return None, "its labels or digests do not hash to its name"
    expected = _images_header((shard.count, *image_shape))
    size = len(expected) + shard.count * int(np.prod(image_shape))
    try:
        with open(paths["images"], "rb") as stream:
            head = stream.read(len(expected))
            actual = os.fstat(stream.fileno()).st_size
    except OSError as exc:
        return None, f"{paths['images'].name} is not readable ({exc.strerror})"
    if head != expected:
        return None, f"{paths['images'].name} has another header than uint8 {image_shape}"
    if actual != size:
        return None, f"{paths['images'].name} holds {actual} bytes, not {size}"
    return list(zip(map(str, digests), map(int, labels), strict=True)), None


def _load_canonical(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    """A small .npy file that must hold `count` values of `dtype`, byte for byte as np.save
    writes them (so a kept file is exactly the file that would be written)."""
    try:
        data = path.read_bytes()
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path.name} is not a .npy file ({exc})") from None
    if array.dtype != dtype or array.shape != (count,):
        raise ValueError(f"{path.name} holds {array.dtype} {array.shape}, not {dtype} ({count},)")
    canonical = io.BytesIO()
    np.save(canonical, array, allow_pickle=False)
    if canonical.getvalue() != data:
        raise ValueError(f"{path.name} differs from the file its values make")
    return array


def _images_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header `write_npy_rows` writes for uint8 images of `shape`."""
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, _header(shape, np.dtype(np.uint8)))
    return stream.getvalue()


def _header(shape: tuple[int, ...], dtype: np.dtype) -> dict:
    return {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(int(d) for d in shape),
    }


def verify_images(
    path: Path,
    digests: np.ndarray,
    image_shape: tuple[int, ...],
    chunk_bytes: int = _CHUNK_BYTES,
    workers: int | None = None,
) -> str | None:
    """None when the images of the .npy shard `path` hash, one by one, to `digests`; else
    where they do not. Streamed `chunk_bytes` at a time: one BLAKE2b pass over the file, spread
    over `workers` threads (hashlib releases the GIL on images over 2 KB)."""
    image_bytes = max(1, int(np.prod(image_shape)))
    step = max(1, chunk_bytes // image_bytes)
    workers = workers or min(4, os.cpu_count() or 1)
    # Two buffers: the next chunk is read while the threads hash this one.
    buffers = [np.empty((min(step, max(1, len(digests))), *image_shape), np.uint8) for _ in "ab"]
    name = Path(path).name
    with open(path, "rb") as stream, ThreadPoolExecutor(workers) as pool:
        stream.seek(len(_images_header((len(digests), *image_shape))))
        pending = None
        for number, start in enumerate(range(0, len(digests), step)):
            chunk = buffers[number % 2][: min(step, len(digests) - start)]
            if stream.readinto(memoryview(chunk).cast("B")) != chunk.nbytes:
                return f"{name} ends early"
            if pending is not None and (problem := _mismatch(name, *pending)) is not None:
                return problem
            parts = np.array_split(np.arange(len(chunk)), min(workers, len(chunk)))
            futures = [pool.submit(image_digests, chunk[part[0] : part[-1] + 1]) for part in parts]
            pending = (start, futures, digests[start : start + len(chunk)])
        if pending is not None and (problem := _mismatch(name, *pending)) is not None:
            return problem
        if stream.read(1):
            return f"{name} has bytes past its images"
    return None


def _mismatch(name: str, start: int, futures: list, expected: np.ndarray) -> str | None:
    computed = np.concatenate([future.result() for future in futures])
    wrong = np.flatnonzero(computed != expected)
    if wrong.size:
        return f"image {start + int(wrong[0])} of {name} does not hash to its digest"
    return None


def _write_shard(
    target: Path,
    split_name: str,
    split: SplitRows,
    positions: np.ndarray,
    read_rows: Callable[[np.ndarray], np.ndarray],
    image_shape: tuple[int, ...],
    chunk_bytes: int = _CHUNK_BYTES,
    damaged: list[str] | None = None,
) -> Shard:
    """Write the images at `positions` of `split` as one shard, `chunk_bytes` at a time.

    Each chunk read from the source must hash to its images' digests; else (the source
    changed or is gone since it was hashed) the run stops naming the shard, before a shard
    whose bytes do not match its name could be written."""
    labels = np.asarray(split.labels[positions], dtype=np.int64)
    digests = np.asarray(split.digests[positions], dtype="<U32")
    shard = Shard(shard_name(split_name, digests, labels), len(positions))
    if all(shard.path(target, part).exists() for part in SHARD_PARTS):
        # The same content under the same name is already there (a shard kept from the
        # previous store, hard-linked: writing it again would write into the old store).
        return shard
    step = max(1, chunk_bytes // max(1, int(np.prod(image_shape))))
    source_rows = np.asarray(split.rows)[positions]
    repair = " (damaged in the previous store)" if shard.name in (damaged or ()) else ""

    def chunks():
        for start in range(0, len(positions), step):
            try:
                images = read_rows(source_rows[start : start + step])
            except (DataError, IndexError, OSError) as exc:
                raise DataError(
                    f"shard {shard.name}{repair} of split '{split_name}' cannot be written: "
                    f"its source is gone ({exc}). Rerun the split stage; if this persists, "
                    "delete data/prepared and run it again"
                ) from None
            expected = digests[start : start + step]
            if images.shape[0] != len(expected) or (image_digests(images) != expected).any():
                raise DataError(
                    f"shard {shard.name}{repair} of split '{split_name}' cannot be written: "
                    "the images its source now gives are not those it holds (the source "
                    "changed or is gone while the split ran). Rerun the split stage"
                )
            yield images
            del images  # before the next chunk is read (write_npy_rows holds none either)

    write_npy_rows(shard.path(target, "images"), (len(positions), *image_shape), np.uint8, chunks())
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
