"""Evaluate every strategy's model on the test split; write metrics, confusion matrices and
curves, and log the same numbers and files to each strategy's MLflow run."""

from __future__ import annotations

import logging

import keras
import mlflow
import pandas as pd

from pipeline.config import STRATEGIES
from pipeline.datasets.split import load_split
from pipeline.evaluation import (
    compute_confusion,
    evaluate_model,
    normalize_confusion,
    plot_confusion,
    plot_history,
)
from pipeline.stages._common import (
    MODELS_DIR,
    PREPARED_DIR,
    PROJECT_ROOT,
    REPORTS_DIR,
    read_json,
    run_stage,
    write_json,
)
from pipeline.tracking import resume_run, tracking_uri

logger = logging.getLogger("pipeline.stages.evaluate")


def main(argv: list[str]) -> None:
    test = load_split(PREPARED_DIR / "test.npz")
    mlflow.set_tracking_uri(tracking_uri(PROJECT_ROOT))
    all_metrics = {}
    for strategy in STRATEGIES:
        model_dir = MODELS_DIR / strategy
        run = read_json(model_dir / "run.json")
        model = keras.saving.load_model(model_dir / "model.keras")
        metrics, predictions = evaluate_model(model, test.x, test.y)

        output = REPORTS_DIR / strategy
        output.mkdir(parents=True, exist_ok=True)
        counts = compute_confusion(test.y, predictions, test.classes)
        counts.to_csv(output / "confusion_matrix.csv", index=False)
        title = f"{strategy}: test accuracy {metrics['test_accuracy']:.3f}"
        plot_confusion(counts, title, output / "confusion_matrix.png", normalized=False)
        plot_confusion(
            normalize_confusion(counts),
            title,
            output / "confusion_matrix_normalized.png",
            normalized=True,
        )
        history = pd.read_csv(model_dir / "history.csv")
        plot_history(history, f"{strategy}: training curves", output / "training_curves.png")

        with resume_run(run["run_id"]):
            mlflow.log_metrics(metrics)
            mlflow.log_artifacts(str(output), artifact_path="evaluation")
        all_metrics[strategy] = {**metrics, "backbone_weights": run["backbone_weights"]}
        logger.info("%s: %s", strategy, metrics)
    write_json(REPORTS_DIR / "metrics.json", all_metrics)


if __name__ == "__main__":
    run_stage(main)
