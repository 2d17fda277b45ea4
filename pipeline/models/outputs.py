"""What a classifier's output layer means: one place for "one sigmoid unit is two classes".

A two-class model ends in one sigmoid unit (binary cross-entropy, as the course does); any
other model in a softmax over its classes. Numpy only: the served model (pipeline/serving/model.py)
ships this file with it, so it loads without the rest of the package.
"""

from __future__ import annotations

import numpy as np


def output_units(num_classes: int) -> int:
    """Units of the output layer for `num_classes` classes: 1 (a sigmoid) for two."""
    return 1 if num_classes == 2 else num_classes


def is_single_unit(output_shape) -> bool:
    """Whether an output of this shape is one sigmoid unit (the probability of class 1)."""
    return tuple(output_shape)[-1] == 1


def class_probabilities(outputs) -> np.ndarray:
    """One probability column per class, whatever the output layer: a two-class model's single
    sigmoid unit (the probability of class 1) becomes two columns, [1 - p, p]."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 2 and is_single_unit(outputs.shape):
        return np.hstack([1.0 - outputs, outputs])
    return outputs
