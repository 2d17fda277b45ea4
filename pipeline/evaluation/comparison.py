"""Comparing the strategies: comparison.csv (one row per strategy), significance.csv (pairwise
McNemar tests on the same test images) and the metrics file, from each strategy's report folder
(its evaluation.json and predictions.csv). Pure pandas and NumPy: no Keras, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.evaluation.layout import EVALUATION_JSON, PREDICTIONS_CSV
from pipeline.evaluation.significance import pairwise_mcnemar
from pipeline.store import read_json, spreadsheet_safe


@dataclass(frozen=True)
class EvaluatedStrategy:
    """What the comparison needs of one strategy: its evaluation record and its predicted
    label of every test image."""

    name: str
    record: dict
    predictions: np.ndarray


def read_evaluated_strategy(report_dir: Path, classes: list[str]) -> EvaluatedStrategy:
    """A strategy's evaluation from its report folder, predictions as indices into `classes`."""
    record = read_json(report_dir / EVALUATION_JSON)
    frame = pd.read_csv(report_dir / PREDICTIONS_CSV, dtype={"predicted": str, "true": str})
    # predictions.csv holds the names spreadsheet-safe (write_predictions); files written
    # before that hold them as they are.
    index = {name: position for position, name in enumerate(classes)}
    index.update({spreadsheet_safe(name): position for position, name in enumerate(classes)})
    unknown = sorted(set(frame["predicted"]) - set(index))
    if unknown:
        raise PipelineError(
            f"{report_dir / PREDICTIONS_CSV} predicts classes {unknown} that the test split does "
            "not have: its evaluation is of other data; rerun `dvc repro`"
        )
    return EvaluatedStrategy(
        name=report_dir.name,
        record=record,
        predictions=frame["predicted"].map(index).to_numpy(dtype=np.int64),
    )


def compare_strategies(
    strategies: list[EvaluatedStrategy], y_true: np.ndarray, alpha: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """comparison.csv (one row per strategy) and significance.csv (pairwise McNemar)."""
    for strategy in strategies:
        if len(strategy.predictions) != len(y_true):
            raise PipelineError(
                f"{strategy.name} was evaluated on {len(strategy.predictions)} test images, the "
                f"test split has {len(y_true)}: rerun `dvc repro`"
            )
    comparison = pd.DataFrame(
        [
            {
                "strategy": strategy.name,
                "test_accuracy": strategy.record["metrics"]["test_accuracy"],
                "test_macro_f1": strategy.record["metrics"]["test_macro_f1"],
                "test_loss": strategy.record["metrics"]["test_loss"],
                "total_params": strategy.record["total_params"],
                "trainable_params": strategy.record["trainable_params"],
                "training_seconds": strategy.record["training_seconds"],
                "images_per_second": round(strategy.record["images_per_second"], 1),
            }
            for strategy in strategies
        ]
    ).set_index("strategy")
    significance = pairwise_mcnemar(
        y_true, {strategy.name: strategy.predictions for strategy in strategies}, alpha
    )
    return comparison, significance


def metrics_by_strategy(strategies: list[EvaluatedStrategy]) -> dict:
    """reports/metrics.json: each strategy's test metrics (calibration included: `test_ece`,
    `test_brier`, `test_ece_uncalibrated`, ...; `test_loss` is the NLL), the temperature
    folded into its model (1 for evaluations from before calibration) and its backbone's
    weights."""
    return {
        strategy.name: {
            **strategy.record["metrics"],
            "temperature": strategy.record.get("temperature", 1.0),
            "backbone_weights": strategy.record.get("backbone_weights"),
        }
        for strategy in strategies
    }


def significance_metrics(significance: pd.DataFrame) -> dict[str, float]:
    """Every pair's McNemar p-value as one metric of the comparison run."""
    return {
        f"mcnemar_p_{row.model_a}_vs_{row.model_b}": float(row.p_value)
        for row in significance.itertuples(index=False)
    }
