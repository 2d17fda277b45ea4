"""The evaluation figures of numbers: confusion matrices (raw and normalized), training curves,
ROC and precision-recall curves, the reliability diagram (mosaics.py draws the figures of
images).

Each figure is built by a function that returns it (`confusion_display`, `history_figure`,
`roc_figure`, `precision_recall_figure`, `reliability_figure`), so tests read back the data it
shows; each
`plot_*` function builds one and writes it as a PNG at `path`, at DPI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

if TYPE_CHECKING:
    from pipeline.evaluation.calibration import ReliabilityBins

DPI = 120
# Above this many classes the cells are too small to hold a readable number.
MAX_LABELLED_CLASSES = 20
# Class names longer than this are rotated on the x axis so that they do not overlap.
MAX_UPRIGHT_LABEL = 3
# Training curves: loss and accuracy, raw on the top row and smoothed on the bottom one.
HISTORY_FIGURE_SIZE = (10.0, 8.0)
SMOOTHING_FACTOR = 0.8
TRAIN_COLOUR, VAL_COLOUR = "C0", "C1"
CURVE_FIGURE_SIZE = (5.0, 5.0)
# Reference lines (chance, the start of fine-tuning) are dashed and gray, apart from the data.
REFERENCE_COLOUR = "gray"
# The reliability diagram: accuracy against confidence above, the images per bin below.
RELIABILITY_FIGURE_SIZE = (6.0, 7.0)
BEFORE_COLOUR, AFTER_COLOUR = "C1", "C0"


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure at DPI, outside pyplot: nothing to close, and no GUI backend is ever chosen,
    as matplotlib recommends for figures that only go to files."""
    return Figure(figsize=size, dpi=DPI)


def save_figure(figure: Figure, path: Path) -> None:
    """Write `figure` as a PNG at `path`, at DPI (the figure's own pixel size)."""
    figure.savefig(path, dpi=DPI)


def confusion_figure_size(classes: int) -> tuple[float, float]:
    """Figure size in inches: it grows with the number of classes so cells stay legible."""
    width = max(4.0, 0.6 * classes + 2.0)
    return width, width * 0.9


def confusion_display(matrix: pd.DataFrame, title: str, normalized: bool) -> ConfusionMatrixDisplay:
    """Draw `matrix` (rows true, columns predicted) on a new, laid-out figure.

    `display.figure_` is the figure, `display.im_` the matrix it paints and `display.text_`
    the numbers in its cells (None above MAX_LABELLED_CLASSES classes). Counts use the range 0
    to their maximum and integer labels; normalized matrices use 0 to 1 and two decimals, so
    that plots of different models compare.
    """
    values = matrix.to_numpy()
    if not normalized:
        # Counts read back from a CSV may be floats; the "d" format needs integers.
        values = np.rint(values).astype(int)
    figure = new_figure(confusion_figure_size(len(matrix)))
    axes = figure.subplots()
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
        for label in axes.get_xticklabels():
            label.set(rotation=45, ha="right", rotation_mode="anchor")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    return display


def plot_confusion(matrix: pd.DataFrame, title: str, path: Path, normalized: bool) -> None:
    """Save a confusion matrix (rows true, columns predicted) as a PNG at `path`."""
    save_figure(confusion_display(matrix, title, normalized).figure_, path)


def plot_history(
    history: pd.DataFrame,
    title: str,
    path: Path,
    phase_boundary: int | None = None,
    phase_label: str = "fine-tuning starts",
) -> None:
    """Save history_figure's training curves as a PNG at `path`."""
    save_figure(history_figure(history, title, phase_boundary, phase_label), path)


