"""Digits' three strategies, trained briefly on the bundled digits, exported to ONNX, TFLite and
SavedModel: each export answers the test split as the Keras model does, scored by the format's
own runtime (onnxruntime, LiteRT, TensorFlow), and a tampered export is refused with the
previous good one kept byte for byte (issue 35, "How it is checked")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.config import FeatureExtractionConfig, FineTuneConfig, ScratchConfig
from pipeline.datasets.fetch import fetch_dataset
from pipeline.datasets.readers.arrays import read_digits
from pipeline.datasets.sources import DIGITS
from pipeline.datasets.split import split_indices
from pipeline.errors import ExportError
from pipeline.export import exporter
from pipeline.export.exporter import ExportSource, export_model
from pipeline.models.backbones import BACKBONES
from pipeline.models.builders import ARCHITECTURES
from pipeline.models.heads import build_feature_extractor
from pipeline.store import ArraySplit
from pipeline.training.feature_extraction import train_feature_extraction
from pipeline.training.fine_tune import train_fine_tune
from pipeline.training.fit import set_global_seed
from pipeline.training.interface import BackboneSetup, TrainingContext, TrainingData
from pipeline.training.scratch import train_scratch
from pipeline.training.tracked import calibrate

pytestmark = pytest.mark.slow

STRATEGIES = ("scratch", "feature_extraction", "fine_tune")
FORMATS = ("onnx", "tflite", "saved_model")
DIGIT_CLASSES = [str(digit) for digit in range(10)]


@dataclass(frozen=True)
class Trained:
    """A strategy's model as the train stage leaves it: saved, calibrated, with what it gives
    on the test split from Keras itself (the reference every export is held to)."""

    model_file: Path
    temperature: float | None
    keras_probabilities: np.ndarray


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, ArraySplit]:
    """The bundled digits, read and split as the pipeline does (seed 42): 8x8 uint8 images."""
    raw = tmp_path_factory.mktemp("raw")
    fetch_dataset(DIGITS, raw, cache_dir=raw / "cache")
    dataset = read_digits(raw)
    images = dataset.load_all()
    indices = split_indices(dataset.labels, 0.15, 0.2, seed=42)
    return {
        name: ArraySplit(images[rows], dataset.labels[rows], dataset.class_names, name)
        for name, rows in indices.items()
    }


def _arrays(split: ArraySplit, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    return split.x[:count], split.y[:count]


def _train_scratch(digits: dict[str, ArraySplit]) -> keras.Model:
    """digits_convnet (digits' `auto` network, jitter and batch norm included), ten short
    epochs: about 0.97 test accuracy, so int8's check of a point is not held against a model
    still full of near ties (at 0.92 int8 lost 0.8 points, at 0.97 none)."""
    data = TrainingData(_arrays(digits["train"]), _arrays(digits["val"]), 10)
    config = ScratchConfig(epochs=10, batch_size=16)
    context = TrainingContext(architecture=ARCHITECTURES["digits_convnet"])
    return train_scratch(data, config, context).model


def _train_feature_extraction(digits: dict[str, ArraySplit], weights: Path) -> keras.Model:
    """Mode cached (digits' default): a head trained on the VGG16 base's features of part of
    the train split, then assembled with the extractor that computed them."""
    backbone = BACKBONES["vgg16"]
    extractor = build_feature_extractor((8, 8, 1), backbone, backbone.build(32, str(weights)))
    features = {
        name: (extractor.predict(x, batch_size=128, verbose=0), y)
        for name, (x, y) in (
            ("train", _arrays(digits["train"], 640)),
            ("val", _arrays(digits["val"], 128)),
        )
    }
    data = TrainingData(
        features["train"], features["val"], 10, kind="features", extractor=extractor
    )
    config = FeatureExtractionConfig(epochs=3, batch_size=32, learning_rate=1e-3, dense_units=64)
    return train_feature_extraction(data, config, TrainingContext()).model


def _train_fine_tune(digits: dict[str, ArraySplit], weights: Path) -> keras.Model:
    """The course's five steps on VGG16 from block5_conv1, one epoch per phase, on part of the
    train split (what is exported matters here, not how well it learnt)."""
    backbone = BACKBONES["vgg16"]
    base = backbone.build(32, str(weights))
    data = TrainingData(_arrays(digits["train"], 384), _arrays(digits["val"], 128), 10)
    config = FineTuneConfig(head_epochs=1, epochs=1, batch_size=32, dense_units=64)
    context = TrainingContext(backbone=BackboneSetup(backbone, base, "block5_conv1"))
    return train_fine_tune(data, config, context).model


@pytest.fixture(scope="module")
def trained(digits, hed_vgg16_weights, tmp_path_factory) -> dict[str, Trained]:
    """Each strategy trained and saved as `model.keras`; scratch is calibrated on the val split
    as the train stage does (a temperature folded into its output layer, so the signature
    names it), the transfer models keep T = 1 (their export is the same graph either way)."""
    folder = tmp_path_factory.mktemp("models")
    models: dict[str, Trained] = {}
    for strategy in STRATEGIES:
        set_global_seed(42)
        if strategy == "scratch":
            model = _train_scratch(digits)
        elif strategy == "feature_extraction":
            model = _train_feature_extraction(digits, hed_vgg16_weights)
        else:
            model = _train_fine_tune(digits, hed_vgg16_weights)
        fit = calibrate(model, digits["val"], "temperature") if strategy == "scratch" else None
        model_file = folder / strategy / "model.keras"
        model_file.parent.mkdir()
        model.save(model_file)
        # The reference: what the saved model answers, as loaded again (what is exported).
        reloaded = keras.saving.load_model(model_file)
        probabilities = reloaded.predict(digits["test"].x, batch_size=256, verbose=0)
        models[strategy] = Trained(
            model_file, fit.temperature if fit else None, np.asarray(probabilities, np.float32)
        )
    return models


def _source(trained: Trained, strategy: str) -> ExportSource:
    return ExportSource(
        trained.model_file, DIGIT_CLASSES, f"models/{strategy}", temperature=trained.temperature
    )


def predict_with_own_runtime(format_name: str, path: Path, images: np.ndarray) -> np.ndarray:
    """The exported file's probabilities from its format's runtime, called here directly (not
    through pipeline.export.runtimes): what a client in that runtime would get."""
    if format_name == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (answer,) = session.run(["probabilities"], {"image": images})
        return np.asarray(answer)
    if format_name == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
        return np.asarray(runner(image=images)["probabilities"])
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    answer = loaded.signatures["serving_default"](image=tf.constant(images))
    return np.asarray(answer["probabilities"])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


RUNTIMES = {"onnx": "onnxruntime", "tflite": "ai-edge-litert", "saved_model": "tensorflow"}
MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite", "saved_model": "saved_model"}
RESCORED = 64
"""Test images each written export is scored on again here, by its runtime called directly."""


@pytest.mark.parametrize("format_name", FORMATS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_exports_with_parity_in_its_own_runtime(
    strategy: str, format_name: str, trained, digits, tmp_path: Path
) -> None:
    model = trained[strategy]
    test = digits["test"]
    exported = export_model(_source(model, strategy), format_name, "none", test, None, tmp_path)

    folder = tmp_path / format_name
    assert exported.folder == folder
    # The export folder holds the model, its signature and its figures, and nothing was left
    # beside it (no staging folder).
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [MODEL_FILES[format_name], "parity.json", "signature.json"]
    )
    assert [path.name for path in tmp_path.iterdir()] == [format_name]

    parity = _read_json(folder / "parity.json")
    assert parity["passed"] is True and parity["failures"] == []
    assert parity["images"] == len(test)
    assert parity["top1_agreement"] == 1.0 and parity["disagreements"] == 0
    assert parity["max_abs_diff"] <= 1e-4
    assert parity["tolerance"] == {"max_abs_diff": 1e-4, "disagreements": 0}
    assert parity["runtime"] == RUNTIMES[format_name]
    assert parity["export_accuracy"] == parity["keras_accuracy"]
    keras_accuracy = float((model.keras_probabilities.argmax(axis=1) == test.y).mean())
    assert parity["keras_accuracy"] == pytest.approx(keras_accuracy)

    signature = _read_json(folder / "signature.json")
    assert signature["input"]["name"] == "image"
    assert signature["input"]["dtype"] == "uint8"
    assert signature["input"]["shape"] == [None, 8, 8, 1]
    assert signature["output"]["name"] == "probabilities"
    assert signature["output"]["shape"] == [None, 10]
    assert signature["classes"] == DIGIT_CLASSES == test.classes
    assert signature["file"] == MODEL_FILES[format_name]
    assert signature["calibration"]["temperature"] == model.temperature
    assert signature["calibration"]["inside_model"] is (model.temperature is not None)
    if strategy == "scratch":
        assert model.temperature is not None and model.temperature != 1.0
    inside = " ".join(signature["preprocessing"]["inside_model"])
    if strategy == "scratch":
        assert "Rescaling (rescale)" in inside
    else:
        # Gray to RGB, 8x8 to the backbone's 32x32 and VGG16's own preprocessing travel inside.
        for layer in ("gray_to_rgb", "resize_to_backbone", "vgg16_preprocess"):
            assert layer in inside

    # The written file, loaded by the format's runtime here, answers as the Keras model does
    # (on the first images: the exporter has compared the whole split).
    reference = model.keras_probabilities[:RESCORED]
    answered = predict_with_own_runtime(format_name, exported.model_path, test.x[:RESCORED])
    assert answered.dtype == np.float32 and answered.shape == (RESCORED, 10)
    np.testing.assert_array_equal(answered.argmax(axis=1), reference.argmax(axis=1))
    assert np.abs(answered - reference).max() <= 1e-4


@pytest.mark.parametrize("format_name", ["onnx", "tflite"])
def test_int8_keeps_accuracy_within_a_point_at_under_half_the_size(
    format_name: str, trained, digits, tmp_path: Path
) -> None:
    """Post-training int8, calibrated on training images: within 1 point of the Keras model's
    test accuracy, and less than half the size of the Keras file and of the float export."""
    model = trained["scratch"]
    source = _source(model, "scratch")
    floating = export_model(source, format_name, "none", digits["test"], None, tmp_path)
    quantized = export_model(source, format_name, "int8", digits["test"], digits["train"], tmp_path)
    assert quantized.folder == tmp_path / f"{format_name}-int8"
    assert floating.folder.is_dir()  # the float export is its own folder, kept

    parity = _read_json(quantized.folder / "parity.json")
    assert parity["quantize"] == "int8" and parity["passed"] is True
    assert parity["tolerance"] == {"accuracy_drop_points": 1.0}
    assert parity["accuracy_drop_points"] <= 1.0
    assert parity["keras_accuracy"] - parity["export_accuracy"] <= 0.01 + 1e-9
    assert parity["size_ratio"] < 0.5
    assert parity["size_bytes"] == quantized.model_path.stat().st_size
    assert quantized.model_path.stat().st_size < 0.5 * floating.model_path.stat().st_size
    assert _read_json(quantized.folder / "signature.json")["quantize"] == "int8"

    # Its accuracy, from its own runtime here, is the figure parity.json holds.
    answered = predict_with_own_runtime(format_name, quantized.model_path, digits["test"].x)
    accuracy = float((answered.argmax(axis=1) == digits["test"].y).mean())
    assert accuracy == pytest.approx(parity["export_accuracy"])
    keras_accuracy = float((model.keras_probabilities.argmax(axis=1) == digits["test"].y).mean())
    assert keras_accuracy - accuracy <= 0.01 + 1e-9


@pytest.mark.parametrize("format_name", ["onnx", "tflite"])
def test_fp16_keeps_every_class_within_its_tolerance(
    format_name: str, trained, digits, tmp_path: Path
) -> None:
    """fp16 weights: the same top-1 class for every test image, probabilities within 1e-2, and
    about half the float export's size."""
    source = _source(trained["scratch"], "scratch")
    floating = export_model(source, format_name, "none", digits["test"], None, tmp_path)
    halved = export_model(source, format_name, "fp16", digits["test"], None, tmp_path)
    parity = _read_json(tmp_path / f"{format_name}-fp16" / "parity.json")
    assert parity["tolerance"] == {"max_abs_diff": 1e-2, "disagreements": 0}
    assert parity["top1_agreement"] == 1.0
    assert parity["max_abs_diff"] <= 1e-2
    assert halved.model_path.stat().st_size < 0.6 * floating.model_path.stat().st_size


def _output_bias(model_file: Path) -> np.ndarray:
    """The output layer's bias (temperature folded in), as float32: bytes to find in an export."""
    model = keras.saving.load_model(model_file)
    bias = np.asarray(model.get_layer("predictions").get_weights()[1], dtype=np.float32)
    assert np.unique(bias).size == bias.size  # trained: distinct values, found only once
    return bias


def _tamper_onnx(path: Path, bias: np.ndarray) -> None:
    """Raise one class's output bias by 0.05 in the ONNX file's initializer: a subtle change
    that moves probabilities by far more than 1e-4."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    matches = [
        initializer
        for initializer in proto.graph.initializer
        if np.array_equal(numpy_helper.to_array(initializer).reshape(-1), bias)
    ]
    assert len(matches) == 1, "the output bias is not one initializer of the ONNX file"
    altered = numpy_helper.to_array(matches[0]).copy()
    altered.reshape(-1)[3] += 0.05
    matches[0].CopyFrom(numpy_helper.from_array(altered, matches[0].name))
    onnx.save(proto, str(path))


def _tamper_tflite(path: Path, bias: np.ndarray) -> None:
    """Overwrite the output bias's bytes in the TFLite flatbuffer: class 3 gets +20, so every
    test image's top class becomes 3."""
    content = path.read_bytes()
    assert content.count(bias.tobytes()) == 1, "the output bias is not once in the TFLite file"
    altered = bias.copy()
    altered[3] += 20.0
    path.write_bytes(content.replace(bias.tobytes(), altered.tobytes()))


TAMPERS = {
    "onnx": (_tamper_onnx, "max_abs_diff"),
    "tflite": (_tamper_tflite, "top1_agreement"),
}


@pytest.mark.parametrize("format_name", sorted(TAMPERS))
def test_a_tampered_export_fails_parity_and_is_refused(
    format_name: str, trained, digits, tmp_path: Path, monkeypatch
) -> None:
    """The converter's output altered after conversion (weights changed): parity catches it,
    the export is refused naming the figure, and nothing replaces what was there."""
    model = trained["scratch"]
    source = _source(model, "scratch")
    tamper, figure = TAMPERS[format_name]
    bias = _output_bias(model.model_file)
    convert = exporter.write_model

    def write_then_tamper(keras_model, name, quantize, target, representative=None) -> None:
        convert(keras_model, name, quantize, target, representative)
        tamper(Path(target), bias)

    # Refused where nothing was exported before: nothing is written.
    with monkeypatch.context() as patch:
        patch.setattr(exporter, "write_model", write_then_tamper)
        with pytest.raises(ExportError, match=rf"{format_name}: {figure} ") as refused:
            export_model(source, format_name, "none", digits["test"], None, tmp_path)
    assert "nothing written" in str(refused.value)
    assert list(tmp_path.iterdir()) == []

    # A good export, then a tampered one over it: the good one stays, byte for byte.
    export_model(source, format_name, "none", digits["test"], None, tmp_path)
    good = _snapshot(tmp_path / format_name)
    assert _read_json(tmp_path / format_name / "parity.json")["passed"] is True
    with monkeypatch.context() as patch:
        patch.setattr(exporter, "write_model", write_then_tamper)
        with pytest.raises(ExportError, match=rf"{format_name}: {figure} ") as refused:
            export_model(source, format_name, "none", digits["test"], None, tmp_path)
    message = str(refused.value)
    assert "refused the" in message and "models/scratch" in message
    assert "the previous export there is kept" in message
    assert _snapshot(tmp_path / format_name) == good
    assert [path.name for path in tmp_path.iterdir()] == [format_name]
