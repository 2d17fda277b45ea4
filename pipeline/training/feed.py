"""Batches streamed from the store to `model.fit`: memory holds a few batches, not the split.

A `FeedSource` is what a strategy trains on: rows read on demand (a split of the store, a
features file, or arrays held in memory), their labels and their content keys. A `StreamFeed`
(a `keras.utils.PyDataset`, so the same code feeds TensorFlow and JAX) turns it into batches:

- **Order.** Epoch e visits every row once, in a permutation drawn from (seed, e) over the rows
  sorted by content key (the image's digest, then its label). So the order depends on the
  images, the seed and the epoch alone: not on how the store is sharded, and not on whether a
  run was resumed (a resumed run starts at the epoch it stopped in, with that epoch's order).
- **Off the training thread.** Reader threads read the next batches while the model trains
  on the current one (pread and the copies release the GIL); decoding to floats and
  augmentation are layers inside the model.
- **Across processes** (a JAX cluster, `training.workers`): process p of P reads only the rows
  p*N/P..(p+1)*N/P-1 of the store, i.e. its own run of shards (a neighbour reads the other
  rows of a shard they share at a boundary), permuted per epoch, and feeds its share of every
  global batch. Every process runs the same number of steps: the rows past the last whole
  global batch are left out of that epoch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import keras
import numpy as np

from pipeline.errors import ConfigError, DataError
from pipeline.store import ImageSplit, NpyRows

READER_THREADS = 2
"""Reader threads per feed: enough to keep a batch ready on a CPU or a GPU host (reading is
I/O and memcpy; decoding and augmentation happen inside the model)."""
QUEUE_BATCHES = 8
"""Batches read ahead of the one training uses."""


class RowReader(Protocol):
    """Anything with a length that reads rows by index."""

    def __len__(self) -> int: ...

    def read(self, rows) -> np.ndarray: ...


class ArrayRows:
    """Rows of an array held in memory (tests, small data)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = tuple(array.shape)

    def __len__(self) -> int:
        return len(self.array)

    def read(self, rows) -> np.ndarray:
        return self.array[np.asarray(rows, dtype=np.int64)]


