"""The conversions themselves, TensorFlow-only by nature (SavedModel, tf2onnx, TFLite's
converter), so each lives in a small named function here.

Every format traces the same function: the Keras model called with `training=False` on uint8
pixels named `image`, answering `probabilities`. Keras' own `model.export` traces
`model.__call__` without `training`, and a Keras 3.15 functional model called so runs its
augmentation layers (their default is training=True): the export answered 0.14 away from
`predict`, and tf2onnx met random ops it cannot convert. Preprocessing and the calibration
temperature are layers of the model, so they travel inside every export.

- SavedModel: `keras.export.ExportArchive` (Keras' maintained writer), endpoint `serve` and
  the `serving_default` signature TF Serving reads.
- ONNX: tf2onnx's `convert.from_function` (what Keras' own ONNX export calls), opset 17; fp16
  by onnxruntime's `float16` converter (inputs and outputs stay uint8 and float32); int8 by
  onnxruntime's static post-training quantization (QDQ, per-channel weights) calibrated on
  training images.
- TFLite: TensorFlow's `TFLiteConverter` from the SavedModel (what Keras' LiteRT export does),
  built-in ops only, so the file runs on the plain LiteRT runtime of a phone; fp16 and int8
  (with a representative set of training images) by the converter's own optimisation.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import ExportError
from pipeline.export.formats import INPUT_NAME, OUTPUT_NAME

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
"""Runs on onnxruntime 1.14 and later, ONNX Runtime Web and Mobile included."""


def write_model(
    model,
    format_name: str,
    quantize: str,
    target: Path,
    representative: np.ndarray | None = None,
) -> None:
    """Write `model` (a Keras classifier taking uint8 images) as `format_name` at `target` (a
    file; a folder for saved_model), quantized as asked; `representative` (uint8 training
    images) calibrates int8. Raises ExportError naming the layers a format cannot hold."""
    _require_tensorflow_backend()
    if quantize == "int8" and (representative is None or not len(representative)):
        raise ExportError("int8 quantization needs representative training images; none given")
    if format_name == "saved_model":
        write_saved_model(model, target)
    elif format_name == "onnx":
        write_onnx(model, target, quantize, representative)
    elif format_name == "tflite":
        write_tflite(model, target, quantize, representative)
    else:
        raise ExportError(f"unknown export format {format_name!r}")


def _require_tensorflow_backend() -> None:
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"exports are made by TensorFlow's converters; this process runs Keras on "
            f"{keras.backend.backend()!r}: run it with KERAS_BACKEND=tensorflow"
        )


def _input_spec(model):
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape[1:])
    if any(side is None for side in shape):
        raise ExportError(f"the model's input shape {shape} is not fixed; exports need one")
    return tf.TensorSpec((None, *shape), tf.uint8, name=INPUT_NAME)


def serving_function(model):
    """The traced function every format is made from: uint8 `image` -> `probabilities` (one
    column per class), in inference mode."""
    import tensorflow as tf

    spec = _input_spec(model)

    @tf.function(input_signature=[spec])
    def serve(image):
        probabilities = tf.cast(model(image, training=False), tf.float32)
        if probabilities.shape[-1] == 1:
            # A two-class model's one sigmoid unit (pipeline.models.outputs): the export answers
            # a column per class, [1 - p, p], as the served model does.
            probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
        return {OUTPUT_NAME: probabilities}

    return serve, spec


def write_saved_model(model, folder: Path) -> None:
    """A SavedModel at `folder`: endpoint `serve` and signature `serving_default`."""
    import keras

    serve, spec = serving_function(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=[spec])
    try:
        archive.write_out(str(folder), verbose=False)
    except Exception as error:  # noqa: BLE001 - TensorFlow's errors name the op
        raise ExportError(f"SavedModel: {_named_layers(str(error), model)}") from None


def write_onnx(model, path: Path, quantize: str, representative: np.ndarray | None) -> None:
    """An ONNX file at `path` (opset ONNX_OPSET), quantized as asked."""
    import onnx
    import tf2onnx

    serve, spec = serving_function(model)
    with _quiet_tf2onnx():
        try:
            proto, _ = tf2onnx.convert.from_function(
                serve, input_signature=[spec], opset=ONNX_OPSET
            )
        except Exception as error:  # noqa: BLE001 - tf2onnx raises plain exceptions
            raise ExportError(f"ONNX: {_named_layers(str(error), model)}") from None
    unsupported = _onnx_unsupported_nodes(proto)
    if unsupported:
        raise ExportError(
            "ONNX cannot hold "
            + _named_layers(" ".join(unsupported), model)
            + ": tf2onnx found no ONNX operator for them"
        )
    if quantize == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = convert_float_to_float16(proto, keep_io_types=True)
    if quantize == "int8":
        _write_onnx_int8(proto, path, representative)
        return
    onnx.save(proto, str(path))


def _onnx_unsupported_nodes(proto) -> list[str]:
    """Nodes tf2onnx left as TensorFlow ops (outside every ONNX domain), by name."""
    import onnx

    known = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
    schemas = {schema.name for schema in onnx.defs.get_all_schemas()}
    return [
        f"{node.name} ({node.op_type})"
        for node in proto.graph.node
        if node.domain not in known
        or (node.domain in ("", "ai.onnx") and node.op_type not in schemas)
    ]


def _write_onnx_int8(proto, path: Path, representative: np.ndarray) -> None:
    """Static int8 quantization (QDQ, per-channel weights), calibrated on `representative`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Images(CalibrationDataReader):
        def __init__(self, images: np.ndarray) -> None:
            self._batches = iter([{INPUT_NAME: images[i : i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        floating = Path(scratch) / "float.onnx"
        prepared = Path(scratch) / "prepared.onnx"
        onnx.save(proto, str(floating))
        # Shape inference and graph folding, as onnxruntime recommends before quantizing;
        # its symbolic pass needs sympy, which ONNX's own shape inference does not.
        quant_pre_process(str(floating), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(path),
            _Images(representative),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )


def write_tflite(model, path: Path, quantize: str, representative: np.ndarray | None) -> None:
    """A TFLite file at `path`, built-in ops only, quantized as asked."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(scratch) / "saved_model"
        write_saved_model(model, saved)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            images = representative

            def representative_dataset() -> Iterator[list[np.ndarray]]:
                for index in range(len(images)):
                    yield [images[index : index + 1]]

            converter.representative_dataset = representative_dataset
        try:
            content = converter.convert()
        except Exception as error:  # noqa: BLE001 - the converter's errors name the ops
            raise ExportError(f"TFLite cannot hold {_named_layers(str(error), model)}") from None
    Path(path).write_bytes(content)


def _quiet_tf2onnx():
    """tf2onnx logs every folded node at INFO; only its warnings reach the user."""
    import contextlib

    @contextlib.contextmanager
    def quiet():
        loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow")]
        levels = [each.level for each in loggers]
        for each in loggers:
            each.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for each, level in zip(loggers, levels, strict=True):
                each.setLevel(level)

    return quiet()


def layer_names(model) -> list[str]:
    """Every layer's name in `model`, nested models' layers included."""
    names: list[str] = []
    for layer in model.layers:
        names.append(layer.name)
        if hasattr(layer, "layers"):
            names.extend(layer_names(layer))
    return names


def _named_layers(text: str, model) -> str:
    """`text` (a converter's error) led by the Keras layers its op names point at: traced op
    names are paths such as `digits_convnet_1/jitter_shift_1/ImageProjectiveTransformV3`."""
    known = set(layer_names(model))
    found: list[str] = []
    for part in re.findall(r"[A-Za-z0-9_.]+(?=/)", text):
        name = re.sub(r"_\d+$", "", part)
        for candidate in (part, name):
            if candidate in known and candidate != model.name and candidate not in found:
                found.append(candidate)
                break
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # TFLite's converter puts the ops it lacks on a line of its own, after pages of MLIR.
    named = [line for line in lines if "ops:" in line or "not supported" in line]
    first = (named or lines or ["conversion failed"])[0][:400]
    ops = sorted(set(re.findall(r"\btf\.([A-Za-z][A-Za-z0-9]*)\(", text)))
    if ops and named:
        first = f"TensorFlow op(s) {', '.join(ops)}: not built into the runtime"
    if not found:
        return first
    return f"layer(s) {', '.join(found)} ({first})"
