"""Evaluate every strategy's model on the test split; write metrics, confusion matrices and
curves, and log the same numbers and files to each strategy's MLflow run."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import mlflow
import pandas as pd

from pipeline.entry import run_entry
from pipeline.evaluation.metrics import compute_confusion, evaluate_model, normalize_confusion
from pipeline.evaluation.plots import plot_confusion, plot_history
from pipeline.io import (
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILE,
    load_split,
    read_json,
    split_paths,
    write_json,
)
from pipeline.tracking import resume_run, tracking_uri

logger = logging.getLogger("pipeline.stages.evaluate")


def evaluate_strategy(
    strategy: str, model_dir: Path, output: Path, test_x, test_y, classes: list[str]
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
    return metrics


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="evaluate", description=__doc__)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument(
        "--strategy",
        nargs=2,
        action="append",
        type=Path,
        required=True,
        metavar=("MODEL_DIR", "REPORT_DIR"),
        help="a strategy's model folder (named after the strategy) and its report folder",
    )
    parser.add_argument("--metrics", type=Path, required=True, help="the metrics JSON")
    args = parser.parse_args(argv)
    test = load_split(split_paths(args.prepared)["test"])
    mlflow.set_tracking_uri(tracking_uri(Path.cwd()))
    all_metrics = {}
    for model_dir, report_dir in args.strategy:
        strategy = model_dir.name
        run = read_json(model_dir / RUN_FILE)
        metrics = evaluate_strategy(strategy, model_dir, report_dir, test.x, test.y, test.classes)
        with resume_run(run["run_id"]):
            mlflow.log_metrics(metrics)
            mlflow.log_artifacts(str(report_dir), artifact_path="evaluation")
        all_metrics[strategy] = {**metrics, "backbone_weights": run["backbone_weights"]}
        logger.info("%s: %s", strategy, metrics)
    write_json(args.metrics, all_metrics)


if __name__ == "__main__":
    run_entry(main, "stage 'evaluate'")
