"""Evaluation returns one metrics dict; confusion matrices have rows true, columns predicted; the
figures are PNGs whose size, colours and labels carry the data."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from PIL import Image

from pipeline.config import AugmentationConfig
from pipeline.evaluation.metrics import (
    TOP_K_MIN_CLASSES,
    binary_curves,
    binary_metrics,
    classification_report_frame,
    compute_confusion,
    evaluate_model,
    metric_safe_names,
    most_confident_mistakes,
    normalize_confusion,
    per_class_metrics,
    probability_metrics,
    top_k_accuracy,
    top_k_metrics,
)
from pipeline.evaluation.plots import (
    AUGMENTED_TILE_SIZE,
    CURVE_FIGURE_SIZE,
    DPI,
    HISTORY_FIGURE_SIZE,
    MAX_MOSAIC_IMAGES,
    augmented_versions,
    confusion_display,
    confusion_figure_size,
    mosaic_figure_size,
    plot_augmented_versions,
    plot_confusion,
    plot_history,
    plot_image_mosaic,
    plot_precision_recall_curve,
    plot_roc_curve,
    smooth_curve,
)

# How far (per RGB channel, 0-255) a rendered pixel may stray from its expected colour.
COLOUR_TOLERANCE = 8


class _FixedModel:
    """A stand-in with Keras' predict signature that returns fixed probabilities."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities

    def predict(self, x, batch_size=None, verbose=0):
        return self.probabilities[: len(x)]


def _confusion(values: np.ndarray, names: list[str]) -> pd.DataFrame:
    """A matrix shaped as compute_confusion returns it, with chosen values."""
    return pd.DataFrame(values, index=pd.Index(names, name="true"), columns=names)


def _read_png(path: Path) -> np.ndarray:
    """The PNG at `path` as a (height, width, 3) array of 0-255 integers."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def _expected_pixels(size_inches: tuple[float, float]) -> tuple[int, int]:
    """(height, width) in pixels of a figure of `size_inches` saved at the pipeline's DPI."""
    width, height = size_inches
    return round(height * DPI), round(width * DPI)


def _assert_size(pixels: np.ndarray, size_inches: tuple[float, float]) -> None:
    """The image has the figure's size at DPI, give or take rounding."""
    height, width = _expected_pixels(size_inches)
    assert abs(pixels.shape[0] - height) <= 2, (pixels.shape, size_inches)
    assert abs(pixels.shape[1] - width) <= 2, (pixels.shape, size_inches)


def _assert_not_blank(pixels: np.ndarray, min_ink: float = 0.05) -> None:
    """A real figure has many distinct colours and a fair share (`min_ink`) of non-white
    pixels."""
    # Pack each RGB triple into one integer: np.unique on rows is slow for large images.
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 50
    assert (pixels < 250).any(axis=2).mean() > min_ink


