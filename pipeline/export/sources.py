"""Which model `pipeline export` exports: `champion` (the registry's), a strategy's folder under
models/, a .keras file, or a models:/ or runs:/ URI, as `pipeline predict` chooses one. A
registered version is downloaded and its model file checked against the SHA-256 it was
registered with before anything is converted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import ExportError
from pipeline.export.exporter import ExportSource
from pipeline.store import CLASSES_FILE, MODEL_FILE, RUN_FILE

CHAMPION = "champion"


def resolve_source(
    requested: str,
    models_dir: Path,
    download: Path,
    champion: Callable[[], str],
    use_store: Callable[[str], None],
    resize: str = "stretch",
) -> ExportSource:
    """The model named by `requested` as an ExportSource. `champion()` gives the champion's
    models:/<name>/<version> (or raises saying why there is none), `use_store(uri)` points
    MLflow at the store that resolves a URI, and registered models are downloaded into
    `download`."""
    from pipeline.config import STRATEGY_NAMES

    if requested == CHAMPION:
        requested = champion()
    if requested in STRATEGY_NAMES:
        folder = models_dir / requested
        return _from_folder(folder, f"{models_dir.name}/{requested}", resize)
    if requested.startswith(("models:/", "runs:/")):
        use_store(requested)
        return _from_uri(requested, download, resize)
    path = Path(requested)
    if path.is_dir():
        return _from_folder(path, requested, resize)
    if path.suffix == ".keras" and path.is_file():
        return ExportSource(path, _read_classes(path.parent / CLASSES_FILE), requested, resize)
    raise ExportError(
        f"--model {requested}: not a model. Give champion, a strategy (scratch, "
        "feature_extraction, fine_tune: its folder under models/), a .keras file beside its "
        "classes.json, or a models:/ or runs:/ URI"
    )


def _from_folder(folder: Path, uri: str, resize: str) -> ExportSource:
    model_file = folder / MODEL_FILE
    if not model_file.is_file():
        raise ExportError(
            f"{folder}: no {MODEL_FILE} there; train it first (`dvc repro`) or name another model"
        )
    return ExportSource(
        model_file,
        _read_classes(folder / CLASSES_FILE),
        uri,
        resize,
        recorded_temperature(folder),
    )


def _from_uri(uri: str, download: Path, resize: str) -> ExportSource:
    """A models:/ (checked against its registered SHA-256) or runs:/ pyfunc model."""
    from pipeline.serving.model import CLASSES_ARTIFACT
    from pipeline.serving.verification import keras_model_file, verified_model_path

    if uri.startswith("models:/"):
        name, version = _name_and_version(uri)
        folder = verified_model_path(name, version, download)
        uri = f"models:/{name}/{version}"
    else:
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(download)))
        except MlflowException as error:
            raise ExportError(
                f"{uri}: cannot be downloaded: {str(error).splitlines()[0]}"
            ) from None
    model_file = keras_model_file(folder)
    if model_file is None or not model_file.is_file():
        raise ExportError(
            f"{uri}: not a model this pipeline registered (no Keras model artifact in its "
            "MLmodel); export a models:/ version or a strategy's folder"
        )
    classes_file = model_file.parent / CLASSES_FILE
    if not classes_file.is_file():
        found = list(folder.rglob(CLASSES_FILE))
        if not found:
            raise ExportError(f"{uri}: its {CLASSES_ARTIFACT} artifact ({CLASSES_FILE}) is missing")
        classes_file = found[0]
    return ExportSource(model_file, _read_classes(classes_file), uri, resize)


def _name_and_version(uri: str) -> tuple[str, str]:
    """(name, version) of models:/<name>/<version> or models:/<name>@<alias>."""
    import mlflow
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        try:
            version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
        except MlflowException as error:
            raise ExportError(f"{uri}: {str(error).splitlines()[0]}") from None
        return name, str(version)
    name, _, version = body.rpartition("/")
    if not name or not version.isdigit():
        raise ExportError(f"{uri}: give models:/<name>/<version> or models:/<name>@<alias>")
    return name, version


def _read_classes(path: Path) -> list[str]:
    try:
        classes = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ExportError(
            f"{path}: the model's class names cannot be read ({error}); training writes it "
            "beside the model"
        ) from None
    if not isinstance(classes, list) or not classes:
        raise ExportError(f"{path}: must be a JSON list of class names")
    return [str(name) for name in classes]


def recorded_temperature(model_dir: Path) -> float | None:
    """The calibration temperature recorded beside a trained model (its run.json); None when
    not recorded or unreadable: the signature then says none is known, nothing fails."""
    run_file = Path(model_dir) / RUN_FILE
    if not run_file.is_file():
        return None
    try:
        value = json.loads(run_file.read_text()).get("temperature")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, int | float) else None
