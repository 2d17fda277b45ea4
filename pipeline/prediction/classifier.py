"""A trained model loaded for `pipeline predict`, with the class names it answers in.

A .keras file (or a strategy's folder holding model.keras) takes its class names from the
classes.json that training writes beside it (`pipeline.store.CLASSES_FILE`). An MLflow model
(a models:/ or runs:/ URI) loads through mlflow.pyfunc, as a service loads it; the registered
classifier names its classes in its answer's columns. A registered version's model file is
checked against the SHA-256 it was registered with before it loads. A local MLflow model
folder holds Python code that loading runs: it loads only with `trust_code`.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ModelError
from pipeline.models.outputs import class_probabilities, output_units
from pipeline.prediction.choice import is_model_uri
from pipeline.store import CLASSES_FILE, MODEL_FILE


@dataclass(frozen=True)
class Classifier:
    """A loaded model, as predict needs it: raw uint8 images in, one probability per class out."""

    source: str
    classes: list[str]
    image_shape: tuple[int, int, int]
    """(height, width, channels) of the images the model takes."""
    predict_batch: Callable[[np.ndarray], np.ndarray]
    """uint8 (N, H, W, C) images -> float (N, len(classes)) probabilities."""
    python_model: object | None = None
    """The served classifier inside a registered model (pipeline.serving.model), if it is one."""


def record_answers(classifier: Classifier, recorder) -> Classifier:
    """`classifier`, recording every answer with `recorder` (`pipeline predict --log`): the
    served classifier records as the server does (with embeddings); any other model records
    its classes and probabilities under its source, without embeddings."""
    from dataclasses import replace

    from pipeline.serving.observers import observer_for, record_probabilities

    python_model = classifier.python_model
    if python_model is not None and hasattr(python_model, "embed"):
        name, version, alias = python_model.identity
        embed = (
            python_model.embed if getattr(python_model, "projection", None) is not None else None
        )
        python_model.observer = observer_for(
            recorder, name or classifier.source, version or "", alias, classifier.classes, embed
        )
        return classifier
    inner = classifier.predict_batch

    def predict_batch(images: np.ndarray) -> np.ndarray:
        probabilities = inner(images)
        record_probabilities(
            recorder, classifier.source, "", images, probabilities, classifier.classes
        )
        return probabilities

    return replace(classifier, predict_batch=predict_batch)


TRUST_CODE_HINT = (
    "predict with the registered model (models:/<name>@champion or models:/<name>/<version>), "
    "a training run's model (runs:/<run id>/model), a .keras file or models/<strategy>; or, if "
    "you trust the code in this folder, pass --trust-code"
)


def load_classifier(source: str, trust_code: bool = False) -> Classifier:
    """Load `source`: a models:/ or runs:/ URI (through mlflow.pyfunc, as a service loads it;
    a registered version only once its model file matches its registered SHA-256), a .keras
    file or a strategy's folder holding model.keras, or (with `trust_code` only) a local
    MLflow model folder. Raises ModelError naming the source when it cannot be loaded."""
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
        elif path.is_dir() and not trust_code:
            # Loading a pyfunc folder imports and runs its python_model and code paths: from
            # the registry or a run they are the pipeline's own, from a folder anyone's.
            raise ModelError(
                f"{source} is an MLflow model folder: loading it runs the Python code it holds "
                f"(its python_model, loader module and code paths), which could be anything. "
                f"{TRUST_CODE_HINT}"
            )
    if is_model_uri(source):
        registered = registered_version(source)
        if registered is not None:
            return _load_registered(*registered)
    if is_model_uri(source) or path.is_dir():
        return _load_pyfunc(source)
    return _load_keras(path)


def registered_version(source: str) -> tuple[str, str] | None:
    """(name, version) of a models:/<name>/<version> or models:/<name>@<alias> URI (the alias
    resolved now, through the tracking store MLflow points at); None for the URIs that name
    no registered version: runs:/ and a logged model's models:/<model id>."""
    if not source.startswith("models:/"):
        return None
    path = source.removeprefix("models:/").strip("/")
    if "/" in path:
        name, suffix = path.split("/", 1)
        if suffix.isdigit():
            return name, suffix
        raise ModelError(
            f"model {source}: name a version (models:/{name}/<version>) or an alias "
            f"(models:/{name}@champion); stages and `latest` are not checked against the "
            "registry's record of the model file"
        )
    if "@" not in path:
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias = path.rsplit("@", 1)
    try:
        found = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise ModelError(f"cannot load the model {source}: {_first_line(error)}") from None
    return name, str(found.version)