def history_figure(
    history: pd.DataFrame,
    title: str,
    phase_boundary: int | None = None,
    phase_label: str = "fine-tuning starts",
) -> Figure:
    """Loss and accuracy per epoch, train against validation, on a 2 x 2 grid: raw on the top
    row, smoothed (smooth_curve, factor 0.8) on the bottom one, where the trend of a noisy
    validation curve shows. Columns missing from `history` are left out.

    `phase_boundary` is the first epoch of a second training phase (for fine-tuning, the number
    of head epochs, as epochs count from 0): a dashed line between it and the epoch before
    marks it on every panel, both phases on one epoch axis.
    """
    if phase_boundary is not None and (
        isinstance(phase_boundary, bool)
        or not isinstance(phase_boundary, int | np.integer)
        or phase_boundary < 0
    ):
        raise ValueError(
            f"phase_boundary must be an epoch number (an integer >= 0), got {phase_boundary!r}"
        )
    if len(history) == 0:
        raise ValueError("history is empty: training recorded no epoch to plot")
    epochs = (
        history["epoch"].to_numpy() if "epoch" in history else np.arange(len(history), dtype=int)
    )
    # Half an epoch of margin on each side: a one-epoch history gets a readable axis, and the
    # phase line always shows.
    first, last = float(np.min(epochs)), float(np.max(epochs))
    if phase_boundary is not None:
        first, last = min(first, phase_boundary - 1), max(last, phase_boundary)
    figure = new_figure(HISTORY_FIGURE_SIZE)
    axes = figure.subplots(2, 2, sharex=True)
    for column, metric in enumerate(("loss", "accuracy")):
        for row, smoothed in enumerate((False, True)):
            _draw_history_panel(axes[row, column], history, epochs, metric, smoothed)
            if phase_boundary is not None:
                axes[row, column].axvline(
                    phase_boundary - 0.5, color=REFERENCE_COLOUR, linestyle="--", label=phase_label
                )
            if axes[row, column].get_legend_handles_labels()[0]:
                axes[row, column].legend(fontsize=8)
    axes[0, 0].set_xlim(first - 0.5, last + 0.5)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _draw_history_panel(axes, history: pd.DataFrame, epochs, metric: str, smoothed: bool) -> None:
    """One panel of plot_history: the train and validation curves of `metric` that exist."""
    drawn = False
    for key, label, style, colour in (
        (metric, "train", "o-", TRAIN_COLOUR),
        (f"val_{metric}", "validation", "s-", VAL_COLOUR),
    ):
        if key not in history:
            continue
        values = history[key].to_numpy(dtype=float)
        if smoothed:
            values = smooth_curve(values, SMOOTHING_FACTOR)
        axes.plot(epochs, values, style, color=colour, markersize=3, label=f"{label} {metric}")
        drawn = True
    if not drawn:
        axes.text(
            0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=axes.transAxes
        )
    axes.set_title(f"{metric}, smoothed (factor {SMOOTHING_FACTOR})" if smoothed else metric)
    axes.set_ylabel(metric)
    if smoothed:
        axes.set_xlabel("epoch")
    # Epochs are whole numbers; a one-epoch history would otherwise get ticks like 0.02.
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.grid(alpha=0.3)


def smooth_curve(values: Sequence[float], factor: float = SMOOTHING_FACTOR) -> list[float]:
    """Exponential moving average of `values` (the course's listing 5.24): each point is
    previous * factor + point * (1 - factor); the first point is kept as it is."""
    if isinstance(factor, bool) or not isinstance(factor, int | float | np.number):
        raise ValueError(f"factor must be a number, got {factor!r}")
    # Written so that NaN fails the check.
    if not 0.0 <= factor < 1.0:
        raise ValueError(
            f"factor must be in [0, 1), got {factor}: 0 keeps the curve, 1 would flatten it "
            "to its first point"
        )
    smoothed: list[float] = []
    for point in values:
        point = float(point)
        smoothed.append(smoothed[-1] * factor + point * (1 - factor) if smoothed else point)
    return smoothed


_ROC_KEYS = ("fpr", "tpr", "roc_auc")
_PR_KEYS = ("precision", "recall", "average_precision", "positive_fraction")


def plot_roc_curve(curves: Mapping, title: str, path: Path) -> None:
    """Save roc_figure's ROC curve as a PNG at `path`."""
    save_figure(roc_figure(curves, title), path)


def roc_figure(curves: Mapping, title: str) -> Figure:
    """The ROC curve of binary_curves' result, its AUC in the legend, against the chance
    diagonal (AUC 0.5)."""
    _require_keys(curves, _ROC_KEYS)
    figure = new_figure(CURVE_FIGURE_SIZE)
    axes = figure.subplots()
    axes.plot(
        curves["fpr"], curves["tpr"], color=TRAIN_COLOUR, linewidth=2,
        label=f"model (AUC = {curves['roc_auc']:.3f})",
    )  # fmt: skip
    axes.plot([0, 1], [0, 1], "--", color=REFERENCE_COLOUR, label="chance (AUC = 0.500)")
    _finish_unit_square(axes, "false positive rate", "true positive rate (recall)", title)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def plot_precision_recall_curve(curves: Mapping, title: str, path: Path) -> None:
    """Save precision_recall_figure's curve as a PNG at `path`."""
    save_figure(precision_recall_figure(curves, title), path)


