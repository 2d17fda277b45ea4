"""Device handling for training (pipeline/training/precision.py, accelerators.py, workers.py):
the mixed-precision choice, the worker settings from the environment, and real data-parallel
training: two JAX processes on 127.0.0.1, and one process over two CPU devices on JAX and on
TensorFlow.

Each distributed mode starts from the same initial weights as a one-process, one-device
reference (tests/distributed_worker.py) and must end at its final weights: proof that every
process and device contributed its share of every batch's gradient."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.training import accelerators, precision, workers
from tests import distributed_worker
from tests.project import PROJECT_ROOT

HAS_JAX = importlib.util.find_spec("jax") is not None
needs_jax = pytest.mark.skipif(
    not HAS_JAX,
    reason="jax is not installed: `pip install jax` (CPU is enough) to test training across "
    "processes, which Keras 3 supports on JAX only",
)
WORKER_TIMEOUT_S = 180

# --- choose_precision ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "devices_seen", "expected"),
    [
        ("auto", ["cpu"], "float32"),
        ("auto", [], "float32"),
        ("auto", ["gpu:8.0"], "mixed_bfloat16"),
        ("auto", ["gpu:9.0", "gpu:12.0"], "mixed_bfloat16"),
        ("auto", ["gpu:7.5"], "mixed_float16"),
        ("auto", ["gpu:8.6", "gpu:7.0"], "mixed_float16"),
        ("auto", ["gpu"], "mixed_float16"),
        ("auto", ["tpu"], "mixed_bfloat16"),
        ("float32", ["gpu:9.0"], "float32"),
        ("mixed_float16", ["cpu"], "mixed_float16"),
        ("mixed_bfloat16", ["gpu:7.0"], "mixed_bfloat16"),
    ],
)
def test_choose_precision(setting: str, devices_seen: list[str], expected: str) -> None:
    assert precision.choose_precision(setting, devices_seen) == expected


@pytest.mark.parametrize(
    ("setting", "devices_seen", "backend", "cpu_bfloat16", "expected"),
    [
        ("auto", ["cpu"], "tensorflow", True, "bfloat16"),  # oneDNN on AMX / AVX-512 BF16
        ("auto", ["cpu"], "tensorflow", False, "float32"),  # emulated bfloat16 is slower
        ("auto", ["cpu"], "jax", True, "float32"),  # XLA on a CPU
        ("auto", ["gpu:9.0"], "jax", False, "bfloat16"),
        ("auto", ["gpu:7.0"], "tensorflow", True, "float32"),  # float16 would need scaling
        ("auto", ["tpu"], "jax", False, "bfloat16"),
        ("float32", ["cpu"], "tensorflow", True, "float32"),
        ("bfloat16", ["cpu"], "jax", False, "bfloat16"),
    ],
)
def test_choose_explanation_precision(
    setting: str, devices_seen: list[str], backend: str, cpu_bfloat16: bool, expected: str
) -> None:
    assert (
        precision.choose_explanation_precision(setting, devices_seen, backend, cpu_bfloat16)
        == expected
    )


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n\n")
    assert precision.cpu_bfloat16_native(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not precision.cpu_bfloat16_native(cpuinfo)
    assert not precision.cpu_bfloat16_native(tmp_path / "missing")


def test_choose_precision_rejects_an_unknown_setting_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="'fp16'.*auto, float32, mixed_bfloat16, mixed_float16"):
        precision.choose_precision("fp16", ["cpu"])


@pytest.mark.parametrize("device", ["npu", "gpu:eight", "gpu:8"])
def test_choose_precision_rejects_a_malformed_device(device: str) -> None:
    with pytest.raises(ValueError, match="device"):
        precision.choose_precision("auto", [device])


def test_the_devices_of_this_machine_resolve_auto() -> None:
    seen = precision.describe_devices()
    assert seen, "describe_devices lists at least the CPU"
    assert precision.choose_precision("auto", seen) in precision.POLICIES


# --- apply_precision -------------------------------------------------------------------------


@pytest.fixture
def restore_dtype_policy():
    before = keras.mixed_precision.dtype_policy()
    yield
    keras.mixed_precision.set_dtype_policy(before)


def _classifier() -> keras.Model:
    from keras import layers

    inputs = keras.Input(shape=(4,))
    hidden = layers.Dense(8, activation="relu")(inputs)
    outputs = layers.Dense(3, activation="softmax", dtype="float32")(hidden)
    return keras.Model(inputs, outputs)


@pytest.mark.usefixtures("restore_dtype_policy")
def test_mixed_float16_gets_loss_scaling_from_compile_and_a_float32_output() -> None:
    precision.apply_precision("mixed_float16")
    model = _classifier()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert model.layers[1].compute_dtype == "float16"
    assert model.layers[1].variable_dtype == "float32"
    assert model.output.dtype == "float32"
    # Keras 3's compile(auto_scale_loss=True), the default, wraps the optimizer itself.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.usefixtures("restore_dtype_policy")
def test_mixed_bfloat16_needs_no_loss_scaling() -> None:
    precision.apply_precision("mixed_bfloat16")
    model = _classifier()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("policy", ["auto", "float16", "mixed_float32"])
def test_apply_precision_rejects_what_is_not_a_policy(policy: str) -> None:
    with pytest.raises(ConfigError, match="float32, mixed_bfloat16, mixed_float16"):
        precision.apply_precision(policy)


# --- training_scope --------------------------------------------------------------------------


@pytest.mark.parametrize("names", [[], ["gpu:0"]])
def test_training_scope_does_nothing_with_one_device_or_none(names: list[str]) -> None:
    scope = accelerators.training_scope(names)
    with scope:
        pass
    assert type(scope).__name__ == "nullcontext"


# --- initialize_workers(_from_env) -----------------------------------------------------------

VALID_ENV = {
    "PIPELINE_COORDINATOR": "127.0.0.1:4321",
    "PIPELINE_NUM_PROCESSES": "2",
    "PIPELINE_PROCESS_ID": "1",
}


@pytest.mark.parametrize("environ", [{}, dict.fromkeys(VALID_ENV, ""), {"OTHER": "1"}])
def test_no_worker_variables_mean_one_process(environ: dict[str, str]) -> None:
    assert workers.initialize_workers_from_env(environ) is False


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"PIPELINE_NUM_PROCESSES": None, "PIPELINE_PROCESS_ID": None},
            "PIPELINE_NUM_PROCESSES, PIPELINE_PROCESS_ID not set",
        ),
        ({"PIPELINE_COORDINATOR": None}, "PIPELINE_COORDINATOR not set"),
        ({"PIPELINE_COORDINATOR": "10.0.0.1"}, "PIPELINE_COORDINATOR='10.0.0.1'.*host:port"),
        ({"PIPELINE_COORDINATOR": "host:http"}, "PIPELINE_COORDINATOR=.*host:port"),
        ({"PIPELINE_COORDINATOR": "host:70000"}, "PIPELINE_COORDINATOR=.*host:port"),
        ({"PIPELINE_COORDINATOR": ":1234"}, "PIPELINE_COORDINATOR=.*host:port"),
        ({"PIPELINE_NUM_PROCESSES": "two"}, "PIPELINE_NUM_PROCESSES='two'.*whole number"),
        ({"PIPELINE_NUM_PROCESSES": "0"}, "PIPELINE_NUM_PROCESSES=0.*1 or more"),
        ({"PIPELINE_PROCESS_ID": "1.0"}, "PIPELINE_PROCESS_ID='1.0'.*whole number"),
        ({"PIPELINE_PROCESS_ID": "2"}, r"PIPELINE_PROCESS_ID=2.*0\.\.1"),
        ({"PIPELINE_PROCESS_ID": "-1"}, r"PIPELINE_PROCESS_ID=-1.*0\.\.1"),
    ],
)
def test_bad_worker_variables_name_the_variable_and_the_fix(
    changes: dict[str, str | None], message: str
) -> None:
    environ = {**VALID_ENV, **changes}
    environ = {name: value for name, value in environ.items() if value is not None}
    with pytest.raises(ConfigError, match=message):
        workers.initialize_workers_from_env(environ)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("localhost", 2, 0), "coordinator='localhost'.*host:port"),
        (("localhost:1234", 0, 0), "num_processes is 0"),
        (("localhost:1234", 2, 2), r"process_id is 2.*0\.\.1"),
    ],
)
def test_bad_worker_arguments_are_config_errors(arguments: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        workers.initialize_workers(*arguments)


@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="on JAX these settings would join a cluster"
)
def test_training_across_processes_asks_for_the_jax_backend() -> None:
    with pytest.raises(ConfigError, match=r"KERAS_BACKEND=jax.*keras-team/keras#20585"):
        workers.initialize_workers_from_env(VALID_ENV)
    with pytest.raises(ConfigError, match="KERAS_BACKEND=jax"):
        workers.initialize_workers("127.0.0.1:4321", 2, 0)


# --- real distributed training (subprocesses) ------------------------------------------------


def _worker_env(backend: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in workers.WORKER_VARIABLES and not name.startswith("KERAS_DISTRIBUTION_")
    }
    env.update(
        KERAS_BACKEND=backend,
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return env


def _worker_command(output: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "tests.distributed_worker", str(output), *arguments]


def _run_workers(commands: list[list[str]], backend: str) -> None:
    """Run the worker processes side by side; fail with their output if one fails."""
    processes = [
        subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=_worker_env(backend),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in commands
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=WORKER_TIMEOUT_S)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"worker {process.args} failed:\n{output[-4000:]}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _weights(saved, prefix: str) -> list[np.ndarray]:
    return [saved[name] for name in sorted(saved.files) if name.startswith(prefix)]


def _assert_trained_like_reference(saved, mode: str, reference) -> None:
    initial = _weights(saved, f"{mode}_initial_")
    final = _weights(saved, f"{mode}_final_")
    for start, reference_start in zip(initial, _weights(reference, "initial_"), strict=True):
        np.testing.assert_array_equal(start, reference_start)
    assert any(not np.allclose(start, end) for start, end in zip(initial, final, strict=True)), (
        f"{mode}: training left the weights where they started"
    )
    for end, reference_end in zip(final, _weights(reference, "final_"), strict=True):
        np.testing.assert_allclose(end, reference_end, rtol=1e-5, atol=1e-6, err_msg=mode)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same model trained here, in one process on one device with all the data: what
    every distributed mode must reproduce. Its initial weights are every run's start."""
    x, y = distributed_worker.make_data()
    model = distributed_worker.build_model()
    initial = model.get_weights()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
    model.fit(
        x,
        y,
        batch_size=distributed_worker.GLOBAL_BATCH_SIZE,
        epochs=distributed_worker.EPOCHS,
        shuffle=False,
        verbose=0,
    )
    output = tmp_path_factory.mktemp("distribution") / "reference.npz"
    np.savez(
        output,
        **{f"initial_{i}": weight for i, weight in enumerate(initial)},
        **{f"final_{i}": weight for i, weight in enumerate(model.get_weights())},
    )
    return output


