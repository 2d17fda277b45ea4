"""MLflow: tracking URI, one tagged run per strategy, per-epoch metrics, artifacts and models.

Metric and tag names are the same for every strategy so the MLflow UI compares runs column by
column.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.models import infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

DEFAULT_DB = "mlflow.db"


def tracking_uri(project_root: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store at the project root."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(project_root / DEFAULT_DB).resolve()}"
    )


def configure_tracking(project_root: Path, experiment_name: str) -> str:
    """Point MLflow at the store and experiment; return the experiment id."""
    mlflow.set_tracking_uri(tracking_uri(project_root))
    return mlflow.set_experiment(experiment_name).experiment_id


def start_strategy_run(experiment_id: str, run_name: str, tags: dict[str, str]) -> mlflow.ActiveRun:
    """A new run for one strategy.

    Under `mlflow run`, MLFLOW_RUN_ID names the project's own run; the strategy runs become
    its children instead of all writing into it.
    """
    parent = os.environ.get("MLFLOW_RUN_ID")
    if parent:
        tags = {**tags, MLFLOW_PARENT_RUN_ID: parent}
    run = mlflow.MlflowClient().create_run(experiment_id, run_name=run_name, tags=tags)
    return mlflow.start_run(run_id=run.info.run_id)


def resume_run(run_id: str) -> mlflow.ActiveRun:
    return mlflow.start_run(run_id=run_id)


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs `loss`, `accuracy`, `val_loss`, `val_accuracy` with step = epoch, as training runs."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {key: float(value) for key, value in (logs or {}).items() if np.isscalar(value)}
        mlflow.log_metrics(metrics, step=epoch)


def log_keras_model(model: keras.Model, example: np.ndarray) -> str:
    """Log `model` with a signature and input example of raw uint8 images; return its URI."""
    signature = infer_signature(example, model.predict(example, verbose=0))
    with _keras_flavor_creates_model_dir():
        info = mlflow.keras.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            # Explicit requirements spare MLflow a slow subprocess that re-imports the model.
            pip_requirements=_model_requirements(),
        )
    return info.model_uri


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


def _model_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    for package in ("mlflow", "keras", keras.backend.backend(), "numpy"):
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return requirements


def git_commit(project_root: Path) -> str:
    """The checked-out commit, with '-dirty' when tracked files differ; 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit
