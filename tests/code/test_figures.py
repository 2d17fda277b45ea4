"""The figures of numbers show the data they are given: a confusion matrix paints and prints
its cells where its rows (true) and columns (predicted) say, training curves plot each
recorded column raw and smoothed, ROC and precision-recall plots draw binary_curves' points
against chance. Read back from the figure's artists, not from pixels, so that a matplotlib
upgrade that restyles a line does not fail them."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from pipeline.evaluation.metrics import binary_curves, normalize_confusion
from pipeline.evaluation.plots import (
    confusion_display,
    confusion_figure_size,
    history_figure,
    plot_confusion,
    plot_history,
    plot_precision_recall_curve,
    plot_roc_curve,
    precision_recall_figure,
    roc_figure,
    smooth_curve,
)


def _confusion(values: np.ndarray, names: list[str]) -> pd.DataFrame:
    """A matrix shaped as compute_confusion returns it, with chosen values."""
    return pd.DataFrame(values, index=pd.Index(names, name="true"), columns=names)


def _texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


# --- confusion matrices -------------------------------------------------------------------------


def test_the_confusion_figure_shows_the_counts_where_the_matrix_has_them() -> None:
    """The painted array is the matrix itself (rows true, columns predicted), each cell prints
    its count, the tick labels name the classes, and the darkest cell is the largest count."""
    values = np.array([[1, 0, 9], [2, 4, 0], [0, 3, 6]])
    display = confusion_display(_confusion(values, ["a", "b", "c"]), "my title", False)
    np.testing.assert_array_equal(display.im_.get_array(), values)
    assert [[cell.get_text() for cell in row] for row in display.text_] == values.astype(
        str
    ).tolist()
    axes = display.ax_
    assert _texts(axes.get_xticklabels()) == ["a", "b", "c"]
    assert _texts(axes.get_yticklabels()) == ["a", "b", "c"]
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == (
        "predicted",
        "true",
        "my title",
    )
    # Counts are painted on 0 to the largest count: the largest is the darkest, 0 the lightest.
    assert display.im_.get_clim() == (0, 9)
    shade = display.im_.norm(display.im_.get_array())
    assert np.unravel_index(np.argmax(shade), values.shape) == (0, 2)
    assert shade.min() == 0.0


def test_normalized_cells_show_row_shares_on_a_zero_to_one_scale() -> None:
    """A normalized matrix prints two decimals of each row's shares, painted on a fixed 0-1
    scale: the same counts in another model's plot get the same colours."""
    counts = _confusion(np.array([[3, 1, 0], [1, 3, 0], [1, 0, 3]]), ["x", "y", "z"])
    display = confusion_display(normalize_confusion(counts), "t", normalized=True)
    np.testing.assert_allclose(display.im_.get_array(), normalize_confusion(counts).to_numpy())
    assert display.im_.get_clim() == (0, 1)
    assert [cell.get_text() for cell in display.text_[0]] == ["0.75", "0.25", "0.00"]
    raw = confusion_display(counts, "t", normalized=False)
    assert raw.im_.get_clim() == (0, 3)
    assert [cell.get_text() for cell in raw.text_[0]] == ["3", "1", "0"]


def test_cell_numbers_read_against_their_cell() -> None:
    """White numbers on dark cells, black on light ones, by the cell's shade on the scale."""
    counts = _confusion(np.array([[3, 1, 0], [1, 3, 0], [1, 0, 3]]), ["x", "y", "z"])
    for matrix, normalized in ((counts, False), (normalize_confusion(counts), True)):
        display = confusion_display(matrix, "t", normalized)
        shade = display.im_.norm(display.im_.get_array())
        for (row, column), text in np.ndenumerate(display.text_):
            dark = shade[row, column] > 0.5
            assert to_rgb(text.get_color()) == ((1.0,) * 3 if dark else (0.0,) * 3)


@pytest.mark.parametrize(
    ("names", "rotation"), [(["0", "1", "2"], 0.0), (["airplane", "bird", "cat"], 45.0)]
)
def test_long_class_names_are_rotated(names: list[str], rotation: float) -> None:
    display = confusion_display(_confusion(np.eye(3, dtype=int), names), "t", False)
    assert {label.get_rotation() for label in display.ax_.get_xticklabels()} == {rotation}


