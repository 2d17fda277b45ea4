"""The explain package on tiny models: finding layers in models assembled from named parts and
cutting at them (public functional API), activation maps, first-layer filters, filter patterns,
Grad-CAM's shapes and the figures."""

from __future__ import annotations

from pathlib import Path

import keras
import matplotlib.image
import numpy as np
import pytest

from pipeline.explain.activations import activation_maps
from pipeline.explain.figures import (
    plot_activation_grid,
    plot_filters,
    plot_gradcam_gallery,
    plot_patterns,
)
from pipeline.explain.filters import first_conv_kernel
from pipeline.explain.gradcam import grad_cam, superimpose
from pipeline.explain.gradients import compile_ascent_step, value_and_gradient
from pipeline.explain.graph import (
    ExplainError,
    activation_model,
    conv_layer_names,
    cut_at_layer,
    find_layer,
    gradcam_layer_name,
    last_conv_layer_name,
    owner_of,
)
from pipeline.explain.patterns import filter_patterns, gradient_ascent, in_precision
from pipeline.models.backbones import BACKBONES
from pipeline.models.builders import ARCHITECTURES, build_architecture
from pipeline.models.heads import (
    assemble_feature_extraction_model,
    build_feature_extractor,
    build_feature_head,
    build_fine_tune_model,
    model_parts,
)

VGG16_CONVS = [
    f"block{block}_conv{conv}"
    for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for conv in range(1, convs + 1)
]


@pytest.fixture(scope="module")
def scratch() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_architecture(
        ARCHITECTURES["small_convnet"],
        (16, 16, 1),
        3,
        conv_filters=(4, 8),
        dense_units=8,
        dropout_rate=0.1,
    )


@pytest.fixture(scope="module")
def vgg16_base() -> keras.Model:
    keras.utils.set_random_seed(0)
    return BACKBONES["vgg16"].build(32, None)


@pytest.fixture(scope="module")
def fine_tune(vgg16_base) -> keras.Model:
    return build_fine_tune_model((32, 32, 1), 2, BACKBONES["vgg16"], vgg16_base, 8, 0.1)


@pytest.fixture(scope="module")
def feature_extraction(vgg16_base) -> keras.Model:
    extractor = build_feature_extractor((32, 32, 3), BACKBONES["vgg16"], vgg16_base)
    head = build_feature_head(extractor.output_shape[1:], 3, 8, 0.1)
    return assemble_feature_extraction_model(extractor, head)


def _images(count: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape)).astype("uint8")


# --- graph ----------------------------------------------------------------------------------


def test_layers_are_found_in_scratch_and_nested_models(scratch, fine_tune) -> None:
    assert conv_layer_names(scratch) == ["conv1", "conv2"]
    assert last_conv_layer_name(scratch) == "conv2"
    assert conv_layer_names(fine_tune) == VGG16_CONVS
    assert last_conv_layer_name(fine_tune) == "block5_conv3"
    assert gradcam_layer_name(fine_tune) == "block5_conv3"
    assert find_layer(fine_tune, "block3_conv2").name == "block3_conv2"


def test_an_unknown_layer_is_named_with_the_conv_layers(fine_tune) -> None:
    with pytest.raises(ExplainError, match="'block9_conv1'.*block1_conv1, block1_conv2"):
        find_layer(fine_tune, "block9_conv1")
    with pytest.raises(ValueError, match="block9_conv1"):  # Also a ValueError.
        activation_model(fine_tune, "block9_conv1")


def test_a_model_without_conv_layers_says_so() -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs), name="dense_only")
    with pytest.raises(ExplainError, match="no conv layer"):
        last_conv_layer_name(model)
    with pytest.raises(ExplainError, match="no conv layer"):
        first_conv_kernel(model)


def test_owner_of_is_the_innermost_model_holding_the_layer(scratch, fine_tune) -> None:
    assert owner_of(scratch, "conv2") is scratch
    parts = model_parts(fine_tune)
    assert owner_of(fine_tune, "block3_conv2") is parts.base
    assert owner_of(fine_tune, "gray_to_rgb") is parts.preprocessing
    assert owner_of(fine_tune, "predictions") is parts.head
    assert owner_of(fine_tune, "head") is fine_tune
    with pytest.raises(ExplainError, match="'block9_conv1'"):
        owner_of(fine_tune, "block9_conv1")


