"""Classifier heads, and the transfer-learning models assembled from named sub-models.

A transfer-learning model (fine_tune, and feature_extraction in either mode) is three
functional sub-models in a row:

    image (raw uint8) -> `preprocessing` -> the base -> `head` -> class probabilities

- `preprocessing` (PREPROCESSING): raw pixels to the backbone's input: to float, gray to RGB,
  resizing, augmentation (active in training only), the backbone's own preprocessing.
- the base: the backbone, under its own Keras name (vgg16, resnet50, mobilenetv2_1.00_<size>),
  called with `training=False`.
- `head` (HEAD): the base's feature maps to probabilities: flatten, dense, dropout, output.

Named parts let the explanations reach a layer inside the base with the public functional API
(`model_parts`). Every model takes raw uint8 images, and only built-in layers are used, so a
saved model loads with plain Keras, without this package.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from pipeline.config import AugmentationConfig
from pipeline.errors import ModelError
from pipeline.models.backbones import Backbone
from pipeline.models.outputs import output_units
from pipeline.models.preprocessing import augment, to_backbone_input

PREPROCESSING = "preprocessing"
"""The name of the sub-model from raw uint8 images to the backbone's input."""
HEAD = "head"
"""The name of the sub-model from the base's feature maps to class probabilities."""


@dataclass(frozen=True)
class ModelParts:
    """The three sub-models of an assembled model, in the order data goes through them."""

    preprocessing: keras.Model
    base: keras.Model
    head: keras.Model

    def in_order(self) -> tuple[keras.Model, keras.Model, keras.Model]:
        return (self.preprocessing, self.base, self.head)


def model_parts(model: keras.Model) -> ModelParts | None:
    """The parts of a model assembled here (`preprocessing`, the base, `head`), or None for
    any other model: a flat scratch model, or one saved before models had named parts."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 3 or nested[0].name != PREPROCESSING or nested[2].name != HEAD:
        return None
    return ModelParts(*nested)


def output_layer(x, num_classes: int):
    """One sigmoid unit for two classes (binary cross-entropy, as the course does), else a
    softmax (`outputs.output_units`). Always float32, so mixed precision never rounds the
    probabilities."""
    units = output_units(num_classes)
    activation = "sigmoid" if units == 1 else "softmax"
    return layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)


def classifier_head(x, num_classes: int, dense_units: int, dropout_rate: float):
    """Dense, dropout, output: the head every transfer-learning strategy ends with."""
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(dropout_rate, name="dropout")(x)
    return output_layer(x, num_classes)


def build_preprocessing(
    input_shape: tuple[int, int, int],
    backbone: Backbone,
    image_size: int,
    augmentation: AugmentationConfig | None = None,
) -> keras.Model:
    """The `preprocessing` sub-model: raw uint8 images -> the base's input (`image_size`
    squared, RGB, the backbone's preprocessing); augmentation runs before that preprocessing."""
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = to_backbone_input(inputs, image_size)
    x = augment(x, augmentation)
    x = backbone.preprocess(x)
    return keras.Model(inputs, x, name=PREPROCESSING)


def build_feature_head(
    feature_shape: tuple[int, ...], num_classes: int, dense_units: int, dropout_rate: float
) -> keras.Model:
    """The `head` sub-model: flatten the base's feature maps, then `classifier_head`. Trained
    alone on cached features (feature_extraction, mode cached) or inside the whole model."""
    inputs = keras.Input(shape=feature_shape, name="features")
    x = layers.Flatten(name="flatten")(inputs)
    outputs = classifier_head(x, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name=HEAD)


def _assemble(
    preprocessing: keras.Model, base: keras.Model, head: keras.Model, name: str
) -> keras.Model:
    """Raw uint8 images -> preprocessing -> base (inference mode) -> head."""
    inputs = keras.Input(shape=preprocessing.input_shape[1:], dtype="uint8", name="image")
    features = base(preprocessing(inputs), training=False)
    return keras.Model(inputs, head(features), name=name)


def build_feature_extractor(
    input_shape: tuple[int, int, int], backbone: Backbone, base: keras.Model
) -> keras.Model:
    """Raw uint8 images -> conv-base features: the `preprocessing` sub-model, then the base."""
    preprocessing = build_preprocessing(input_shape, backbone, base.input_shape[1])
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    features = base(preprocessing(inputs), training=False)
    return keras.Model(inputs, features, name=f"{backbone.name}_feature_extractor")