@pytest.mark.parametrize(("classes", "cell_texts"), [(20, 400), (25, 0)])
def test_many_classes_have_no_cell_text(classes: int, cell_texts: int) -> None:
    """Up to 20 classes every cell shows its value; beyond, the numbers would not fit."""
    names = [f"c{index:02d}" for index in range(classes)]
    display = confusion_display(_confusion(np.eye(classes, dtype=int) * 5, names), "t", False)
    assert len(display.ax_.texts) == cell_texts
    assert (display.text_ is None) == (cell_texts == 0)
    assert _texts(display.ax_.get_xticklabels()) == names


def test_counts_read_back_as_floats_print_as_integers() -> None:
    """confusion_matrix.csv read by pandas may give floats: the cells still print 3, not 3.0."""
    display = confusion_display(
        _confusion(np.array([[3.0, 1.0], [0.0, 2.0]]), ["a", "b"]), "t", False
    )
    assert [cell.get_text() for cell in display.text_[0]] == ["3", "1"]


def test_confusion_figure_grows_with_classes() -> None:
    """More classes give a larger figure, so cells and labels keep a readable size."""
    sizes = [confusion_figure_size(classes) for classes in (2, 10, 25, 50)]
    assert all(small[0] < large[0] for small, large in zip(sizes[1:], sizes[2:], strict=False))
    assert all(small[1] < large[1] for small, large in zip(sizes[1:], sizes[2:], strict=False))


# --- training curves ----------------------------------------------------------------------------


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


def _panels(figure) -> dict[str, object]:
    """The four panels of history_figure by title."""
    return {axes.get_title(): axes for axes in figure.axes}


def _curves(axes) -> dict[str, tuple[list[float], list[float]]]:
    """{legend label: (x, y)} of the lines of one panel."""
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.lines
    }


def test_history_plots_each_metric_raw_and_smoothed() -> None:
    """Loss and accuracy, train and validation, raw on one panel and smoothed (smooth_curve)
    on another, against the recorded epochs."""
    history = _history()
    figure = history_figure(history, "scratch")
    panels = _panels(figure)
    assert figure.get_suptitle() == "scratch"
    assert set(panels) == {
        "loss",
        "accuracy",
        "loss, smoothed (factor 0.8)",
        "accuracy, smoothed (factor 0.8)",
    }
    epochs = history["epoch"].tolist()
    for metric in ("loss", "accuracy"):
        raw = _curves(panels[metric])
        smoothed = _curves(panels[f"{metric}, smoothed (factor 0.8)"])
        for prefix, column in (("train", metric), ("validation", f"val_{metric}")):
            label = f"{prefix} {metric}"
            assert raw[label] == (epochs, pytest.approx(history[column].tolist()))
            assert smoothed[label] == (epochs, pytest.approx(smooth_curve(history[column])))
        assert panels[metric].get_ylabel() == metric


def test_history_marks_the_fine_tuning_boundary_between_two_epochs() -> None:
    """A phase boundary draws a labelled vertical line half-way before its first epoch on all
    four panels; without one there is none."""
    plain = history_figure(_history(), "t")
    assert all(line.get_label() != "fine-tuning starts" for ax in plain.axes for line in ax.lines)
    phases = history_figure(_history(), "t", phase_boundary=2)
    for axes in phases.axes:
        [line] = [line for line in axes.lines if line.get_label() == "fine-tuning starts"]
        assert list(line.get_xdata()) == [1.5, 1.5]
        assert line.get_linestyle() == "--"
        assert "fine-tuning starts" in _texts(axes.get_legend().get_texts())


@pytest.mark.parametrize(
    ("columns", "drawn"),
    [
        (["epoch", "loss", "accuracy"], {"train loss", "train accuracy"}),  # no validation data
        (["epoch", "loss", "val_loss"], {"train loss", "validation loss"}),  # no accuracy metric
    ],
)
def test_history_draws_what_is_there(columns: list[str], drawn: set[str]) -> None:
    figure = history_figure(_history()[columns], "t")
    labels = {line.get_label() for axes in figure.axes for line in axes.lines}
    assert labels == drawn
    panels = _panels(figure)
    if "accuracy" not in columns:
        assert "no accuracy recorded" in _texts(panels["accuracy"].texts)


