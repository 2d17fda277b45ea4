"""The evaluation figures of images: mosaics of test images and of mistakes, and augmented
versions of one training image (plots.py draws the figures of numbers).

`mosaic_figure` and `augmented_figure` return the figure, so tests read back the images and
titles it shows; `plot_image_mosaic` and `plot_augmented_versions` write it as a PNG."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from pipeline.datasets.images import as_uint8_images
from pipeline.evaluation.plots import DPI, new_figure, save_figure

if TYPE_CHECKING:
    from pipeline.config import AugmentationConfig

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
    """Save mosaic_figure's tiles as a PNG at `path`."""
    figure = mosaic_figure(
        images_uint8, true_names, predicted_names, confidences, title, columns, empty_message
    )
    save_figure(figure, path)


def mosaic_figure(
    images_uint8: np.ndarray,
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    confidences: Sequence[float],
    title: str,
    columns: int = 8,
    empty_message: str = "no mistakes",
) -> Figure:
    """Test images in rows of `columns`, each titled "true / predicted (confidence)"; mistakes
    are titled and framed in red. Gray (N, H, W, 1) or (N, H, W) and RGB (N, H, W, 3) uint8
    images; small ones are enlarged without blurring, so 8 x 8 digits stay readable.

    With no image (say, most_confident_mistakes of a perfect model), the figure says
    `empty_message` instead.
    """
    if isinstance(columns, bool) or not isinstance(columns, int | np.integer) or columns < 1:
        raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
    images = as_uint8_images(images_uint8, "images_uint8", batch=True)
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
    figure = new_figure(mosaic_figure_size(count, columns))
    if count == 0:
        figure.text(0.5, 0.6, title, ha="center", va="center", fontsize=12)
        figure.text(0.5, 0.3, empty_message, ha="center", va="center", color="gray")
    else:
        _draw_mosaic(figure, images, true_names, predicted_names, confidences, columns)
        figure.suptitle(title)
    return figure


def _draw_mosaic(figure, images, true_names, predicted_names, confidences, columns) -> None:
    """The tiles of mosaic_figure on `figure`, laid out in inches so tiles keep their size."""
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


def plot_augmented_versions(
    original_uint8: np.ndarray,
    versions_uint8: np.ndarray,
    path: Path,
    title: str = "augmented versions of one training image",
) -> None:
    """Save augmented_figure's panels as a PNG at `path`."""
    save_figure(augmented_figure(original_uint8, versions_uint8, title), path)


def augmented_figure(
    original_uint8: np.ndarray,
    versions_uint8: np.ndarray,
    title: str = "augmented versions of one training image",
) -> Figure:
    """The original and its augmented versions side by side, as the course shows what
    augmentation does (listing 5.12)."""
    original = as_uint8_images(original_uint8, "original_uint8", batch=False)
    versions = as_uint8_images(versions_uint8, "versions_uint8", batch=True)
    if len(versions) == 0:
        raise ValueError("versions_uint8 is empty: pass at least one augmented version")
    if versions.shape[1:] != original.shape:
        raise ValueError(
            f"versions_uint8 holds images of shape {versions.shape[1:]}, the original is "
            f"{original.shape}: the versions must be of the same image"
        )
    panels = 1 + len(versions)
    figure = new_figure((panels * AUGMENTED_TILE_SIZE[0], AUGMENTED_TILE_SIZE[1]))
    axes = figure.subplots(1, panels, squeeze=False)
    tile_pixels = AUGMENTED_TILE_SIZE[0] * DPI
    for index, (panel, image) in enumerate(zip(axes[0], [original, *versions], strict=True)):
        _show_image(panel, image, smaller_than=tile_pixels)
        panel.set_title("original" if index == 0 else f"augmented {index}", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


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
    shaped = as_uint8_images(image, "image_uint8", batch=False)
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
