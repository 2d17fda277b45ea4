"""Scratch architectures, by name: each entry is a builder and the check of what it can build.

Adding an architecture is one `Architecture` entry and its builder. The checks are plain
arithmetic, importable without Keras, so `check_params` rejects an impossible model before DVC
deletes anything; the builders import Keras when they really build.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.config import AugmentationConfig
from pipeline.errors import ModelError


@dataclass(frozen=True)
class Architecture:
    """A scratch network: `build(input_shape, num_classes, **options)` -> a Keras model, and
    `check(input_shape, **options)`, which raises ModelError for what `build` cannot make."""

    name: str
    build: Callable[..., object]
    check: Callable[..., None]


def check_pooling_blocks(input_shape: Sequence[int], blocks: int) -> None:
    """Each 2x2 pooling halves the image: `blocks` of them need a side of 2**blocks."""
    smallest_side = min(input_shape[:2])
    if smallest_side < 2**blocks:
        raise ModelError(
            f"{blocks} conv blocks, each halving the image, need images of at least "
            f"{2**blocks}x{2**blocks}, but these are {input_shape[0]}x{input_shape[1]}: use at "
            f"most {int(math.log2(smallest_side))} blocks"
        )


def check_small_convnet(input_shape: Sequence[int], conv_filters: Sequence[int], **_) -> None:
    check_pooling_blocks(input_shape, len(conv_filters))


def build_small_convnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    conv_filters: list[int],
    dense_units: int,
    dropout_rate: float,
    augmentation: AugmentationConfig | None = None,
):
    """Chollet's small convnet: Conv-MaxPool blocks, a dense layer, dropout, softmax."""
    import keras
    from keras import layers

    from pipeline.models.heads import classifier_head
    from pipeline.models.preprocessing import augment, rescale

    check_small_convnet(input_shape, conv_filters)
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = augment(rescale(inputs), augmentation)
    for index, filters in enumerate(conv_filters, start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{index}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = classifier_head(x, num_classes, dense_units, dropout_rate)
    return keras.Model(inputs, outputs, name="scratch_cnn")


ARCHITECTURES: dict[str, Architecture] = {
    architecture.name: architecture
    for architecture in (
        Architecture("small_convnet", build=build_small_convnet, check=check_small_convnet),
    )
}
DEFAULT_ARCHITECTURE = "small_convnet"
