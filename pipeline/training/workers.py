"""Several hosts (processes) training one model, on JAX only.

`initialize_workers` (or `initialize_workers_from_env`) once at start-up, before any other JAX
work; then each process reads its own run of the store's shards and feeds its share of every
global batch (`training.feed`), and only process 0 (`process_grid`) writes outputs. JAX is
imported lazily.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import keras

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

COORDINATOR_VARIABLE = "PIPELINE_COORDINATOR"
NUM_PROCESSES_VARIABLE = "PIPELINE_NUM_PROCESSES"
PROCESS_ID_VARIABLE = "PIPELINE_PROCESS_ID"
WORKER_VARIABLES = (COORDINATOR_VARIABLE, NUM_PROCESSES_VARIABLE, PROCESS_ID_VARIABLE)


def initialize_workers(
    coordinator: str,
    num_processes: int,
    process_id: int,
    *,
    auto_shard_dataset: bool = False,
) -> keras.distribution.DataParallel:
    """Join this process to a cluster of `num_processes` training processes whose process 0
    listens at `coordinator` ("host:port"), then make Keras train data-parallel over every
    device of every process. Call it once, first thing, before any other JAX work; every
    process then builds the same model and fits it. JAX only: TensorFlow's
    MultiWorkerMirroredStrategy does not work with Keras 3 (keras-team/keras#20585).

    What each process passes to `fit`: by default its own share of every global batch, read
    from its own shards (`training.feed.StreamFeed`), which is how the pipeline feeds data. With
    `auto_shard_dataset`, Keras shards instead, and then accepts only a `tf.data.Dataset`,
    the same one on every process, batched at the global batch size."""
    _check_coordinator(coordinator, "coordinator")
    if num_processes < 1:
        raise ConfigError(f"num_processes is {num_processes}: it must be 1 or more")
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"process_id is {process_id}: it must lie in 0..{num_processes - 1} "
            f"for {num_processes} processes (0 runs the coordinator)"
        )
    _require_jax_backend()
    _enable_jax_cpu_collectives()
    keras.distribution.initialize(
        job_addresses=coordinator, num_processes=num_processes, process_id=process_id
    )
    distribution = keras.distribution.DataParallel(
        devices=keras.distribution.list_devices(), auto_shard_dataset=auto_shard_dataset
    )
    keras.distribution.set_distribution(distribution)
    logger.info(
        "process %d of %d joined %s; training data-parallel over %d devices",
        process_id,
        num_processes,
        coordinator,
        len(keras.distribution.list_devices()),
    )
    return distribution


def initialize_workers_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """`initialize_workers` from PIPELINE_COORDINATOR (host:port of process 0),
    PIPELINE_NUM_PROCESSES and PIPELINE_PROCESS_ID, as a launcher (Slurm, Kubernetes, a
    shell loop) sets them. With none of them set this is a no-op returning False (one
    process, the default); True once the cluster is joined."""
    environ = os.environ if environ is None else environ
    values = {name: environ.get(name, "").strip() for name in WORKER_VARIABLES}
    if not any(values.values()):
        return False
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(
            f"{', '.join(missing)} not set: a multi-process run needs all of "
            f"{', '.join(WORKER_VARIABLES)} (unset all three to train in one process)"
        )
    coordinator = values[COORDINATOR_VARIABLE]
    _check_coordinator(coordinator, COORDINATOR_VARIABLE)
    num_processes = _parse_int(values[NUM_PROCESSES_VARIABLE], NUM_PROCESSES_VARIABLE)
    if num_processes < 1:
        raise ConfigError(
            f"{NUM_PROCESSES_VARIABLE}={num_processes}: set it to the number of training "
            "processes, 1 or more"
        )
    process_id = _parse_int(values[PROCESS_ID_VARIABLE], PROCESS_ID_VARIABLE)
    if not 0 <= process_id < num_processes:
        raise ConfigError(
            f"{PROCESS_ID_VARIABLE}={process_id}: set it to this process's index, "
            f"0..{num_processes - 1} for {NUM_PROCESSES_VARIABLE}={num_processes} "
            "(0 on the coordinator's host)"
        )
    initialize_workers(coordinator, num_processes, process_id)
    return True


def _check_coordinator(coordinator: str, name: str) -> None:
    """A "host:port" address with a port in 1..65535."""
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{name}={coordinator!r}: set it to host:port of process 0, e.g. 10.0.0.1:1234"
        )


def _parse_int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: set it to a whole number") from None


def _require_jax_backend() -> None:
    backend = keras.backend.backend()
    if backend != "jax":
        raise ConfigError(
            f"training across processes needs KERAS_BACKEND=jax (this run uses {backend}): "
            "TensorFlow's MultiWorkerMirroredStrategy does not work with Keras 3 "
            "(keras-team/keras#20585); set KERAS_BACKEND=jax, or unset "
            f"{', '.join(WORKER_VARIABLES)} to train in one process"
        )


def _enable_jax_cpu_collectives() -> None:
    """JAX-only: cross-process collectives on CPU devices (gloo). Keras agrees on one
    random seed across processes with a CPU all-reduce even on GPU hosts, and CPU-only
    clusters need it for every step; older JAX releases default to no CPU collectives."""
    import jax

    option = "jax_cpu_collectives_implementation"
    if option in jax.config.values and jax.config.values[option] in (None, "none"):
        jax.config.update(option, "gloo")


def process_grid() -> tuple[int, int]:
    """(number of processes, this process's index): (1, 0) outside a JAX cluster. Only
    process 0 writes outputs and logs to MLflow."""
    if keras.backend.backend() != "jax":
        return 1, 0
    return _jax_process_grid()


def _jax_process_grid() -> tuple[int, int]:
    import jax

    return jax.process_count(), jax.process_index()
