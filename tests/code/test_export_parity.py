"""The export parity rule and the formats' table, as pure functions (pipeline/export/parity.py,
pipeline/export/formats.py): float exports must give every test image the Keras model's class
and come within the quantization's tolerance, int8 exports within a point of its accuracy;
each miss is named by its figure."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ExportError
from pipeline.export.formats import (
    FLOAT_TOLERANCE,
    FORMATS,
    INT8_MAX_ACCURACY_DROP,
    MODEL_FILES,
    QUANTIZATIONS,
    check_format,
    export_name,
)
from pipeline.export.parity import Parity, measure_parity


def _keras(count: int = 100, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Confident probabilities (top class at least 0.4 ahead) and labels that agree with them
    on 90 of 100 images."""
    rng = np.random.default_rng(seed)
    top = rng.integers(0, classes, count)
    probabilities = np.full((count, classes), 0.1 / (classes - 1))
    probabilities[np.arange(count), top] = 0.9
    labels = top.copy()
    labels[:10] = (top[:10] + 1) % classes
    return probabilities, labels


def _measure(keras, export, labels, quantize: str = "none", **figures) -> Parity:
    options = {
        "format_name": "onnx",
        "quantize": quantize,
        "runtime": "onnxruntime",
        "runtime_version": "1.0",
        "size_bytes": 250,
        "keras_size_bytes": 1000,
        **figures,
    }
    return measure_parity(keras, export, labels, **options)


def test_identical_answers_pass_with_exact_figures() -> None:
    keras, labels = _keras()
    parity = _measure(keras, keras.astype(np.float32), labels)
    assert parity.passed and parity.failures == []
    assert parity.images == 100
    assert parity.top1_agreement == 1.0 and parity.disagreements == 0
    assert parity.max_abs_diff < 1e-7  # float32 rounding of the same numbers
    assert parity.keras_accuracy == parity.export_accuracy == 0.9
    assert parity.accuracy_drop_points == 0.0
    assert parity.size_ratio == 0.25
    assert parity.tolerance == {"max_abs_diff": 1e-4, "disagreements": 0}


@pytest.mark.parametrize(
    ("quantize", "inside", "outside"),
    [("none", 0.9e-4, 1.1e-4), ("fp16", 0.9e-2, 1.1e-2)],
)
def test_float_tolerance_is_the_largest_probability_difference(
    quantize: str, inside: float, outside: float
) -> None:
    keras, labels = _keras()
    within = keras.copy()
    within[5, :2] += [inside, -inside]
    assert _measure(keras, within, labels, quantize).passed
    beyond = keras.copy()
    beyond[5, :2] += [outside, -outside]
    parity = _measure(keras, beyond, labels, quantize)
    assert not parity.passed
    assert parity.top1_agreement == 1.0  # the class is the same: only the figure misses
    assert parity.max_abs_diff == pytest.approx(outside)
    label = "onnx" if quantize == "none" else "onnx fp16"
    (failure,) = parity.failures
    assert failure.startswith(f"{label}: max_abs_diff {outside:.3g} ")
    assert f"tolerance of {FLOAT_TOLERANCE[quantize]:g}" in failure


def test_the_float_tolerances_are_the_issues() -> None:
    assert FLOAT_TOLERANCE == {"none": 1e-4, "fp16": 1e-2}
    assert INT8_MAX_ACCURACY_DROP == 0.01


def test_one_image_of_another_class_fails_a_float_export_even_within_tolerance() -> None:
    """A near tie that the export breaks the other way: the difference is tiny, but a client
    would get another class."""
    keras, labels = _keras()
    keras[7] = [0.5, 0.5 - 1e-6, 0.0, 0.0]
    export = keras.copy()
    export[7] = [0.5 - 1e-6, 0.5, 0.0, 0.0]
    parity = _measure(keras, export, labels)
    assert parity.max_abs_diff <= 1e-4
    assert parity.disagreements == 1
    assert parity.top1_agreement == pytest.approx(0.99)
    (failure,) = parity.failures
    assert failure.startswith("onnx: top1_agreement 0.990000: 1 of 100 test images")


def test_every_missed_figure_is_named() -> None:
    keras, labels = _keras()
    export = keras.copy()
    export[:3] = np.roll(keras[:3], 1, axis=1)
    parity = _measure(keras, export, labels)
    assert parity.disagreements == 3
    assert [failure.split(" ")[1] for failure in parity.failures] == [
        "top1_agreement",
        "max_abs_diff",
    ]


