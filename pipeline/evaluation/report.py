"""One strategy's evaluation: its test metrics, confusion matrices and curves, as files and as
MLflow metrics and artifacts of its run."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import compute_confusion, evaluate_model, normalize_confusion
from pipeline.evaluation.plots import plot_confusion, plot_history
from pipeline.io import HISTORY_FILE, MODEL_FILE, sha256_of, write_json
from pipeline.tracking.runs import RunRecorder

EVALUATION_ARTIFACTS = "evaluation"
EVALUATED_MODEL_FILE = "evaluated_model.json"
"""Which model file a report folder describes, so `pipeline sync-mlflow` never logs one
model's evaluation on another model's run."""


def evaluate_strategy(
    strategy: str,
    model_dir: Path,
    output: Path,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: list[str],
) -> dict:
    """Score one strategy's model on the test split; write its confusion matrices and curves
    into `output`; return its metrics."""
    model = keras.saving.load_model(model_dir / MODEL_FILE)
    metrics, predictions = evaluate_model(model, test_x, test_y)
    output.mkdir(parents=True, exist_ok=True)
    counts = compute_confusion(test_y, predictions, classes)
    counts.to_csv(output / "confusion_matrix.csv", index=False)
    title = f"{strategy}: test accuracy {metrics['test_accuracy']:.3f}"
    plot_confusion(counts, title, output / "confusion_matrix.png", normalized=False)
    plot_confusion(
        normalize_confusion(counts), title, output / "confusion_matrix_normalized.png", True
    )
    history = pd.read_csv(model_dir / HISTORY_FILE)
    plot_history(history, f"{strategy}: training curves", output / "training_curves.png")
    write_json(output / EVALUATED_MODEL_FILE, {"model_sha256": sha256_of(model_dir / MODEL_FILE)})
    return metrics


def log_evaluation(run_id: str, metrics: dict, report_dir: Path) -> RunRecorder:
    """Log test metrics and the report folder to the strategy's run; a lost server is a
    warning (see RunRecorder), never a lost evaluation."""
    recorder = RunRecorder(run_id)
    with recorder.active():
        recorder("test metrics", mlflow.log_metrics, metrics)
        recorder(
            "evaluation artifacts",
            mlflow.log_artifacts,
            str(report_dir),
            artifact_path=EVALUATION_ARTIFACTS,
        )
    return recorder