def _near(pixels: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """Mask of the pixels within COLOUR_TOLERANCE of `colour` (RGB in 0-1)."""
    target = np.round(np.array(colour[:3]) * 255)
    return (np.abs(pixels - target) <= COLOUR_TOLERANCE).all(axis=-1)


def _cell_colours(matrix: pd.DataFrame, path: Path, normalized: bool) -> np.ndarray:
    """Plot `matrix` to `path`; return the colour of each cell read back from the PNG.

    The cell positions come from the same figure built by confusion_display, drawn at the
    same DPI, so the pixel layout matches the file. Each cell is sampled near its top-left
    corner, away from the number printed in its centre. Also checks that true classes run
    top to bottom and predicted classes left to right, as the matrix reads.
    """
    plot_confusion(matrix, "t", path, normalized=normalized)
    pixels = _read_png(path)
    display = confusion_display(matrix, "t", normalized)
    try:
        display.figure_.canvas.draw()
        to_display = display.ax_.transData.transform
        classes = len(matrix)
        colours = np.zeros((classes, classes, 3), dtype=int)
        positions = {}
        for row in range(classes):
            for column in range(classes):
                x, y = to_display((column - 0.35, row - 0.35))
                # Matplotlib counts y up from the bottom; image rows count down from the top.
                positions[row, column] = (round(pixels.shape[0] - y), round(x))
                colours[row, column] = pixels[positions[row, column]]
    finally:
        plt.close(display.figure_)
    last = classes - 1
    assert positions[0, 0][0] < positions[last, 0][0], "row 0 (first true class) is on top"
    assert positions[0, 0][1] < positions[0, last][1], "column 0 (first predicted) is left"
    return colours


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
    # The same numbers straight from the probabilities, as the evaluate stage computes them.
    assert probability_metrics(y, probabilities) == metrics


def test_confusion_rows_are_true_columns_predicted() -> None:
    counts = compute_confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert counts.loc["a"].tolist() == [1, 1, 0]
    assert counts.loc["c"].tolist() == [0, 1, 0]
    assert list(counts.columns) == ["a", "b", "c"]
    assert counts.index.name == "true"
    normalized = normalize_confusion(counts)
    assert normalized.loc["a"].tolist() == [0.5, 0.5, 0.0]


@pytest.mark.parametrize("classes", [3, 12])
def test_confusion_png_has_the_figure_size(tmp_path: Path, classes: int) -> None:
    """The PNG is the class-dependent figure size at DPI, and it is not an empty canvas."""
    names = [f"c{index}" for index in range(classes)]
    matrix = _confusion(np.eye(classes, dtype=int) * 7 + 1, names)
    plot_confusion(matrix, "t", tmp_path / "raw.png", normalized=False)
    pixels = _read_png(tmp_path / "raw.png")
    _assert_size(pixels, confusion_figure_size(classes))
    _assert_not_blank(pixels)


def test_confusion_figure_grows_with_classes() -> None:
    """More classes give a larger figure, so cells and labels keep a readable size."""
    sizes = [confusion_figure_size(classes) for classes in (2, 10, 25, 50)]
    assert sizes[0][0] >= 4.0
    assert all(small[0] < large[0] for small, large in zip(sizes[1:], sizes[2:], strict=False))
    assert all(small[1] < large[1] for small, large in zip(sizes[1:], sizes[2:], strict=False))


def test_confusion_colours_carry_the_counts(tmp_path: Path) -> None:
    """Each cell is painted Blues(count / largest count): the dominant cell is the darkest and
    sits where its row (true) and column (predicted) say."""
    values = np.array([[1, 0, 9], [2, 4, 0], [0, 3, 6]])
    matrix = _confusion(values, ["a", "b", "c"])
    colours = _cell_colours(matrix, tmp_path / "raw.png", normalized=False)
    blues = colormaps["Blues"]
    for (row, column), value in np.ndenumerate(values):
        expected = np.round(np.array(blues(value / 9)[:3]) * 255)
        assert np.abs(colours[row, column] - expected).max() <= COLOUR_TOLERANCE, (row, column)
    darkest = np.unravel_index(colours.sum(axis=2).argmin(), values.shape)
    assert darkest == (0, 2)


def test_normalized_colours_use_a_zero_to_one_scale(tmp_path: Path) -> None:
    """Normalized cells are painted Blues(share of the row), so the same counts look different
    from the raw plot and a 0.5 cell is mid-blue, not the darkest colour."""
    counts = _confusion(np.array([[5, 5, 0], [0, 8, 2], [0, 2, 8]]), ["a", "b", "c"])
    normalized = normalize_confusion(counts)
    colours = _cell_colours(normalized, tmp_path / "norm.png", normalized=True)
    blues = colormaps["Blues"]
    for (row, column), share in np.ndenumerate(normalized.to_numpy()):
        expected = np.round(np.array(blues(share)[:3]) * 255)
        assert np.abs(colours[row, column] - expected).max() <= COLOUR_TOLERANCE, (row, column)
    plot_confusion(counts, "t", tmp_path / "raw.png", normalized=False)
    raw, norm = _read_png(tmp_path / "raw.png"), _read_png(tmp_path / "norm.png")
    assert raw.shape == norm.shape
    assert (np.abs(raw - norm) > COLOUR_TOLERANCE).any(axis=2).mean() > 0.01


def test_confusion_labels_axes_and_cell_text() -> None:
    """Class names on both axes, axis names, title, a 0-1 scale and 2-decimal cells when
    normalized, a 0-to-largest scale and integer cells for counts."""
    names = ["airplane", "automobile", "bird"]
    counts = _confusion(np.array([[3, 1, 0], [1, 3, 0], [1, 0, 3]]), names)
    for matrix, normalized in ((counts, False), (normalize_confusion(counts), True)):
        display = confusion_display(matrix, "my title", normalized)
        try:
            axes = display.ax_
            assert [label.get_text() for label in axes.get_xticklabels()] == names
            assert [label.get_text() for label in axes.get_yticklabels()] == names
            # Long class names are rotated so that neighbours do not overlap.
            assert {label.get_rotation() for label in axes.get_xticklabels()} == {45.0}
            assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted", "true")
            assert axes.get_title() == "my title"
            assert display.im_.cmap.name == "Blues"
            texts = [[cell.get_text() for cell in row] for row in display.text_]
            if normalized:
                assert display.im_.get_clim() == (0, 1)
                assert texts[0] == ["0.75", "0.25", "0.00"]
            else:
                assert display.im_.get_clim() == (0, 3)
                assert texts[0] == ["3", "1", "0"]
            # Text on dark cells is white, on light cells black, so every number reads.
            assert to_rgb(display.text_[1, 1].get_color()) == (1.0, 1.0, 1.0)
            assert to_rgb(display.text_[0, 2].get_color()) == (0.0, 0.0, 0.0)
            # Figure pixels equal file pixels only if the figure is drawn at the saved DPI.
            assert display.figure_.dpi == DPI
        finally:
            plt.close(display.figure_)


def test_short_class_names_stay_upright() -> None:
    display = confusion_display(_confusion(np.eye(3, dtype=int), ["0", "1", "2"]), "t", False)
    try:
        assert {label.get_rotation() for label in display.ax_.get_xticklabels()} == {0.0}
    finally:
        plt.close(display.figure_)


@pytest.mark.parametrize(("classes", "cell_texts"), [(20, 400), (25, 0)])
def test_many_classes_have_no_cell_text(classes: int, cell_texts: int) -> None:
    """Up to 20 classes every cell shows its value; beyond, the numbers would not fit."""
    names = [f"c{index:02d}" for index in range(classes)]
    matrix = _confusion(np.eye(classes, dtype=int) * 5, names)
    display = confusion_display(matrix, "t", normalized=False)
    try:
        assert len(display.ax_.texts) == cell_texts
        assert (display.text_ is None) == (cell_texts == 0)
        assert len(display.ax_.get_xticklabels()) == classes
    finally:
        plt.close(display.figure_)


def test_every_figure_is_closed(tmp_path: Path) -> None:
    """Evaluating several strategies must not leak one open figure per plot."""
    before = set(plt.get_fignums())
    plot_confusion(_confusion(np.eye(2, dtype=int), ["a", "b"]), "t", tmp_path / "c.png", True)
    plot_history(_history(), "t", tmp_path / "h.png", phase_boundary=2)
    curves = binary_curves(*_binary_example())
    plot_roc_curve(curves, "t", tmp_path / "roc.png")
    plot_precision_recall_curve(curves, "t", tmp_path / "pr.png")
    images = _gradient_images(3, 8, 1)
    plot_image_mosaic(images, ["a"] * 3, ["a", "b", "a"], [0.9, 0.8, 0.7], "t", tmp_path / "m.png")
    plot_image_mosaic(images[:0], [], [], [], "t", tmp_path / "m0.png")
    plot_augmented_versions(images[0], images[1:], tmp_path / "a.png")
    assert set(plt.get_fignums()) == before


def _history() -> pd.DataFrame:
    """A short training history with train and validation curves apart."""
    return pd.DataFrame(
        {
            "epoch": [0, 1, 2, 3],
            "loss": [1.0, 0.7, 0.5, 0.4],
            "val_loss": [1.1, 0.9, 0.8, 0.75],
            "accuracy": [0.5, 0.7, 0.8, 0.85],
            "val_accuracy": [0.4, 0.55, 0.6, 0.62],
        }
    )


def test_history_png_draws_train_and_val_curves(tmp_path: Path) -> None:
    """The curves PNG (2 x 2 panels, raw and smoothed) is HISTORY_FIGURE_SIZE at DPI and shows
    both line colours, train and val."""
    plot_history(_history(), "t", tmp_path / "curves.png")
    pixels = _read_png(tmp_path / "curves.png")
    _assert_size(pixels, HISTORY_FIGURE_SIZE)
    _assert_not_blank(pixels)
    train_colour, val_colour = plt.rcParams["axes.prop_cycle"].by_key()["color"][:2]
    # Each curve spans two panels and four epochs; a legend swatch alone is far fewer pixels.
    assert _near(pixels, to_rgb(train_colour)).sum() > 1000
    assert _near(pixels, to_rgb(val_colour)).sum() > 1000
    # Raw and smoothed loss and accuracy: both curves in each quarter of the figure.
    height, width = pixels.shape[0] // 2, pixels.shape[1] // 2
    for row in (0, 1):
        for column in (0, 1):
            panel = pixels[row * height : (row + 1) * height, column * width : (column + 1) * width]
            for colour in (train_colour, val_colour):
                assert _near(panel, to_rgb(colour)).sum() > 300, (row, column, colour)


def _gray_pixels(pixels: np.ndarray) -> int:
    """How many pixels are matplotlib's "gray" (128, 128, 128), the phase line's colour."""
    return int(_near(pixels, to_rgb("gray")).sum())


def test_history_marks_the_fine_tuning_boundary(tmp_path: Path) -> None:
    """A phase boundary draws a dashed gray line on each of the four panels; none without."""
    plot_history(_history(), "t", tmp_path / "plain.png")
    plot_history(_history(), "t", tmp_path / "phases.png", phase_boundary=2)
    plain, phases = _read_png(tmp_path / "plain.png"), _read_png(tmp_path / "phases.png")
    _assert_size(phases, HISTORY_FIGURE_SIZE)
    # Four dashed lines about 300 px tall each, half of them ink, plus legend swatches.
    assert _gray_pixels(phases) - _gray_pixels(plain) > 4 * 100


@pytest.mark.parametrize(
    "columns",
    [
        ["epoch", "loss", "accuracy"],  # no validation data
        ["epoch", "loss", "val_loss"],  # a model compiled without the accuracy metric
        ["loss", "val_loss", "accuracy", "val_accuracy"],  # no epoch column
    ],
)
def test_history_draws_what_is_there(tmp_path: Path, columns: list[str]) -> None:
    plot_history(_history()[columns], "t", tmp_path / "curves.png")
    pixels = _read_png(tmp_path / "curves.png")
    _assert_size(pixels, HISTORY_FIGURE_SIZE)
    _assert_not_blank(pixels)
    val_colour = plt.rcParams["axes.prop_cycle"].by_key()["color"][1]
    if not any(column.startswith("val_") for column in columns):
        assert _near(pixels, to_rgb(val_colour)).sum() < 50


@pytest.mark.parametrize("phase_boundary", [None, 1])
def test_history_of_a_single_epoch(tmp_path: Path, phase_boundary: int | None) -> None:
    history = _history().iloc[:1]
    plot_history(history, "t", tmp_path / "one.png", phase_boundary=phase_boundary)
    pixels = _read_png(tmp_path / "one.png")
    _assert_size(pixels, HISTORY_FIGURE_SIZE)
    # One point per curve: axes, labels and markers, less ink than full curves.
    _assert_not_blank(pixels, min_ink=0.02)
    train_colour = plt.rcParams["axes.prop_cycle"].by_key()["color"][0]
    assert _near(pixels, to_rgb(train_colour)).sum() > 4 * 20  # a marker on each panel


@pytest.mark.parametrize(
    ("history", "phase_boundary", "message"),
    [
        (_history(), -1, "phase_boundary must be an epoch number"),
        (_history(), 1.5, "phase_boundary must be an epoch number"),
        (_history(), True, "phase_boundary must be an epoch number"),
        (_history().iloc[:0], None, "history is empty"),
    ],
)
def test_history_refuses_bad_input(tmp_path: Path, history, phase_boundary, message) -> None:
    with pytest.raises(ValueError, match=message):
        plot_history(history, "t", tmp_path / "h.png", phase_boundary=phase_boundary)
    assert not (tmp_path / "h.png").exists()


def test_smooth_curve_matches_hand_values() -> None:
    # Listing 5.24: the first point unchanged, then previous * 0.8 + point * 0.2.
    assert smooth_curve([1.0, 0.0, 0.0, 1.0]) == pytest.approx([1.0, 0.8, 0.64, 0.712])
    assert smooth_curve([10, 20], factor=0.5) == pytest.approx([10.0, 15.0])
    assert smooth_curve([3.0, 1.0, 2.0], factor=0.0) == [3.0, 1.0, 2.0]
    assert smooth_curve([]) == []
    assert smooth_curve(np.array([2.0])) == [2.0]


@pytest.mark.parametrize("factor", [1.0, -0.1, float("nan"), "0.8", True])
def test_smooth_curve_refuses_bad_factors(factor) -> None:
    with pytest.raises(ValueError, match="factor must be"):
        smooth_curve([1.0, 2.0], factor=factor)


# The per-class report: y_true [0, 0, 0, 1, 1, 2], y_pred [0, 0, 1, 1, 2, 2], and a fourth
# class "fish" that is neither present nor predicted. By hand:
#   cat:  predicted 2, both right -> P 1;   3 true, 2 found -> R 2/3; F1 0.8;  support 3
#   dog face: predicted 2, 1 right -> P 1/2; 2 true, 1 found -> R 1/2; F1 0.5; support 2
#   bird: predicted 2, 1 right -> P 1/2;  1 true, 1 found -> R 1;   F1 2/3; support 1
#   fish: nothing -> 0, 0, 0 (zero_division=0); support 0
#   macro: means over the three classes that occur (fish neither occurs nor is predicted, so it
#     is left out, as f1_score leaves it out of test_macro_f1):
#     P (1 + 1/2 + 1/2) / 3 = 2/3, R (2/3 + 1/2 + 1) / 3 = 13/18, F1 (0.8 + 0.5 + 2/3) / 3 = 59/90
#   weighted by support (3, 2, 1) / 6: P 4.5/6, R 4/6 (the accuracy), F1 (2.4+1+2/3)/6 = 61/90
_REPORT_TRUE = np.array([0, 0, 0, 1, 1, 2])
_REPORT_PRED = np.array([0, 0, 1, 1, 2, 2])
_REPORT_NAMES = ["cat", "dog face", "bird", "fish"]


def test_classification_report_matches_hand_values() -> None:
    frame = classification_report_frame(_REPORT_TRUE, _REPORT_PRED, _REPORT_NAMES)
    assert list(frame.index) == [*_REPORT_NAMES, "macro avg", "weighted avg"]
    assert list(frame.columns) == ["precision", "recall", "f1", "support"]
    expected = [
        [1.0, 2 / 3, 0.8, 3],
        [0.5, 0.5, 0.5, 2],
        [0.5, 1.0, 2 / 3, 1],
        [0.0, 0.0, 0.0, 0],
        [2 / 3, 13 / 18, 59 / 90, 6],
        [0.75, 4 / 6, 61 / 90, 6],
    ]
    np.testing.assert_allclose(frame.to_numpy(dtype=float), expected, rtol=1e-12)
    assert frame["support"].dtype == np.int64


def test_macro_f1_of_the_report_is_the_headline_metric() -> None:
    """One macro F1 in the pipeline: the report's row equals evaluate_model's test_macro_f1."""
    probabilities = np.eye(4)[_REPORT_PRED]
    metrics, _ = evaluate_model(_FixedModel(probabilities), np.zeros((6, 2, 2, 1)), _REPORT_TRUE)
    frame = classification_report_frame(_REPORT_TRUE, _REPORT_PRED, _REPORT_NAMES)
    assert frame.loc["macro avg", "f1"] == pytest.approx(metrics["test_macro_f1"])


def test_per_class_metrics_are_named_for_mlflow() -> None:
    frame = classification_report_frame(_REPORT_TRUE, _REPORT_PRED, _REPORT_NAMES)
    metrics = per_class_metrics(frame)
    assert metrics == pytest.approx(
        {
            "test_precision_cat": 1.0,
            "test_recall_cat": 2 / 3,
            "test_f1_cat": 0.8,
            "test_precision_dog_face": 0.5,
            "test_recall_dog_face": 0.5,
            "test_f1_dog_face": 0.5,
            "test_precision_bird": 0.5,
            "test_recall_bird": 1.0,
            "test_f1_bird": 2 / 3,
            "test_precision_fish": 0.0,
            "test_recall_fish": 0.0,
            "test_f1_fish": 0.0,
        }
    )
    assert all(type(value) is float for value in metrics.values())


def test_metric_safe_names_stay_unique() -> None:
    # "a b", "a_b" and "a/b" all become "a_b": the first keeps it, the others get the next
    # suffix that no class holds ("a_b_2" is a class of its own).
    names = ["a b", "a_b", "a/b", "a_b_2", "ok-1.x", "", "é"]
    assert metric_safe_names(names) == ["a_b", "a_b_3", "a_b_4", "a_b_2", "ok-1.x", "_", "__2"]
    frame = classification_report_frame(np.array([0, 1, 2]), np.array([0, 1, 2]), names[:3])
    assert sorted(per_class_metrics(frame)) == sorted(
        f"test_{metric}_{name}"
        for metric in ("precision", "recall", "f1")
        for name in ("a_b", "a_b_2", "a_b_3")
    )


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "message"),
    [
        ([0, 1], [0, 1], [], "class_names is empty"),
        ([0, 1], [0, 1], ["a", "a"], "duplicate names"),
        ([0, 1], [0, 1], ["a", "macro avg"], "names of the average rows"),
        ([0, 2], [0, 1], ["a", "b"], "y_true holds 2"),
        ([0, 1], [0, 1, 1], ["a", "b"], "y_pred has 3 labels but y_true has 2"),
        ([], [], ["a", "b"], "y_true is empty"),
        ([[0, 1]], [[0, 1]], ["a", "b"], "y_true must be 1-D"),
        ([0.0, 1.0], [0, 1], ["a", "b"], "integer class indices"),
    ],
)
def test_classification_report_refuses_bad_input(y_true, y_pred, names, message) -> None:
    with pytest.raises(ValueError, match=message):
        classification_report_frame(np.array(y_true), np.array(y_pred), names)