def precision_recall_figure(curves: Mapping, title: str) -> Figure:
    """The precision-recall curve of binary_curves' result, its average precision (PR AUC) in
    the legend, against guessing: a precision equal to the share of positives."""
    _require_keys(curves, _PR_KEYS)
    chance = float(curves["positive_fraction"])
    figure = new_figure(CURVE_FIGURE_SIZE)
    axes = figure.subplots()
    # sklearn's PrecisionRecallDisplay draws steps too: average precision is the area under
    # this step function, not under straight lines between the points.
    axes.plot(
        curves["recall"], curves["precision"], color=TRAIN_COLOUR, linewidth=2,
        drawstyle="steps-post", label=f"model (AP = {curves['average_precision']:.3f})",
    )  # fmt: skip
    axes.plot(
        [0, 1], [chance, chance], "--", color=REFERENCE_COLOUR, label=f"chance (AP = {chance:.3f})"
    )
    _finish_unit_square(axes, "recall", "precision", title)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure


def _require_keys(curves: Mapping, keys: Sequence[str]) -> None:
    missing = [key for key in keys if key not in curves]
    if missing:
        raise ValueError(f"curves lacks {missing}: pass the result of binary_curves")


def _finish_unit_square(axes, xlabel: str, ylabel: str, title: str) -> None:
    """Both axes from 0 to 1 (a little margin so lines on the border show), square, gridded."""
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_aspect("equal")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)


def plot_reliability(
    before: ReliabilityBins, after: ReliabilityBins, temperature: float, title: str, path: Path
) -> None:
    """Save reliability_figure's diagram as a PNG at `path`."""
    save_figure(reliability_figure(before, after, temperature, title), path)


def reliability_figure(
    before: ReliabilityBins, after: ReliabilityBins, temperature: float, title: str
) -> Figure:
    """The reliability diagram (Guo et al. 2017): per confidence bin, the accuracy against the
    mean top-label confidence, before temperature scaling (T = 1) and after (`temperature`),
    against the diagonal of perfect calibration, their ECEs in the legend; below, the images
    in each bin, on a log scale (most sit in the last bin). With T = 1 there is one model, drawn
    once."""
    if len(before.counts) != len(after.counts):
        raise ValueError(
            f"before has {len(before.counts)} bins, after {len(after.counts)}: bin both alike"
        )
    scaled = temperature != 1.0
    if scaled:
        series = [
            (before, BEFORE_COLOUR, f"before: T = 1, ECE {before.ece:.4f}", "s--"),
            (after, AFTER_COLOUR, f"after: T = {temperature:.3f}, ECE {after.ece:.4f}", "o-"),
        ]
    else:
        series = [(after, AFTER_COLOUR, f"no temperature scaling: ECE {after.ece:.4f}", "o-")]
    figure = new_figure(RELIABILITY_FIGURE_SIZE)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1.2)})
    top.plot([0, 1], [0, 1], ":", color=REFERENCE_COLOUR, label="perfect calibration")
    width = np.diff(after.edges)
    for offset, (bins, colour, label, style) in enumerate(series):
        filled = bins.counts > 0
        top.plot(
            bins.confidence[filled], bins.accuracy[filled], style, color=colour,
            markersize=5, linewidth=1.5, label=label,
        )  # fmt: skip
        # Side by side within each bin when there are two series.
        share = width / len(series)
        bottom.bar(
            bins.edges[:-1] + offset * share, bins.counts, width=share, align="edge",
            color=colour, alpha=0.8, label=label.split(":")[0],
        )  # fmt: skip
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.05)
    top.set_ylabel("accuracy")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.set_yscale("log")
    # Below 1, so that a bin of one image shows a bar.
    bottom.set_ylim(bottom=0.7)
    bottom.set_xlabel(f"top-label confidence ({len(after.counts)} equal-width bins)")
    bottom.set_ylabel("images")
    bottom.set_xticks(np.linspace(0.0, 1.0, 6))
    bottom.grid(alpha=0.3, axis="y")
    if scaled:
        bottom.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure
