"""Augmentation: the course's settings as layers inside the model, on only in training."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config import AugmentationConfig, PipelineConfig
from pipeline.datasets.sources import DATASETS
from pipeline.models.preprocessing import augment


def _augmenter(config: AugmentationConfig | None) -> keras.Model:
    inputs = keras.Input(shape=(32, 32, 3))
    return keras.Model(inputs, augment(inputs, config))


def _images() -> np.ndarray:
    # Smooth gradients, so that every transform moves pixel values.
    ramp = np.linspace(0, 255, 32, dtype="float32")
    image = np.stack([*np.meshgrid(ramp, ramp[::-1]), np.full((32, 32), 128.0)], axis=-1)
    return np.repeat(image[None], 4, axis=0).astype("float32")


def test_the_course_settings_are_the_defaults() -> None:
    config = AugmentationConfig()
    assert (config.rotation, config.width_shift, config.height_shift) == (40.0, 0.2, 0.2)
    assert (config.shear, config.zoom, config.horizontal_flip) == (0.2, 0.2, True)
    assert config.fill_mode == "nearest"
    names = [layer.name for layer in _augmenter(config).layers[1:]]
    assert names == [
        "random_rotation",
        "random_translation",
        "random_shear",
        "random_zoom",
        "random_flip",
    ]


@pytest.mark.parametrize(
    "setting",
    [
        {"rotation": 40.0},
        {"width_shift": 0.2},
        {"height_shift": 0.2},
        {"shear": 0.2},
        {"zoom": 0.2},
        {"horizontal_flip": True},
    ],
)
def test_each_setting_changes_images_in_training_and_nothing_at_inference(setting) -> None:
    off = {
        "rotation": 0.0,
        "width_shift": 0.0,
        "height_shift": 0.0,
        "shear": 0.0,
        "zoom": 0.0,
        "horizontal_flip": False,
    }
    model = _augmenter(AugmentationConfig(**{**off, **setting}))
    images = _images()
    keras.utils.set_random_seed(0)
    changed = [
        not np.allclose(keras.ops.convert_to_numpy(model(images, training=True)), images)
        for _ in range(4)
    ]
    assert any(changed), f"{setting} never changed an image in training"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images, training=False)), images)
    np.testing.assert_array_equal(model.predict(images, verbose=0), images)


def test_auto_is_off_for_digit_datasets_only() -> None:
    config = AugmentationConfig()
    assert config.resolve(DATASETS["digits"].augment_by_default) is None
    assert config.resolve(DATASETS["mnist"].augment_by_default) is None
    assert config.resolve(DATASETS["cats_vs_dogs"].augment_by_default) is config
    assert AugmentationConfig(enabled=True).resolve(False) is not None
    assert AugmentationConfig(enabled=False).resolve(True) is None


def test_cached_features_cannot_be_augmented() -> None:
    block = {"epochs": 1, "augmentation": {"enabled": True}}
    train = {"scratch": {"epochs": 1}, "fine_tune": {"epochs": 1}}
    with pytest.raises(ValueError, match="mode cached.*cannot be augmented.*end_to_end"):
        PipelineConfig.model_validate({"train": {**train, "feature_extraction": block}})
    PipelineConfig.model_validate(
        {"train": {**train, "feature_extraction": {**block, "mode": "end_to_end"}}}
    )
