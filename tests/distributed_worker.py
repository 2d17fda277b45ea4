"""One training process of tests/code/test_distribution.py: fits a tiny model on 64 samples
(global batch 16, 2 epochs, SGD, no shuffling) and writes what it saw to an .npz file.

    python -m tests.distributed_worker OUTPUT.npz [--initial-weights REF.npz]
        [--coordinator HOST:PORT --num-processes N --process-id I] [--data MODE...]
        [--local-devices N]

- Alone, it trains in one process on one device with the whole data, as the test's
  in-process reference does.
- With a coordinator (KERAS_BACKEND=jax) it joins a cluster (`initialize_workers`) and feeds
  either its own share of each global batch through the pipeline's feed (feed: arrays in
  memory, in order) or the whole data as a tf.data.Dataset that Keras shards (dataset).
  Several modes train one fresh model each, in one cluster.
- `store` writes the same 64 samples as a sharded store of 8 shards (each process its own
  copy, as each host checks out the DVC remote) and trains through the pipeline's `fit_model`
  (shuffled per epoch); it records which shards this process read and how often it read each
  row (store_shards_read, store_row_reads).
- Output keys are <mode>_initial_<i>, <mode>_final_<i>, <mode>_loss, <mode>_replicas, ...
- With `--local-devices N` it splits the CPU into N devices and trains inside
  `training_scope` (DataParallel on JAX, MirroredStrategy on TensorFlow).

Starting from the reference's initial weights (`--initial-weights`), every mode must end at
the reference's final weights (up to float rounding): the proof that every process and device
contributed its share of each batch's gradient, no more, no less.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

SAMPLES = 64
FEATURES = 4
GLOBAL_BATCH_SIZE = 16
EPOCHS = 2


def make_data() -> tuple[np.ndarray, np.ndarray]:
    """The same 64 samples in every process: a noisy linear target."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * rng.normal(size=(SAMPLES, 1))
    return x, y.astype("float32")


def build_model():
    import keras
    from keras import layers

    inputs = keras.Input(shape=(FEATURES,))
    hidden = layers.Dense(8, activation="relu")(inputs)
    outputs = layers.Dense(1, dtype="float32")(hidden)
    return keras.Model(inputs, outputs)


