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

from pipeline.evaluation.metrics import compute_confusion, evaluate_model, normalize_confusion
from pipeline.evaluation.plots import (
    DPI,
    confusion_display,
    confusion_figure_size,
    plot_confusion,
    plot_history,
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


def _assert_not_blank(pixels: np.ndarray) -> None:
    """A real figure has many distinct colours and a fair share of non-white pixels."""
    # Pack each RGB triple into one integer: np.unique on rows is slow for large images.
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 50
    assert (pixels < 250).any(axis=2).mean() > 0.05


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


def test_confusion_figure_is_closed(tmp_path: Path) -> None:
    """Evaluating several strategies must not leak one open figure per plot."""
    before = set(plt.get_fignums())
    plot_confusion(_confusion(np.eye(2, dtype=int), ["a", "b"]), "t", tmp_path / "c.png", True)
    plot_history(_history(), "t", tmp_path / "h.png")
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
    """The curves PNG is 10 x 4 inches at DPI and shows both line colours, train and val."""
    plot_history(_history(), "t", tmp_path / "curves.png")
    pixels = _read_png(tmp_path / "curves.png")
    _assert_size(pixels, (10, 4))
    _assert_not_blank(pixels)
    train_colour, val_colour = plt.rcParams["axes.prop_cycle"].by_key()["color"][:2]
    # Each curve spans two panels and four epochs; a legend swatch alone is far fewer pixels.
    assert _near(pixels, to_rgb(train_colour)).sum() > 1000
    assert _near(pixels, to_rgb(val_colour)).sum() > 1000
