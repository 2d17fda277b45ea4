"""Every network of the zoo exports (issue 35): each scratch architecture at its natural input
size, and a transfer model on each of the three backbones (random weights), exported to ONNX
and TFLite and held to parity on a few images by the format's own runtime; and a layer that a
format cannot hold is refused by name, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from pipeline.config import AugmentationConfig
from pipeline.errors import ExportError
from pipeline.export.exporter import ExportSource, export_model
from pipeline.models.backbones import BACKBONES, check_backbone_input
from pipeline.models.builders import ARCHITECTURES, build_architecture
from pipeline.models.heads import (
    assemble_feature_extraction_model,
    build_feature_extractor,
    build_feature_head,
    build_fine_tune_model,
)
from pipeline.store import ArraySplit

pytestmark = pytest.mark.slow

ZOO_FORMATS = ("onnx", "tflite")
IMAGES = 8

# name -> (the input shape of the dataset it was written for, its classes): the course's
# listings and ours (tests/code/test_architectures.py pins the same shapes).
SCRATCH = {
    "course_a": ((32, 32, 3), 3),
    "course_b": ((32, 32, 3), 3),
    "course_c": ((32, 32, 3), 3),
    "mnist_convnet": ((28, 28, 1), 10),
    "catsdogs_convnet": ((150, 150, 3), 2),
    "malaria_convnet": ((100, 100, 3), 2),
    "lenet5": ((32, 32, 1), 10),
    "small_convnet": ((8, 8, 1), 10),
    "digits_convnet": ((8, 8, 1), 10),
    "mnist_bn_convnet": ((28, 28, 1), 10),
}


def _scratch_params() -> list:
    return [pytest.param(name, id=name) for name in sorted(SCRATCH)]


def _split(shape: tuple[int, int, int], classes: int, seed: int = 0) -> ArraySplit:
    """A few random uint8 images: parity needs no real ones, only the same answers."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (IMAGES, *shape), dtype=np.uint8)
    labels = np.arange(IMAGES) % classes
    return ArraySplit(images, labels, [f"class_{index}" for index in range(classes)], "test")


def _export_both(model: keras.Model, split: ArraySplit, folder: Path) -> None:
    """`model` saved as .keras, exported to ONNX and TFLite: each passes parity on `split`."""
    model_file = folder / "model.keras"
    model.save(model_file)
    source = ExportSource(model_file, split.classes, model.name)
    classes = len(split.classes)
    for format_name in ZOO_FORMATS:
        exported = export_model(source, format_name, "none", split, None, folder / "exports")
        parity = json.loads((exported.folder / "parity.json").read_text())
        assert parity["passed"] is True, parity["failures"]
        assert parity["images"] == IMAGES
        assert parity["top1_agreement"] == 1.0
        assert parity["max_abs_diff"] <= 1e-4
        signature = exported.signature
        assert signature["input"]["shape"] == [None, *split.image_shape]
        assert signature["output"]["shape"] == [None, classes]
        assert exported.model_path.is_file()


def test_the_zoo_is_every_registered_architecture() -> None:
    """A new architecture joins the export test with its natural input shape."""
    assert set(SCRATCH) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", _scratch_params())
def test_every_scratch_architecture_exports_with_parity(name: str, tmp_path: Path) -> None:
    shape, classes = SCRATCH[name]
    keras.utils.set_random_seed(0)
    model = build_architecture(ARCHITECTURES[name], shape, classes)
    _export_both(model, _split(shape, classes), tmp_path)


# backbone -> (the transfer model, its input shape): between them the two ways a transfer
# model is assembled, gray 8x8 and 28x28 images resized up to the backbone's 32x32, RGB at
# its size, and the course's augmentation layers (inactive at inference).
TRANSFER = {
    "vgg16": ("fine_tune", (8, 8, 1)),
    "resnet50": ("feature_extraction", (32, 32, 3)),
    "mobilenet_v2": ("fine_tune", (28, 28, 1)),
}
BACKBONE_SIZE = 32


def _transfer_model(backbone_name: str, kind: str, shape: tuple[int, int, int]) -> keras.Model:
    """The model a transfer strategy saves, on `backbone_name` with random weights."""
    backbone = BACKBONES[backbone_name]
    check_backbone_input(backbone, BACKBONE_SIZE)
    base = backbone.build(BACKBONE_SIZE, None)
    if kind == "fine_tune":
        return build_fine_tune_model(
            shape, 3, backbone, base, 16, 0.5, AugmentationConfig(enabled=True)
        )
    extractor = build_feature_extractor(shape, backbone, base)
    head = build_feature_head(tuple(extractor.output_shape[1:]), 3, 16, 0.5)
    return assemble_feature_extraction_model(extractor, head)


def test_the_zoo_has_a_transfer_model_on_every_backbone() -> None:
    assert set(TRANSFER) == set(BACKBONES)


@pytest.mark.parametrize("backbone_name", sorted(TRANSFER))
def test_every_backbones_transfer_model_exports_with_parity(
    backbone_name: str, tmp_path: Path
) -> None:
    kind, shape = TRANSFER[backbone_name]
    keras.utils.set_random_seed(0)
    model = _transfer_model(backbone_name, kind, shape)
    assert model.name == kind
    _export_both(model, _split(shape, 3), tmp_path)


@keras.saving.register_keras_serializable(package="tests_export_zoo")
class Skew(layers.Layer):
    """Shears every image at inference by `keras.ops.image.affine_transform`: TensorFlow's
    ImageProjectiveTransformV3, which neither TFLite's built-in ops nor tf2onnx hold."""

    def call(self, images):
        transform = keras.ops.convert_to_tensor([[1.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
        transforms = keras.ops.tile(transform, [keras.ops.shape(images)[0], 1])
        return keras.ops.image.affine_transform(images, transforms, interpolation="bilinear")


def _skewing_model() -> keras.Model:
    inputs = keras.Input((8, 8, 1), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = Skew(name="skew_by_hand")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="skewed")


# format -> what its refusal names besides the layer.
UNSUPPORTED = {
    "onnx": r"ONNX cannot hold layer\(s\) skew_by_hand .*ImageProjectiveTransformV3",
    "tflite": r"TFLite cannot hold layer\(s\) skew_by_hand .*ImageProjectiveTransformV3",
}


@pytest.mark.parametrize("format_name", sorted(UNSUPPORTED))
def test_a_layer_the_format_cannot_hold_is_refused_by_name(
    format_name: str, tmp_path: Path
) -> None:
    keras.utils.set_random_seed(0)
    model_file = tmp_path / "model.keras"
    _skewing_model().save(model_file)
    split = _split((8, 8, 1), 3)
    source = ExportSource(model_file, split.classes, "models/skewed")
    out = tmp_path / "exports"
    with pytest.raises(ExportError, match=UNSUPPORTED[format_name]):
        export_model(source, format_name, "none", split, None, out)
    # Nothing was written: no export folder, no staging folder left beside it.
    assert not out.exists() or list(out.iterdir()) == []


def test_the_same_layer_exports_where_the_format_holds_it(tmp_path: Path) -> None:
    """The refusal is the format's, not the model's: a SavedModel runs TensorFlow's op."""
    keras.utils.set_random_seed(0)
    model_file = tmp_path / "model.keras"
    _skewing_model().save(model_file)
    split = _split((8, 8, 1), 3)
    source = ExportSource(model_file, split.classes, "models/skewed")
    exported = export_model(source, "saved_model", "none", split, None, tmp_path)
    assert exported.parity.passed and exported.parity.max_abs_diff <= 1e-4
