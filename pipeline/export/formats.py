"""The export formats, their quantizations, files and parity tolerances (pure)."""

from __future__ import annotations

from typing import Literal

from pipeline.errors import ExportError

ExportFormat = Literal["onnx", "tflite", "saved_model"]
Quantization = Literal["none", "fp16", "int8"]

FORMATS: tuple[str, ...] = ("onnx", "tflite", "saved_model")
QUANTIZATIONS: tuple[str, ...] = ("none", "fp16", "int8")

MODEL_FILES: dict[str, str] = {
    "onnx": "model.onnx",
    "tflite": "model.tflite",
    "saved_model": "saved_model",
}
"""What each export folder holds its model in (a SavedModel is a folder)."""

SIGNATURE_FILE = "signature.json"
PARITY_FILE = "parity.json"

INPUT_NAME = "image"
"""The exported model's one input: uint8 pixels, (batch, height, width, channels)."""
OUTPUT_NAME = "probabilities"
"""Its output: float32 class probabilities, (batch, classes), in the classes' label order."""

FLOAT_TOLERANCE: dict[str, float] = {"none": 1e-4, "fp16": 1e-2}
"""The largest difference allowed between an export's probability and the Keras model's, for
any test image and class, by quantization."""
INT8_MAX_ACCURACY_DROP = 0.01
"""An int8 export's test accuracy may be at most this much (1 point) below the Keras model's;
its probabilities are not compared one by one (quantization moves them by design)."""

REPRESENTATIVE_IMAGES = 200
"""Training images an int8 quantization calibrates its ranges on (never test images)."""


def check_format(format_name: str, quantize: str) -> None:
    """ExportError naming the value and the choices, for an unknown format or quantization or
    a combination no converter makes."""
    if format_name not in FORMATS:
        raise ExportError(
            f"unknown export format {format_name!r}; choose one of {', '.join(FORMATS)}"
        )
    if quantize not in QUANTIZATIONS:
        raise ExportError(
            f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}"
        )
    if format_name == "saved_model" and quantize != "none":
        raise ExportError(
            f"--quantize {quantize} applies to onnx and tflite: a SavedModel is exported in "
            "float32 (quantize its TFLite or ONNX export instead)"
        )


def export_name(format_name: str, quantize: str) -> str:
    """The export's folder name: `onnx`, `tflite-int8`, `saved_model`."""
    return format_name if quantize == "none" else f"{format_name}-{quantize}"


def parse_export_name(name: str) -> tuple[str, str]:
    """(format, quantization) of an export's name: `onnx` -> (onnx, none), `tflite-int8` ->
    (tflite, int8); ExportError naming the choices for anything else."""
    format_name, _, quantize = name.partition("-")
    quantize = quantize or "none"
    check_format(format_name, quantize)
    return format_name, quantize