def test_transfer_models_are_preprocessing_base_head(fine_tune, feature_extraction) -> None:
    """Both transfer-learning models are the same three named parts, in one order, each
    part's layers in the order data meets them."""
    assert [layer.name for layer in fine_tune.layers] == ["image", "preprocessing", "vgg16", "head"]
    assert [layer.name for layer in feature_extraction.layers] == [
        "image",
        "preprocessing",
        "vgg16",
        "head",
    ]
    gray = model_parts(fine_tune)
    assert [layer.name for layer in gray.preprocessing.layers] == [
        "image",
        "to_float",
        "gray_to_rgb",
        "vgg16_preprocess",
    ]
    rgb = model_parts(feature_extraction)
    assert [layer.name for layer in rgb.preprocessing.layers] == [
        "image",
        "to_float",
        "vgg16_preprocess",
    ]
    assert [layer.name for layer in rgb.head.layers] == [
        "features",
        "flatten",
        "dense",
        "dropout",
        "predictions",
    ]
    assert [layer.name for layer in rgb.base.layers][1:3] == ["block1_conv1", "block1_conv2"]


def _residual_block(inputs, name: str):
    """conv, conv, plus the block's input: a shortcut around the two convolutions."""
    x = keras.layers.Conv2D(3, 3, padding="same", name=f"{name}_conv1")(inputs)
    x = keras.layers.Conv2D(3, 3, padding="same", name=f"{name}_conv2")(x)
    return keras.layers.Add(name=f"{name}_add")([x, inputs])


def test_a_shortcut_is_no_cut_point_but_the_layer_after_it_is() -> None:
    inputs = keras.Input((8, 8, 1))
    merged = _residual_block(keras.layers.Conv2D(3, 3, padding="same", name="stem")(inputs), "r")
    x = keras.layers.Conv2D(2, 3, padding="same", name="after")(merged)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x), name="branchy")
    with pytest.raises(ExplainError, match="cannot be cut at 'r_conv2': 'r_add' takes more"):
        cut_at_layer(model, "r_conv2")
    # Every path goes through the sum and what follows it: fine cuts, before them any graph.
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    for layer in ("r_add", "after"):
        cut = cut_at_layer(model, layer)
        np.testing.assert_allclose(cut.head()(cut.features(x)), model(x), atol=1e-5)
    assert gradcam_layer_name(model) == "after"


