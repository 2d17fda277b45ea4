"""The explanation figures, as PNG files: Grad-CAM galleries, activation grids, first-layer
filters before and after training, filter patterns.

Every figure is laid out on a grid of fixed-size tiles and saved without tight cropping, so its
size in pixels follows from the number of tiles (the docstrings give it, at DPI 120).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only: the pipeline never opens a window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.datasets.images import as_uint8_images  # noqa: E402
from pipeline.explain.gradcam import superimpose  # noqa: E402

DPI = 120
GALLERY_TILE = 2.0  # inches: 240 px
GALLERY_TITLE = 0.25  # inches above each tile: 30 px
ACTIVATION_TILE = 1.0  # 120 px
TILE_GAP = 3  # pixels of white around each composed tile
HEADER = 0.4  # inches for a figure's title: 48 px
FILTER_TILE = 0.5  # 60 px
FILTER_COLUMNS = 8
FILTER_GAP = 0.25  # inches between the two panels: 30 px
MAX_FILTERS = 32
PATTERN_TILE = 1.0  # 120 px
PATTERN_LABEL = 1.5  # inches for the layer names: 180 px
PATTERN_GAP = 5  # pixels of white around each pattern


def _save(figure, path: Path) -> Path:
    path = Path(path)
    try:
        figure.savefig(path, dpi=DPI)
    finally:
        plt.close(figure)
    return path


def _normalize(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant array becomes zeros (a dead channel shows dark)."""
    values = np.asarray(values, dtype="float32")
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _as_displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A uint8 image (gray or RGB, with or without a channel axis) for imshow, and its
    colormap: RGB as is, gray as a 2-D array in gray."""
    image = as_uint8_images(image, "image", batch=False)
    return (image, None) if image.shape[-1] == 3 else (image[..., 0], "gray")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8 in [0, 255]."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype("uint8")


def _blank(axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)


def plot_gradcam_gallery(
    images: np.ndarray,
    heatmaps: np.ndarray,
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    confidences: Sequence[float],
    path: Path,
    columns: int = 4,
) -> Path:
    """Each image with its Grad-CAM heatmap, titled "true X / pred Y (0.97)", red if wrong.

    Size: min(columns, n) * 240 by ceil(n / columns) * 270 pixels.
    """
    count = len(images)
    if not count == len(heatmaps) == len(true_names) == len(predicted_names) == len(confidences):
        raise ValueError("images, heatmaps, names and confidences must have the same length")
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure, grid = plt.subplots(
        rows,
        columns,
        figsize=(columns * GALLERY_TILE, rows * (GALLERY_TILE + GALLERY_TITLE)),
        squeeze=False,
    )
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.12 / rows, hspace=0.15)
    for index, axes in enumerate(grid.flat):
        _blank(axes)
        if index >= count:
            continue
        axes.imshow(superimpose(images[index], heatmaps[index]))
        wrong = true_names[index] != predicted_names[index]
        axes.set_title(
            f"true {true_names[index]} / pred {predicted_names[index]} "
            f"({float(confidences[index]):.2f})",
            fontsize=8,
            color="red" if wrong else "black",
        )
    return _save(figure, path)


def plot_activation_grid(layer_name: str, maps: np.ndarray, path: Path, columns: int = 8) -> Path:
    """One layer's activation maps (h, w, channels), each channel normalized, viridis.

    Size: min(columns, channels) * 120 by ceil(channels / columns) * 120 + 48 pixels. The tiles
    are composed as one image and placed pixel for pixel (no axes): a VGG16 model has 13 of
    these grids, and axes per tile cost most of a second each.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"activation maps must be (height, width, channels), got {maps.shape}")
    channels = maps.shape[-1]
    columns = max(1, min(columns, channels))
    rows = max(1, math.ceil(channels / columns))
    tile = round(ACTIVATION_TILE * DPI)
    canvas = np.full((rows * tile, columns * tile, 3), 255, dtype="uint8")
    viridis = matplotlib.colormaps["viridis"]
    for index in range(channels):
        row, column = divmod(index, columns)
        coloured = _to_uint8(viridis(_normalize(maps[..., index]))[..., :3])
        _paste(canvas, _enlarge(coloured, tile - 2 * TILE_GAP), row * tile, column * tile, tile)
    height = rows * ACTIVATION_TILE + HEADER
    figure = plt.figure(figsize=(columns * ACTIVATION_TILE, height))
    figure.figimage(canvas, xo=0, yo=0, origin="upper")
    figure.suptitle(f"{layer_name} ({maps.shape[0]}x{maps.shape[1]})", fontsize=9)
    return _save(figure, path)