def test_int8_is_held_to_accuracy_not_to_each_probability() -> None:
    """Quantization moves probabilities by design: 0.3 away and 1 image flipped still passes
    when the accuracy falls by at most 1 point."""
    keras, labels = _keras()
    export = 0.7 * keras + 0.3 / keras.shape[1]
    correct = np.flatnonzero(keras.argmax(axis=1) == labels)
    wrong_class = (labels[correct[0]] + 1) % keras.shape[1]
    export[correct[0]] = 0.0
    export[correct[0], wrong_class] = 1.0
    parity = _measure(keras, export, labels, "int8")
    assert parity.passed, parity.failures
    assert parity.disagreements == 1 and parity.max_abs_diff > 0.2
    assert parity.accuracy_drop_points == pytest.approx(1.0)
    assert parity.tolerance == {"accuracy_drop_points": 1.0}


def test_int8_fails_beyond_one_point_naming_the_accuracies() -> None:
    keras, labels = _keras()
    export = keras.copy()
    correct = np.flatnonzero(keras.argmax(axis=1) == labels)[:2]
    export[correct] = np.roll(keras[correct], 1, axis=1)
    parity = _measure(keras, export, labels, "int8")
    assert parity.accuracy_drop_points == pytest.approx(2.0)
    (failure,) = parity.failures
    assert failure.startswith("onnx int8: accuracy_drop_points 2.00 ")
    assert "test accuracy 0.8800 against the Keras model's 0.9000" in failure


def test_int8_more_accurate_than_keras_passes() -> None:
    keras, labels = _keras()
    export = keras.copy()
    wrong = np.flatnonzero(keras.argmax(axis=1) != labels)
    export[wrong] = np.eye(keras.shape[1])[labels[wrong]]
    parity = _measure(keras, export, labels, "int8")
    assert parity.passed and parity.accuracy_drop_points == pytest.approx(-10.0)


@pytest.mark.parametrize("quantize", QUANTIZATIONS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite_answers_fail_whatever_the_quantization(quantize: str, bad: float) -> None:
    keras, labels = _keras()
    export = keras.copy()
    export[4, 2] = bad
    parity = _measure(keras, export, labels, quantize)
    assert not parity.passed
    assert "the export answered NaN or infinite probabilities" in parity.failures[0]
    assert parity.max_abs_diff == float("inf")


def test_a_keras_model_answering_nan_fails_parity() -> None:
    keras, labels = _keras()
    export = keras.copy()
    keras = keras.copy()
    keras[4] = np.nan
    export[4] = [1.0, 0.0, 0.0, 0.0]  # the class np.argmax gives a NaN row, so top-1 agrees
    labels[4] = 0
    parity = _measure(keras, export, labels)
    assert not parity.passed
    assert not np.isnan(parity.max_abs_diff)  # parity.json holds no NaN figure


def test_a_shape_mismatch_names_both_shapes() -> None:
    keras, labels = _keras()
    with pytest.raises(ExportError, match=r"shape \(100, 3\), the Keras model \(100, 4\)"):
        _measure(keras, keras[:, :3], labels)


def test_figures_serialise_and_tag_a_registered_version() -> None:
    keras, labels = _keras()
    parity = _measure(keras, keras, labels, size_bytes=123, keras_size_bytes=0)
    figures = parity.to_dict()
    assert figures["passed"] is True
    assert figures["format"] == "onnx" and figures["runtime"] == "onnxruntime"
    assert np.isnan(figures["size_ratio"])  # no Keras file size to compare with
    tags = parity.tags("export.onnx")
    assert tags == {
        "export.onnx.top1_agreement": "1.000000",
        "export.onnx.max_abs_diff": "0",
        "export.onnx.accuracy": "0.900000",
        "export.onnx.size_ratio": "nan",
        "export.onnx.runtime": "onnxruntime 1.0",
    }


@pytest.mark.parametrize("format_name", FORMATS)
@pytest.mark.parametrize("quantize", QUANTIZATIONS)
def test_check_format_accepts_what_a_converter_makes(format_name: str, quantize: str) -> None:
    if format_name == "saved_model" and quantize != "none":
        with pytest.raises(ExportError, match=f"--quantize {quantize} applies to onnx and tflite"):
            check_format(format_name, quantize)
    else:
        check_format(format_name, quantize)


@pytest.mark.parametrize(
    ("format_name", "quantize", "message"),
    [
        ("torchscript", "none", r"unknown export format 'torchscript'; choose one of onnx, "),
        ("onnx", "int4", r"unknown quantization 'int4'; choose one of none, fp16, int8"),
        ("ONNX", "none", r"unknown export format 'ONNX'"),
    ],
)
def test_check_format_names_the_value_and_the_choices(
    format_name: str, quantize: str, message: str
) -> None:
    with pytest.raises(ExportError, match=message):
        check_format(format_name, quantize)


def test_export_folders_and_files() -> None:
    assert FORMATS == ("onnx", "tflite", "saved_model")
    assert QUANTIZATIONS == ("none", "fp16", "int8")
    assert set(MODEL_FILES) == set(FORMATS)
    assert export_name("onnx", "none") == "onnx"
    assert export_name("tflite", "int8") == "tflite-int8"
    assert export_name("onnx", "fp16") == "onnx-fp16"