def split_cpu(count: int, backend: str) -> list[str]:
    """Make the CPU show up as `count` devices, before the backend starts; their names."""
    if backend == "jax":
        import jax

        jax.config.update("jax_num_cpu_devices", count)
        return [f"cpu:{index}" for index in range(count)]
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )
    return [f"/cpu:{index}" for index in range(count)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output")
    parser.add_argument(
        "--initial-weights", help="an .npz with initial_<i> arrays: start from these weights"
    )
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument(
        "--data",
        nargs="+",
        choices=("feed", "dataset", "store"),
        default=["feed"],
        help="one fresh model trained per mode, in this order (one cluster start for all)",
    )
    parser.add_argument("--local-devices", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    # Both must come before anything starts the backend (importing keras can, on TensorFlow).
    local_devices = split_cpu(args.local_devices, backend) if args.local_devices > 1 else []

    from pipeline.training import workers

    if args.coordinator:
        workers.initialize_workers(
            args.coordinator,
            args.num_processes,
            args.process_id,
            auto_shard_dataset=args.data[0] == "dataset",
        )

    results: dict[str, np.ndarray | int] = {}
    for mode in args.data:
        trained = train(
            mode, args.initial_weights, local_devices, backend, os.path.dirname(args.output)
        )
        for name, value in trained.items():
            results[f"{mode}_{name}"] = value
    np.savez(args.output, **results, **_jax_counts(backend))
    return 0


def _feed_order(process_count: int) -> np.ndarray:
    """The order to hand the feed the samples in so that, with each process reading its
    contiguous share, global batch k holds the reference's batch k (rows 16k..16k+15)."""
    local = GLOBAL_BATCH_SIZE // process_count
    steps = SAMPLES // GLOBAL_BATCH_SIZE
    return np.array(
        [
            step * GLOBAL_BATCH_SIZE + process * local + offset
            for process in range(process_count)
            for step in range(steps)
            for offset in range(local)
        ]
    )


def train(
    mode: str,
    initial_weights: str | None,
    local_devices: list[str],
    backend: str,
    output_dir: str = ".",
) -> dict[str, np.ndarray | int]:
    """Fit a fresh model on the data fed as `mode`; its weights, losses and replica count."""
    import keras

    from pipeline.training import accelerators, workers

    distribution = keras.distribution.distribution()
    if distribution is not None:
        distribution.auto_shard_dataset = mode == "dataset"
    x, y = make_data()
    if mode == "store":
        return train_from_store(output_dir, local_devices)
    if mode == "dataset":
        import tensorflow as tf

        # The same global batches on every process; Keras keeps this process's half of each.
        fit_data = {"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH_SIZE)}
        local_samples, batch_size = SAMPLES, GLOBAL_BATCH_SIZE
    else:
        from pipeline.training.feed import FeedSource, StreamFeed

        count, index = workers.process_grid()
        order = _feed_order(count)
        feed = StreamFeed(
            FeedSource.of((x[order], y[order])),
            GLOBAL_BATCH_SIZE,
            seed=0,
            shuffle=False,
            epochs=EPOCHS,
            process_count=count,
            process_index=index,
        )
        fit_data = {"x": feed, "steps_per_epoch": feed.steps_per_epoch}
        local_samples, batch_size = len(feed.share.rows), feed.share.batch_size

    with accelerators.training_scope(local_devices):
        model = build_model()
        if initial_weights:
            with np.load(initial_weights) as saved:
                model.set_weights([saved[f"initial_{i}"] for i in range(len(model.weights))])
        initial = model.get_weights()
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
        history = model.fit(**fit_data, epochs=EPOCHS, shuffle=False, verbose=0)
        replicas = _replicas(backend)
    return {
        **{f"initial_{i}": weight for i, weight in enumerate(initial)},
        **{f"final_{i}": weight for i, weight in enumerate(model.get_weights())},
        "loss": np.array(history.history["loss"]),
        "replicas": replicas,
        "local_samples": local_samples,
        "local_batch_size": batch_size,
    }


def train_from_store(output_dir: str, local_devices: list[str]) -> dict[str, np.ndarray | int]:
    """The 64 samples as uint8 2x2x1 images in a store of 8 shards, two classes, trained
    through `fit_model` as the train stage does; what this process read."""
    import keras
    from keras import layers

    from pipeline.store import open_split, write_store_from_arrays
    from pipeline.training import accelerators, workers
    from pipeline.training.feed import FeedSource
    from pipeline.training.fit import FitOptions, fit_model

    x, y = make_data()
    images = np.clip(x * 32 + 128, 0, 255).astype(np.uint8).reshape(SAMPLES, 2, 2, 1)
    labels = (y[:, 0] > np.median(y)).astype(np.int64)
    count, index = workers.process_grid()
    root = os.path.join(output_dir, f"store-{index}")
    write_store_from_arrays(
        root,
        {"train": (images, labels), "val": (images[:16], labels[:16]), "test": (images, labels)},
        ["low", "high"],
        shard_bytes=8 * 4,
    )
    split = open_split(root, "train")
    # The feeds fit_model builds, kept to read back which rows each epoch read.
    from pipeline.training import fit as fit_module

    built = []
    build_feeds = fit_module.feeds_for
    fit_module.feeds_for = lambda *args, **kwargs: (
        built.append(build_feeds(*args, **kwargs)) or built[-1]
    )
    keras.utils.set_random_seed(1)
    with accelerators.training_scope(local_devices):
        inputs = keras.Input(shape=(2, 2, 1))
        hidden = layers.Dense(8, activation="relu")(
            layers.Flatten()(layers.Rescaling(1 / 255)(inputs))
        )
        model = keras.Model(inputs, layers.Dense(2, activation="softmax", dtype="float32")(hidden))
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.1),
            loss="sparse_categorical_crossentropy",
        )
        history = fit_model(
            model,
            FeedSource.from_split(split),
            FeedSource.from_split(open_split(root, "val")),
            FitOptions(epochs=EPOCHS, batch_size=GLOBAL_BATCH_SIZE),
            seed=5,
        )
    fit_module.feeds_for = build_feeds
    train_feed = built[0][0]
    by_epoch = train_feed.rows_read()
    every_row = np.concatenate(list(by_epoch.values()))
    return {
        "shards_read": np.unique(split.shard_of(every_row)),
        "shards_assigned": np.array(train_feed.shards_assigned),
        "shard_count": len(split.shards),
        "epochs_read": np.array(sorted(by_epoch)),
        # Reads of each row, per epoch: (epochs, rows).
        "row_reads": np.stack(
            [np.bincount(by_epoch[epoch], minlength=len(split)) for epoch in sorted(by_epoch)]
        ),
        "digests": split.digests(),
        "loss": np.array(history["loss"]),
        **{f"final_{i}": weight for i, weight in enumerate(model.get_weights())},
    }


def _replicas(backend: str) -> int:
    """How many devices each training step ran on, as the backend's distribution sees it."""
    if backend == "jax":
        import keras

        distribution = keras.distribution.distribution()
        return 1 if distribution is None else int(distribution.device_mesh.devices.size)
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _jax_counts(backend: str) -> dict[str, int]:
    if backend != "jax":
        return {}
    import jax

    return {
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "global_device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
    }


if __name__ == "__main__":
    sys.exit(main())
