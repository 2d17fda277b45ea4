"""The evaluation figures: confusion matrices (raw and normalized) and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only: the pipeline never opens a window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

DPI = 120
# Above this many classes the cells are too small to hold a readable number.
MAX_LABELLED_CLASSES = 20
# Class names longer than this are rotated on the x axis so that they do not overlap.
MAX_UPRIGHT_LABEL = 3


def confusion_figure_size(classes: int) -> tuple[float, float]:
    """Figure size in inches: it grows with the number of classes so cells stay legible."""
    width = max(4.0, 0.6 * classes + 2.0)
    return width, width * 0.9


def confusion_display(matrix: pd.DataFrame, title: str, normalized: bool) -> ConfusionMatrixDisplay:
    """Draw `matrix` (rows true, columns predicted) on a new, laid-out figure.

    The figure stays open so that tests can inspect its artists; the caller must close
    `display.figure_`. Counts use the range 0 to their maximum and integer labels; normalized
    matrices use 0 to 1 and two decimals, so that plots of different models compare.
    """
    values = matrix.to_numpy()
    if not normalized:
        # Counts read back from a CSV may be floats; the "d" format needs integers.
        values = np.rint(values).astype(int)
    figure, axes = plt.subplots(figsize=confusion_figure_size(len(matrix)), dpi=DPI)
    labels = [str(name) for name in matrix.columns]
    display = ConfusionMatrixDisplay(values, display_labels=labels)
    display.plot(
        ax=axes,
        cmap="Blues",
        include_values=len(matrix) <= MAX_LABELLED_CLASSES,
        values_format=".2f" if normalized else "d",
        colorbar=False,
        im_kw={"vmin": 0, "vmax": 1 if normalized else max(int(values.max(initial=0)), 1)},
        text_kw={"fontsize": 8},
    )
    # The display picks text colours from the data range; pick them from the colour scale
    # instead, so that a normalized cell of 0.3 on a 0-1 scale keeps dark text.
    if display.text_ is not None:
        shade = display.im_.norm(values)
        for (row, column), text in np.ndenumerate(display.text_):
            text.set_color("white" if shade[row, column] > 0.5 else "black")
    # The colour bar matches the height of the matrix.
    figure.colorbar(display.im_, ax=axes, fraction=0.046, pad=0.04)
    axes.set_yticks(np.arange(len(matrix)), labels=[str(name) for name in matrix.index])
    if max((len(label) for label in labels), default=0) > MAX_UPRIGHT_LABEL:
        plt.setp(axes.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    return display


def plot_confusion(matrix: pd.DataFrame, title: str, path: Path, normalized: bool) -> None:
    """Save a confusion matrix (rows true, columns predicted) as a PNG at `path`."""
    display = confusion_display(matrix, title, normalized)
    try:
        display.figure_.savefig(path, dpi=DPI)
    finally:
        plt.close(display.figure_)


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
    try:
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)
