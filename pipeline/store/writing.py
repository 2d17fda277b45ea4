"""Writing the sharded split store: new shards written once, valid shards of the previous store
kept (hard links), a compaction when too many small ones pile up."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
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
    NpyRows,
    Shard,
    StoreIndex,
    read_store_index,
)


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
