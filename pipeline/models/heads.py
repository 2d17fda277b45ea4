"""Classifier heads, and the transfer-learning models assembled from a backbone and a head.

Every model takes raw uint8 images. Only built-in layers are used, so a saved model loads with
plain Keras, without this package.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.config import AugmentationConfig
from pipeline.errors import ModelError
from pipeline.models.backbones import Backbone
from pipeline.models.preprocessing import augment, to_backbone_input


def output_layer(x, num_classes: int):
    """One sigmoid unit for two classes (binary cross-entropy, as the course does), else a
    softmax. Always float32, so mixed precision never rounds the probabilities."""
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="predictions")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def classifier_head(x, num_classes: int, dense_units: int, dropout_rate: float):
    """Dense, dropout, output: the head every transfer-learning strategy ends with."""
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    return output_layer(x, num_classes)


def build_feature_extractor(
    input_shape: tuple[int, int, int], backbone: Backbone, base: keras.Model
) -> keras.Model:
    """Raw uint8 images -> conv-base features, with the backbone's preprocessing inside."""
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = to_backbone_input(inputs, base.input_shape[1])
    x = backbone.preprocess(x)
    features = base(x, training=False)
    return keras.Model(inputs, features, name=f"{backbone.name}_feature_extractor")


def build_feature_head(
    feature_shape: tuple[int, ...], num_classes: int, dense_units: int, dropout_rate: float
) -> keras.Model:
    """The dense classifier trained on cached conv-base features."""
    inputs = keras.Input(shape=feature_shape, name="features")
    x = layers.Flatten(name="flatten")(inputs)
    outputs = classifier_head(x, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name="feature_head")


def assemble_feature_extraction_model(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """Extractor then head: the model saved for `feature_extraction`, taking raw images.

    The extractor is marked frozen, as it was in training (only the head learnt): so the
    saved model's trainable parameters are the head's, and a later fit cannot move the base.
    """
    extractor.trainable = False
    inputs = keras.Input(shape=extractor.input_shape[1:], dtype="uint8", name="image")
    outputs = head(extractor(inputs, training=False))
    return keras.Model(inputs, outputs, name="feature_extraction")


def build_fine_tune_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    backbone: Backbone,
    base: keras.Model,
    dense_units: int,
    dropout_rate: float,
    augmentation: AugmentationConfig | None = None,
    name: str = "fine_tune",
) -> keras.Model:
    """The base with a new head; augmentation runs before the backbone's preprocessing.

    The base is called with `training=False`, so its BatchNormalization layers stay in
    inference mode even once unfrozen (the Keras transfer-learning guide's advice: updating
    their statistics on a small dataset would wreck what the base learnt). Also the model of
    `feature_extraction` in mode end_to_end, with the base kept frozen.
    """
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = to_backbone_input(inputs, base.input_shape[1])
    x = augment(x, augmentation)
    x = backbone.preprocess(x)
    x = base(x, training=False)
    x = layers.Flatten(name="flatten")(x)
    outputs = classifier_head(x, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name=name)


def set_trainable_from(base: keras.Model, first_trainable: str | None) -> None:
    """Freeze `base` up to `first_trainable`, train it and every layer after; None freezes all."""
    names = [layer.name for layer in base.layers]
    if first_trainable is not None and first_trainable not in names:
        raise ModelError(f"{first_trainable!r} is not a layer of the base {base.name!r}")
    base.trainable = first_trainable is not None
    trainable = False
    for layer in base.layers:
        trainable = trainable or layer.name == first_trainable
        layer.trainable = trainable
