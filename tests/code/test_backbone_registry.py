"""The backbone registry (vgg16, resnet50, mobilenet_v2) against keras.applications itself: the
builders, the preprocessing layers, the layer names that check_params trusts without Keras, and
the ImageNet weights sources Keras downloads."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.models.backbones import (
    BACKBONE_NAMES,
    BACKBONES,
    DEFAULT_BACKBONE,
    MOBILENET_V2,
    RESNET50,
    VGG16,
    Backbone,
    WeightsSource,
    check_backbone_input,
    check_backbone_layer,
    resolve_unfreeze_from,
    resolve_weights,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# A layer of each base without weights: fine-tuning from it would train nothing of the base.
# vgg16 and resnet50 have pooling layers; the notop mobilenet_v2 has none, so its last ReLU.
LAYERS_WITHOUT_WEIGHTS = {
    "vgg16": "block5_pool",
    "resnet50": "pool1_pool",
    "mobilenet_v2": "out_relu",
}


@pytest.fixture(scope="module")
def bases() -> dict[str, object]:
    """Each backbone built once at its smallest input, randomly initialised."""
    return {
        name: backbone.build(backbone.min_image_size, None) for name, backbone in BACKBONES.items()
    }


def _layers_with_weights(model) -> tuple[str, ...]:
    return tuple(layer.name for layer in model.layers if layer.weights)


def _rgb_images(seed: int, size: int = 6) -> np.ndarray:
    """Random RGB floats in [0, 255], with the extremes 0 and 255 included."""
    images = np.random.default_rng(seed).uniform(0, 255, size=(3, size, size, 3))
    images[0, 0, 0] = 0.0
    images[0, 0, 1] = 255.0
    return images.astype("float32")


def test_registry_holds_the_three_backbones_and_vgg16_stays_the_default() -> None:
    assert BACKBONE_NAMES == ("vgg16", "resnet50", "mobilenet_v2") == tuple(BACKBONES)
    assert DEFAULT_BACKBONE == "vgg16"
    assert (BACKBONES["resnet50"], BACKBONES["mobilenet_v2"]) == (RESNET50, MOBILENET_V2)
    assert all(name == backbone.name for name, backbone in BACKBONES.items())


def test_importing_the_registry_does_not_import_keras() -> None:
    """check_params reads the registry before any stage runs: it must stay cheap."""
    code = (
        "import sys, pipeline.models.backbones as b; "
        "assert len(b.RESNET50.trainable_from) > 100; "
        "heavy = [m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_builds_at_its_smallest_size_and_keras_refuses_smaller(name: str, bases) -> None:
    import keras

    backbone = BACKBONES[name]
    size = backbone.min_image_size
    assert tuple(bases[name].input_shape) == (None, size, size, 3)
    output = bases[name].predict(_rgb_images(0, size)[:1], verbose=0)
    assert output.ndim == 4 and output.shape[1:3] == (1, 1)
    check_backbone_input(backbone, size)
    with pytest.raises(ModelError, match="at least"):
        check_backbone_input(backbone, size - 1)
    # min_image_size is the builder's own limit, not a guess.
    application = {"vgg16": "VGG16", "resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2"}
    with pytest.raises(ValueError, match=f"at least {size}"):
        getattr(keras.applications, application[name])(
            include_top=False, weights=None, input_shape=(size - 1, size - 1, 3)
        )


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_trainable_from_is_the_built_models_layers_with_weights(name: str, bases) -> None:
    backbone = BACKBONES[name]
    assert backbone.trainable_from == _layers_with_weights(bases[name])
    assert backbone.default_unfreeze_from in backbone.trainable_from
    # The default fine-tunes the end of the base, not all of it.
    start = backbone.trainable_from.index(backbone.default_unfreeze_from)
    assert start > len(backbone.trainable_from) // 2
    check_backbone_layer(backbone, backbone.default_unfreeze_from)
    assert resolve_unfreeze_from(backbone, "auto") == backbone.default_unfreeze_from
    assert resolve_unfreeze_from(backbone, backbone.trainable_from[0]) == backbone.trainable_from[0]


def test_default_unfreeze_points() -> None:
    assert VGG16.default_unfreeze_from == "block5_conv1"
    assert RESNET50.default_unfreeze_from == "conv5_block1_1_conv"
    assert MOBILENET_V2.default_unfreeze_from == "block_16_expand"


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_check_backbone_layer_rejects_pooling_and_unknown_layers(name: str, bases) -> None:
    backbone = BACKBONES[name]
    model = bases[name]
    pooling = [layer.name for layer in model.layers if "Pooling" in type(layer).__name__]
    assert bool(pooling) == (name != "mobilenet_v2")
    assert LAYERS_WITHOUT_WEIGHTS[name] in [layer.name for layer in model.layers]
    assert not model.get_layer(LAYERS_WITHOUT_WEIGHTS[name]).weights
    without_weights = [layer.name for layer in model.layers if not layer.weights]
    rejected = {LAYERS_WITHOUT_WEIGHTS[name], "block5_pool", "block9_conv1", *without_weights}
    for layer in sorted(rejected):
        with pytest.raises(ModelError, match=f"is not a layer of {name} with weights"):
            check_backbone_layer(backbone, layer)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_preprocess_equals_keras_preprocess_input(name: str) -> None:
    import keras

    backbone = BACKBONES[name]
    images = _rgb_images(1)
    inputs = keras.Input(shape=images.shape[1:])
    layer_model = keras.Model(inputs, backbone.preprocess(inputs))
    module = getattr(keras.applications, name)  # vgg16, resnet50, mobilenet_v2
    expected = np.asarray(module.preprocess_input(images.copy()))
    got = layer_model.predict(images, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * max(1.0, np.abs(expected).max()))
    assert not layer_model.trainable_weights, "the preprocessing must stay frozen"


def test_preprocessing_layers_have_distinct_names() -> None:
    import keras

    names = []
    for backbone in BACKBONES.values():
        inputs = keras.Input(shape=(4, 4, 3))
        model = keras.Model(inputs, backbone.preprocess(inputs))
        names += [layer.name for layer in model.layers[1:]]
    assert len(names) == len(set(names)) == len(BACKBONES)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_model_with_preprocessing_loads_without_custom_objects(name: str, tmp_path: Path) -> None:
    import keras
    from keras import layers

    backbone = BACKBONES[name]
    images = _rgb_images(2)
    inputs = keras.Input(shape=images.shape[1:])
    x = backbone.preprocess(inputs)
    x = layers.Conv2D(4, 3, name="tiny_conv")(x)
    outputs = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / f"{name}.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, custom_objects=None, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6, atol=1e-5
    )
    preprocess_layer = loaded.get_layer(f"{name}_preprocess")
    assert not preprocess_layer.trainable_weights, "the preprocessing must stay frozen"


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_imagenet_source_is_the_file_keras_downloads(name: str) -> None:
    """The URL, file name and checksum are those keras.applications itself uses for the notop
    ImageNet weights (mobilenet_v2: alpha 1.0, 224x224, a file Keras pins no checksum for)."""
    from keras.src.applications import mobilenet_v2, resnet, vgg16

    source = BACKBONES[name].imagenet
    assert source.url.startswith("https://storage.googleapis.com/tensorflow/keras-applications/")
    assert source.url.rsplit("/", 1)[1] == source.filename
    keras_url, keras_hash = {
        "vgg16": (vgg16.WEIGHTS_PATH_NO_TOP, "md5:6d6bbae143d832006294945121d1f1fc"),
        "resnet50": (
            resnet.BASE_WEIGHTS_PATH + "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            f"md5:{resnet.WEIGHTS_HASHES['resnet50'][1]}",
        ),
        "mobilenet_v2": (
            mobilenet_v2.BASE_WEIGHT_PATH
            + "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            None,
        ),
    }[name]
    assert (source.url, source.known_hash) == (keras_url, keras_hash)


def test_weights_source_hash_is_pooch_style_or_none() -> None:
    WeightsSource("a.h5", "https://x/a.h5")
    WeightsSource("a.h5", "https://x/a.h5", "md5:" + "a" * 32)
    WeightsSource("a.h5", "https://x/a.h5", "sha256:" + "0" * 64)
    for bad in ("a" * 32, "md5:" + "a" * 31, "sha1:" + "a" * 40, "sha256:" + "z" * 64):
        with pytest.raises(ValueError, match="known_hash"):
            WeightsSource("a.h5", "https://x/a.h5", bad)


def test_a_default_unfreeze_point_without_weights_is_refused_at_definition() -> None:
    with pytest.raises(ValueError, match="default_unfreeze_from 'block5_pool'"):
        Backbone(
            name="broken",
            build=VGG16.build,
            preprocess=VGG16.preprocess,
            trainable_from=VGG16.trainable_from,
            default_unfreeze_from="block5_pool",
            min_image_size=32,
            imagenet=VGG16.imagenet,
        )


def test_weights_without_a_pinned_hash_download_unverified(tmp_path: Path, http_server) -> None:
    """mobilenet_v2's file has no checksum in Keras: it is fetched as is, then reused."""
    served = tmp_path / "served"
    served.mkdir()
    (served / MOBILENET_V2.imagenet.filename).write_bytes(b"weights")
    url = f"{http_server(served)}/{MOBILENET_V2.imagenet.filename}"
    resolved = resolve_weights("imagenet", MOBILENET_V2, cache_dir=tmp_path / "cache", url=url)
    assert resolved.kind == "imagenet"
    assert Path(resolved.path) == tmp_path / "cache" / MOBILENET_V2.imagenet.filename
    assert Path(resolved.path).read_bytes() == b"weights"


