"""Several accelerators of one host: build, compile and fit inside `training_scope()`.

Only `_tensorflow_*`, `_jax_*` and `_mirrored_strategy_scope` touch a backend's own API, and
they import it lazily, so this module imports neither TensorFlow nor JAX by itself.
"""

from __future__ import annotations

import contextlib
import logging

import keras

logger = logging.getLogger(__name__)


def list_accelerators() -> list[str]:
    """The names of this host's accelerators as the backend's distribution API takes them
    ("/device:GPU:0" for TensorFlow, "gpu:0" for JAX); empty on a CPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_accelerator_names()
    if backend == "jax":
        return _jax_accelerator_names()
    return []


def _tensorflow_accelerator_names() -> list[str]:
    """TensorFlow-only: the logical GPUs, which MirroredStrategy replicates over."""
    import tensorflow as tf

    return [device.name for device in tf.config.list_logical_devices("GPU")]


def _jax_accelerator_names() -> list[str]:
    """JAX-only: this process's GPUs or TPUs, in Keras' "platform:id" spelling."""
    import jax

    return [
        f"{device.platform}:{device.id}"
        for device in jax.local_devices()
        if device.platform != "cpu"
    ]


def training_scope(accelerators: list[str] | None = None) -> contextlib.AbstractContextManager:
    """A context to build, compile and fit a model in, replicating it over `accelerators`
    (default: all of this host's): `tf.distribute.MirroredStrategy` on TensorFlow, Keras'
    `DataParallel` on JAX. With one device or none it does nothing, so single-device training
    is unchanged; it does nothing either where a distribution is already set (after
    `initialize_workers`, which spans every host)."""
    if accelerators is None:
        accelerators = list_accelerators()
    if len(accelerators) <= 1:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _mirrored_strategy_scope(accelerators)
    if backend == "jax":
        if keras.distribution.distribution() is not None:
            return contextlib.nullcontext()
        return keras.distribution.DataParallel(devices=accelerators).scope()
    logger.warning(
        "the %s backend has no data-parallel training in Keras; training on one device of %d",
        backend,
        len(accelerators),
    )
    return contextlib.nullcontext()


def _mirrored_strategy_scope(accelerators: list[str]) -> contextlib.AbstractContextManager:
    """TensorFlow-only: variables mirrored on every GPU, gradients all-reduced each step."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=accelerators).scope()