@pytest.fixture(scope="module")
def residual() -> keras.Model:
    """A fine-tune model around a tiny base with a shortcut after its last conv (as ResNet's
    stages end), for Grad-CAM's choice of a layer it can cut at."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(3, 3, strides=4, padding="same", name="stem")(inputs)
    x = keras.layers.Activation("relu", name="block_out")(_residual_block(x, "block"))
    base = keras.Model(inputs, x, name="tiny_resnet")
    return build_fine_tune_model((32, 32, 1), 3, BACKBONES["vgg16"], base, 8, 0.1)


def test_grad_cam_steps_past_a_shortcut_in_the_base(residual, tmp_path: Path) -> None:
    assert last_conv_layer_name(residual) == "block_conv2"
    assert gradcam_layer_name(residual) == "block_out"
    with pytest.raises(ExplainError, match="'tiny_resnet' cannot be cut at 'block_conv2'"):
        grad_cam(residual, _images(1, (32, 32, 1)), layer_name="block_conv2")
    # A saved model loads with its parts, and explains the same.
    residual.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert model_parts(loaded) is not None
    images = _images(3, (32, 32, 1))
    np.testing.assert_allclose(grad_cam(loaded, images), grad_cam(residual, images), atol=1e-5)


def test_a_nested_model_without_named_parts_cannot_be_cut(vgg16_base) -> None:
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Flatten(name="flat")(vgg16_base(inputs))
    model = keras.Model(inputs, outputs, name="anonymous")
    assert find_layer(model, "block5_conv3").name == "block5_conv3"
    with pytest.raises(ExplainError, match="'block5_conv3' sits in a nested model"):
        cut_at_layer(model, "block5_conv3")


@pytest.mark.parametrize(
    ("which", "layer", "shape"),
    [
        ("scratch", "conv2", (16, 16, 1)),
        ("fine_tune", "block5_conv3", (32, 32, 1)),
        ("fine_tune", "block2_pool", (32, 32, 1)),
        ("fine_tune", "gray_to_rgb", (32, 32, 1)),
        ("fine_tune", "dense", (32, 32, 1)),
        ("feature_extraction", "block4_conv1", (32, 32, 3)),
    ],
)
def test_a_cut_recomposes_the_model(request, which, layer, shape) -> None:
    model = request.getfixturevalue(which)
    cut = cut_at_layer(model, layer)
    images = _images(3, shape)
    activation = cut.features(images)
    assert activation.shape[1:] == find_layer(model, layer).output.shape[1:]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(cut.head()(activation)),
        keras.ops.convert_to_numpy(model(images)),
        atol=1e-5,
    )


def test_activation_model_takes_a_bigger_float_input(scratch, vgg16_base, fine_tune) -> None:
    bigger = activation_model(scratch, "conv2", input_shape=(24, 24, 1), input_dtype="float32")
    assert bigger.output_shape == (None, 12, 12, 8)
    base = activation_model(vgg16_base, "block3_conv1", (48, 48, 3), "float32")
    assert base.output_shape == (None, 12, 12, 256)
    # Another input size reaches a layer through the model that holds it, not from outside.
    with pytest.raises(ExplainError, match="owner_of"):
        activation_model(fine_tune, "block3_conv1", (48, 48, 3), "float32")


# --- gradients, activations, filters, patterns -----------------------------------------------


def test_gradients_match_finite_differences() -> None:
    weights = np.array([1.0, -2.0, 3.0], dtype="float32")

    def cubic(x):
        return keras.ops.sum(x**3 * weights, axis=-1)

    x = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]], dtype="float32")
    value, gradient = value_and_gradient(cubic, x)
    np.testing.assert_allclose(value, (x**3 * weights).sum(axis=-1), rtol=1e-6)
    np.testing.assert_allclose(gradient, 3 * x**2 * weights, rtol=1e-6)
    with pytest.raises(ValueError, match="floating-point"):
        value_and_gradient(cubic, x.astype("int32"))


def test_activation_maps_cover_every_conv_layer(scratch, fine_tune) -> None:
    maps = activation_maps(scratch, _images(1, (16, 16, 1))[0], max_channels=6)
    assert list(maps) == ["conv1", "conv2"]
    assert maps["conv1"].shape == (16, 16, 4)
    assert maps["conv2"].shape == (8, 8, 6)
    nested = activation_maps(fine_tune, _images(1, (32, 32, 1))[0], max_channels=2)
    assert list(nested) == VGG16_CONVS
    assert nested["block1_conv1"].shape == (32, 32, 2)
    assert nested["block5_conv3"].shape == (2, 2, 2)


def test_first_conv_kernel(scratch, fine_tune) -> None:
    assert first_conv_kernel(scratch).shape == (3, 3, 1, 4)
    assert first_conv_kernel(fine_tune).shape == (3, 3, 3, 64)


def test_filter_patterns_are_distinct_and_raise_their_filter(scratch) -> None:
    model = activation_model(scratch, "conv2", input_shape=(20, 20, 1), input_dtype="float32")
    filters = list(range(8))
    start, optimized = gradient_ascent(model, filters, steps=15, step_size=10.0)

    def own_filter_means(images):
        activations = keras.ops.convert_to_numpy(model(images))[:, 2:-2, 2:-2, :]
        return np.array([activations[i, ..., f].mean() for i, f in enumerate(filters)])

    before, after = own_filter_means(start), own_filter_means(optimized)
    # A filter dead on the start image (ReLU at zero everywhere) has no gradient to follow.
    alive = before > 0
    assert alive.sum() >= 3
    assert (after[alive] > 2 * before[alive] + 1e-3).all(), (before, after)
    patterns = filter_patterns(model, [1, 2, 3], steps=5)
    assert patterns.shape == (3, 20, 20, 1) and patterns.dtype == np.uint8
    assert len({pattern.tobytes() for pattern in patterns}) == 3
    with pytest.raises(ExplainError, match=r"\[8\].*8 \(0 to 7\)"):
        filter_patterns(model, [0, 8], steps=1)


def test_bfloat16_ascent_computes_in_bfloat16_and_excites_the_filters_as_much(vgg16_base) -> None:
    """evaluate.patterns.precision bfloat16: a copy of the activation model with the same
    weights computes in bfloat16 (the original is left as it was), and the images its ascent
    finds excite each filter of the float32 model about as much as float32's own do."""
    model = activation_model(
        vgg16_base, "block2_conv1", input_shape=(32, 32, 3), input_dtype="float32"
    )
    copy = in_precision(model, "bfloat16")
    assert in_precision(model, "float32") is model
    assert copy is not model
    assert {layer.dtype_policy.name for layer in model.layers[1:]} == {"float32"}
    assert {layer.dtype_policy.name for layer in copy.layers[1:]} == {"mixed_bfloat16"}
    output = copy(np.zeros((1, 32, 32, 3), "float32"))
    assert keras.backend.standardize_dtype(output.dtype) == "bfloat16"
    for ours, theirs in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)

    filters = [0, 1, 2, 3, 4, 5]
    start, single = gradient_ascent(model, filters, steps=8, step_size=20.0)
    _, half = gradient_ascent(model, filters, steps=8, step_size=20.0, precision="bfloat16")
    assert half.dtype == np.float32 and not np.array_equal(half, single)

    def own_filter_means(images):
        activations = keras.ops.convert_to_numpy(model(images))[:, 2:-2, 2:-2, :]
        return np.array([activations[i, ..., f].mean() for i, f in enumerate(filters)])

    before, after_single, after_half = map(own_filter_means, (start, single, half))
    raised = after_single > 2 * before + 1e-3
    assert raised.sum() >= 3
    assert (after_half[raised] > 0.8 * after_single[raised]).all(), (after_single, after_half)
    with pytest.raises(ExplainError, match="float16"):
        in_precision(model, "float16")
    with pytest.raises(ExplainError, match="float16"):
        gradient_ascent(model, filters, steps=1, precision="float16")


