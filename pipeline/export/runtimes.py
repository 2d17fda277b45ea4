"""Each format's own runtime, never Keras: onnxruntime for ONNX, LiteRT (ai-edge-litert, the
successor of tf.lite.Interpreter) for TFLite, TensorFlow for a SavedModel. Each takes uint8
batches and answers float32 probabilities, as the Keras model does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ExportError
from pipeline.export.formats import INPUT_NAME, OUTPUT_NAME


@dataclass
class Runtime:
    """A loaded export: `predict(uint8 batch)` gives its probabilities."""

    name: str
    version: str
    session: Any

    def predict(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntime(Runtime):
    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0], np.float32)


class LiteRtRuntime(Runtime):
    def predict(self, images: np.ndarray) -> np.ndarray:
        # The signature runner resizes the input to each batch's size.
        answer = self.session(**{INPUT_NAME: np.ascontiguousarray(images)})
        return np.asarray(answer[OUTPUT_NAME], np.float32)


class TensorFlowRuntime(Runtime):
    def predict(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        answer = self.session(**{INPUT_NAME: tf.constant(images)})
        return np.asarray(answer[OUTPUT_NAME], np.float32)


def onnx_session(path: Path, threads: int | None = None):
    """An onnxruntime session on the CPU for `path`, all graph optimisations on."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def open_runtime(format_name: str, path: Path) -> Runtime:
    """The export at `path` loaded by its own runtime; ExportError when it cannot load."""
    try:
        if format_name == "onnx":
            import onnxruntime

            return OnnxRuntime("onnxruntime", onnxruntime.__version__, onnx_session(path))
        if format_name == "tflite":
            import ai_edge_litert
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_path=str(path))
            version = getattr(ai_edge_litert, "__version__", None) or _distribution_version(
                "ai-edge-litert"
            )
            return LiteRtRuntime("ai-edge-litert", version, interpreter.get_signature_runner())
        if format_name == "saved_model":
            import tensorflow as tf

            loaded = tf.saved_model.load(str(path))
            return TensorFlowRuntime(
                "tensorflow",
                tf.__version__,
                _KeptAlive(loaded.signatures["serving_default"], loaded),
            )
    except ExportError:
        raise
    except Exception as error:  # noqa: BLE001 - each runtime raises its own errors
        text = str(error).strip().splitlines()[0][:500] if str(error).strip() else repr(error)
        raise ExportError(f"{path}: the {format_name} runtime cannot load it: {text}") from None
    raise ExportError(f"unknown export format {format_name!r}")


class _KeptAlive:
    """A SavedModel's signature, holding the loaded object its variables belong to."""

    def __init__(self, function, owner) -> None:
        self._function = function
        self._owner = owner

    def __call__(self, **inputs):
        return self._function(**inputs)


def _distribution_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
