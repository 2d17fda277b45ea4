"""Gradients of a model's output with respect to its input, on the Keras backend in use.

The one backend-specific corner of the explain package: Keras 3 has no backend-agnostic
gradient op, so each backend gets a small function here (TensorFlow's GradientTape, JAX's vjp)
and everything else (Grad-CAM, filter patterns) calls `value_and_gradient`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from pipeline.explain.graph import ExplainError


def _gradients_tensorflow(fn: Callable, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
        total = tf.reduce_sum(value)
    gradient = tape.gradient(total, x)
    return value.numpy(), gradient.numpy()


def _gradients_jax(fn: Callable, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import jax
    import jax.numpy as jnp

    # The vector-Jacobian product with ones is the gradient of the sum: each sample's scalar
    # depends only on its own input, so this is every sample's own gradient at once.
    value, pullback = jax.vjp(fn, jnp.asarray(x))
    (gradient,) = pullback(jnp.ones_like(value))
    return np.asarray(value), np.asarray(gradient)


_BY_BACKEND = {"tensorflow": _gradients_tensorflow, "jax": _gradients_jax}


def value_and_gradient(fn: Callable, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`fn(x)` (a batch -> one scalar per sample) and the gradient of its sum with respect to
    `x`, as NumPy arrays; `x` must be floating point."""
    backend = keras.backend.backend()
    compute = _BY_BACKEND.get(backend)
    if compute is None:
        raise ExplainError(
            f"explanations need gradients, implemented for the {' and '.join(_BY_BACKEND)} "
            f"backends; Keras runs on {backend!r} (not supported): set KERAS_BACKEND to one of "
            f"those"
        )
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ExplainError(f"gradients need a floating-point input, got {x.dtype}")
    return compute(fn, x)