@pytest.mark.slow
@needs_jax
def test_two_processes_train_one_model_like_one_process(reference: Path, tmp_path: Path) -> None:
    """Two JAX processes on 127.0.0.1 (gloo collectives on CPU), each with one CPU device,
    fit three times: `dataset` gives both the whole tf.data.Dataset and lets Keras shard it
    (auto_shard_dataset); `feed` feeds each process its half of every global batch through
    the pipeline's feed; `store` trains through `fit_model` on a sharded store, each process
    reading only its own shards, together every image once per epoch."""
    coordinator = f"127.0.0.1:{_free_port()}"
    outputs = [tmp_path / f"process{index}.npz" for index in range(2)]
    _run_workers(
        [
            _worker_command(
                output,
                *("--initial-weights", str(reference), "--coordinator", coordinator),
                *("--num-processes", "2", "--process-id", str(index)),
                *("--data", "dataset", "feed", "store"),
            )
            for index, output in enumerate(outputs)
        ],
        "jax",
    )
    first, second = (np.load(output) for output in outputs)
    for index, saved in enumerate((first, second)):
        assert int(saved["process_count"]) == 2
        assert int(saved["process_index"]) == index
        assert int(saved["global_device_count"]) == 2
        assert int(saved["local_device_count"]) == 1
        for mode in ("dataset", "feed"):
            assert int(saved[f"{mode}_replicas"]) == 2, f"{mode}: DataParallel spans one process"
        assert int(saved["feed_local_samples"]) == 32
        assert int(saved["feed_local_batch_size"]) == 8
    for mode in ("dataset", "feed"):
        pairs = zip(
            _weights(first, f"{mode}_final_"), _weights(second, f"{mode}_final_"), strict=True
        )
        for a, b in pairs:
            np.testing.assert_array_equal(a, b, err_msg=f"{mode}: the processes disagree")
        np.testing.assert_array_equal(first[f"{mode}_loss"], second[f"{mode}_loss"])
        _assert_trained_like_reference(first, mode, np.load(reference))
    _assert_each_process_read_its_own_shards(first, second)


