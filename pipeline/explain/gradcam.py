"""Grad-CAM (Chollet's listings 5.42-5.44; the keras-io Grad-CAM example): where in the image
the evidence for a class lies, as seen by a conv layer.

The gradient of the class score with respect to the layer's activation, averaged over space,
weighs each channel; the ReLU of the weighted sum of channels is the heatmap. The model is cut
at the layer with the public functional API (`graph.cut_at_layer`), so the gradient is taken with
respect to a plain input of what follows it: that works for a layer inside a model's base, on
TensorFlow and on JAX alike (no GradientTape on an inner tensor, which only TensorFlow has).
"""

from __future__ import annotations

import keras
import numpy as np
from PIL import Image

from pipeline.datasets.images import as_uint8_images
from pipeline.explain.gradients import value_and_gradient
from pipeline.explain.graph import Cut, ExplainError, cut_at_layer, gradcam_layer_name
from pipeline.models.outputs import class_probabilities, is_single_unit

BATCH_SIZE = 32


def _class_scores(logits, class_indices: np.ndarray):
    """Each sample's score for its class: its logit. A single sigmoid unit's logit z answers
    "class 1": class 1 scores z, class 0 scores -z (the evidence against class 1)."""
    if is_single_unit(logits.shape):
        sign = keras.ops.convert_to_tensor((2 * class_indices - 1).astype("float32"))
        return sign * logits[:, 0]
    one_hot = keras.ops.one_hot(class_indices, logits.shape[-1], dtype=logits.dtype)
    return keras.ops.sum(logits * one_hot, axis=-1)


def _logits_function(cut: Cut):
    """activation -> class logits. Scores are taken before the softmax or sigmoid (as keras-io
    does): a confident model's probabilities saturate at 0 or 1, where their gradient vanishes
    into rounding noise. A model ending otherwise is scored on its output as it is."""
    last = cut.rest[-1] if cut.rest else None
    squashing = (keras.activations.softmax, keras.activations.sigmoid)
    if not isinstance(last, keras.layers.Dense) or last.activation not in squashing:
        head_model = cut.head()
        return lambda features: head_model(features, training=False)
    penultimate = cut.head(cut.rest[:-1], name="explain_penultimate")

    def logits(features):
        hidden = penultimate(features, training=False)
        return keras.ops.matmul(hidden, last.kernel) + last.bias

    return logits


def grad_cam(
    model: keras.Model,
    images_uint8: np.ndarray,
    class_indices: np.ndarray | None = None,
    layer_name: str | None = None,
) -> np.ndarray:
    """Heatmaps (N, h, w), floats in [0, 1], at `layer_name`'s resolution.

    `layer_name` defaults to the last conv layer (`gradcam_layer_name`); `class_indices` to the
    predicted classes. Class scores are logits (see `_logits_function`); for a single sigmoid
    unit, class 1 scores its logit z and class 0 scores -z. An image with no positive evidence
    gets an all-zero heatmap.
    """
    images = np.asarray(images_uint8)
    if images.ndim == 3:
        images = images[None]
    layer_name = layer_name or gradcam_layer_name(model)
    cut = cut_at_layer(model, layer_name)
    features_model, head_model = cut.features, cut.head()
    if len(features_model.outputs[0].shape) != 4:
        raise ExplainError(
            f"Grad-CAM needs a layer with a (height, width, channels) output; {layer_name!r} "
            f"gives {features_model.outputs[0].shape}"
        )
    logits = _logits_function(cut)
    heatmaps = []
    for start in range(0, len(images), BATCH_SIZE):
        batch = images[start : start + BATCH_SIZE]
        activations = keras.ops.convert_to_numpy(features_model(batch, training=False))
        activations = activations.astype("float32")
        if class_indices is None:
            predictions = keras.ops.convert_to_numpy(head_model(activations, training=False))
            chosen = class_probabilities(predictions).argmax(axis=-1)
        else:
            chosen = np.asarray(class_indices)[start : start + BATCH_SIZE].astype("int64")

        def score(features, chosen=chosen):
            return _class_scores(logits(features), chosen)

        _, gradients = value_and_gradient(score, activations)
        weights = gradients.mean(axis=(1, 2))  # One weight per channel and image.
        heatmap = np.maximum(np.einsum("nhwc,nc->nhw", activations, weights), 0.0)
        peak = heatmap.max(axis=(1, 2), keepdims=True)
        heatmaps.append(np.divide(heatmap, peak, out=np.zeros_like(heatmap), where=peak > 0))
    return np.concatenate(heatmaps).astype("float32")


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) heatmap resized (bilinear) to (height, width) = `size`."""
    image = Image.fromarray(np.asarray(heatmap, dtype="float32"), mode="F")
    return np.asarray(image.resize((size[1], size[0]), Image.BILINEAR), dtype="float32")


def superimpose(image_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image (gray or RGB) with the heatmap in the jet colormap over it: uint8 (H, W, 3)."""
    from matplotlib import colormaps

    image = as_uint8_images(image_uint8, "image", batch=False, channels=3)
    resized = np.clip(resize_heatmap(heatmap, image.shape[:2]), 0.0, 1.0)
    colored = colormaps["jet"](resized)[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype("float32") + alpha * colored
    return np.clip(np.rint(blended), 0, 255).astype("uint8")
