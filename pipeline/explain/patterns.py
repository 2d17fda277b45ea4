"""Filter patterns (Chollet's listings 5.32-5.39; keras-io "visualizing what convnets learn"):
the input image each filter answers most strongly to, found by gradient ascent in input space.

All the filters of a layer are optimized in one batch, image i for filter i, by one compiled
step function (gradients.compile_ascent_step): a layer costs one trace and `steps` forward and
backward passes, however many filters are drawn.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from pipeline.explain.gradients import compile_ascent_step
from pipeline.explain.graph import ExplainError

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
"""What the ascent computes in (evaluate.patterns.precision, resolved)."""

# The border of an activation map sees padding more than image: keras-io leaves it out of the
# loss so patterns do not pile up at the edges.
BORDER = 2


def _filter_losses(activation_model: keras.Model, one_hot: np.ndarray):
    """Batch -> each image's mean activation of its own filter (border left out)."""

    def loss(images):
        # Summed in float32 whatever the model computes in (bfloat16 keeps 8 bits).
        activations = keras.ops.cast(activation_model(images, training=False), "float32")
        if len(activations.shape) == 4 and min(activations.shape[1:3]) > 2 * BORDER + 1:
            activations = activations[:, BORDER:-BORDER, BORDER:-BORDER, :]
        mask = keras.ops.convert_to_tensor(one_hot, dtype=activations.dtype)
        mask = keras.ops.reshape(
            mask, (mask.shape[0],) + (1,) * (len(activations.shape) - 2) + (mask.shape[-1],)
        )
        per_position = keras.ops.sum(activations * mask, axis=-1)
        return keras.ops.mean(per_position, axis=tuple(range(1, len(per_position.shape))))

    return loss


def _input_space(activation_model: keras.Model) -> tuple[float, float]:
    """(grey, scale) of the model's input space. A model that starts by rescaling (raw pixels:
    Rescaling(1/255)) takes values in [0, 1/scale]: grey is half of that, and noise and steps
    grow with it, so one step size fits raw pixels and [0, 1] inputs alike. Otherwise the
    input is taken as centred with unit scale (keras-io's setting, a backbone's input)."""
    first = next(
        (
            layer
            for layer in activation_model.layers
            if not isinstance(layer, keras.layers.InputLayer)
        ),
        None,
    )
    if isinstance(first, keras.layers.Rescaling) and np.ndim(first.scale) == 0 and first.scale > 0:
        scale = 1.0 / float(first.scale)
        return 0.5 * scale - float(first.offset) * scale, scale
    return 0.0, 1.0


def in_precision(model: keras.Model, precision: str) -> keras.Model:
    """`model` itself for float32; for bfloat16, a copy with the same weights whose layers
    compute in bfloat16 (Keras' mixed_bfloat16: float32 variables, bfloat16 arithmetic). Its
    input stays float32, so the images being optimized and each step stay float32."""
    if precision == "float32":
        return model
    if precision not in PRECISIONS:
        raise ExplainError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")

    def recompute(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return layer.__class__.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})

    copy = keras.models.clone_model(model, clone_function=recompute)
    copy.set_weights(model.get_weights())
    return copy


def gradient_ascent(
    activation_model: keras.Model,
    filter_indices: list[int],
    steps: int = 30,
    step_size: float = 10.0,
    seed: int = 0,
    precision: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """(start, optimized): float images (k, H, W, C) in the activation model's input space,
    grey noise at first, then moved `steps` times along each image's L2-normalized gradient
    (`step_size` in units of a [0, 1] image when the model rescales raw pixels), the model
    computing in `precision` (float32 or bfloat16: see `in_precision`)."""
    channels = int(activation_model.outputs[0].shape[-1])
    bad = [index for index in filter_indices if not 0 <= index < channels]
    if bad or not filter_indices:
        raise ExplainError(
            f"filter indices {bad or filter_indices} are not filters of "
            f"{activation_model.name!r}, which has {channels} (0 to {channels - 1})"
        )
    shape = tuple(int(side) for side in activation_model.inputs[0].shape[1:])
    center, scale = _input_space(activation_model)
    rng = np.random.default_rng(seed)
    # keras-io's start: faint noise around a grey image, in the model's input space.
    noise = (rng.random((len(filter_indices), *shape)) - 0.5) * 0.25 * scale
    start = (center + noise).astype("float32")
    one_hot = np.eye(channels, dtype="float32")[filter_indices]
    try:
        computing = in_precision(activation_model, precision)
    except ExplainError:
        raise  # an unknown precision
    except (TypeError, ValueError) as error:
        # A layer that cannot be rebuilt in another dtype (a custom layer's config): the
        # patterns are still drawn, in float32.
        logger.warning(
            "filter patterns of %r in float32, not %s: %s", activation_model.name, precision, error
        )
        computing = activation_model
    step = compile_ascent_step(_filter_losses(computing, one_hot), step_size * scale)
    images = start
    for _ in range(steps):
        images = step(images)
    return start, np.asarray(keras.ops.convert_to_numpy(images), dtype="float32")


def deprocess_image(image: np.ndarray) -> np.ndarray:
    """A float image -> uint8 for display: centred, scaled to a std of 0.15 around 0.5, clipped."""
    image = np.asarray(image, dtype="float64")
    image = image - image.mean()
    image = image / (image.std() + 1e-5) * 0.15 + 0.5
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype("uint8")


def filter_patterns(
    activation_model: keras.Model,
    filter_indices: list[int],
    steps: int = 30,
    step_size: float = 10.0,
    seed: int = 0,
    precision: str = "float32",
) -> np.ndarray:
    """One pattern (H, W, C) uint8 per filter index: (k, H, W, C), in the activation model's
    input shape (build it with `activation_model(..., input_shape=...)`)."""
    _, optimized = gradient_ascent(
        activation_model, filter_indices, steps, step_size, seed, precision
    )
    return np.stack([deprocess_image(image) for image in optimized])
