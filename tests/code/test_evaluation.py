"""Evaluation returns one metrics dict; confusion matrices have rows true, columns predicted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.evaluation import (
    compute_confusion,
    evaluate_model,
    normalize_confusion,
    plot_confusion,
    plot_history,
)


class _FixedModel:
    """A stand-in with Keras' predict signature that returns fixed probabilities."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities

    def predict(self, x, batch_size=None, verbose=0):
        return self.probabilities[: len(x)]


def test_metrics_match_hand_computed_values() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])
    metrics, predictions = evaluate_model(_FixedModel(probabilities), np.zeros((4, 2, 2, 1)), y)
    assert predictions.tolist() == [0, 1, 0, 1]
    assert metrics["test_accuracy"] == 0.75
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.7]))
    assert abs(metrics["test_loss"] - expected_loss) < 1e-9
    # F1 of class 0: p=0.5, r=1 -> 2/3; class 1: p=1, r=2/3 -> 0.8.
    assert abs(metrics["test_macro_f1"] - (2 / 3 + 0.8) / 2) < 1e-9


def test_confusion_rows_are_true_columns_predicted(tmp_path: Path) -> None:
    counts = compute_confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert counts.loc["a"].tolist() == [1, 1, 0]
    assert counts.loc["c"].tolist() == [0, 1, 0]
    assert list(counts.columns) == ["a", "b", "c"]
    normalized = normalize_confusion(counts)
    assert normalized.loc["a"].tolist() == [0.5, 0.5, 0.0]
    plot_confusion(counts, "t", tmp_path / "raw.png", normalized=False)
    plot_confusion(normalized, "t", tmp_path / "norm.png", normalized=True)
    history = pd.DataFrame(
        {
            "epoch": [0, 1],
            "loss": [1, 0.5],
            "val_loss": [1, 0.6],
            "accuracy": [0.5, 0.7],
            "val_accuracy": [0.4, 0.6],
        }
    )
    plot_history(history, "t", tmp_path / "curves.png")
    for name in ("raw.png", "norm.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