class _Unrebuildable(keras.layers.Layer):
    """A custom layer whose config cannot be rebuilt (no **kwargs), as some users write them."""

    def __init__(self) -> None:
        super().__init__()

    def call(self, inputs):
        return inputs


def test_a_model_that_cannot_be_rebuilt_in_bfloat16_draws_its_patterns_in_float32(
    caplog,
) -> None:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    outputs = keras.layers.Conv2D(4, 3, name="conv")(_Unrebuildable()(inputs))
    model = keras.Model(inputs, outputs)
    single = filter_patterns(model, [0, 1], steps=3)
    with caplog.at_level("WARNING", logger="pipeline.explain.patterns"):
        half = filter_patterns(model, [0, 1], steps=3, precision="bfloat16")
    np.testing.assert_array_equal(half, single)
    assert "in float32, not bfloat16" in caplog.text


# --- Grad-CAM -------------------------------------------------------------------------------


def test_grad_cam_shapes_on_scratch_and_nested_models(scratch, feature_extraction) -> None:
    heatmaps = grad_cam(scratch, _images(5, (16, 16, 1)))
    assert heatmaps.shape == (5, 8, 8)
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    nested = grad_cam(feature_extraction, _images(2, (32, 32, 3)), class_indices=np.array([0, 2]))
    assert nested.shape == (2, 2, 2) and np.isfinite(nested).all()
    early = grad_cam(feature_extraction, _images(2, (32, 32, 3)), layer_name="block3_conv3")
    assert early.shape == (2, 8, 8)


