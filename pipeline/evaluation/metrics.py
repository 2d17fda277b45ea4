"""Test metrics and confusion matrices. Evaluation returns one dict, written to both the DVC
metrics file and MLflow, so the two never disagree."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """One probability column per class, whatever the output layer: a two-class model's single
    sigmoid unit (the probability of class 1) becomes two columns, [1 - p, p]."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return np.hstack([1.0 - outputs, outputs])
    return outputs


def evaluate_model(
    model, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> tuple[dict, np.ndarray]:
    """Test metrics of `model` on raw images, and its predicted labels."""
    probabilities = class_probabilities(model.predict(x, batch_size=batch_size, verbose=0))
    predictions = probabilities.argmax(axis=1)
    eps = np.finfo(np.float32).eps
    true_probability = np.clip(probabilities[np.arange(len(y)), y], eps, 1.0)
    metrics = {
        "test_loss": float(-np.log(true_probability).mean()),
        "test_accuracy": float((predictions == y).mean()),
        "test_macro_f1": float(f1_score(y, predictions, average="macro", zero_division=0)),
        "test_images": len(y),
    }
    return metrics, predictions


def compute_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> pd.DataFrame:
    """Raw counts: rows are true classes, columns predicted, both labelled by class name."""
    counts = confusion_matrix(y_true, y_pred, labels=np.arange(len(class_names)))
    return pd.DataFrame(counts, index=pd.Index(class_names, name="true"), columns=class_names)


def normalize_confusion(counts: pd.DataFrame) -> pd.DataFrame:
    """Each row divided by its total: the recall of each class on the diagonal."""
    totals = counts.sum(axis=1).replace(0, 1)
    return counts.div(totals, axis=0)