@dataclass(frozen=True)
class FeedSource:
    """Inputs read by row, their labels, and each row's content key (for the epoch order).

    `shard_starts` are the first rows of the store's shards (with the row count last), for the
    per-process report of which shards were read; None for arrays in memory."""

    inputs: RowReader
    labels: np.ndarray
    input_shape: tuple[int, ...]
    keys: np.ndarray | None = None
    shard_starts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.labels):
            raise DataError(f"{len(self.inputs)} inputs for {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def of(cls, value: FeedSource | tuple[np.ndarray, np.ndarray]) -> FeedSource:
        """A source as given, or one over (inputs, labels) arrays in memory."""
        if isinstance(value, FeedSource):
            return value
        inputs, labels = value
        inputs = np.asarray(inputs)
        return cls(ArrayRows(inputs), np.asarray(labels), tuple(inputs.shape[1:]))

    @classmethod
    def from_split(cls, split: ImageSplit) -> FeedSource:
        """A split's images, read from its shards batch by batch."""
        starts = getattr(split, "starts", None)
        return cls(split, split.y, tuple(split.image_shape), split.digests(), starts)

    @classmethod
    def from_features(cls, path: Path, split: ImageSplit) -> FeedSource:
        """The features stage's outputs for `split` (row i: image i), read from disk."""
        rows = NpyRows(path)
        if len(rows) != len(split):
            raise DataError(
                f"{path} holds {len(rows)} feature rows for the {len(split)} images of split "
                f"'{split.name}': rerun the features stage (dvc repro features)"
            )
        starts = getattr(split, "starts", None)
        return cls(rows, split.y, tuple(rows.shape[1:]), split.digests(), starts)

    def canonical_order(self, rows: np.ndarray) -> np.ndarray:
        """`rows` sorted by content key, then label: an order the store's layout cannot
        change (rows as given where there are no keys)."""
        if self.keys is None:
            return np.sort(rows)
        return rows[np.lexsort((self.labels[rows], self.keys[rows]))]


def epoch_permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of `count` rows that epoch `epoch` visits them in, for `seed`."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(count)


@dataclass
class ProcessShare:
    """Which rows a process feeds and how many steps every process runs per epoch."""

    rows: np.ndarray
    steps: int
    batch_size: int
    process_count: int = 1
    process_index: int = 0
    shards: list[int] = field(default_factory=list)


def process_share(
    source: FeedSource,
    global_batch_size: int,
    process_count: int = 1,
    process_index: int = 0,
    drop_remainder: bool = False,
) -> ProcessShare:
    """This process's rows (a contiguous run of the store, so of its shards), its batch size,
    and the steps per epoch that every process agrees on without talking to the others."""
    total = len(source)
    if process_count == 1:
        rows = np.arange(total)
        steps = total // global_batch_size if drop_remainder else -(-total // global_batch_size)
        return ProcessShare(rows, steps, global_batch_size, 1, 0, _shards_of(source, rows))
    if global_batch_size % process_count:
        raise ConfigError(
            f"batch size {global_batch_size} does not split over {process_count} processes: "
            f"use a multiple of {process_count}"
        )
    local = global_batch_size // process_count
    bounds = [total * p // process_count for p in range(process_count + 1)]
    # The smallest share bounds the steps: every process runs the same number.
    steps = min(bounds[p + 1] - bounds[p] for p in range(process_count)) // local
    if steps == 0:
        raise ConfigError(
            f"{total} samples make no whole global batch of {global_batch_size} over "
            f"{process_count} processes: use a smaller batch size"
        )
    rows = np.arange(bounds[process_index], bounds[process_index + 1])
    return ProcessShare(rows, steps, local, process_count, process_index, _shards_of(source, rows))


def _shards_of(source: FeedSource, rows: np.ndarray) -> list[int]:
    if source.shard_starts is None or not len(rows):
        return []
    owners = np.searchsorted(source.shard_starts, rows, side="right") - 1
    return sorted({int(owner) for owner in np.unique(owners)})


class StreamFeed(keras.utils.PyDataset):
    """`model.fit`'s input: batches of a `FeedSource` in each epoch's order (see the module).

    One feed spans every epoch a `fit` call runs (`epochs` of `steps_per_epoch` batches, fit
    with `steps_per_epoch`), so batch i belongs to epoch `first_epoch + i // steps_per_epoch`
    whatever Keras' epoch callbacks do or when its iterators read ahead: the batch a given
    index returns is a function of the index alone. Reader threads read the next
    `read_ahead` batches while the model trains on the current one."""

    def __init__(
        self,
        source: FeedSource,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        first_epoch: int = 0,
        epochs: int = 1,
        process_count: int = 1,
        process_index: int = 0,
        threads: int = READER_THREADS,
        read_ahead: int = QUEUE_BATCHES,
    ) -> None:
        # Keras' own worker pool restarts its batch indices at every epoch; the read-ahead
        # below keeps the index -> batch mapping whole.
        super().__init__(workers=1, use_multiprocessing=False)
        self.source = source
        self.seed = int(seed)
        self.shuffle = shuffle
        self.first_epoch = int(first_epoch)
        self.epochs = max(1, int(epochs))
        self.share = process_share(
            source, batch_size, process_count, process_index, drop_remainder=process_count > 1
        )
        self.canonical = source.canonical_order(self.share.rows)
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._threads = max(0, int(threads))
        self._read_ahead = max(0, int(read_ahead))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}
        self.batches_read: set[int] = set()
        """The batch indices read so far (Keras reads the first one twice: once to build)."""

    @property
    def steps_per_epoch(self) -> int:
        return self.share.steps

    def __len__(self) -> int:
        return self.share.steps * self.epochs

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The rows epoch `epoch` visits, in order (this process's share of them)."""
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = self.canonical
                if self.shuffle:
                    order = order[epoch_permutation(len(order), self.seed, epoch)]
                if self.share.process_count > 1:
                    order = order[: self.share.steps * self.share.batch_size]
                # Two epochs' orders at most: the one training reads and the next.
                self._orders = {
                    key: value for key, value in self._orders.items() if key >= epoch - 1
                }
                self._orders[epoch] = order
            return order

    def position(self, index: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of batch `index`."""
        return self.first_epoch + index // self.share.steps, index % self.share.steps

    def batch_rows(self, index: int) -> np.ndarray:
        """The rows of batch `index`."""
        epoch, batch = self.position(index)
        size = self.share.batch_size
        return self.epoch_order(epoch)[batch * size : (batch + 1) * size]

    def read_batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `index` as (inputs, labels), read now."""
        rows = self.batch_rows(index)
        self.batches_read.add(index)
        return self.source.inputs.read(rows), self.source.labels[rows]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        if not self._threads:
            return self.read_batch(index)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="feed")
            future = self._pending.pop(index, None)
            # Read ahead of the batch asked for; drop reads of batches already passed.
            for stale in [key for key in self._pending if key < index]:
                self._pending.pop(stale).cancel()
            for ahead in range(index + 1, min(len(self), index + 1 + self._read_ahead)):
                if ahead not in self._pending:
                    self._pending[ahead] = self._pool.submit(self.read_batch, ahead)
        return future.result() if future is not None else self.read_batch(index)

    def close(self) -> None:
        """Stop the reader threads (fit_model calls it when fit returns)."""
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def rows_read(self) -> dict[int, np.ndarray]:
        """Epoch -> the rows of the batches read in it, each batch counted once."""
        epochs: dict[int, list[np.ndarray]] = {}
        for index in sorted(self.batches_read):
            epochs.setdefault(self.position(index)[0], []).append(self.batch_rows(index))
        return {epoch: np.concatenate(parts) for epoch, parts in epochs.items()}

    @property
    def shards_assigned(self) -> list[int]:
        """The store shards (by index) this process's rows lie in."""
        return list(self.share.shards)


def feeds_for(
    train: FeedSource,
    val: FeedSource,
    batch_size: int,
    *,
    seed: int,
    first_epoch: int = 0,
    epochs: int = 1,
    process_grid: Sequence[int] = (1, 0),
) -> tuple[StreamFeed, StreamFeed]:
    """The training feed (epochs first_epoch.. first_epoch + epochs - 1, each shuffled) and
    the validation feed (in store order), for this process of `process_grid` (count, index)."""
    count, index = process_grid
    return (
        StreamFeed(
            train,
            batch_size,
            seed=seed,
            first_epoch=first_epoch,
            epochs=epochs,
            process_count=count,
            process_index=index,
        ),
        StreamFeed(
            val, batch_size, seed=seed, shuffle=False, process_count=count, process_index=index
        ),
    )