def assemble_feature_extraction_model(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """The extractor's preprocessing and base, then the head: the model saved for
    `feature_extraction`, taking raw images, with the same three parts as fine_tune's.

    The extractor is marked frozen, as it was in training (only the head learnt): so the
    saved model's trainable parameters are the head's, and a later fit cannot move the base.
    """
    extractor.trainable = False
    nested = [layer for layer in extractor.layers if isinstance(layer, keras.Model)]
    if len(nested) != 2 or nested[0].name != PREPROCESSING:
        raise ModelError(
            f"{extractor.name!r} is not a feature extractor from build_feature_extractor "
            f"(its preprocessing sub-model, then the base); it holds {[m.name for m in nested]}"
        )
    preprocessing, base = nested
    return _assemble(preprocessing, base, head, name="feature_extraction")


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
    """The base between `preprocessing` (with augmentation) and a new `head`.

    The base is called with `training=False`, so its BatchNormalization layers stay in
    inference mode even once unfrozen (the Keras transfer-learning guide's advice: updating
    their statistics on a small dataset would wreck what the base learnt). Also the model of
    `feature_extraction` in mode end_to_end, with the base kept frozen.
    """
    # Preprocessing first, then the head: the order the layers were always created in, so a
    # seed gives the same initial weights (and augmentation draws) as before.
    preprocessing = build_preprocessing(input_shape, backbone, base.input_shape[1], augmentation)
    head = build_feature_head(tuple(base.output.shape[1:]), num_classes, dense_units, dropout_rate)
    return _assemble(preprocessing, base, head, name=name)


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


@dataclass(frozen=True)
class FrozenCut:
    """An assembled model cut in two where its frozen layers end, sharing its layers:

        image -> `below` -> activations at the cut -> `above` -> class probabilities

    `above(below(x))` computes what the model computes, in inference mode for the base as in
    the model. Training `above` trains the model's own weights."""

    below: keras.Model
    above: keras.Model
    layer: str | None
    """The first layer above the cut (None: the cut is the base's output)."""
    base_above: keras.Model | None = None
    """The base's layers above the cut (None when the cut is the base's output)."""
    head: keras.Model | None = None
    """The model's `head` sub-model."""

    def at_head(self) -> FrozenCut:
        """The cut moved up to the base's output: `below` takes this cut's activations to the
        base's outputs, `above` is the head (itself when the cut is there already)."""
        if self.base_above is None:
            return self
        activations = keras.Input(shape=tuple(self.above.input_shape[1:]), name="activations")
        below = keras.Model(
            activations,
            self.base_above(activations, training=False),
            name=f"{self.base_above.name}_outputs",
        )
        return FrozenCut(below=below, above=self.head, layer=None, head=self.head)


def cut_below(model: keras.Model, first_layer: str | None) -> FrozenCut | None:
    """`model` (assembled here) cut at the input of the base's layer `first_layer`, or at the
    base's output when None; None when `model` has no named parts or that input does not cut
    the base's graph in two (a residual connection crossing it)."""
    parts = model_parts(model)
    if parts is None:
        return None
    preprocessing, base, head = parts.in_order()
    image = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name="image")
    upper = None
    if first_layer is None:
        below_output = base(preprocessing(image), training=False)
        cut = keras.Input(shape=tuple(base.output.shape[1:]), name="activations")
        above_output = head(cut)
    else:
        layer_input = base.get_layer(first_layer).input
        if not isinstance(layer_input, keras.KerasTensor) or layer_input is base.inputs[0]:
            return None
        try:
            lower = keras.Model(base.input, layer_input, name=f"{base.name}_below_{first_layer}")
            upper = keras.Model(layer_input, base.output, name=f"{base.name}_from_{first_layer}")
        except ValueError:
            return None
        below_output = lower(preprocessing(image), training=False)
        cut = keras.Input(shape=tuple(layer_input.shape[1:]), name="activations")
        above_output = head(upper(cut, training=False))
    where = first_layer or "head"
    return FrozenCut(
        below=keras.Model(image, below_output, name=f"{model.name}_below_{where}"),
        above=keras.Model(cut, above_output, name=f"{model.name}_from_{where}"),
        layer=first_layer,
        base_above=upper,
        head=head,
    )