def test_per_class_metrics_needs_a_report_frame() -> None:
    with pytest.raises(ValueError, match="lacks the columns"):
        per_class_metrics(pd.DataFrame({"precision": [1.0]}, index=["a"]))


# Six classes, one table of scores for four images; the true class ranks 1st, 3rd, 4th and 6th.
_SCORES = np.tile([0.30, 0.25, 0.20, 0.15, 0.06, 0.04], (4, 1))
_RANKED = np.array([0, 2, 3, 5])


def test_top_k_accuracy_matches_hand_values() -> None:
    assert top_k_accuracy(_RANKED, _SCORES, 1) == 0.25
    assert top_k_accuracy(_RANKED, _SCORES, 3) == 0.5
    assert top_k_accuracy(_RANKED, _SCORES, 5) == 0.75
    # Two classes: top-1 is plain accuracy.
    assert top_k_accuracy(
        np.array([0, 1, 1]), np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]]), 1
    ) == (pytest.approx(2 / 3))


def test_top_k_metrics_only_for_many_classes() -> None:
    assert TOP_K_MIN_CLASSES == 6
    assert top_k_metrics(_RANKED, _SCORES) == {
        "test_top_3_accuracy": 0.5,
        "test_top_5_accuracy": 0.75,
    }
    five = _SCORES[:, :5] / _SCORES[:, :5].sum(axis=1, keepdims=True)
    assert top_k_metrics(np.array([0, 2, 3, 4]), five) == {}
    assert top_k_metrics(np.array([0, 1]), np.eye(2)) == {}


