"""MLflow runs: one tagged run per strategy, per-epoch metrics, artifacts and models.

Keras is imported only where a model is logged, so the stages that only track (compare,
report) do not pay its start-up.

Metric and tag names are the same for every strategy so the MLflow UI compares runs column by
column. Every call goes through a `RunRecorder`, so a tracking server that drops mid-run costs
the run its remaining MLflow calls, never the training: the stage still writes its DVC outs,
marks them untracked, and `pipeline sync-mlflow` logs them later as the run they would have been.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
from mlflow.models import infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline.tracking.server import default_artifact_location, limit_http_retries, tracking_uri

logger = logging.getLogger(__name__)

T = TypeVar("T")


def configure_tracking(project_root: Path, experiment_name: str | None = None) -> str | None:
    """Point MLflow at the store (and the experiment, when named); return the experiment id."""
    limit_http_retries()
    mlflow.set_tracking_uri(tracking_uri(project_root))
    if experiment_name is None:
        return None
    return ensure_experiment(experiment_name, default_artifact_location(project_root))


def ensure_experiment(name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating it (artifacts at `artifact_location`) if needed.

    mlflow.set_experiment would put a new experiment's artifacts under the current folder,
    which in a DVC queue is a throwaway copy. Two queued stages may create it at once: the
    loser of that race finds the winner's.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            if client.get_experiment_by_name(name) is None:
                raise
        experiment = client.get_experiment_by_name(name)
    return mlflow.set_experiment(experiment_id=experiment.experiment_id).experiment_id


def parent_run_tags() -> dict[str, str]:
    """Under `mlflow run` or `pipeline retrain`, MLFLOW_RUN_ID names the enclosing run: the
    strategy runs become its children instead of all writing into it."""
    parent = os.environ.get("MLFLOW_RUN_ID")
    return {MLFLOW_PARENT_RUN_ID: parent} if parent else {}


def numeric_metrics(values: dict) -> dict[str, float]:
    """The entries of `values` MLflow can log as metrics: numbers, not flags or names."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def create_run(experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
    """A new run (a child of the enclosing one, if any); return its id."""
    run = mlflow.MlflowClient().create_run(
        experiment_id, run_name=run_name, tags={**tags, **parent_run_tags()}
    )
    return run.info.run_id


class RunRecorder:
    """Logs to one MLflow run, and survives losing the tracking server.

    The first call that fails is reported once, as a warning; later calls are skipped. `lost`
    then tells the stage to mark its outputs untracked, for `pipeline sync-mlflow`.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.error: str | None = None

    @property
    def lost(self) -> bool:
        return self.error is not None

    def __call__(
        self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T | None:
        if self.lost:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - MLflow, requests and SQLAlchemy errors alike
            self.error = f"{what}: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
            logger.warning(
                "lost the MLflow tracking server (%s); training goes on and the outputs are "
                "written as usual. Run `pipeline sync-mlflow` once it is back.",
                self.error,
            )
            return None

    @contextlib.contextmanager
    def active(self) -> Iterator[RunRecorder]:
        """Make the run the active one for MLflow's fluent API; end it FINISHED, or FAILED on
        an exception, whether or not the server is still there."""
        if self(f"start run {self.run_id}", mlflow.start_run, run_id=self.run_id) is None:
            yield self
            return
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        finally:
            with contextlib.suppress(Exception):
                mlflow.end_run(status)


def log_keras_model(model, example: np.ndarray) -> str:
    """Log `model` with a signature and input example of raw uint8 images; return its URI."""
    signature = infer_signature(example, model.predict(example, verbose=0))
    with _keras_flavor_creates_model_dir(), _no_keras_progress_bars(), pinned_requirements():
        info = mlflow.keras.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            # Explicit requirements spare MLflow a slow subprocess that re-imports the model.
            pip_requirements=model_requirements(),
        )
    return info.model_uri


@contextlib.contextmanager
def _no_keras_progress_bars() -> Iterator[None]:
    """MLflow checks the input example with the Keras flavor's `predict`, which draws a progress
    bar (escape codes in DVC's log); Keras' non-interactive mode sends it to absl's log."""
    import keras

    was_interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        yield
    finally:
        if was_interactive:
            keras.config.enable_interactive_logging()


@contextlib.contextmanager
def _keras_flavor_creates_model_dir() -> Iterator[None]:
    """Work around mlflow/mlflow#16183 (open in MLflow 3.17): the Keras flavor writes the input
    example before it creates the model directory, so any `input_example` fails with
    FileNotFoundError. Creating the directory first is the fix the issue proposes."""
    from mlflow.keras import save as keras_save

    original = keras_save._save_example

    def save_example(mlflow_model, input_example, path, *args, **kwargs):
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path, *args, **kwargs)

    keras_save._save_example = save_example
    try:
        yield
    finally:
        keras_save._save_example = original


@contextlib.contextmanager
def pinned_requirements() -> Iterator[None]:
    """While a model with `model_requirements()` is logged: skip MLflow's check of the model's
    requirements against the installed packages. Those requirements are the installed
    versions, so they cannot differ, and the check maps every installed distribution to its
    modules first (about 2 s, once as MLflow logs the model and once as it loads it back to
    validate the input example). Loading a model anywhere else still warns."""
    from mlflow import pyfunc
    from mlflow.utils import environment

    modules = [
        module
        for module in (environment, pyfunc)
        if hasattr(module, "warn_dependency_requirement_mismatches")
    ]
    originals = [module.warn_dependency_requirement_mismatches for module in modules]
    for module in modules:
        module.warn_dependency_requirement_mismatches = _requirements_match
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.warn_dependency_requirement_mismatches = original


def _requirements_match(requirements: list[str]) -> None:
    """MLflow's requirements check, for requirements pinned from this environment."""


def model_requirements(with_onnx: bool = False) -> list[str]:
    """Pinned requirements of a logged model: what it needs to load and predict (the installed
    versions: see `pinned_requirements`); `with_onnx` adds onnxruntime, which a version
    carrying its ONNX export answers with under `serve.backend: onnx`."""
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    import keras

    packages = ["mlflow", "keras", keras.backend.backend(), "numpy", "pandas", "pillow"]
    for package in packages + (["onnxruntime"] if with_onnx else []):
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return requirements
