"""The training feed (pipeline/training/feed.py): every image once per epoch, in a seeded
order that changes between epochs and does not depend on the store's layout, through Keras'
own `model.fit`."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.store import image_digest, open_split, write_store_from_arrays
from pipeline.training.feed import FeedSource, StreamFeed, epoch_permutation, process_share

CLASSES = ["a", "b", "c"]


def _images(count: int = 45, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(count, 4, 4, 1), dtype=np.uint8)
    return x, np.arange(count, dtype=np.int64) % len(CLASSES)


def _store(root, x, y, shard_images: int):
    # Shards of `shard_images` images each (the last one smaller).
    write_store_from_arrays(
        root,
        {"train": (x, y), "val": (x[:3], y[:3]), "test": (x[:3], y[:3])},
        CLASSES,
        shard_bytes=shard_images * x[0].nbytes,
    )
    return open_split(root, "train")


class _RecordingFeed(StreamFeed):
    """Records the images each (epoch, batch) read, by digest: Keras reads the first batches
    once more to learn the data's shapes, and reader threads read ahead."""

    def read_batch(self, index):
        images, labels = super().read_batch(index)
        self.record[self.position(index)] = [image_digest(image) for image in images]
        return images, labels


def _fit_and_record(source: FeedSource, epochs: int, seed: int) -> list[list[str]]:
    """Fit a tiny model on `source` with Keras' own fit; the digests each epoch read."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4, 4, 1))
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(flat))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    feed = _RecordingFeed(source, 8, seed=seed, epochs=epochs)
    feed.record = {}
    try:
        model.fit(
            feed, steps_per_epoch=feed.steps_per_epoch, epochs=epochs, shuffle=False, verbose=0
        )
    finally:
        feed.close()
    return [
        [digest for batch in range(feed.steps_per_epoch) for digest in feed.record[(epoch, batch)]]
        for epoch in range(epochs)
    ]


def test_fit_visits_every_image_once_per_epoch_in_a_seeded_order(tmp_path):
    x, y = _images()
    split = _store(tmp_path / "prepared", x, y, shard_images=8)
    assert len(split.shards) == 6
    epochs = _fit_and_record(FeedSource.from_split(split), 3, seed=7)
    everything = sorted(image_digest(image) for image in x)
    for order in epochs:
        assert sorted(order) == everything  # each image exactly once
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert _fit_and_record(FeedSource.from_split(split), 3, seed=7) == epochs
    assert _fit_and_record(FeedSource.from_split(split), 1, seed=8)[0] != epochs[0]


def test_the_order_follows_the_images_not_the_shard_layout(tmp_path):
    x, y = _images()
    few = _store(tmp_path / "few", x, y, shard_images=40)
    many = _store(tmp_path / "many", x[::-1].copy(), y[::-1].copy(), shard_images=4)
    assert len(few.shards) != len(many.shards)
    for epoch in range(3):
        orders = []
        for split in (few, many):
            feed = StreamFeed(FeedSource.from_split(split), 8, seed=3, first_epoch=epoch)
            rows = np.concatenate([feed.batch_rows(i) for i in range(len(feed))])
            orders.append(split.digests()[rows])
        assert orders[0].tolist() == orders[1].tolist()


def test_a_resumed_feed_visits_the_epoch_it_resumes_in_the_same_order():
    x, y = _images()
    fresh = StreamFeed(FeedSource.of((x, y)), 8, seed=1, epochs=3)
    resumed = StreamFeed(FeedSource.of((x, y)), 8, seed=1, first_epoch=2)
    steps = fresh.steps_per_epoch
    for batch in range(steps):
        assert np.array_equal(fresh.batch_rows(2 * steps + batch), resumed.batch_rows(batch))
        assert np.array_equal(fresh[2 * steps + batch][0], resumed[batch][0])
    fresh.close()
    resumed.close()


def test_a_batch_holds_the_images_and_labels_of_its_rows(tmp_path):
    x, y = _images()
    split = _store(tmp_path / "prepared", x, y, shard_images=5)
    feed = StreamFeed(FeedSource.from_split(split), 8, seed=0)
    rows = feed.batch_rows(1)
    images, labels = feed[1]
    feed.close()
    assert np.array_equal(images, split.read(rows))
    assert np.array_equal(labels, split.y[rows])
    assert len(feed) == 6  # 45 images: five batches of 8 and one of 5


def test_processes_read_disjoint_runs_of_shards_and_cover_the_split_once(tmp_path):
    x, y = _images(48)
    split = _store(tmp_path / "prepared", x, y, shard_images=6)
    source = FeedSource.from_split(split)
    shares = [process_share(source, 8, 2, index) for index in range(2)]
    assert shares[0].shards == [0, 1, 2, 3] and shares[1].shards == [4, 5, 6, 7]
    assert shares[0].steps == shares[1].steps == 6 and shares[0].batch_size == 4
    seen = np.concatenate([share.rows for share in shares])
    assert sorted(seen.tolist()) == list(range(48))
    with pytest.raises(ConfigError, match="multiple of 2"):
        process_share(source, 7, 2, 0)


def test_epoch_permutations_differ_by_epoch_and_seed():
    assert np.array_equal(epoch_permutation(10, 1, 0), epoch_permutation(10, 1, 0))
    assert not np.array_equal(epoch_permutation(50, 1, 0), epoch_permutation(50, 1, 1))
    assert not np.array_equal(epoch_permutation(50, 1, 0), epoch_permutation(50, 2, 0))