@pytest.mark.parametrize(
    ("k", "message"),
    [(0, "k must be between 1 and 5"), (6, "k must be between 1 and 5"), (2.0, "integer")],
)
def test_top_k_refuses_bad_k(k, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        top_k_accuracy(_RANKED, _SCORES, k)


def test_top_k_refuses_mismatched_input() -> None:
    with pytest.raises(ValueError, match="y_true has 3 labels but probabilities has"):
        top_k_accuracy(_RANKED[:3], _SCORES, 3)
    with pytest.raises(ValueError, match="probabilities must be 2-D"):
        top_k_metrics(_RANKED, _SCORES[0])


def _binary_example() -> tuple[np.ndarray, np.ndarray]:
    # sklearn's documentation example: positives score 0.35 and 0.8, negatives 0.1 and 0.4.
    # ROC AUC by counting pairs: of 4 (positive, negative) pairs, 3 have the positive higher
    # (0.35 < 0.4 is the one miss) -> 0.75. Average precision: thresholds 0.8 (P 1, R 1/2),
    # 0.4 (P 1/2, R 1/2), 0.35 (P 2/3, R 1) -> 1/2 * 1 + 0 * 1/2 + 1/2 * 2/3 = 5/6.
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    return np.array([0, 0, 1, 1]), np.stack([1 - positive, positive], axis=1)


def test_binary_curves_match_hand_values() -> None:
    y, probabilities = _binary_example()
    curves = binary_curves(y, probabilities)
    assert curves["roc_auc"] == pytest.approx(0.75)
    assert curves["average_precision"] == pytest.approx(5 / 6)
    assert curves["positive_fraction"] == 0.5
    assert (curves["fpr"][0], curves["tpr"][0], curves["fpr"][-1], curves["tpr"][-1]) == (
        0,
        0,
        1,
        1,
    )
    assert np.all(np.diff(curves["fpr"]) >= 0) and np.all(np.diff(curves["tpr"]) >= 0)
    assert binary_metrics(y, probabilities) == pytest.approx(
        {"test_roc_auc": 0.75, "test_pr_auc": 5 / 6}
    )
    # A sigmoid model's single column is the probability of class 1: the same curves.
    assert binary_metrics(y, probabilities[:, 1:]) == binary_metrics(y, probabilities)


def test_perfect_separation_gives_auc_one() -> None:
    y = np.array([0, 1, 0, 1, 1])
    positive = np.array([0.2, 0.7, 0.1, 0.9, 0.6])
    assert binary_metrics(y, np.stack([1 - positive, positive], axis=1)) == {
        "test_roc_auc": 1.0,
        "test_pr_auc": 1.0,
    }
    # Exactly wrong: every negative scores above every positive.
    assert binary_metrics(1 - y, np.stack([1 - positive, positive], axis=1))["test_roc_auc"] == 0


def test_binary_curves_refuse_what_has_no_auc() -> None:
    with pytest.raises(ValueError, match="need two classes, got probabilities for 3"):
        binary_curves(np.array([0, 1, 2]), np.eye(3))
    with pytest.raises(ValueError, match="hold only class 1: ROC AUC and PR AUC are undefined"):
        binary_metrics(np.array([1, 1, 1]), np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]]))
    with pytest.raises(ValueError, match="y_true holds 2"):
        binary_curves(np.array([0, 2]), np.eye(2))