def _assert_each_process_read_its_own_shards(first, second) -> None:
    """The store mode: each process read the shards assigned to it and no other, the two
    sets are disjoint and cover the store, and every image was read once per epoch."""
    shard_count = int(first["store_shard_count"])
    assert shard_count == 8
    read = [set(saved["store_shards_read"].tolist()) for saved in (first, second)]
    assert read == [set(saved["store_shards_assigned"].tolist()) for saved in (first, second)]
    assert read[0].isdisjoint(read[1]) and read[0] | read[1] == set(range(shard_count))
    # Each process wrote its own copy of the store (as each host checks one out): the same
    # images in the same rows, so row counts add up across processes.
    np.testing.assert_array_equal(first["store_digests"], second["store_digests"])
    epochs = distributed_worker.EPOCHS
    assert first["store_epochs_read"].tolist() == list(range(epochs))
    reads = first["store_row_reads"] + second["store_row_reads"]  # (epochs, rows)
    assert reads.tolist() == [[1] * distributed_worker.SAMPLES] * epochs
    np.testing.assert_array_equal(first["store_loss"], second["store_loss"])
    for a, b in zip(_weights(first, "store_final_"), _weights(second, "store_final_"), strict=True):
        np.testing.assert_array_equal(a, b, err_msg="store: the processes disagree")


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [pytest.param("jax", marks=needs_jax), "tensorflow"],
)
def test_training_scope_replicates_over_the_devices_of_one_host(
    reference: Path, tmp_path: Path, backend: str
) -> None:
    """The CPU split into two devices stands in for two GPUs: DataParallel on JAX,
    MirroredStrategy on TensorFlow."""
    output = tmp_path / f"{backend}.npz"
    _run_workers(
        [_worker_command(output, "--initial-weights", str(reference), "--local-devices", "2")],
        backend,
    )
    saved = np.load(output)
    assert int(saved["feed_replicas"]) == 2
    _assert_trained_like_reference(saved, "feed", np.load(reference))
