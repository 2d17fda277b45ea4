"""Gradients of a model's output with respect to its input, on the Keras backend in use.

The one backend-specific corner of the explain package: Keras 3 has no backend-agnostic
gradient op, so each backend gets a small function here (TensorFlow's GradientTape, JAX's vjp
and grad) and everything else calls `value_and_gradient` (Grad-CAM, once per batch) or
`compile_ascent_step` (filter patterns: one compiled function run `steps` times).
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


def _compiled_tensorflow(fn: Callable, update: Callable) -> Callable:
    import tensorflow as tf

    # A graph, not XLA: compiling VGG16 with XLA on a CPU costs more than the steps it saves.
    @tf.function(reduce_retracing=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(fn(x))
        return update(x, tape.gradient(total, x))

    return lambda x: step(tf.convert_to_tensor(x))


def _compiled_jax(fn: Callable, update: Callable) -> Callable:
    import jax
    import jax.numpy as jnp

    gradient = jax.grad(lambda x: jnp.sum(fn(x)))
    step = jax.jit(lambda x: update(x, gradient(x)))
    return lambda x: step(jnp.asarray(x))


_BY_BACKEND = {"tensorflow": _gradients_tensorflow, "jax": _gradients_jax}
_COMPILED_BY_BACKEND = {"tensorflow": _compiled_tensorflow, "jax": _compiled_jax}


def _backend_function(table: dict[str, Callable]) -> Callable:
    """The function of `table` for the Keras backend in use, or an ExplainError naming it."""
    backend = keras.backend.backend()
    function = table.get(backend)
    if function is None:
        raise ExplainError(
            f"explanations need gradients, implemented for the {' and '.join(table)} "
            f"backends; Keras runs on {backend!r} (not supported): set KERAS_BACKEND to one of "
            f"those"
        )
    return function


def _floating(x) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ExplainError(f"gradients need a floating-point input, got {x.dtype}")
    return x


def value_and_gradient(fn: Callable, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`fn(x)` (a batch -> one scalar per sample) and the gradient of its sum with respect to
    `x`, as NumPy arrays; `x` must be floating point."""
    compute = _backend_function(_BY_BACKEND)
    return compute(fn, _floating(x))


def compile_ascent_step(fn: Callable, step_size: float) -> Callable[[np.ndarray], np.ndarray]:
    """One compiled step of gradient ascent on `fn` (a batch -> one scalar per sample): each
    sample moves `step_size` along its own L2-normalized gradient. Traced once and called
    `steps` times, where an eager step costs a Python dispatch per op (most of a small
    model's time). Takes and returns a backend tensor; `keras.ops.convert_to_numpy` reads it."""
    compiled = _backend_function(_COMPILED_BY_BACKEND)

    def update(x, gradient):
        axes = tuple(range(1, len(gradient.shape)))
        norms = keras.ops.sqrt(keras.ops.sum(keras.ops.square(gradient), axis=axes, keepdims=True))
        return x + step_size * gradient / (norms + 1e-8)

    step = compiled(fn, update)
    return lambda x: step(_floating(x) if isinstance(x, np.ndarray) else x)
