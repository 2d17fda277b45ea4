"""Model builders: shapes, raw uint8 input, VGG16 preprocessing, freezing, portable saving."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.config import AugmentationConfig
from pipeline.errors import ModelError
from pipeline.models.backbones import BACKBONES, VGG16, check_backbone_input, check_backbone_layer
from pipeline.models.builders import build_small_convnet, check_pooling_blocks
from pipeline.models.heads import (
    assemble_feature_extraction_model,
    build_feature_extractor,
    build_feature_head,
    build_fine_tune_model,
    model_parts,
    set_trainable_from,
)
from tests.project import PROJECT_ROOT


@pytest.fixture(scope="module")
def base() -> keras.Model:
    keras.utils.set_random_seed(0)
    return VGG16.build(32, None)


def _images(shape: tuple[int, int, int], count: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(count, *shape), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_scratch_cnn_takes_raw_uint8_and_outputs_probabilities(shape) -> None:
    model = build_small_convnet(shape, 5, [32, 64], 64, 0.5, AugmentationConfig(rotation=0.1))
    assert model.input.dtype == "uint8"
    probabilities = model.predict(_images(shape), verbose=0)
    assert probabilities.shape == (3, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_scratch_cnn_refuses_more_blocks_than_the_image_allows() -> None:
    # The builder speaks of images and blocks, not of params keys (check_params maps those).
    with pytest.raises(ModelError, match="4 conv blocks.*at least 16x16.*8x8: use at most 3"):
        build_small_convnet((8, 8, 1), 10, [8, 16, 32, 64], 64, 0.5)
    check_pooling_blocks((8, 8, 1), 3)  # three halvings of 8 leave 1x1: allowed


def test_backbone_registry_layer_names_are_the_built_models() -> None:
    """The layer names check_params trusts (without Keras) are those of the real model: every
    layer with weights, where fine-tuning can start, and no pooling layer."""
    for backbone in BACKBONES.values():
        model = backbone.build(backbone.min_image_size, None)
        assert backbone.trainable_from == tuple(
            layer.name for layer in model.layers if layer.weights
        )
        check_backbone_input(backbone, backbone.min_image_size)
        with pytest.raises(ModelError, match="at least"):
            check_backbone_input(backbone, backbone.min_image_size - 1)
        check_backbone_layer(backbone, backbone.trainable_from[-1])
        for layer in ("block9_conv1", "block5_pool"):
            with pytest.raises(ModelError, match=f"is not a layer of {backbone.name} with weights"):
                check_backbone_layer(backbone, layer)


def test_strategy_registry_matches_the_params_blocks() -> None:
    """A strategy is trained by its registry entry and configured by its `train.<name>`
    block: the two lists are one."""
    from pipeline.config import STRATEGY_NAMES
    from pipeline.training.strategies import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["transformer", "--prepared", "p", "--gate", "g", "--out", "o"], "allowed strategies"),
        (["feature_extraction", "--prepared", "p", "--gate", "g", "--out", "o"], "--features"),
    ],
)
def test_train_stage_refuses_an_unknown_strategy_or_missing_features(
    argv, message, tmp_path, monkeypatch
) -> None:
    from pipeline.errors import ConfigError
    from pipeline.stages.train import main

    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=message):
        main(argv)
    assert not (tmp_path / "o").exists()


def test_vgg16_preprocess_layer_equals_keras_preprocess_input() -> None:
    images = np.random.default_rng(1).uniform(0, 255, size=(2, 5, 5, 3)).astype("float32")
    inputs = keras.Input(shape=(5, 5, 3))
    layer_model = keras.Model(inputs, VGG16.preprocess(inputs))
    expected = keras.applications.vgg16.preprocess_input(images.copy())
    np.testing.assert_allclose(layer_model.predict(images, verbose=0), expected, atol=1e-4)


@pytest.mark.parametrize("shape", [(8, 8, 1), (40, 40, 3)])
def test_feature_extractor_resizes_and_converts_gray(base, shape) -> None:
    extractor = build_feature_extractor(shape, VGG16, base)
    features = extractor.predict(_images(shape), verbose=0)
    assert features.shape == (3, 1, 1, 512)
    layer_names = [layer.name for layer in extractor.get_layer("preprocessing").layers]
    expected = ["image", "to_float", "gray_to_rgb", "resize_to_backbone", "vgg16_preprocess"]
    assert layer_names == [name for name in expected if name != "gray_to_rgb" or shape[-1] == 1]


def test_assembled_feature_model_equals_head_on_features(base) -> None:
    extractor = build_feature_extractor((8, 8, 1), VGG16, base)
    head = build_feature_head((1, 1, 512), 4, 16, 0.5)
    model = assemble_feature_extraction_model(extractor, head)
    images = _images((8, 8, 1))
    expected = head.predict(extractor.predict(images, verbose=0), verbose=0)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)
    # The extractor's own parts, between the image and the head; only the head trains.
    parts = model_parts(model)
    assert (parts.preprocessing, parts.base, parts.head) == (
        extractor.get_layer("preprocessing"),
        base,
        head,
    )
    assert len(model.trainable_weights) == len(head.trainable_weights) == 4


def test_set_trainable_from_freezes_everything_before_the_layer(base) -> None:
    set_trainable_from(base, "block5_conv1")
    trainable = [layer.name for layer in base.layers if layer.trainable]
    assert trainable == ["block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"]
    set_trainable_from(base, None)
    assert not base.trainable and not base.trainable_weights
    with pytest.raises(ModelError, match="not a layer"):
        set_trainable_from(base, "block9_conv1")


def test_fine_tune_model_saves_and_loads_with_plain_keras(base, tmp_path: Path) -> None:
    model = build_fine_tune_model((8, 8, 1), 3, VGG16, base, 16, 0.5, AugmentationConfig(zoom=0.1))
    path = tmp_path / "model.keras"
    model.save(path)
    # No custom objects: a saved model must load anywhere Keras is installed.
    loaded = keras.saving.load_model(path)
    images = _images((8, 8, 1))
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5
    )
    # Its named parts survive saving: augmentation sits in preprocessing, before the base.
    parts = model_parts(loaded)
    assert [part.name for part in parts.in_order()] == ["preprocessing", "vgg16", "head"]
    assert "random_zoom" in [layer.name for layer in parts.preprocessing.layers]
    assert model_parts(build_small_convnet((8, 8, 1), 3, [8], 8, 0.5)) is None


def test_write_features_reads_the_store_in_chunks_and_matches_one_predict(tmp_path) -> None:
    """The features file holds, row for row, what one `predict` over every image gives, though
    the images were read a chunk of whole batches at a time from a store of several shards."""
    from pipeline.models.features import write_features
    from pipeline.store import open_split, write_store_from_arrays

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).integers(0, 256, (70, 8, 8, 1), dtype=np.uint8)
    y = np.arange(70) % 2
    write_store_from_arrays(
        tmp_path / "prepared",
        {n: (x, y) for n in ("train", "val", "test")},
        ["a", "b"],
        shard_bytes=16 * x[0].nbytes,
    )
    split = open_split(tmp_path / "prepared", "train")
    backbone = BACKBONES["vgg16"]
    extractor = build_feature_extractor((8, 8, 1), backbone, backbone.build(32, None))
    shape = write_features(extractor, split, tmp_path / "train.npy", 8, chunk_images=20)
    written = np.load(tmp_path / "train.npy")
    assert shape == written.shape == (70, 1, 1, 512)
    np.testing.assert_array_equal(written, extractor.predict(x, batch_size=8, verbose=0))
