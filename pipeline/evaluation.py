"""Test metrics and confusion matrices. Evaluation returns one dict, written to both the DVC
metrics file and MLflow, so the two never disagree."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only: the pipeline never opens a window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix, f1_score  # noqa: E402


def evaluate_model(
    model, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> tuple[dict, np.ndarray]:
    """Test metrics of `model` on raw images, and its predicted labels."""
    probabilities = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
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


def plot_confusion(matrix: pd.DataFrame, title: str, path: Path, normalized: bool) -> None:
    size = max(4.0, 0.6 * len(matrix) + 2.0)
    figure, axes = plt.subplots(figsize=(size, size * 0.9))
    image = axes.imshow(matrix.to_numpy(), cmap="Blues", vmin=0, vmax=1 if normalized else None)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(matrix))
    axes.set_xticks(ticks, labels=matrix.columns, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=matrix.index)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if len(matrix) <= 20:
        threshold = matrix.to_numpy().max() / 2
        for row in ticks:
            for column in ticks:
                value = matrix.iat[row, column]
                axes.text(
                    column,
                    row,
                    f"{value:.2f}" if normalized else f"{int(value)}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value > threshold else "black",
                )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_history(history: pd.DataFrame, title: str, path: Path) -> None:
    """Loss and accuracy per epoch, train against validation."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        axes.plot(history["epoch"], history[metric], "o-", label=f"train {metric}")
        axes.plot(history["epoch"], history[f"val_{metric}"], "s-", label=f"val {metric}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