def _load_registered(name: str, version: str) -> Classifier:
    """Version `version` of `name`, its model file checked before it loads; named
    models:/<name>/<version> in the answers."""
    import tempfile

    from pipeline.serving.verification import load_verified_version

    source = f"models:/{name}/{version}"
    # The loaded model holds what it needs in memory: the downloaded files can go.
    with tempfile.TemporaryDirectory(prefix="pipeline-predict-") as scratch:
        try:
            model = load_verified_version(name, version, Path(scratch))
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow, the store and the flavor raise their own
            raise ModelError(f"cannot load the model {source}: {_first_line(exc)}") from None
    return _pyfunc_classifier(model, source)


def read_class_names(folder: Path, model: str) -> list[str]:
    """The class names in `folder`'s CLASSES_FILE, in label order. Raises ModelError, naming
    `model` and the fix, when the file is missing or is not a JSON list of names."""
    names_file = folder / CLASSES_FILE
    if not names_file.is_file():
        raise ModelError(
            f"the class names of {model} are unknown: there is no {names_file}. Training "
            f"writes {CLASSES_FILE} beside {MODEL_FILE}; for a model trained before that, or "
            "elsewhere, write it there yourself (a JSON list in label order, e.g. "
            '["cat", "dog"]), or predict with the registered model (models:/<name>@champion), '
            "which carries its class names"
        )
    try:
        names = json.loads(names_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{names_file} is not valid JSON ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ModelError(f"{names_file} must hold a JSON list of class names, in label order")
    return names


def _load_keras(path: Path) -> Classifier:
    import keras

    try:
        model = keras.saving.load_model(path)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails anywhere in deserialising
        raise ModelError(f"cannot load the model {path}: {_first_line(exc)}") from None
    if len(model.inputs) != 1:
        raise ModelError(f"the model {path} takes {len(model.inputs)} inputs, not one image")
    image_shape = _image_shape(model.inputs[0].shape[1:], path)
    units = int(model.outputs[0].shape[-1])
    classes = read_class_names(path.parent, str(path))
    if output_units(len(classes)) != units:
        raise ModelError(
            f"the model {path} ends in {units} output unit(s), but {path.parent / CLASSES_FILE} "
            f"names {len(classes)} classes ({', '.join(classes)}): it belongs to another model; "
            "write the class names of this one there"
        )

    def predict_batch(images: np.ndarray) -> np.ndarray:
        return class_probabilities(model.predict(images, batch_size=len(images), verbose=0))

    return Classifier(str(path), classes, image_shape, predict_batch)


def _predict_quietly(model, images: np.ndarray):
    """A pyfunc model's predict, with what it prints (the Keras flavor's progress bar) sent to
    standard error: standard output is the predictions' CSV."""
    with contextlib.redirect_stdout(sys.stderr):
        return model.predict(images)


def _training_run_classes(source: str) -> Path | None:
    """A folder holding the CLASSES_FILE that training logged into the run of a `runs:/<id>/...`
    or logged-model (`models:/m-<id>`) URI; None for other URIs or when the run has none."""
    import mlflow

    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").split("/", 1)[0]
    elif source.startswith("models:/m-"):
        try:
            run_id = mlflow.get_logged_model(
                source.removeprefix("models:/").split("/")[0]
            ).source_run_id
        except Exception:  # noqa: BLE001 - the store's own errors: no names from it, then
            return None
    else:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CLASSES_FILE)
    except Exception:  # noqa: BLE001 - a run logged before class names were: none to read
        return None
    return Path(path).parent


