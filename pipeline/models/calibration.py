"""Temperature scaling inside the model: the output layer's kernel and bias divided by T.

Every pipeline model ends in `Dense(..., activation softmax|sigmoid, name="predictions")`
(heads.output_layer), at its top level (scratch) or inside its `head` sub-model (transfer
learning). Dividing that layer's kernel and bias by T makes it compute softmax((Wx + b) / T),
the temperature-scaled probabilities, exactly: no new layer, so the saved model and the served
pyfunc load with plain Keras as before, and every probability they give is calibrated.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from pipeline.errors import ModelError

OUTPUT_LAYER = "predictions"
"""The output layer's name (heads.output_layer)."""
SCALABLE_ACTIVATIONS = ("softmax", "sigmoid")


def find_output_layer(model: keras.Model) -> keras.layers.Dense:
    """The Dense layer whose activation gives `model`'s probabilities: the last layer, looked
    for inside a last layer that is itself a model (the `head`). A ModelError when it is not a
    Dense with a softmax or sigmoid (temperature scaling divides its logits)."""
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.Model):
        return find_output_layer(last)
    if not isinstance(last, layers.Dense):
        raise ModelError(
            f"model {model.name!r} ends in {type(last).__name__} {getattr(last, 'name', '')!r}, "
            f"not a Dense output layer ({OUTPUT_LAYER!r}): temperature scaling needs its logits; "
            "set train.calibration: none for such a model"
        )
    activation = _activation_name(last)
    if activation not in SCALABLE_ACTIVATIONS:
        raise ModelError(
            f"the output layer {last.name!r} of model {model.name!r} has activation "
            f"{activation!r}; temperature scaling needs {' or '.join(SCALABLE_ACTIVATIONS)}"
        )
    return last


def logit_model(model: keras.Model) -> keras.Model:
    """A model from `model`'s inputs to its output layer's logits (Wx + b, before the softmax or
    sigmoid), sharing every layer below it: what the temperature is fitted on, exactly, where
    float32 probabilities would have rounded a confident sigmoid to 1."""
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.Model):
        # A nested model's `input` is its own Input, not the tensor it was called on: the outer
        # graph is rebuilt around the cut sub-model instead (clone_model keeps every other
        # layer, weights and all), as serving's feature_model does.
        inner = logit_model(last)
        return keras.models.clone_model(
            model, clone_function=lambda each: inner if each is last else each
        )
    output = find_output_layer(model)
    linear = layers.Dense(
        output.units,
        activation=None,
        use_bias=output.use_bias,
        dtype="float32",
        name=f"{output.name}_logits",
    )
    logits = linear(output.input)
    linear.set_weights(output.get_weights())
    return keras.Model(model.inputs, logits, name=f"{model.name}_logits")


def fold_temperature(model: keras.Model, temperature: float) -> None:
    """Divide the output layer's kernel and bias by `temperature`, in place: `model` then gives
    softmax(logits / T) (or sigmoid(logit / T)). The most probable class never changes."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float | np.number):
        raise ValueError(f"temperature must be a number, got {temperature!r}")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number above 0, got {temperature}")
    if temperature == 1.0:
        return
    output = find_output_layer(model)
    # In float64 and rounded once: W / T as float32 is the nearest float32 to the exact ratio.
    for variable in output.weights:
        value = np.asarray(keras.ops.convert_to_numpy(variable), dtype=np.float64)
        variable.assign((value / float(temperature)).astype(variable.dtype))


def _activation_name(layer: layers.Dense) -> str:
    activation = layer.activation
    return getattr(activation, "__name__", str(activation))
