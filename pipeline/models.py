"""Keras 3 functional model builders for the three strategies.

Every model takes raw uint8 images: rescaling, gray to RGB, resizing to the backbone's input,
VGG16's preprocessing and augmentation are layers inside the model, so a saved model is used
the same way in MLflow, in `mlflow.pyfunc` and in tests. Only built-in layers are used, so a
saved model loads with plain Keras, without this package.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from pipeline.config import AugmentationConfig
from pipeline.errors import ConfigError

# `keras.applications.vgg16.preprocess_input` ("caffe" mode): RGB -> BGR, minus ImageNet's mean.
VGG16_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_RGB_TO_BGR = np.eye(3, dtype=np.float32)[::-1]


def build_scratch_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    conv_filters: list[int],
    dense_units: int,
    dropout_rate: float,
    augmentation: AugmentationConfig | None = None,
) -> keras.Model:
    """Chollet's small convnet: Conv-MaxPool blocks, a dense layer, dropout, softmax."""
    smallest_side = min(input_shape[:2])
    if smallest_side < 2 ** len(conv_filters):
        raise ConfigError(
            f"train.scratch.conv_filters has {len(conv_filters)} conv blocks, each halving the "
            f"image, but the images are only {input_shape[0]}x{input_shape[1]}: use at most "
            f"{int(np.log2(smallest_side))} blocks"
        )
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = _augment(x, augmentation)
    for index, filters in enumerate(conv_filters, start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = _classifier_head(x, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def build_vgg16_base(image_size: int, weights_file: str | None) -> keras.Model:
    """VGG16's convolutional base at `image_size`; ImageNet or file weights, or random init."""
    base = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    if weights_file is not None:
        base.load_weights(weights_file)
    return base


def build_feature_extractor(input_shape: tuple[int, int, int], base: keras.Model) -> keras.Model:
    """Raw uint8 images -> VGG16 conv-base features, with VGG16's preprocessing inside."""
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = _to_backbone_input(inputs, base.input_shape[1])
    x = _vgg16_preprocess(x)
    features = base(x, training=False)
    return keras.Model(inputs, features, name="vgg16_feature_extractor")


def build_feature_head(
    feature_shape: tuple[int, ...], num_classes: int, dense_units: int, dropout_rate: float
) -> keras.Model:
    """The dense classifier trained on cached conv-base features."""
    inputs = keras.Input(shape=feature_shape, name="features")
    x = layers.Flatten(name="flatten")(inputs)
    outputs = _classifier_head(x, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name="feature_head")


def assemble_feature_extraction_model(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """Extractor then head: the model saved for `feature_extraction`, taking raw images."""
    inputs = keras.Input(shape=extractor.input_shape[1:], dtype="uint8", name="image")
    outputs = head(extractor(inputs, training=False))
    return keras.Model(inputs, outputs, name="feature_extraction")


def build_fine_tune_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    base: keras.Model,
    dense_units: int,
    dropout_rate: float,
    augmentation: AugmentationConfig | None = None,
) -> keras.Model:
    """VGG16's base with a new head; augmentation runs before VGG16's preprocessing."""
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = _to_backbone_input(inputs, base.input_shape[1])
    x = _augment(x, augmentation)
    x = _vgg16_preprocess(x)
    x = base(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = _classifier_head(x, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name="fine_tune")


def set_trainable_from(base: keras.Model, first_trainable: str | None) -> None:
    """Freeze `base` up to `first_trainable`, train it and every layer after; None freezes all."""
    names = [layer.name for layer in base.layers]
    if first_trainable is not None and first_trainable not in names:
        raise ConfigError(f"backbone.unfreeze_from={first_trainable!r} is not a layer of the base")
    base.trainable = first_trainable is not None
    trainable = False
    for layer in base.layers:
        trainable = trainable or layer.name == first_trainable
        layer.trainable = trainable


def _classifier_head(x, num_classes: int, dense_units: int, dropout_rate: float):
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="predictions")(x)


def _to_backbone_input(inputs, image_size: int):
    """uint8 -> float in [0, 255], gray -> RGB, and resize to the backbone's input size."""
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    if inputs.shape[-1] == 1:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    if tuple(inputs.shape[1:3]) != (image_size, image_size):
        x = layers.Resizing(image_size, image_size, name="resize_to_backbone")(x)
    return x


def _vgg16_preprocess(x):
    """`vgg16.preprocess_input` as a frozen 1x1 linear map (channel swap, mean subtraction).

    A built-in Dense layer keeps saved models loadable without custom objects.
    """
    layer = layers.Dense(3, trainable=False, name="vgg16_preprocess")
    outputs = layer(x)
    layer.set_weights([_RGB_TO_BGR.T.copy(), -VGG16_BGR_MEAN])
    return outputs


def _augment(x, augmentation: AugmentationConfig | None):
    """Random transforms as layers: Keras applies them only when training."""
    if augmentation is None:
        return x
    if augmentation.horizontal_flip:
        x = layers.RandomFlip("horizontal", name="random_flip")(x)
    if augmentation.rotation > 0:
        x = layers.RandomRotation(augmentation.rotation, name="random_rotation")(x)
    if augmentation.zoom > 0:
        x = layers.RandomZoom(augmentation.zoom, name="random_zoom")(x)
    if augmentation.translation > 0:
        x = layers.RandomTranslation(
            augmentation.translation, augmentation.translation, name="random_translation"
        )(x)
    return x
