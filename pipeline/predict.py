"""`pipeline predict`: classify a user's image files and folders with a trained model.

Each file is decoded exactly as the split stage decodes an image folder (pipeline.datasets.images:
any mode to RGB, EXIF orientation applied, `stretch` or `pad` to a square), at the size and
channels the model takes, so a file gets the answer it would get in the test split. A file that
cannot be decoded becomes a row saying why, and the run goes on.

The model is the one asked for (`--model`), else the registry's `champion`, else the best
strategy's `model.keras` by the evaluate stage's test accuracy.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.datasets.images import ResizeMode, decode_many
from pipeline.datasets.sources import IMAGE_EXTENSIONS
from pipeline.errors import ModelError, PipelineError, TrackingUnavailable
from pipeline.store import MODEL_FILE

logger = logging.getLogger("pipeline.predict")

MODEL_URI_PREFIXES: tuple[str, ...] = ("models:/", "runs:/")
"""Model sources that MLflow resolves through the tracking store."""
CLASSES_FILE = "classes.json"
"""Optional, beside a .keras file: its class names in label order, as a JSON list (the same
file the registered classifier carries), for a model used outside the project it came from."""
DEFAULT_BATCH_SIZE = 64
TOP_K = 3
"""Datasets of more than TOP_K classes get the runner-up classes as columns as well."""


@dataclass(frozen=True)
class ModelChoice:
    """Where the model comes from (a models:/ or runs:/ URI, or a path) and why it was chosen."""

    source: str
    reason: str


@dataclass(frozen=True)
class Classifier:
    """A loaded model, as predict needs it: raw uint8 images in, one probability per class out."""

    source: str
    classes: list[str]
    image_shape: tuple[int, int, int]
    """(height, width, channels) of the images the model takes."""
    predict_batch: Callable[[np.ndarray], np.ndarray]
    """uint8 (N, H, W, C) images -> float (N, len(classes)) probabilities."""


@dataclass(frozen=True)
class FilePrediction:
    """One file's answer: its class probabilities, or why it could not be read."""

    path: Path
    probabilities: np.ndarray | None
    error: str | None = None


# --- files ------------------------------------------------------------------------------------


def find_images(paths: Sequence[Path]) -> list[Path]:
    """The files to classify, in a deterministic order: the paths in the order given, a file as
    it is (whatever its extension), a folder as its image files at any depth, sorted (the
    extensions the image-folder reader accepts; hidden files and folders left out, as the split
    leaves them out). A file listed twice counts once.

    Raises PipelineError naming every path that does not exist, and when no image is found.
    """
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise PipelineError(
            f"{', '.join(missing)}: no such file or folder; pass image files or folders of them"
        )
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        images = sorted(
            candidate
            for candidate in path.rglob("*")
            if candidate.is_file()
            and candidate.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
        )
        if not images:
            logger.warning("%s holds no image file (%s)", path, ", ".join(IMAGE_EXTENSIONS))
        found.extend(images)
    if not found:
        raise PipelineError(
            f"no image file ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, paths))}"
        )
    return list(dict.fromkeys(found))


