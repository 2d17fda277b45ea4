"""Activation maps (Chollet's listings 5.25-5.31): what every conv layer makes of one image."""

from __future__ import annotations

import keras
import numpy as np

from pipeline.explain.graph import ExplainError, conv_layer_names, multi_activation_model


def activation_maps(
    model: keras.Model, image_uint8: np.ndarray, max_channels: int = 16
) -> dict[str, np.ndarray]:
    """Conv layer name -> its activation (h, w, channels) for one image, at most `max_channels`
    channels each, nested models' conv layers included, all from one forward pass."""
    names = conv_layer_names(model)
    if not names:
        raise ExplainError(f"model {model.name!r} has no conv layer to show activations of")
    image = np.asarray(image_uint8)
    if image.ndim == len(model.inputs[0].shape) - 1:
        image = image[None]
    outputs = multi_activation_model(model, names)(image, training=False)
    return {
        name: keras.ops.convert_to_numpy(outputs[name])[0, ..., :max_channels] for name in names
    }
