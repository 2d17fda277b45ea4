"""Grad-CAM where the answer is known, under the Keras backend this process was started with
(KERAS_BACKEND); prints what a test checks, as JSON on the last line.

The images are gray noise with at most one white shape, a horizontal or a vertical bar, anywhere:
the shape is the class. A tiny CNN learns that in seconds, and its Grad-CAM heatmap must then
peak on the shape. Run in-process by tests/model/test_gradcam.py for the backend pytest runs
on, and as a subprocess for the other (Keras picks its backend once, at import).
"""

from __future__ import annotations

import json

import keras
import numpy as np
from keras import layers

from pipeline.explain.activations import activation_maps
from pipeline.explain.gradcam import grad_cam, resize_heatmap
from pipeline.explain.graph import activation_model
from pipeline.explain.patterns import filter_patterns
from pipeline.models.backbones import BACKBONES
from pipeline.models.heads import build_fine_tune_model, model_parts, output_layer

SIZE = 32
MARGIN = 3  # pixels around a shape where a heatmap's peak still counts as on it
# The white shape of class k (height, width), for k = 1, 2. Class 0 has none: without it a
# network could make one class "none of the others", whose evidence would be an absence,
# with nowhere for a heatmap to point.
SHAPES = [(3, 10), (10, 3)]


def shape_images(
    count: int, shapes: int, seed: int, noise: int = 60
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, boxes): gray noise below `noise` (N, 32, 32, 1) uint8, class k > 0 with
    the white shape SHAPES[k - 1] somewhere, class 0 with none; boxes (N, 4) are the shapes'
    (top, left, bottom, right), -1 for class 0."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, noise, size=(count, SIZE, SIZE, 1)).astype("uint8")
    labels = rng.integers(0, shapes + 1, size=count)
    boxes = np.full((count, 4), -1, dtype="int64")
    for index, label in enumerate(labels):
        if label == 0:
            continue
        height, width = SHAPES[label - 1]
        top = rng.integers(2, SIZE - height - 2)
        left = rng.integers(2, SIZE - width - 2)
        images[index, top : top + height, left : left + width] = 255
        boxes[index] = (top, left, top + height, left + width)
    return images, labels.astype("int64"), boxes


def peaks_on_shape(heatmaps: np.ndarray, boxes: np.ndarray) -> float:
    """The fraction of heatmaps whose peak, resized to the image, lies on the shape (within
    MARGIN pixels of its box); an all-zero heatmap is a miss."""
    hits = 0
    for heatmap, (top, left, bottom, right) in zip(heatmaps, boxes, strict=True):
        if heatmap.max() <= 0:
            continue  # No evidence anywhere: its argmax (the top-left pixel) means nothing.
        row, column = np.unravel_index(
            np.argmax(resize_heatmap(heatmap, (SIZE, SIZE))), (SIZE, SIZE)
        )
        hits += (top - MARGIN <= row < bottom + MARGIN) and (
            left - MARGIN <= column < right + MARGIN
        )
    return hits / len(boxes)


def tiny_cnn(num_classes: int) -> keras.Model:
    """Conv, pool, conv, global average pooling, output: the classic Grad-CAM setting (the
    class evidence of each position adds up, wherever the shape is)."""
    inputs = keras.Input(shape=(SIZE, SIZE, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    return keras.Model(inputs, output_layer(x, num_classes), name="tiny_cnn")


def shape_localization(shapes: int, seed: int = 0) -> dict:
    """Train the tiny CNN on shape images (one sigmoid unit when `shapes` is 1); its test
    accuracy and Grad-CAM's hit rate on the images with a shape. `against_rate`: the same for
    the heatmaps of class 0 (no shape), which must not point at the shape."""
    num_classes = shapes + 1
    keras.utils.set_random_seed(seed)
    train_x, train_y, _ = shape_images(1200, shapes, seed)
    test_x, test_y, boxes = shape_images(120, shapes, seed + 1)
    model = tiny_cnn(num_classes)
    binary = num_classes == 2
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train_x, train_y, epochs=6, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(test_x, test_y, verbose=0)
    shown = test_y > 0
    heatmaps = grad_cam(model, test_x[shown], class_indices=test_y[shown])
    against = grad_cam(model, test_x[shown], class_indices=np.zeros(shown.sum(), "int64"))
    return {
        "accuracy": float(accuracy),
        "hit_rate": peaks_on_shape(heatmaps, boxes[shown]),
        "against_rate": peaks_on_shape(against, boxes[shown]),
        "finite": bool(np.isfinite(heatmaps).all()),
        "range": [float(heatmaps.min()), float(heatmaps.max())],
    }


def nested_heatmaps() -> dict:
    """Grad-CAM, activation maps and a filter pattern through a fine-tune model's VGG16 base
    (random weights) at 32x32, each reached with the public functional API."""
    keras.utils.set_random_seed(0)
    backbone = BACKBONES["vgg16"]
    model = build_fine_tune_model((SIZE, SIZE, 1), 3, backbone, backbone.build(SIZE, None), 8, 0.1)
    images, _, _ = shape_images(4, 2, seed=2)
    heatmaps = grad_cam(model, images)
    maps = activation_maps(model, images[0], max_channels=2)
    base = model_parts(model).base
    patterns = filter_patterns(
        activation_model(base, "block2_conv1", (40, 40, 3), "float32"), [0, 1], steps=2
    )
    return {
        "shape": list(heatmaps.shape),
        "finite": bool(np.isfinite(heatmaps).all()),
        "last_activation": list(maps["block5_conv3"].shape),
        "patterns": list(patterns.shape),
    }


def main() -> None:
    result = {
        "backend": keras.backend.backend(),
        "softmax": shape_localization(2),
        "sigmoid": shape_localization(1),
        "nested": nested_heatmaps(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