def read_images(
    paths: Sequence[Path], image_shape: tuple[int, int, int], resize: ResizeMode = "stretch"
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode `paths` to uint8 images of `image_shape`, as the split stage decodes an image
    folder; return them and {position: reason} for the files that could not be decoded (their
    rows are black).

    A one-channel model (digits, mnist, fashion_mnist) gets the files' luminance, Pillow's own
    RGB -> L conversion, which gives back exactly the gray values a grayscale PNG holds.
    """
    height, width, channels = image_shape
    if height != width or channels not in (1, 3):
        raise ModelError(
            f"the model takes images of shape {image_shape}; predict decodes files to square "
            "images of 1 (gray) or 3 (RGB) channels, as the split stage does"
        )
    rgb = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    bad = decode_many(paths, rgb, height, resize)
    if channels == 3:
        return rgb, bad
    return _to_gray(rgb), bad


def _to_gray(images: np.ndarray) -> np.ndarray:
    from PIL import Image

    gray = [np.asarray(Image.fromarray(image).convert("L")) for image in images]
    return np.stack(gray)[..., np.newaxis]


# --- the model --------------------------------------------------------------------------------


def is_model_uri(source: str) -> bool:
    return source.startswith(MODEL_URI_PREFIXES)


def _missing_sqlite_store(store_uri: str) -> Path | None:
    """The database file of a SQLite store that does not exist yet (MLflow would create an
    empty one just to find nothing in it), else None."""
    if not store_uri.startswith("sqlite:///"):
        return None
    database = Path(store_uri.removeprefix("sqlite:///"))
    return None if database.is_file() else database


def use_tracking_store(store_uri: str, source: str) -> None:
    """Point MLflow at the store that resolves `source` (a models:/ or runs:/ URI); raise
    TrackingUnavailable, naming the store, when it does not exist or does not answer."""
    from pipeline.tracking.server import check_tracking_server

    missing = _missing_sqlite_store(store_uri)
    if missing is not None:
        raise TrackingUnavailable(
            f"{source} needs a tracking store, and {missing} does not exist: run from the "
            "project root (or pass --root), or set MLFLOW_TRACKING_URI to the store that holds it"
        )
    check_tracking_server(store_uri)
    import mlflow

    mlflow.set_tracking_uri(store_uri)


def find_champion(store_uri: str, registered_name: str) -> str | None:
    """`models:/<registered_name>@champion` when the tracking store at `store_uri` has that
    alias, else None. A store that is absent or does not answer is reported (a warning) and
    passed over, so predict falls back to the project's own models."""
    # A SQLite file that does not exist holds no registry: nothing to create, nothing to warn.
    if _missing_sqlite_store(store_uri) is not None:
        return None
    try:
        use_tracking_store(store_uri, f"models:/{registered_name}@champion")
    except TrackingUnavailable as error:
        logger.warning("%s Looking for a local model instead.", error)
        return None
    from mlflow.exceptions import MlflowException

    from pipeline.registry import CHAMPION, champion_version

    try:
        version = champion_version(registered_name)
    except MlflowException as error:
        logger.warning(
            "cannot read the champion of %s from %s (%s); looking for a local model instead",
            registered_name,
            store_uri,
            str(error).splitlines()[0],
        )
        return None
    if version is None:
        return None
    logger.info("%s@%s is version %s", registered_name, CHAMPION, version.version)
    return f"models:/{registered_name}@{CHAMPION}"


def best_local_model(metrics_file: Path, models_dir: Path) -> Path | None:
    """models/<strategy>/model.keras of the strategy with the highest test accuracy in
    `metrics_file` (the promote stage's choice, ties to the first strategy); None when nothing
    has been evaluated."""
    from pipeline.config import STRATEGY_NAMES
    from pipeline.stages.promote import choose_strategy
    from pipeline.store import read_json

    if not metrics_file.is_file():
        return None
    metrics = read_json(metrics_file)
    available = [
        name
        for name in STRATEGY_NAMES
        if (models_dir / name / MODEL_FILE).is_file()
        and isinstance(metrics.get(name), dict)
        and "test_accuracy" in metrics[name]
    ]
    if not available:
        return None
    return models_dir / choose_strategy(metrics, available, "best", metrics_file) / MODEL_FILE


def choose_model(
    requested: str | None,
    champion: Callable[[], str | None],
    metrics_file: Path,
    models_dir: Path,
) -> ModelChoice:
    """`requested` when given; else the registry's champion (`champion()` looks it up); else the
    best evaluated strategy's model.keras. Raises PipelineError when there is none of them."""
    if requested:
        return ModelChoice(requested, "--model")
    uri = champion()
    if uri is not None:
        return ModelChoice(uri, "the registry's champion")
    best = best_local_model(metrics_file, models_dir)
    if best is not None:
        return ModelChoice(str(best), f"the best strategy by test_accuracy in {metrics_file}")
    raise PipelineError(
        f"no model to predict with: no champion in the registry, and {metrics_file} names no "
        f"evaluated model under {models_dir}. Run `dvc repro`, or pass --model "
        "(models:/<name>@<alias>, models:/<name>/<version> or path/to/model.keras)"
    )


def read_class_names(model: str, test_split: Path, beside: Path | None = None) -> list[str]:
    """The class names of a model that does not carry them, in label order: the CLASSES_FILE
    in the folder `beside`, else the classes of the test split. Raises ModelError, naming
    `model`, when neither exists."""
    names_file = beside / CLASSES_FILE if beside is not None else None
    if names_file is not None and names_file.is_file():
        try:
            names = json.loads(names_file.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{names_file} is not valid JSON ({exc})") from None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ModelError(f"{names_file} must hold a JSON list of class names, in label order")
        return names
    if test_split.is_file():
        # Only the names: the images of a large test split stay on disk.
        try:
            with np.load(test_split, allow_pickle=False) as data:
                return [str(name) for name in data["classes"]]
        except (KeyError, ValueError, OSError) as exc:
            raise ModelError(f"cannot read class names from {test_split} ({exc})") from None
    raise ModelError(
        f"the class names of {model} are unknown: run from the project it was trained in "
        f"(its {test_split} lists them), or put a {CLASSES_FILE} beside the model "
        '(a JSON list in label order, e.g. ["cat", "dog"])'
    )


def load_classifier(source: str, test_split: Path) -> Classifier:
    """Load `source`: a models:/ or runs:/ URI or an MLflow model folder (through
    mlflow.pyfunc, as a service loads it), or a .keras file (or a strategy's folder holding
    model.keras). Raises ModelError naming the source when it cannot be loaded."""
    path = Path(source)
    if not is_model_uri(source):
        if not path.exists():
            raise ModelError(
                f"model {source} does not exist: pass a .keras file, a models/<strategy> folder "
                "or a models:/<name>@<alias> URI"
            )
        if path.is_dir() and (path / MODEL_FILE).is_file():
            path = path / MODEL_FILE
        elif path.is_dir() and not (path / "MLmodel").is_file():
            raise ModelError(f"model folder {source} holds neither {MODEL_FILE} nor an MLmodel")
    if is_model_uri(source) or path.is_dir():
        return _load_pyfunc(source, test_split)
    return _load_keras(path, test_split)


def _load_keras(path: Path, test_split: Path) -> Classifier:
    import keras

    from pipeline.evaluation.metrics import class_probabilities

    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails anywhere in deserialising
        raise ModelError(f"cannot load the model {path}: {_first_line(exc)}") from None
    if len(model.inputs) != 1:
        raise ModelError(f"the model {path} takes {len(model.inputs)} inputs, not one image")
    image_shape = _image_shape(model.inputs[0].shape[1:], path)
    units = int(model.outputs[0].shape[-1])
    classes = read_class_names(str(path), test_split, path.parent)
    expected = 2 if units == 1 else units
    if len(classes) != expected:
        raise ModelError(
            f"the model {path} answers {expected} classes but its class names are "
            f"{len(classes)} ({', '.join(classes)}): it was trained on other data; put a "
            f"{CLASSES_FILE} beside it"
        )

    def predict_batch(images: np.ndarray) -> np.ndarray:
        return class_probabilities(model.predict(images, batch_size=len(images), verbose=0))

    return Classifier(str(path), classes, image_shape, predict_batch)


def _load_pyfunc(source: str, test_split: Path) -> Classifier:
    import mlflow
    import pandas as pd

    from pipeline.evaluation.metrics import class_probabilities
    from pipeline.serving import PREDICTED_CLASS

    try:
        model = mlflow.pyfunc.load_model(source)
    except Exception as exc:  # noqa: BLE001 - MLflow, the store and the flavor raise their own
        raise ModelError(f"cannot load the model {source}: {_first_line(exc)}") from None
    image_shape = _pyfunc_image_shape(model, source)
    # One black image: the served classifier names its classes in its answer's columns.
    probe = model.predict(np.zeros((1, *image_shape), dtype=np.uint8))
    if isinstance(probe, pd.DataFrame) and PREDICTED_CLASS in probe.columns:
        columns = [column for column in probe.columns if column != PREDICTED_CLASS]

        def predict_batch(images: np.ndarray) -> np.ndarray:
            return model.predict(images)[columns].to_numpy(dtype=np.float64)

        return Classifier(source, [str(name) for name in columns], image_shape, predict_batch)

    # A bare Keras flavor (a run's `model` artifact) answers probabilities without names.
    units = class_probabilities(np.asarray(probe)).shape[1]
    local = Path(source)
    classes = read_class_names(source, test_split, local if local.is_dir() else None)
    if len(classes) != units:
        raise ModelError(
            f"the model {source} answers {units} classes but the class names are {len(classes)}"
        )

    def predict_raw(images: np.ndarray) -> np.ndarray:
        return class_probabilities(np.asarray(model.predict(images)))

    return Classifier(source, classes, image_shape, predict_raw)


def _pyfunc_image_shape(model, source: str) -> tuple[int, int, int]:
    """(H, W, C) from the logged signature (every model the pipeline logs has one)."""
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1:
        return _image_shape(schema.inputs[0].shape[1:], source)
    raise ModelError(
        f"the model {source} has no tensor input signature, so the image size it takes is "
        "unknown; log it with a signature (the pipeline's models have one)"
    )


def _image_shape(shape: Sequence[int | None], source: str) -> tuple[int, int, int]:
    dims = tuple(shape)
    if len(dims) != 3 or any(dim is None or dim < 1 for dim in dims):
        raise ModelError(
            f"the model {source} takes inputs of shape {dims}, not images of a fixed "
            "(height, width, channels)"
        )
    return (int(dims[0]), int(dims[1]), int(dims[2]))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- predicting and writing -------------------------------------------------------------------


def predict_files(
    classifier: Classifier,
    paths: Sequence[Path],
    resize: ResizeMode = "stretch",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> list[FilePrediction]:
    """Decode and classify `paths`, `batch_size` files at a time (memory stays bounded whatever
    the folder's size); one FilePrediction per path, in order."""
    results: list[FilePrediction] = []
    for start in range(0, len(paths), batch_size):
        batch = list(paths[start : start + batch_size])
        images, bad = read_images(batch, classifier.image_shape, resize)
        readable = [position for position in range(len(batch)) if position not in bad]
        probabilities = classifier.predict_batch(images[readable]) if readable else None
        answers = dict(zip(readable, probabilities if readable else [], strict=True))
        for position, path in enumerate(batch):
            if position in bad:
                results.append(FilePrediction(path, None, bad[position]))
            else:
                results.append(FilePrediction(path, np.asarray(answers[position])))
        if progress is not None:
            progress(len(batch))
    return results


def prediction_header(classes: Sequence[str]) -> list[str]:
    """path, predicted_class, probability, then (more than TOP_K classes) the runners-up
    top2, top2_probability, top3, top3_probability, and error (empty on a readable file)."""
    header = ["path", "predicted_class", "probability"]
    if len(classes) > TOP_K:
        for rank in range(2, TOP_K + 1):
            header += [f"top{rank}", f"top{rank}_probability"]
    return [*header, "error"]


def prediction_row(prediction: FilePrediction, classes: Sequence[str]) -> list[str]:
    """One CSV row: the most probable class first; ties go to the lower label, as argmax."""
    width = len(prediction_header(classes))
    if prediction.probabilities is None:
        return [str(prediction.path), *[""] * (width - 2), prediction.error or ""]
    order = np.argsort(-prediction.probabilities, kind="stable")
    ranks = TOP_K if len(classes) > TOP_K else 1
    row = [str(prediction.path)]
    for label in order[:ranks]:
        row += [classes[label], f"{prediction.probabilities[label]:.6f}"]
    return [*row, ""]


def write_predictions(
    predictions: Sequence[FilePrediction], classes: Sequence[str], stream: TextIO
) -> None:
    """The predictions as CSV, one row per file, to `stream`."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(prediction_header(classes))
    for prediction in predictions:
        writer.writerow(prediction_row(prediction, classes))