def _load_pyfunc(source: str) -> Classifier:
    import mlflow

    try:
        model = mlflow.pyfunc.load_model(source)
    except Exception as exc:  # noqa: BLE001 - MLflow, the store and the flavor raise their own
        raise ModelError(f"cannot load the model {source}: {_first_line(exc)}") from None
    return _pyfunc_classifier(model, source)


def _pyfunc_classifier(model, source: str) -> Classifier:
    """A loaded pyfunc model as predict needs it: the served classifier, or a bare Keras
    flavor whose class names its run (or a local folder) holds."""
    import pandas as pd

    from pipeline.serving.model import (
        DEFAULT_MAX_BATCH,
        PREDICTED_CLASS,
        class_columns,
        served_input,
    )

    image_shape = _pyfunc_image_shape(model, source)
    schema = model.metadata.get_input_schema()
    # One black image: the served classifier names its classes in its answer's columns.
    probe = _predict_quietly(
        model, served_input(schema, np.zeros((1, *image_shape), dtype=np.uint8))
    )
    if isinstance(probe, pd.DataFrame) and PREDICTED_CLASS in probe.columns:
        columns = class_columns(probe.columns)
        step = DEFAULT_MAX_BATCH

        def predict_batch(images: np.ndarray) -> np.ndarray:
            # At most DEFAULT_MAX_BATCH images a call: the served model refuses more.
            answers = [
                _predict_quietly(model, served_input(schema, images[start : start + step]))
                for start in range(0, len(images), step)
            ]
            return pd.concat(answers)[columns].to_numpy(dtype=np.float64)

        names = [str(name) for name in columns]
        return Classifier(source, names, image_shape, predict_batch, model.unwrap_python_model())

    # A bare Keras flavor (a run's `model` artifact) answers probabilities without names: its
    # training run logged them (CLASSES_FILE), and a local MLflow model folder can carry them.
    units = class_probabilities(np.asarray(probe)).shape[1]
    local = Path(source)
    folder = _training_run_classes(source) if is_model_uri(source) else local
    if folder is None or not folder.is_dir():
        raise ModelError(
            f"the model {source} answers probabilities without class names: predict with the "
            "registered classifier (models:/<name>@<alias>), which carries them, with a "
            f"training run's model (runs:/<run id>/model), or with the strategy's folder "
            f"(models/<strategy>, holding {MODEL_FILE} and {CLASSES_FILE})"
        )
    classes = read_class_names(folder, source)
    if len(classes) != units:
        raise ModelError(
            f"the model {source} answers {units} classes but its {CLASSES_FILE} names "
            f"{len(classes)}"
        )

    def predict_raw(images: np.ndarray) -> np.ndarray:
        return class_probabilities(np.asarray(_predict_quietly(model, images)))

    return Classifier(source, classes, image_shape, predict_raw)


def _pyfunc_image_shape(model, source: str) -> tuple[int, int, int]:
    """(H, W, C) from the logged signature, or (the served classifier, which takes encoded
    files too) from its metadata's `image_shape`."""
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.is_tensor_spec() and len(schema.inputs) == 1:
        return _image_shape(schema.inputs[0].shape[1:], source)
    shape = (model.metadata.metadata or {}).get("image_shape")
    if shape is not None:
        return _image_shape(shape, source)
    raise ModelError(
        f"the model {source} has neither a tensor input signature nor an image_shape in its "
        "metadata, so the image size it takes is unknown (the pipeline's models have one)"
    )


def _image_shape(shape: Sequence[int | None], source: str) -> tuple[int, int, int]:
    """A model's input shape (without the batch axis) as (H, W, C), or a ModelError."""
    dims = tuple(shape)
    if len(dims) != 3 or any(dim is None or dim < 1 for dim in dims):
        raise ModelError(
            f"the model {source} takes inputs of shape {dims}, not images of a fixed "
            "(height, width, channels)"
        )
    return (int(dims[0]), int(dims[1]), int(dims[2]))


def _first_line(error: BaseException) -> str:
    """An exception's first line: MLflow's and Keras' messages run to pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