def test_most_confident_mistakes_come_first() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.6, 0.3, 0.1],  # wrong, predicted 0 at 0.6
            [0.1, 0.8, 0.1],  # wrong, predicted 1 at 0.8
            [0.2, 0.1, 0.7],  # wrong, predicted 2 at 0.7
            [0.05, 0.9, 0.05],  # right
            [0.6, 0.1, 0.3],  # wrong, predicted 0 at 0.6: ties keep test-set order
        ]
    )
    assert most_confident_mistakes(y, probabilities, 10).tolist() == [2, 3, 1, 5]
    assert most_confident_mistakes(y, probabilities, 2).tolist() == [2, 3]
    assert most_confident_mistakes(y, probabilities, 0).tolist() == []
    none = most_confident_mistakes(probabilities.argmax(axis=1), probabilities, 5)
    assert none.shape == (0,) and none.dtype == np.int64


@pytest.mark.parametrize(("n", "message"), [(-1, "n must be >= 0"), (1.5, "n must be an integer")])
def test_most_confident_mistakes_refuses_bad_n(n, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        most_confident_mistakes(np.array([0, 1]), np.eye(2), n)


@pytest.mark.parametrize("plot", [plot_roc_curve, plot_precision_recall_curve])
def test_curve_pngs(tmp_path: Path, plot) -> None:
    plot(binary_curves(*_binary_example()), "t", tmp_path / "curve.png")
    pixels = _read_png(tmp_path / "curve.png")
    _assert_size(pixels, CURVE_FIGURE_SIZE)
    _assert_not_blank(pixels)
    model_colour = plt.rcParams["axes.prop_cycle"].by_key()["color"][0]
    assert _near(pixels, to_rgb(model_colour)).sum() > 500
    assert _gray_pixels(pixels) > 200  # the chance line


@pytest.mark.parametrize("plot", [plot_roc_curve, plot_precision_recall_curve])
def test_curve_plots_need_binary_curves(tmp_path: Path, plot) -> None:
    with pytest.raises(ValueError, match="pass the result of binary_curves"):
        plot({"fpr": [0, 1]}, "t", tmp_path / "curve.png")


def _gradient_images(count: int, size: int, channels: int) -> np.ndarray:
    """`count` different uint8 images: smooth gradients, so that any transform moves pixels."""
    ramp = np.linspace(0, 255, size)
    base = np.add.outer(ramp, ramp[::-1]) / 2
    images = [np.roll(base, shift, axis=1) for shift in range(count)]
    stacked = np.stack([np.stack([image] * channels, axis=-1) for image in images])
    return stacked.astype(np.uint8)


@pytest.mark.parametrize(
    ("count", "size", "channels"),
    [(20, 8, 1), (5, 150, 3), (1, 150, 3), (8, 28, 0)],
    ids=["digits", "rgb-150", "one-image", "gray-without-channel-axis"],
)
def test_image_mosaic_png(tmp_path: Path, count: int, size: int, channels: int) -> None:
    images = _gradient_images(count, size, max(channels, 1))
    if channels == 0:
        images = images[..., 0]
    truth = [f"class {index % 3}" for index in range(count)]
    predicted = list(truth)
    predicted[0] = "class 9"  # one mistake, framed in red
    plot_image_mosaic(images, truth, predicted, np.linspace(1, 0.5, count), "t", tmp_path / "m.png")
    pixels = _read_png(tmp_path / "m.png")
    _assert_size(pixels, mosaic_figure_size(count, 8))
    _assert_not_blank(pixels)
    assert _near(pixels, to_rgb("red")).sum() > 200


def test_image_mosaic_size_and_colours() -> None:
    """Rows of 8 tiles: 20 images take 3 rows of the full width; without a mistake no red."""
    width, height = mosaic_figure_size(20, 8)
    assert (width, height) == pytest.approx((8 * 1.6, 3 * 1.9 + 0.6))
    assert mosaic_figure_size(3, 8)[0] == pytest.approx(4.8)
    assert mosaic_figure_size(1, 8)[0] == pytest.approx(4.0)  # room for the title


def test_image_mosaic_without_mistakes_has_no_red(tmp_path: Path) -> None:
    images = _gradient_images(4, 16, 3)
    plot_image_mosaic(images, list("abcd"), list("abcd"), [0.9] * 4, "t", tmp_path / "m.png")
    assert _near(_read_png(tmp_path / "m.png"), to_rgb("red")).sum() == 0


def test_empty_mosaic_says_so(tmp_path: Path) -> None:
    """No mistakes to show is a figure that says so, not an error."""
    for images in (np.zeros((0, 8, 8, 1), dtype=np.uint8), []):
        plot_image_mosaic(images, [], [], [], "most confident mistakes", tmp_path / "m.png")
        pixels = _read_png(tmp_path / "m.png")
        _assert_size(pixels, mosaic_figure_size(0))
        packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
        assert len(np.unique(packed)) > 1


@pytest.mark.parametrize(
    ("images", "names", "confidences", "columns", "message"),
    [
        (np.zeros((2, 8, 8, 1), np.float32), 2, [0.5] * 2, 8, "must be uint8"),
        (np.zeros((2, 8, 8, 2), np.uint8), 2, [0.5] * 2, 8, "must have shape"),
        (np.zeros((2, 8, 8, 1), np.uint8), 3, [0.5] * 2, 8, "true_names has 3 entries"),
        (np.zeros((2, 8, 8, 1), np.uint8), 2, [0.5], 8, "confidences has 1 entries"),
        (np.zeros((2, 8, 8, 1), np.uint8), 2, [0.5, 1.5], 8, r"in \[0, 1\]"),
        (np.zeros((2, 8, 8, 1), np.uint8), 2, [0.5] * 2, 0, "columns must be"),
        (
            np.zeros((MAX_MOSAIC_IMAGES + 1, 2, 2, 1), np.uint8),
            MAX_MOSAIC_IMAGES + 1,
            [0.5] * (MAX_MOSAIC_IMAGES + 1),
            8,
            "select the images to show first",
        ),
    ],
)
def test_image_mosaic_refuses_bad_input(
    tmp_path: Path, images, names: int, confidences, columns: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plot_image_mosaic(
            images,
            ["a"] * names,
            ["a"] * len(images),
            confidences,
            "t",
            tmp_path / "m.png",
            columns,
        )


def test_augmented_versions_differ_and_keep_shape() -> None:
    """The pipeline's own augmentation, in training mode: every version differs from the
    original and from the others; same seed, same versions."""
    image = _gradient_images(1, 32, 3)[0]
    versions = augmented_versions(image, AugmentationConfig(), count=4, seed=0)
    assert versions.shape == (4, 32, 32, 3) and versions.dtype == np.uint8
    for index, version in enumerate(versions):
        assert not np.array_equal(version, image), index
        for other in versions[index + 1 :]:
            assert not np.array_equal(version, other)
    np.testing.assert_array_equal(augmented_versions(image, AugmentationConfig(), 4, 0), versions)
    assert not np.array_equal(augmented_versions(image, AugmentationConfig(), 4, 1), versions)


def test_augmented_versions_of_gray_images_and_without_augmentation() -> None:
    gray = _gradient_images(1, 8, 1)[0]
    flip_only = AugmentationConfig(
        rotation=0, width_shift=0, height_shift=0, shear=0, zoom=0, horizontal_flip=True
    )
    for image in (gray, gray[..., 0]):
        versions = augmented_versions(image, flip_only, count=8, seed=0)
        assert versions.shape == (8, *image.shape) and versions.dtype == np.uint8
        # A flip is the only change: every version is the image or its mirror, both occur.
        mirrored = np.flip(image, axis=1)
        flipped = [np.array_equal(version, mirrored) for version in versions]
        assert all(flipped[i] or np.array_equal(v, image) for i, v in enumerate(versions))
        assert 0 < sum(flipped) < 8
    copies = augmented_versions(gray, None, count=3)
    assert copies.shape == (3, 8, 8, 1)
    assert all(np.array_equal(copy, gray) for copy in copies)


@pytest.mark.parametrize(
    ("image", "count", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), 2, "must be uint8"),
        (np.zeros((8, 8, 2), np.uint8), 2, "must have shape"),
        (np.zeros((8, 8, 3), np.uint8), 0, "count must be an integer >= 1"),
    ],
)
def test_augmented_versions_refuse_bad_input(image, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        augmented_versions(image, AugmentationConfig(), count=count)


def test_augmented_versions_png(tmp_path: Path) -> None:
    image = _gradient_images(1, 32, 3)[0]
    versions = augmented_versions(image, AugmentationConfig(), count=4)
    plot_augmented_versions(image, versions, tmp_path / "a.png", title="cat, augmented")
    pixels = _read_png(tmp_path / "a.png")
    _assert_size(pixels, (5 * AUGMENTED_TILE_SIZE[0], AUGMENTED_TILE_SIZE[1]))
    _assert_not_blank(pixels)


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        (np.zeros((0, 8, 8, 1), np.uint8), "versions_uint8 is empty"),
        (np.zeros((2, 8, 9, 1), np.uint8), "the versions must be of the same image"),
        (np.zeros((2, 8, 8, 1), np.int64), "must be uint8"),
    ],
)
def test_augmented_versions_png_refuses_bad_input(tmp_path: Path, versions, message) -> None:
    with pytest.raises(ValueError, match=message):
        plot_augmented_versions(np.zeros((8, 8, 1), np.uint8), versions, tmp_path / "a.png")
