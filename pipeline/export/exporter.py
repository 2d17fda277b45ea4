"""One export: convert a Keras classifier, score the test split with the export's own runtime
and with Keras, and keep the export only if it passes parity.

The export is written into a staging folder beside `<out>/<format>[-<quantize>]/`; the folder
replaces the old one only once parity has passed, so a refused export leaves the previous good
one where it was. The folder holds the model (model.onnx, model.tflite or saved_model/),
signature.json (what a client sends and gets back) and parity.json (the figures).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from pipeline.errors import ExportError
from pipeline.evaluation.metrics import predict_batch_size
from pipeline.export.converters import write_model
from pipeline.export.formats import (
    INPUT_NAME,
    MODEL_FILES,
    OUTPUT_NAME,
    PARITY_FILE,
    REPRESENTATIVE_IMAGES,
    SIGNATURE_FILE,
    check_format,
    export_name,
)
from pipeline.export.parity import Parity, measure_parity
from pipeline.export.runtimes import open_runtime
from pipeline.models.outputs import class_probabilities, output_units
from pipeline.store import ImageSplit, atomic_directory, sha256_of, write_json

logger = logging.getLogger(__name__)

PREPROCESSING_LAYERS = (
    "Rescaling",
    "Resizing",
    "Normalization",
    "CenterCrop",
    "Lambda",
    "Concatenate",
)
"""Layer classes that signature.json lists as the preprocessing inside the model."""


@dataclass(frozen=True)
class Exported:
    """An export that passed parity: its folder, model path, signature and figures."""

    folder: Path
    model_path: Path
    signature: dict
    parity: Parity

    @property
    def digest_file(self) -> Path:
        """The file whose SHA-256 identifies the export (a SavedModel's graph and its
        variables' index live in saved_model.pb; the ONNX and TFLite files are whole)."""
        if self.model_path.is_dir():
            return self.model_path / "saved_model.pb"
        return self.model_path


@dataclass(frozen=True)
class ExportSource:
    """What is exported: the Keras model file, its classes in label order, and what the
    signature says about it."""

    model_file: Path
    classes: list[str]
    uri: str
    """How the user named it: models:/name/3, models/scratch, a path."""
    resize: str = "stretch"
    """data.resize: how a client should bring a file to the input size (as split does)."""
    temperature: float | None = None
    """The calibration temperature folded into the output layer, when known."""


def export_model(
    source: ExportSource,
    format_name: str,
    quantize: str,
    test: ImageSplit,
    train: ImageSplit | None,
    out: Path,
    seed: int = 0,
) -> Exported:
    """Export `source` as `format_name` (quantized as asked) under `out`, score every image of
    `test` with the export's runtime and with Keras, and keep it only if parity passes; int8
    calibrates on up to REPRESENTATIVE_IMAGES images of `train` (never `test`). Raises
    ExportError naming the failed figure, with the previous export at that place kept."""
    import keras

    check_format(format_name, quantize)
    if not Path(source.model_file).is_file():
        raise ExportError(f"{source.model_file}: no model file there to export")
    if not len(test):
        raise ExportError(f"{test.root if hasattr(test, 'root') else 'the test split'} is empty")
    out = _usable_folder(Path(out))
    try:
        model = keras.saving.load_model(source.model_file)
    except Exception as error:  # noqa: BLE001 - Keras raises ValueError, OSError, zip errors
        raise ExportError(
            f"{source.model_file}: Keras cannot load it ({_first_line(error)}); retrain it, or "
            "name another model"
        ) from None
    _check_shapes(model, source, test)
    representative = None
    if quantize == "int8":
        if train is None or not len(train):
            raise ExportError("int8 quantization calibrates on the train split, which is empty")
        representative = representative_images(train, seed)
    name = export_name(format_name, quantize)
    target = Path(out) / name
    started = time.perf_counter()
    with atomic_directory(target) as staging:
        model_path = staging / MODEL_FILES[format_name]
        try:
            write_model(model, format_name, quantize, model_path, representative)
            runtime = open_runtime(format_name, model_path)
            keras_probabilities, export_probabilities = _score_both(model, runtime, test)
        except ExportError:
            raise
        except Exception as error:  # noqa: BLE001 - a converter's or a runtime's own failure
            raise ExportError(
                f"the {name} export of {source.uri} failed: {type(error).__name__}: "
                f"{_first_line(error)}"
            ) from None
        parity = measure_parity(
            keras_probabilities,
            export_probabilities,
            test.y,
            format_name=format_name,
            quantize=quantize,
            runtime=runtime.name,
            runtime_version=runtime.version,
            size_bytes=_size_of(model_path),
            keras_size_bytes=_size_of(Path(source.model_file)),
        )
        if not parity.passed:
            kept = "the previous export there is kept" if target.exists() else "nothing written"
            raise ExportError(
                f"refused the {name} export of {source.uri}: "
                + "; ".join(parity.failures)
                + f". {target}: {kept}"
            )
        signature = build_signature(model, source, format_name, quantize, model_path.name)
        write_json(staging / SIGNATURE_FILE, signature)
        write_json(staging / PARITY_FILE, parity.to_dict())
    logger.info(
        "exported %s as %s in %.1f s: %d test images, top-1 agreement %.4f, max |diff| %.2g, "
        "accuracy %.4f (Keras %.4f), %.2fx the Keras file's size",
        source.uri,
        name,
        time.perf_counter() - started,
        parity.images,
        parity.top1_agreement,
        parity.max_abs_diff,
        parity.export_accuracy,
        parity.keras_accuracy,
        parity.size_ratio,
    )
    return Exported(target, target / MODEL_FILES[format_name], signature, parity)


def _usable_folder(out: Path) -> Path:
    """`out`, made if missing; ExportError when it is a file or cannot be written."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file; name a folder for the export")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(
            f"--out {out}: cannot be used ({error.strerror}); name a writable folder"
        ) from None
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def representative_images(train: ImageSplit, seed: int = 0) -> np.ndarray:
    """A fixed sample of up to REPRESENTATIVE_IMAGES training images (uint8), in row order."""
    count = min(REPRESENTATIVE_IMAGES, len(train))
    rows = np.sort(np.random.default_rng(seed).choice(len(train), size=count, replace=False))
    return np.asarray(train.read(rows), dtype=np.uint8)


def _check_shapes(model, source: ExportSource, test: ImageSplit) -> None:
    shape = tuple(int(side) for side in model.inputs[0].shape[1:])
    if tuple(test.image_shape) != shape:
        raise ExportError(
            f"{source.uri} takes images of shape {shape}, the test split holds "
            f"{tuple(test.image_shape)}: export with the data it was trained on"
        )
    outputs = int(model.outputs[0].shape[-1])
    if outputs != output_units(len(source.classes)):
        raise ExportError(
            f"{source.uri} answers {outputs} classes, its classes file names {len(source.classes)}"
        )
    if list(test.classes) != list(source.classes):
        raise ExportError(
            f"{source.uri} was trained on the classes {source.classes}, the test split holds "
            f"{list(test.classes)}: export with the data it was trained on"
        )


def _score_both(model, runtime, test: ImageSplit) -> tuple[np.ndarray, np.ndarray]:
    """Every test image's probabilities from Keras and from the export, batch by batch."""
    keras_parts: list[np.ndarray] = []
    export_parts: list[np.ndarray] = []
    for _, batch in test.batches(predict_batch_size(test.image_shape, most=256)):
        keras_parts.append(class_probabilities(model.predict_on_batch(batch)).astype(np.float32))
        export_parts.append(runtime.predict(np.ascontiguousarray(batch, dtype=np.uint8)))
    return np.concatenate(keras_parts), np.concatenate(export_parts)


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(each.stat().st_size for each in path.rglob("*") if each.is_file())
    return path.stat().st_size


def build_signature(
    model, source: ExportSource, format_name: str, quantize: str, file: str
) -> dict:
    """signature.json: what a client sends (uint8 pixels) and gets back (probabilities in
    the classes' order), and what the model does inside so the client does not."""
    height, width, channels = (int(side) for side in model.inputs[0].shape[1:])
    inside = [
        f"{type(layer).__name__} ({layer.name})"
        for layer in _all_layers(model)
        if type(layer).__name__ in PREPROCESSING_LAYERS or layer.name.endswith("_preprocess")
    ]
    return {
        "format": format_name,
        "quantize": quantize,
        "file": file,
        "input": {
            "name": INPUT_NAME,
            "shape": [None, height, width, channels],
            "dtype": "uint8",
            "layout": "NHWC",
            "range": [0, 255],
            "meaning": "raw pixels: no scaling, centring or channel reordering by the client",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": [None, len(source.classes)],
            "dtype": "float32",
            "meaning": "class probabilities in label order (calibrated when a temperature is "
            "given below)",
        },
        "classes": list(source.classes),
        "preprocessing": {
            "client": (
                f"decode the file (EXIF orientation applied), convert to "
                f"{'RGB' if channels == 3 else 'grayscale'}, resize to {height}x{width} "
                f"({source.resize}, bilinear), as pipeline.datasets.images.decode_image does; "
                "an image with transparency goes on white first"
            ),
            "inside_model": inside,
        },
        "calibration": {
            "temperature": source.temperature,
            "inside_model": source.temperature is not None,
        },
        "source": {
            "model": source.uri,
            "keras_model_sha256": sha256_of(Path(source.model_file)),
        },
        "converters": _converter_versions(format_name, quantize),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _all_layers(model) -> list:
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found


def _converter_versions(format_name: str, quantize: str) -> dict[str, str]:
    names = ["tensorflow", "keras"]
    if format_name == "onnx":
        names += ["tf2onnx", "onnx"] + (["onnxruntime"] if quantize != "none" else [])
    return {name: _version(name) for name in names}


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
