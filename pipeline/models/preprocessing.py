"""Preprocessing and augmentation as Keras layers, inside every model: a saved model takes raw
uint8 images, and augmentation runs only in training."""

from __future__ import annotations

from keras import layers

from pipeline.config import AugmentationConfig


def rescale(inputs):
    """uint8 in [0, 255] -> floats in [0, 1]."""
    return layers.Rescaling(1.0 / 255, name="rescale")(inputs)


def to_backbone_input(inputs, image_size: int):
    """uint8 -> float in [0, 255], gray -> RGB, and resize to the backbone's input size."""
    x = layers.Rescaling(1.0, name="to_float")(inputs)
    if inputs.shape[-1] == 1:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    if tuple(inputs.shape[1:3]) != (image_size, image_size):
        x = layers.Resizing(image_size, image_size, name="resize_to_backbone")(x)
    return x


def augment(x, augmentation: AugmentationConfig | None):
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
