"""Registered versions, checked before they load: the one place where a version's model file is
compared with the SHA-256 recorded at registration (its MODEL_SHA_TAG).

Every loader of a registered version goes through `load_verified_version`: the promotion gate
(the champion), `pipeline predict` and `pipeline serve`. The version is downloaded, its Keras
model file hashed, and only then loaded, from the folder that was hashed: a model file changed
in the artifact store after registration is refused, naming the version, instead of answering
silently. It lives here, below pipeline.registry, because the server's holder needs it and
pipeline.registry imports this package.

A version asked to serve with the onnx backend (model_config `backend: onnx`) is checked for
its ONNX export before it loads: a version without one is refused, naming the version and what
to do, instead of MLflow loading it for nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.errors import ModelError, RegistryError
from pipeline.serving.model import (
    BACKEND_CONFIG,
    DEFAULT_BACKEND,
    KERAS_MODEL_ARTIFACT,
    ONNX_BACKEND,
    ONNX_EXPORT_ARTIFACT,
    ONNX_MODEL_FILE,
    describe_version,
    missing_onnx_export,
)
from pipeline.store import sha256_of

logger = logging.getLogger(__name__)

MODEL_SHA_TAG = "model_sha256"
"""On every version: the SHA-256 of its Keras model file. The same model is one version."""


def verified_model_path(name: str, version: str, destination: Path) -> Path:
    """Download version `version` of `name` into `destination` and check that its Keras model
    file hashes to the version's MODEL_SHA_TAG; return the local model folder to load.

    Raises ModelError naming the version, both hashes and the fix on a mismatch (or when the
    tagged file is missing). A version registered without the tag (before tags existed) is
    loaded with a warning: there is nothing to compare it with."""
    import mlflow
    from mlflow.exceptions import MlflowException

    version = str(version)
    try:
        registered = mlflow.MlflowClient().get_model_version(name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(destination)
        )
    except MlflowException as error:
        raise RegistryError(
            f"version {version} of {name!r} cannot be read from the registry: {_first_line(error)}"
        ) from None
    folder = Path(local)
    expected = registered.tags.get(MODEL_SHA_TAG)
    if not expected:
        logger.warning(
            "version %s of %r was registered without a %s tag: its model file cannot be "
            "checked against what was registered, and is loaded unchecked",
            version,
            name,
            MODEL_SHA_TAG,
        )
        return folder
    model_file = keras_model_file(folder)
    if model_file is None or not model_file.is_file():
        raise ModelError(
            f"version {version} of {name!r}: its model file is missing from the downloaded "
            f"artifacts ({folder}), so it cannot be checked against the SHA-256 registered "
            f"({expected[:16]}...); the artifact store was changed after registration: "
            "roll back (`pipeline rollback --to <version>`) or re-register"
        )
    actual = sha256_of(model_file)
    if actual != expected:
        raise ModelError(
            f"version {version} of {name!r}: {model_file.name} has SHA-256 {actual[:16]}..., "
            f"registered {expected[:16]}...; the artifact store was changed after "
            "registration: roll back (`pipeline rollback --to <version>`) or re-register"
        )
    return folder


def keras_model_file(folder: Path) -> Path | None:
    """The Keras model file inside a downloaded pyfunc model folder (the served classifier's
    KERAS_MODEL_ARTIFACT, as its MLmodel lists it), or None when it lists none. A path that
    leads out of the folder counts as none."""
    return artifact_path(folder, KERAS_MODEL_ARTIFACT)


def artifact_path(folder: Path, artifact: str) -> Path | None:
    """Where pyfunc artifact `artifact` lies inside a downloaded model folder, as its MLmodel
    lists it, or None when it lists none. A path that leads out of the folder counts as none."""
    entry = (_pyfunc_flavor(folder).get("artifacts") or {}).get(artifact) or {}
    relative = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(relative, str):
        return None
    path = (folder / relative).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


def _pyfunc_flavor(folder: Path) -> dict:
    """The python_function flavor of the MLmodel in `folder` ({} when there is none)."""
    import yaml

    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        return {}
    try:
        description = yaml.safe_load(mlmodel.read_text()) or {}
    except yaml.YAMLError:
        return {}
    flavors = description.get("flavors") if isinstance(description, dict) else None
    pyfunc = (flavors or {}).get("python_function")
    return pyfunc if isinstance(pyfunc, dict) else {}


def load_verified_version(
    name: str, version: str, destination: Path, model_config: dict | None = None
) -> Any:
    """Version `version` of `name` as an mlflow.pyfunc model, loaded from `destination` once
    `verified_model_path` has checked its model file there, with `model_config` laid over the
    config it was logged with (a `backend` of pipeline.serving.model: see served_config)."""
    import mlflow

    folder = verified_model_path(name, version, destination)
    config = served_config(folder, describe_version((name, str(version), None)), model_config)
    if (config or {}).get(BACKEND_CONFIG) == ONNX_BACKEND:
        verify_onnx_export(name, str(version), folder)
    # Without suppress_warnings MLflow maps every installed distribution to its modules to
    # compare them with the version's requirements (about 1.7 s).
    model = mlflow.pyfunc.load_model(str(folder), suppress_warnings=True, model_config=config)
    asked = (config or {}).get(BACKEND_CONFIG, DEFAULT_BACKEND)
    answering = getattr(_python_model(model), "backend", DEFAULT_BACKEND)
    if answering != asked:
        raise ModelError(
            f"version {version} of {name!r} was asked to serve with backend {asked} and loaded "
            f"with {answering}: serve it with --backend {answering}, or register it again"
        )
    return model


ONNX_SHA_TAG = "export.onnx.sha256"
"""On a version registered with its ONNX export: the SHA-256 of its model.onnx."""


def verify_onnx_export(name: str, version: str, folder: Path) -> None:
    """Check that the ONNX export in a downloaded version hashes to the SHA-256 it was
    registered with (ONNX_SHA_TAG), as verified_model_path checks the Keras file: the file
    that answers under `--backend onnx` is the one registered, or nothing loads."""
    import mlflow

    expected = mlflow.MlflowClient().get_model_version(name, version).tags.get(ONNX_SHA_TAG)
    export = artifact_path(folder, ONNX_EXPORT_ARTIFACT)
    model_file = export / ONNX_MODEL_FILE if export is not None else None
    if not expected:
        logger.warning(
            "version %s of %r was registered without a %s tag: its ONNX export cannot be checked "
            "against what was registered, and is loaded unchecked",
            version,
            name,
            ONNX_SHA_TAG,
        )
        return
    actual = sha256_of(model_file) if model_file is not None and model_file.is_file() else None
    if actual != expected:
        found = f"has SHA-256 {actual[:16]}..." if actual else "is missing"
        raise ModelError(
            f"version {version} of {name!r}: its ONNX export {ONNX_MODEL_FILE} {found}, "
            f"registered {expected[:16]}...; the artifact store was changed after registration: "
            "roll back (`pipeline rollback --to <version>`), re-register, or serve it with "
            "--backend keras"
        )


def served_config(folder: Path, who: str, model_config: dict | None) -> dict | None:
    """`model_config` as mlflow.pyfunc.load_model should get it for the version in `folder`.

    MLflow lays a load's model_config over the logged one key by key, and drops (with a mere
    warning) every key the version was not logged with. So a backend other than the default
    needs a version logged with the `backend` key, and `onnx` a version carrying its ONNX
    export: either missing raises ModelError naming `who` and the fix, before anything loads.
    The default backend asked of a version logged without the key is simply left out.
    """
    if not model_config:
        return None
    config = dict(model_config)
    backend = config.get(BACKEND_CONFIG, DEFAULT_BACKEND)
    # The flavor's `config` (mlflow.models.model.MODEL_CONFIG) is the logged model_config.
    logged = _pyfunc_flavor(folder).get("config") or {}
    if backend == ONNX_BACKEND:
        export = artifact_path(folder, ONNX_EXPORT_ARTIFACT)
        if export is None or not (export / ONNX_MODEL_FILE).is_file():
            raise ModelError(missing_onnx_export(who))
    if BACKEND_CONFIG not in logged:
        if backend != DEFAULT_BACKEND:
            raise ModelError(
                f"{who} was logged without a `{BACKEND_CONFIG}` key in its model config, so "
                f"MLflow would ignore backend {backend} and serve {DEFAULT_BACKEND}: register "
                f"it again with today's code, or serve it with --backend {DEFAULT_BACKEND}"
            )
        config.pop(BACKEND_CONFIG, None)
    return config or None


def _python_model(model: Any) -> Any:
    try:
        return model.unwrap_python_model()
    except Exception:  # noqa: BLE001 - not a python_model flavor
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:500] if text else type(error).__name__
