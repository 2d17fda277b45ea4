"""One training process of tests/code/test_distribution.py: fits a tiny model on 64 samples
(global batch 16, 2 epochs, SGD, no shuffling) and writes what it saw to an .npz file.

    python -m tests.distributed_worker OUTPUT.npz [--initial-weights REF.npz]
        [--coordinator HOST:PORT --num-processes N --process-id I] [--data MODE...]
        [--local-devices N]

- Alone, it trains in one process on one device with the whole data, as the test's
  in-process reference does.
- With a coordinator (KERAS_BACKEND=jax) it joins a cluster (`initialize_workers`) and feeds
  either its own share of each global batch (numpy) or the whole data as a tf.data.Dataset
  that Keras shards (dataset). Several modes train one fresh model each, in one cluster.
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
        choices=("numpy", "dataset"),
        default=["numpy"],
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
        for name, value in train(mode, args.initial_weights, local_devices, backend).items():
            results[f"{mode}_{name}"] = value
    np.savez(args.output, **results, **_jax_counts(backend))
    return 0


def train(
    mode: str, initial_weights: str | None, local_devices: list[str], backend: str
) -> dict[str, np.ndarray | int]:
    """Fit a fresh model on the data fed as `mode`; its weights, losses and replica count."""
    import keras

    from pipeline.training import accelerators, workers

    distribution = keras.distribution.distribution()
    if distribution is not None:
        distribution.auto_shard_dataset = mode == "dataset"
    x, y = make_data()
    if mode == "dataset":
        import tensorflow as tf

        # The same global batches on every process; Keras keeps this process's half of each.
        fit_data = {"x": tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH_SIZE)}
        local_samples, batch_size = SAMPLES, GLOBAL_BATCH_SIZE
    else:
        (x_local, y_local), batch_size = workers.shard_for_this_process([x, y], GLOBAL_BATCH_SIZE)
        fit_data = {"x": x_local, "y": y_local, "batch_size": batch_size}
        local_samples = len(x_local)

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
