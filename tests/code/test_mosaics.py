"""The figures of images show the images they are given: a mosaic tile per image, titled with
its true and predicted class and confidence, mistakes in red; augmented versions beside their
original, made by the pipeline's own augmentation layers. Read back from the figure's
artists (image arrays, titles, spines), not from pixels."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from pipeline.config import AugmentationConfig
from pipeline.evaluation.mosaics import (
    MAX_MOSAIC_IMAGES,
    augmented_figure,
    augmented_versions,
    mosaic_figure,
    mosaic_figure_size,
    plot_augmented_versions,
    plot_image_mosaic,
)

RED = to_rgb("red")


def _gradient_images(count: int, size: int, channels: int) -> np.ndarray:
    """`count` different uint8 images: smooth gradients, so that any transform moves pixels."""
    ramp = np.linspace(0, 255, size)
    base = np.add.outer(ramp, ramp[::-1]) / 2
    images = [np.roll(base, shift, axis=1) for shift in range(count)]
    stacked = np.stack([np.stack([image] * channels, axis=-1) for image in images])
    return stacked.astype(np.uint8)


def _shown(axes) -> np.ndarray:
    """The image one tile shows, with a channel axis, as it was given."""
    [image] = axes.get_images()
    array = np.asarray(image.get_array())
    return array[..., None] if array.ndim == 2 else array


@pytest.mark.parametrize(
    ("count", "size", "channels"),
    [(20, 8, 1), (5, 150, 3), (1, 150, 3), (8, 28, 0)],
    ids=["digits", "rgb-150", "one-image", "gray-without-channel-axis"],
)
def test_each_tile_shows_its_image_and_its_classes(count: int, size: int, channels: int) -> None:
    images = _gradient_images(count, size, max(channels, 1))
    if channels == 0:
        images = images[..., 0]
    truth = [f"class {index % 3}" for index in range(count)]
    predicted = list(truth)
    predicted[0] = "class 9"  # one mistake
    confidences = np.linspace(1, 0.5, count)
    figure = mosaic_figure(images, truth, predicted, confidences, "test images")
    assert figure.get_suptitle() == "test images"
    assert len(figure.axes) == count
    for index, axes in enumerate(figure.axes):
        expected = images[index] if channels else images[index][..., None]
        np.testing.assert_array_equal(_shown(axes), expected)
        title = axes.get_title()
        assert title == f"{truth[index]} / {predicted[index]} ({confidences[index]:.2f})"
        mistake = index == 0
        assert (to_rgb(axes.title.get_color()) == RED) == mistake
        assert all(spine.get_visible() == mistake for spine in axes.spines.values())


def test_gray_tiles_keep_their_brightness() -> None:
    """A dim gray image stays dim: tiles are painted on a fixed 0-255 scale, not stretched."""
    dim = np.full((2, 8, 8, 1), 40, dtype=np.uint8)
    figure = mosaic_figure(dim, ["a", "b"], ["a", "b"], [0.9, 0.9], "t")
    for axes in figure.axes:
        [image] = axes.get_images()
        assert image.get_clim() == (0, 255)
        assert image.get_cmap().name == "gray"


def test_small_images_are_enlarged_without_blurring() -> None:
    """8 x 8 digits are drawn with nearest-neighbour pixels; a large photo is smoothed."""
    small = mosaic_figure(_gradient_images(1, 8, 1), ["a"], ["a"], [1.0], "t")
    large = mosaic_figure(_gradient_images(1, 400, 3), ["a"], ["a"], [1.0], "t")
    assert small.axes[0].get_images()[0].get_interpolation() == "nearest"
    assert large.axes[0].get_images()[0].get_interpolation() == "antialiased"


def test_long_tile_labels_break_after_the_true_class() -> None:
    figure = mosaic_figure(
        _gradient_images(1, 8, 1), ["a very long class name"], ["another one"], [0.5], "t"
    )
    assert figure.axes[0].get_title() == "a very long class name /\nanother one (0.50)"


def test_tiles_fill_rows_of_columns() -> None:
    """Rows of 8 tiles: 20 images are 3 rows, the last holding 4; 3 images one row of 3."""
    figure = mosaic_figure(_gradient_images(20, 8, 1), ["a"] * 20, ["a"] * 20, [1.0] * 20, "t")
    positions = [axes.get_subplotspec().get_geometry() for axes in figure.axes]
    assert {(rows, columns) for rows, columns, _, _ in positions} == {(3, 8)}
    assert [start for _, _, start, _ in positions] == list(range(20))
    width, height = mosaic_figure_size(20, 8)
    assert height > mosaic_figure_size(8, 8)[1] and width == mosaic_figure_size(8, 8)[0]
    # Fewer images than columns: a narrower figure, yet wide enough for the figure title.
    assert mosaic_figure_size(3, 8)[0] < width
    assert mosaic_figure_size(1, 8)[0] == mosaic_figure_size(2, 8)[0]


def test_an_empty_mosaic_says_so() -> None:
    """No mistakes to show is a figure that says so, not an error."""
    for images in (np.zeros((0, 8, 8, 1), dtype=np.uint8), []):
        figure = mosaic_figure(
            images, [], [], [], "most confident mistakes", empty_message="no mistakes"
        )
        assert figure.axes == []
        assert [text.get_text() for text in figure.texts] == [
            "most confident mistakes",
            "no mistakes",
        ]


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
    assert not (tmp_path / "m.png").exists()


# --- augmented versions -------------------------------------------------------------------------


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


def test_the_augmented_figure_shows_the_original_then_each_version() -> None:
    images = _gradient_images(4, 16, 3)
    figure = augmented_figure(images[0], images[1:], title="cat, augmented")
    assert figure.get_suptitle() == "cat, augmented"
    assert [axes.get_title() for axes in figure.axes] == [
        "original",
        "augmented 1",
        "augmented 2",
        "augmented 3",
    ]
    for axes, image in zip(figure.axes, images, strict=True):
        np.testing.assert_array_equal(_shown(axes), image)


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        (np.zeros((0, 8, 8, 1), np.uint8), "versions_uint8 is empty"),
        (np.zeros((2, 8, 9, 1), np.uint8), "the versions must be of the same image"),
        (np.zeros((2, 8, 8, 1), np.int64), "must be uint8"),
    ],
)
def test_augmented_figure_refuses_bad_input(tmp_path: Path, versions, message) -> None:
    with pytest.raises(ValueError, match=message):
        plot_augmented_versions(np.zeros((8, 8, 1), np.uint8), versions, tmp_path / "a.png")


def test_each_plot_writes_its_figure_as_a_png_and_leaves_no_figure_open(tmp_path: Path) -> None:
    before = set(plt.get_fignums())
    images = _gradient_images(3, 8, 1)
    arguments = (images, ["a"] * 3, ["a", "b", "a"], [0.9, 0.8, 0.7], "t")
    plot_image_mosaic(*arguments, tmp_path / "m.png")
    plot_image_mosaic(images[:0], [], [], [], "t", tmp_path / "m0.png")
    plot_augmented_versions(images[0], images[1:], tmp_path / "a.png")
    expected = {
        "m.png": mosaic_figure(*arguments),
        "m0.png": mosaic_figure(images[:0], [], [], [], "t"),
        "a.png": augmented_figure(images[0], images[1:]),
    }
    for name, figure in expected.items():
        width, height = figure.get_size_inches() * figure.dpi
        with Image.open(tmp_path / name) as png:
            assert png.format == "PNG"
            assert png.size == (round(width), round(height)), name
    assert set(plt.get_fignums()) == before
