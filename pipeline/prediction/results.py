"""Predicting files in batches and writing the answers: one CSV row per file, the most
probable class first, the runners-up too where there are more than TOP_K classes, and the
model that answered. Every cell is spreadsheet-safe: a file named `=HYPERLINK(...).png` is
text in Excel, not a formula."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.datasets.images import DEFAULT_MAX_PIXELS, ResizeMode
from pipeline.prediction.classifier import Classifier
from pipeline.prediction.files import read_images
from pipeline.store import spreadsheet_safe

DEFAULT_BATCH_SIZE = 64
TOP_K = 3
"""Datasets of more than TOP_K classes get the runner-up classes as columns as well."""


@dataclass(frozen=True)
class FilePrediction:
    """One file's answer: its class probabilities, or why it could not be read."""

    path: Path
    probabilities: np.ndarray | None
    error: str | None = None


def predict_files(
    classifier: Classifier,
    paths: Sequence[Path],
    resize: ResizeMode = "stretch",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[FilePrediction]:
    """Decode and classify `paths`, `batch_size` files at a time (memory stays bounded whatever
    the folder's size); one FilePrediction per path, in order. A file declaring more than
    `max_pixels` (data.max_pixels) is refused unread."""
    results: list[FilePrediction] = []
    for start in range(0, len(paths), batch_size):
        batch = list(paths[start : start + batch_size])
        images, bad = read_images(batch, classifier.image_shape, resize, max_pixels)
        readable = [position for position in range(len(batch)) if position not in bad]
        probabilities = classifier.predict_batch(images[readable]) if readable else None
        answers = dict(zip(readable, probabilities if readable else [], strict=True))
        for position, path in enumerate(batch):
            if position in bad:
                results.append(FilePrediction(path, None, bad[position]))
            else:
                results.append(FilePrediction(path, np.asarray(answers[position])))
        if progress is not None:
            progress(len(batch))
    return results


def prediction_header(classes: Sequence[str]) -> list[str]:
    """path, predicted_class, probability, then (more than TOP_K classes) the runners-up
    top2, top2_probability, top3, top3_probability, error (empty on a readable file), and
    model: the model that answered (models:/<name>/<version>, models/<strategy>, a path)."""
    header = ["path", "predicted_class", "probability"]
    if len(classes) > TOP_K:
        for rank in range(2, TOP_K + 1):
            header += [f"top{rank}", f"top{rank}_probability"]
    return [*header, "error", "model"]


def prediction_row(prediction: FilePrediction, classes: Sequence[str], model: str) -> list[str]:
    """One CSV row: the most probable class first; ties go to the lower label, as argmax."""
    width = len(prediction_header(classes))
    if prediction.probabilities is None:
        return [str(prediction.path), *[""] * (width - 3), prediction.error or "", model]
    order = np.argsort(-prediction.probabilities, kind="stable")
    ranks = TOP_K if len(classes) > TOP_K else 1
    row = [str(prediction.path)]
    for label in order[:ranks]:
        row += [classes[label], f"{prediction.probabilities[label]:.6f}"]
    return [*row, "", model]


def write_predictions(
    predictions: Sequence[FilePrediction], classes: Sequence[str], stream: TextIO, model: str
) -> None:
    """The predictions of `model` as CSV, one row per file, to `stream`; every cell through
    spreadsheet_safe (file names and class names are anyone's)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([spreadsheet_safe(cell) for cell in prediction_header(classes)])
    for prediction in predictions:
        row = prediction_row(prediction, classes, model)
        writer.writerow([spreadsheet_safe(cell) for cell in row])
