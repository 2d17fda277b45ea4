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
    """The course's random transforms (listing 5.11) as layers: Keras applies them only in
    training, so at inference they are the identity. None (augmentation off) adds nothing."""
    if augmentation is None:
        return x
    fill_mode = augmentation.fill_mode
    if augmentation.rotation > 0:
        x = layers.RandomRotation(
            augmentation.rotation / 360.0, fill_mode=fill_mode, name="random_rotation"
        )(x)
    if augmentation.width_shift > 0 or augmentation.height_shift > 0:
        x = layers.RandomTranslation(
            augmentation.height_shift,
            augmentation.width_shift,
            fill_mode=fill_mode,
            name="random_translation",
        )(x)
    if augmentation.shear > 0:
        # A one-sided range: Keras 3.15's RandomShear stores a symmetric factor as
        # [-s, s] in its config and then refuses the negative bound when the saved model is
        # loaded. With the horizontal flip, the flipped images cover the other sign.
        x = layers.RandomShear(
            (0.0, augmentation.shear),
            (0.0, augmentation.shear),
            fill_mode=fill_mode,
            name="random_shear",
        )(x)
    if augmentation.zoom > 0:
        x = layers.RandomZoom(augmentation.zoom, fill_mode=fill_mode, name="random_zoom")(x)
    if augmentation.horizontal_flip:
        x = layers.RandomFlip("horizontal", name="random_flip")(x)
    return x
