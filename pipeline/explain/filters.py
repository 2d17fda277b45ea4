"""The first layer's filters (what a network learns to look for in raw pixels)."""

from __future__ import annotations

import keras
import numpy as np

from pipeline.explain.graph import ExplainError, conv_layer_names, find_layer


def first_conv_kernel(model: keras.Model) -> np.ndarray:
    """The kernel (kh, kw, in_channels, filters) of the first conv layer, nested included."""
    names = conv_layer_names(model)
    if not names:
        raise ExplainError(f"model {model.name!r} has no conv layer to take filters from")
    layer = find_layer(model, names[0])
    return np.asarray(keras.ops.convert_to_numpy(layer.kernel))