def _enlarge(image: np.ndarray, side: int) -> np.ndarray:
    """`image` (h, w, 3) scaled without blurring (nearest pixel) to fit a `side` square, its
    aspect kept: the sharp cells of imshow's nearest interpolation."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    rows = np.minimum((np.arange(new_height) / scale).astype(int), height - 1)
    cols = np.minimum((np.arange(new_width) / scale).astype(int), width - 1)
    return image[rows[:, None], cols[None, :]]


def _paste(canvas: np.ndarray, image: np.ndarray, top: int, left: int, tile: int) -> None:
    """`image` centred in the `tile`-pixel square of `canvas` at (top, left)."""
    height, width = image.shape[:2]
    top += (tile - height) // 2
    left += (tile - width) // 2
    canvas[top : top + height, left : left + width] = image


def plot_filters(before: np.ndarray, after: np.ndarray, path: Path) -> Path:
    """First-layer filters (kh, kw, in, out) before and after training, side by side: one tile
    per filter (its RGB kernel when it reads 3 channels, gray when it reads 1), at most 32.

    Size: (2 * min(out, 8) * 60 + 30) by ceil(min(out, 32) / 8) * 60 + 48 pixels.
    """
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or before.ndim != 4:
        raise ValueError(
            f"filters before and after must be kernels of the same (kh, kw, in, out) shape, got "
            f"{before.shape} and {after.shape}"
        )
    count = min(before.shape[-1], MAX_FILTERS)
    columns = min(count, FILTER_COLUMNS)
    rows = math.ceil(count / columns)
    panel = columns * FILTER_TILE
    width, height = 2 * panel + FILTER_GAP, rows * FILTER_TILE + HEADER
    figure = plt.figure(figsize=(width, height))
    for side, (title, kernel) in enumerate(
        (("before training", before), ("after training", after))
    ):
        left = side * (panel + FILTER_GAP)
        figure.text(
            (left + panel / 2) / width,
            1 - 0.5 * HEADER / height,
            title,
            ha="center",
            va="center",
            fontsize=9,
        )
        for index in range(count):
            row, column = divmod(index, columns)
            axes = figure.add_axes(
                (
                    (left + column * FILTER_TILE + 0.03) / width,
                    (height - HEADER - (row + 1) * FILTER_TILE + 0.03) / height,
                    (FILTER_TILE - 0.06) / width,
                    (FILTER_TILE - 0.06) / height,
                )
            )
            _blank(axes)
            image, cmap = _as_displayable(_to_uint8(_normalize(kernel[..., index])))
            axes.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    return _save(figure, path)


def plot_patterns(patterns_by_layer: dict[str, np.ndarray], path: Path) -> Path:
    """One row per layer (its name on the left), its filters' patterns (k, H, W, C) uint8,
    composed as one image placed pixel for pixel (as the activation grids).

    Size: 180 + max(k) * 120 by layers * 120 pixels.
    """
    if not patterns_by_layer:
        raise ValueError("no filter patterns to plot")
    columns = max(len(patterns) for patterns in patterns_by_layer.values())
    rows = len(patterns_by_layer)
    width, height = PATTERN_LABEL + columns * PATTERN_TILE, rows * PATTERN_TILE
    tile = round(PATTERN_TILE * DPI)
    canvas = np.full((rows * tile, columns * tile, 3), 255, dtype="uint8")
    figure = plt.figure(figsize=(width, height))
    for row, (layer_name, patterns) in enumerate(patterns_by_layer.items()):
        figure.text(
            0.1 / width, 1 - (row + 0.5) / rows, layer_name, ha="left", va="center", fontsize=9
        )
        for column, pattern in enumerate(patterns):
            rgb = as_uint8_images(pattern, "pattern", batch=False, channels=3)
            _paste(canvas, _enlarge(rgb, tile - 2 * PATTERN_GAP), row * tile, column * tile, tile)
    figure.figimage(canvas, xo=round(PATTERN_LABEL * DPI), yo=0, origin="upper")
    return _save(figure, path)