def test_history_without_an_epoch_column_counts_epochs_from_zero() -> None:
    figure = history_figure(_history().drop(columns="epoch"), "t")
    assert _curves(_panels(figure)["loss"])["train loss"][0] == [0, 1, 2, 3]


@pytest.mark.parametrize("phase_boundary", [None, 1])
def test_history_of_a_single_epoch_has_a_readable_axis(phase_boundary: int | None) -> None:
    """One epoch is one point per curve on an axis half an epoch wide each side (and wide
    enough to show the phase line), with whole-number ticks only."""
    figure = history_figure(_history().iloc[:1], "t", phase_boundary=phase_boundary)
    axes = _panels(figure)["loss"]
    assert _curves(axes)["train loss"] == ([0], [1.0])
    low, high = axes.get_xlim()
    assert low == -0.5 and high == (1.5 if phase_boundary else 0.5)
    ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
    assert ticks and all(float(tick).is_integer() for tick in ticks)


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


# --- ROC and precision-recall ------------------------------------------------------------------


def _binary_curves() -> dict:
    """binary_curves of sklearn's documentation example (ROC AUC 0.75, AP 5/6)."""
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    return binary_curves(np.array([0, 0, 1, 1]), np.stack([1 - positive, positive], axis=1))


def test_the_roc_figure_draws_the_curve_against_the_chance_diagonal() -> None:
    curves = _binary_curves()
    [axes] = roc_figure(curves, "scratch: ROC").axes
    model, chance = axes.lines
    np.testing.assert_allclose(model.get_xdata(), curves["fpr"])
    np.testing.assert_allclose(model.get_ydata(), curves["tpr"])
    assert (list(chance.get_xdata()), list(chance.get_ydata())) == ([0, 1], [0, 1])
    assert _texts(axes.get_legend().get_texts()) == ["model (AUC = 0.750)", "chance (AUC = 0.500)"]
    assert axes.get_title() == "scratch: ROC"


def test_the_precision_recall_figure_steps_against_the_share_of_positives() -> None:
    """Average precision is the area under a step function: the curve is drawn as steps, and
    guessing is the flat line at the share of positives."""
    curves = _binary_curves()
    [axes] = precision_recall_figure(curves, "t").axes
    model, chance = axes.lines
    np.testing.assert_allclose(model.get_xdata(), curves["recall"])
    np.testing.assert_allclose(model.get_ydata(), curves["precision"])
    assert model.get_drawstyle() == "steps-post"
    assert list(chance.get_ydata()) == [0.5, 0.5]
    assert _texts(axes.get_legend().get_texts()) == ["model (AP = 0.833)", "chance (AP = 0.500)"]


@pytest.mark.parametrize("plot", [plot_roc_curve, plot_precision_recall_curve])
def test_curve_plots_need_binary_curves(tmp_path: Path, plot) -> None:
    with pytest.raises(ValueError, match="pass the result of binary_curves"):
        plot({"fpr": [0, 1]}, "t", tmp_path / "curve.png")


# --- the files ----------------------------------------------------------------------------------


def test_each_plot_writes_its_figure_as_a_png_and_leaves_no_figure_open(tmp_path: Path) -> None:
    """A PNG of the figure's own size in pixels; evaluating many strategies leaks no figure."""
    before = set(plt.get_fignums())
    matrix = _confusion(np.eye(3, dtype=int), ["a", "b", "c"])
    plot_confusion(matrix, "t", tmp_path / "c.png", normalized=False)
    plot_history(_history(), "t", tmp_path / "h.png", phase_boundary=2)
    plot_roc_curve(_binary_curves(), "t", tmp_path / "roc.png")
    plot_precision_recall_curve(_binary_curves(), "t", tmp_path / "pr.png")
    expected = {
        "c.png": confusion_display(matrix, "t", False).figure_,
        "h.png": history_figure(_history(), "t"),
        "roc.png": roc_figure(_binary_curves(), "t"),
        "pr.png": precision_recall_figure(_binary_curves(), "t"),
    }
    for name, figure in expected.items():
        width, height = figure.get_size_inches() * figure.dpi
        assert _png_size(tmp_path / name) == (round(width), round(height)), name
    assert set(plt.get_fignums()) == before