def test_grad_cam_refuses_a_flat_layer(scratch) -> None:
    with pytest.raises(ExplainError, match="'dense1'"):
        grad_cam(scratch, _images(1, (16, 16, 1)), layer_name="dense1")


def test_superimpose_gives_an_rgb_image_of_the_image_size() -> None:
    heatmap = np.zeros((4, 4), dtype="float32")
    heatmap[0, 0] = 1.0
    gray = superimpose(_images(1, (16, 16, 1))[0], heatmap)
    assert gray.shape == (16, 16, 3) and gray.dtype == np.uint8
    assert superimpose(_images(1, (12, 20, 3))[0], heatmap).shape == (12, 20, 3)


# --- figures --------------------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    assert path.exists()
    image = matplotlib.image.imread(path)
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) > 1, f"{path.name} is blank"
    return image


def test_gradcam_gallery_png(tmp_path: Path) -> None:
    images = _images(5, (16, 16, 1))
    heatmaps = np.random.default_rng(1).random((5, 4, 4)).astype("float32")
    path = plot_gradcam_gallery(
        images,
        heatmaps,
        ["a", "b", "a", "c", "b"],
        ["a", "a", "a", "c", "c"],
        [0.97, 0.5, 0.8, 0.99, 0.6],
        tmp_path / "gradcam.png",
        columns=4,
    )
    assert path == tmp_path / "gradcam.png"
    # 4 columns of 240 px, 2 rows of 270 px.
    assert _read_png(path).shape[:2] == (540, 960)


def test_activation_grid_png(tmp_path: Path) -> None:
    maps = np.random.default_rng(0).random((8, 8, 10)).astype("float32")
    maps[..., 3] = 0.0  # A dead channel draws, dark.
    path = plot_activation_grid("conv2", maps, tmp_path / "conv2.png", columns=8)
    # 8 columns of 120 px; 2 rows of 120 px and a 48 px header.
    assert _read_png(path).shape[:2] == (288, 960)


@pytest.mark.parametrize(("channels", "filters", "size"), [(1, 4, (108, 510)), (3, 40, (288, 990))])
def test_filters_png(tmp_path: Path, channels, filters, size) -> None:
    rng = np.random.default_rng(0)
    before = rng.normal(size=(3, 3, channels, filters)).astype("float32")
    after = before + rng.normal(size=before.shape).astype("float32")
    path = plot_filters(before, after, tmp_path / "filters.png")
    # min(filters, 8) tiles of 60 px per panel, two panels and a 30 px gap; at most 32 filters
    # in rows of 8 under a 48 px header.
    assert _read_png(path).shape[:2] == size
    with pytest.raises(ValueError, match="same"):
        plot_filters(before, after[..., :1], tmp_path / "bad.png")


def test_patterns_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    patterns = {
        "conv1": rng.integers(0, 256, (4, 20, 20, 1)).astype("uint8"),
        "block1_conv1": rng.integers(0, 256, (3, 20, 20, 3)).astype("uint8"),
    }
    path = plot_patterns(patterns, tmp_path / "patterns.png")
    # 180 px of labels and 4 columns of 120 px; 2 rows of 120 px.
    assert _read_png(path).shape[:2] == (240, 660)
    with pytest.raises(ValueError, match="no filter patterns"):
        plot_patterns({}, tmp_path / "none.png")


def test_a_compiled_ascent_step_follows_the_normalized_gradient() -> None:
    """compile_ascent_step moves each sample by `step_size` along its own gradient's
    direction: what the eager value_and_gradient gives, normalized."""
    weights = np.array([1.0, -2.0, 3.0], dtype="float32")

    def cubic(x):
        return keras.ops.sum(x**3 * weights, axis=-1)

    x = np.array([[1.0, 2.0, 0.5], [0.5, -1.0, 2.0]], dtype="float32")
    moved = keras.ops.convert_to_numpy(compile_ascent_step(cubic, 0.1)(x))
    _, gradient = value_and_gradient(cubic, x)
    expected = x + 0.1 * gradient / np.linalg.norm(gradient, axis=1, keepdims=True)
    np.testing.assert_allclose(moved, expected, rtol=1e-5)
