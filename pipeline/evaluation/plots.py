"""The evaluation figures: confusion matrices (raw and normalized), training curves, ROC and
precision-recall curves, mosaics of test images and of mistakes, and augmented versions of an
image. Every `plot_*` function writes one PNG at `path` (at DPI) and closes its figure."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # Files only: the pipeline never opens a window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

if TYPE_CHECKING:
    from pipeline.config import AugmentationConfig

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
# A mosaic tile in inches: the image and its one- or two-line title. Mosaics are at least
# MOSAIC_MIN_WIDTH wide so that the figure title fits, and hold at most MAX_MOSAIC_IMAGES
# images: pick the ones to show first (most_confident_mistakes, a sample of the test split).
MOSAIC_TILE_SIZE = (1.6, 1.9)
MOSAIC_TITLE_HEIGHT = 0.5
MOSAIC_BOTTOM_MARGIN = 0.1
MOSAIC_MIN_WIDTH = 4.0
MOSAIC_EMPTY_SIZE = (4.0, 1.5)
MAX_MOSAIC_IMAGES = 100
# Tile labels longer than this break after "true /" so that neighbours do not overlap.
MAX_TILE_LABEL = 24
MISTAKE_COLOUR = "red"
AUGMENTED_TILE_SIZE = (2.2, 2.5)


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


def plot_history(
    history: pd.DataFrame,
    title: str,
    path: Path,
    phase_boundary: int | None = None,
    phase_label: str = "fine-tuning starts",
) -> None:
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
    figure, axes = plt.subplots(2, 2, figsize=HISTORY_FIGURE_SIZE, dpi=DPI, sharex=True)
    try:
        for column, metric in enumerate(("loss", "accuracy")):
            for row, smoothed in enumerate((False, True)):
                _draw_history_panel(axes[row, column], history, epochs, metric, smoothed)
                if phase_boundary is not None:
                    axes[row, column].axvline(
                        phase_boundary - 0.5, color="gray", linestyle="--", label=phase_label
                    )
                if axes[row, column].get_legend_handles_labels()[0]:
                    axes[row, column].legend(fontsize=8)
        axes[0, 0].set_xlim(first - 0.5, last + 0.5)
        figure.suptitle(title)
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)


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
    """The ROC curve of binary_curves' result, its AUC in the legend, against the chance
    diagonal (AUC 0.5)."""
    _require_keys(curves, _ROC_KEYS)
    figure, axes = plt.subplots(figsize=CURVE_FIGURE_SIZE, dpi=DPI)
    try:
        axes.plot(
            curves["fpr"], curves["tpr"], color=TRAIN_COLOUR, linewidth=2,
            label=f"model (AUC = {curves['roc_auc']:.3f})",
        )  # fmt: skip
        axes.plot([0, 1], [0, 1], "--", color="gray", label="chance (AUC = 0.500)")
        _finish_unit_square(axes, "false positive rate", "true positive rate (recall)", title)
        axes.legend(loc="lower right", fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)


def plot_precision_recall_curve(curves: Mapping, title: str, path: Path) -> None:
    """The precision-recall curve of binary_curves' result, its average precision (PR AUC) in
    the legend, against guessing: a precision equal to the share of positives."""
    _require_keys(curves, _PR_KEYS)
    chance = float(curves["positive_fraction"])
    figure, axes = plt.subplots(figsize=CURVE_FIGURE_SIZE, dpi=DPI)
    try:
        # sklearn's PrecisionRecallDisplay draws steps too: average precision is the area
        # under this step function, not under straight lines between the points.
        axes.plot(
            curves["recall"], curves["precision"], color=TRAIN_COLOUR, linewidth=2,
            drawstyle="steps-post", label=f"model (AP = {curves['average_precision']:.3f})",
        )  # fmt: skip
        axes.plot([0, 1], [chance, chance], "--", color="gray", label=f"chance (AP = {chance:.3f})")
        _finish_unit_square(axes, "recall", "precision", title)
        axes.legend(loc="lower left", fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)


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


def mosaic_figure_size(count: int, columns: int = 8) -> tuple[float, float]:
    """Figure size in inches of a mosaic of `count` images in rows of `columns`."""
    if count == 0:
        return MOSAIC_EMPTY_SIZE
    used_columns = min(columns, count)
    rows = math.ceil(count / used_columns)
    width = max(used_columns * MOSAIC_TILE_SIZE[0], MOSAIC_MIN_WIDTH)
    return width, rows * MOSAIC_TILE_SIZE[1] + MOSAIC_TITLE_HEIGHT + MOSAIC_BOTTOM_MARGIN


def plot_image_mosaic(
    images_uint8: np.ndarray,
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    confidences: Sequence[float],
    title: str,
    path: Path,
    columns: int = 8,
    empty_message: str = "no mistakes",
) -> None:
    """Test images in rows of `columns`, each titled "true / predicted (confidence)"; mistakes
    are titled and framed in red. Gray (N, H, W, 1) or (N, H, W) and RGB (N, H, W, 3) uint8
    images; small ones are enlarged without blurring, so 8 x 8 digits stay readable.

    With no image (say, most_confident_mistakes of a perfect model), the figure says
    `empty_message` instead.
    """
    if isinstance(columns, bool) or not isinstance(columns, int | np.integer) or columns < 1:
        raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
    images = _uint8_images("images_uint8", images_uint8, batch=True)
    count = len(images)
    for name, values in (
        ("true_names", true_names),
        ("predicted_names", predicted_names),
        ("confidences", confidences),
    ):
        if len(values) != count:
            raise ValueError(f"{name} has {len(values)} entries for {count} images")
    confidences = np.asarray(confidences, dtype=np.float64)
    if count and not np.all((confidences >= 0) & (confidences <= 1)):
        raise ValueError("confidences must be probabilities, in [0, 1]")
    if count > MAX_MOSAIC_IMAGES:
        raise ValueError(
            f"{count} images is more than a mosaic shows legibly ({MAX_MOSAIC_IMAGES}): "
            "select the images to show first"
        )
    figure = plt.figure(figsize=mosaic_figure_size(count, columns), dpi=DPI)
    try:
        if count == 0:
            figure.text(0.5, 0.6, title, ha="center", va="center", fontsize=12)
            figure.text(0.5, 0.3, empty_message, ha="center", va="center", color="gray")
        else:
            _draw_mosaic(figure, images, true_names, predicted_names, confidences, columns)
            figure.suptitle(title)
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)


def _draw_mosaic(figure, images, true_names, predicted_names, confidences, columns) -> None:
    """The tiles of plot_image_mosaic on `figure`, laid out in inches so tiles keep their size."""
    width, height = figure.get_size_inches()
    used_columns = min(columns, len(images))
    rows = math.ceil(len(images) / used_columns)
    tile_width, tile_height = MOSAIC_TILE_SIZE
    left = (width - used_columns * tile_width) / 2
    figure.subplots_adjust(
        left=left / width,
        right=1 - left / width,
        top=1 - MOSAIC_TITLE_HEIGHT / height,
        bottom=MOSAIC_BOTTOM_MARGIN / height,
        wspace=0.1,
        hspace=0.0,
    )
    grid = figure.add_gridspec(rows, used_columns)
    tile_pixels = tile_width * DPI
    for index, image in enumerate(images):
        axes = figure.add_subplot(grid[index // used_columns, index % used_columns])
        true, predicted = str(true_names[index]), str(predicted_names[index])
        mistake = true != predicted
        label = f"{true} / {predicted} ({confidences[index]:.2f})"
        if len(label) > MAX_TILE_LABEL:
            label = f"{true} /\n{predicted} ({confidences[index]:.2f})"
        _show_image(axes, image, smaller_than=tile_pixels)
        axes.set_title(label, fontsize=7, color=MISTAKE_COLOUR if mistake else "black")
        for spine in axes.spines.values():
            spine.set_visible(mistake)
            spine.set_color(MISTAKE_COLOUR)
            spine.set_linewidth(2)


def _show_image(axes, image: np.ndarray, smaller_than: float) -> None:
    """Draw one uint8 image without ticks: gray on a fixed 0-255 scale (a dim image stays
    dim), small images enlarged with nearest-neighbour interpolation (sharp pixels)."""
    interpolation = "nearest" if max(image.shape[:2]) <= smaller_than else "antialiased"
    if image.shape[-1] == 1:
        axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation=interpolation)
    else:
        axes.imshow(image, interpolation=interpolation)
    axes.set_xticks([])
    axes.set_yticks([])


def _uint8_images(name: str, values, batch: bool) -> np.ndarray:
    """`values` as uint8 images with a channel axis, (N, H, W, C) when `batch` else (H, W, C),
    C being 1 or 3; or a ValueError naming the argument."""
    array = np.asarray(values)
    if batch and array.size == 0:
        # An empty selection ([] or images[[]]) is a mosaic with nothing to show.
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 images (raw pixels), got dtype {array.dtype}")
    rank = 4 if batch else 3
    if array.ndim == rank - 1:
        array = array[..., None]
    if array.ndim != rank or array.shape[-1] not in (1, 3):
        expected = (
            "(N, H, W), (N, H, W, 1) or (N, H, W, 3)" if batch else "(H, W), (H, W, 1) or (H, W, 3)"
        )
        raise ValueError(f"{name} must have shape {expected}, got {np.shape(values)}")
    return array


def plot_augmented_versions(
    original_uint8: np.ndarray,
    versions_uint8: np.ndarray,
    path: Path,
    title: str = "augmented versions of one training image",
) -> None:
    """The original and its augmented versions side by side, as the course shows what
    augmentation does (listing 5.12)."""
    original = _uint8_images("original_uint8", original_uint8, batch=False)
    versions = _uint8_images("versions_uint8", versions_uint8, batch=True)
    if len(versions) == 0:
        raise ValueError("versions_uint8 is empty: pass at least one augmented version")
    if versions.shape[1:] != original.shape:
        raise ValueError(
            f"versions_uint8 holds images of shape {versions.shape[1:]}, the original is "
            f"{original.shape}: the versions must be of the same image"
        )
    panels = 1 + len(versions)
    figure, axes = plt.subplots(
        1,
        panels,
        figsize=(panels * AUGMENTED_TILE_SIZE[0], AUGMENTED_TILE_SIZE[1]),
        dpi=DPI,
        squeeze=False,
    )
    try:
        tile_pixels = AUGMENTED_TILE_SIZE[0] * DPI
        for index, (panel, image) in enumerate(zip(axes[0], [original, *versions], strict=True)):
            _show_image(panel, image, smaller_than=tile_pixels)
            panel.set_title("original" if index == 0 else f"augmented {index}", fontsize=9)
        figure.suptitle(title)
        figure.tight_layout()
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)


def augmented_versions(
    image_uint8: np.ndarray,
    augmentation_config: AugmentationConfig | None,
    count: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """`count` versions of one image through the pipeline's own augmentation layers
    (pipeline.models.preprocessing.augment) in training mode, as uint8 of the image's shape.
    The same seed gives the same versions; None (augmentation off) gives copies."""
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    image = np.asarray(image_uint8)
    shaped = _uint8_images("image_uint8", image, batch=False)
    if augmentation_config is None:
        return np.repeat(image[None], count, axis=0)
    # Keras is imported here rather than at the top: the other figures need only matplotlib,
    # and importing a backend takes seconds.
    import keras

    from pipeline.models.preprocessing import augment

    # Keras' random layers draw their seeds from Python's `random` when built without one:
    # seeding it while they are built makes the versions reproducible, and restoring its
    # state afterwards leaves the caller's random numbers alone.
    state = random.getstate()
    try:
        random.seed(seed)
        inputs = keras.Input(shape=shaped.shape)
        model = keras.Model(inputs, augment(inputs, augmentation_config))
    finally:
        random.setstate(state)
    batch = np.repeat(shaped[None].astype("float32"), count, axis=0)
    outputs = keras.ops.convert_to_numpy(model(batch, training=True))
    return np.clip(np.rint(outputs), 0, 255).astype(np.uint8).reshape((count, *image.shape))