def test_resnet50_weights_are_checked_against_a_pinned_md5(tmp_path: Path, http_server) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / RESNET50.imagenet.filename).write_bytes(b"weights")
    url = f"{http_server(served)}/{RESNET50.imagenet.filename}"
    md5 = hashlib.md5(b"weights").hexdigest()
    resolved = resolve_weights(
        "imagenet", RESNET50, cache_dir=tmp_path / "cache", url=url, known_hash=f"md5:{md5}"
    )
    assert Path(resolved.path).name == RESNET50.imagenet.filename
    # With the pinned (real) MD5, these bytes are refused: auto falls back to random.
    fallback = resolve_weights("auto", RESNET50, cache_dir=tmp_path / "other", url=url)
    assert fallback.kind == "random"
    assert not (tmp_path / "other" / RESNET50.imagenet.filename).exists()


def _write_legacy_notop(model, path: Path) -> list[np.ndarray]:
    """Write `model`'s weights in the legacy Keras .h5 layout of the real ImageNet files (root
    `layer_names`, one group per layer with `weight_names`); return the weights written."""
    import h5py

    written = []
    with h5py.File(path, "w") as handle:
        names = []
        for layer in model.layers:
            if not layer.weights:
                continue
            names.append(layer.name.encode())
            group = handle.create_group(layer.name)
            weight_names = [f"{layer.name}/{weight.name}:0" for weight in layer.weights]
            group.attrs["weight_names"] = [name.encode() for name in weight_names]
            for weight_name, weight in zip(weight_names, layer.weights, strict=True):
                value = np.asarray(weight.numpy())
                group.create_dataset(weight_name, data=value)
                written.append(value)
        handle.attrs["layer_names"] = names
        handle.attrs["keras_version"] = b"2.2.4"
        handle.attrs["backend"] = b"tensorflow"
    return written


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_build_loads_a_legacy_notop_weights_file(name: str, bases, tmp_path: Path) -> None:
    """A notop file in the ImageNet files' layout, written at another input size, loads into
    the base built at its smallest size (the weights do not depend on the input size)."""
    import keras

    backbone = BACKBONES[name]
    keras.utils.set_random_seed(3)
    source = backbone.build(backbone.min_image_size + 32, None)
    path = tmp_path / backbone.imagenet.filename
    expected = _write_legacy_notop(source, path)
    base = backbone.build(backbone.min_image_size, str(path))
    loaded = [np.asarray(w.numpy()) for layer in base.layers for w in layer.weights]
    assert len(loaded) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, expected, strict=True))
