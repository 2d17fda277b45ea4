"""Test metrics and confusion matrices. Evaluation returns one dict, written to both the DVC
metrics file and MLflow, so the two never disagree.

Besides the headline metrics: the per-class report (precision, recall, F1, support), top-k
accuracy for datasets of many classes, ROC and precision-recall curves for two-class ones, and
the most confident mistakes, the images most worth a look."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.models.outputs import class_probabilities
from pipeline.store import ImageSplit

if TYPE_CHECKING:
    import pandas as pd

# pandas, scikit-learn and tqdm are imported where they are used: the promote stage imports
# this module for check_class_indices alone, and they cost it seconds to start.

PREDICT_BATCH_BYTES = 64 << 20
"""The most bytes of raw uint8 input one predict batch holds."""
MAX_PREDICT_BATCH = 256
"""Images per predict batch at most: the batch evaluation always used, so that for images of
up to 256 KiB the batches, and so the probabilities, stay what they were to the last bit."""


def evaluate_model(
    model, x: ImageSplit | np.ndarray, y: np.ndarray, batch_size: int | None = None
) -> tuple[dict, np.ndarray]:
    """Test metrics of `model` on raw images (a split, read a batch at a time, or an array),
    and its predicted labels."""
    probabilities = predict_probabilities(model, x, batch_size)
    return probability_metrics(y, probabilities), probabilities.argmax(axis=1)


def predict_batch_size(
    image_shape: Sequence[int],
    limit_bytes: int = PREDICT_BATCH_BYTES,
    most: int = MAX_PREDICT_BATCH,
) -> int:
    """Images per predict batch for uint8 images of `image_shape`: as many as keep a batch
    under `limit_bytes`, at least 1 and at most `most`."""
    image_bytes = max(1, int(np.prod(tuple(image_shape), dtype=np.int64)))
    return int(max(1, min(most, limit_bytes // image_bytes)))


def predict_probabilities(
    model,
    images: ImageSplit | np.ndarray,
    batch_size: int | None = None,
    timings: list[tuple[int, float]] | None = None,
) -> np.ndarray:
    """Class probabilities (one column per class) of every image, in row order: predict_outputs,
    a two-class model's single sigmoid unit widened to two columns (class_probabilities)."""
    return class_probabilities(predict_outputs(model, images, batch_size, timings))


def predict_outputs(
    model,
    images: ImageSplit | np.ndarray,
    batch_size: int | None = None,
    timings: list[tuple[int, float]] | None = None,
) -> np.ndarray:
    """The model's outputs for every image, in row order: one `model.predict_on_batch` per
    batch, so each image is predicted once and only one batch of images is in memory at a
    time, whatever the split's size. `batch_size` defaults to `predict_batch_size` of the
    images' shape. `timings`, when given, receives each batch's (images, seconds in
    predict_on_batch), for an images-per-second figure at no extra pass.

    `predict_on_batch` runs the very function `predict` runs on each of its batches (the same
    numbers, to the bit), without the data pipeline `predict` builds at every call (a tenth of
    a second each)."""
    from tqdm import tqdm

    shape = images.shape[1:] if isinstance(images, np.ndarray) else images.image_shape
    size = batch_size or predict_batch_size(shape)
    batches = _image_batches(images, size)
    count = -(-len(images) // size)
    parts = []
    for batch in tqdm(batches, total=count, desc="predicting", unit="batch", disable=count < 8):
        start = time.perf_counter()
        predicted = model.predict_on_batch(batch)
        if timings is not None:
            timings.append((len(batch), time.perf_counter() - start))
        parts.append(np.asarray(predicted))
    if not parts:
        raise ValueError("there are no images to predict")
    return np.concatenate(parts)


def _image_batches(images: ImageSplit | np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of `images`: slices of an array, or batches read from a split."""
    if isinstance(images, np.ndarray):
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
    else:
        for _, batch in images.batches(batch_size):
            yield batch


def probability_metrics(y: np.ndarray, probabilities: np.ndarray, split: str = "test") -> dict:
    """The headline metrics of a split (`test`, or `val` for choosing) from class probabilities
    (one column per class, as class_probabilities gives them): cross-entropy loss, accuracy,
    macro F1, image count, each named `<split>_...`."""
    from sklearn.metrics import f1_score

    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = probabilities.argmax(axis=1)
    eps = np.finfo(np.float32).eps
    true_probability = np.clip(probabilities[np.arange(len(y)), y], eps, 1.0)
    return {
        f"{split}_loss": float(-np.log(true_probability).mean()),
        f"{split}_accuracy": float((predictions == y).mean()),
        f"{split}_macro_f1": float(f1_score(y, predictions, average="macro", zero_division=0)),
        f"{split}_images": len(y),
    }


def compute_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> pd.DataFrame:
    """Raw counts: rows are true classes, columns predicted, both labelled by class name."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(y_true, y_pred, labels=np.arange(len(class_names)))
    return pd.DataFrame(counts, index=pd.Index(class_names, name="true"), columns=class_names)


def normalize_confusion(counts: pd.DataFrame) -> pd.DataFrame:
    """Each row divided by its total: the recall of each class on the diagonal."""
    totals = counts.sum(axis=1).replace(0, 1)
    return counts.div(totals, axis=0)


# The rows after the classes in classification_report_frame, named as sklearn names them.
AVERAGE_ROWS = ("macro avg", "weighted avg")
REPORT_COLUMNS = ("precision", "recall", "f1", "support")
# Top-k accuracy says little with few classes (top-5 of 5 is always right): it is reported
# only from this many classes on.
TOP_K_MIN_CLASSES = 6
TOP_K_VALUES = (3, 5)
# Characters that MLflow metric names may hold, in the subset we keep; the rest become "_".
_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def classification_report_frame(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class (one row each, indexed by class name),
    then the "macro avg" and "weighted avg" rows: sklearn's classification report as a table.

    A class that is never predicted (or never present) scores 0, not a warning: on a small test
    split that is a fact worth showing, not an error. A class neither present nor predicted
    keeps its row (all 0, support 0) but is left out of the averages.
    """
    import pandas as pd
    from sklearn.metrics import precision_recall_fscore_support

    names = [str(name) for name in class_names]
    if not names:
        raise ValueError("class_names is empty: the report needs the class names of the split")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicate names: {names}")
    clash = sorted(set(names) & set(AVERAGE_ROWS))
    if clash:
        raise ValueError(f"class_names may not use the names of the average rows: {clash}")
    y_true = check_class_indices("y_true", y_true, len(names))
    y_pred = check_class_indices("y_pred", y_pred, len(names), len(y_true), against="y_true")
    labels = np.arange(len(names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    rows = [list(values) for values in zip(precision, recall, f1, support, strict=True)]
    # The averages run over the classes that occur (in the labels or the predictions), as
    # f1_score does by default: so the macro F1 here is evaluate_model's test_macro_f1, and a
    # class with no test image does not pull every average down.
    occurring = np.union1d(y_true, y_pred)
    for average in ("macro", "weighted"):
        averaged = precision_recall_fscore_support(
            y_true, y_pred, labels=occurring, average=average, zero_division=0
        )
        rows.append([*averaged[:3], len(y_true)])
    frame = pd.DataFrame(
        rows, index=pd.Index([*names, *AVERAGE_ROWS], name="class"), columns=REPORT_COLUMNS
    )
    return frame.astype({"precision": float, "recall": float, "f1": float, "support": int})


def per_class_metrics(report_frame: pd.DataFrame) -> dict[str, float]:
    """`test_precision_<class>`, `test_recall_<class>` and `test_f1_<class>` for every class row
    of a classification_report_frame, with class names made safe for MLflow metric names
    (characters outside [A-Za-z0-9_.-] become "_"; a name that then collides gets "_2", ...)."""
    missing = [column for column in ("precision", "recall", "f1") if column not in report_frame]
    if missing:
        raise ValueError(
            f"report_frame lacks the columns {missing}: pass classification_report_frame's result"
        )
    classes = [str(name) for name in report_frame.index if name not in AVERAGE_ROWS]
    metrics = {}
    for name, safe in zip(classes, metric_safe_names(classes), strict=True):
        row = report_frame.loc[name]
        for column in ("precision", "recall", "f1"):
            metrics[f"test_{column}_{safe}"] = float(row[column])
    return metrics


def metric_safe_names(names: Sequence[str]) -> list[str]:
    """`names` with every character outside [A-Za-z0-9_.-] replaced by "_", made unique: the
    first of colliding names keeps the plain form, the next ones get "_2", "_3", ..."""
    plain = [_METRIC_NAME_UNSAFE.sub("_", str(name)) or "_" for name in names]
    taken: set[str] = set()
    unique = []
    for index, name in enumerate(plain):
        candidate = name
        if candidate in taken:
            # Skip suffixes that another name holds as it is ("a_b_2" among the classes).
            others = set(plain[index + 1 :])
            suffix = 2
            while (candidate := f"{name}_{suffix}") in taken or candidate in others:
                suffix += 1
        taken.add(candidate)
        unique.append(candidate)
    return unique


def top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """The share of images whose true class is among the `k` most probable (sklearn's
    top_k_accuracy_score over every class, including classes absent from `y_true`)."""
    from sklearn.metrics import top_k_accuracy_score

    probabilities = _probability_table(probabilities)
    classes = probabilities.shape[1]
    y_true = check_class_indices(
        "y_true", y_true, classes, len(probabilities), against="probabilities"
    )
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k < classes:
        raise ValueError(
            f"k must be between 1 and {classes - 1} for {classes} classes, got {k}: "
            f"top-{classes} accuracy is 1 whatever the model"
        )
    # sklearn reads a two-column table as binary only through the positive column's scores.
    scores = probabilities[:, 1] if classes == 2 else probabilities
    return float(top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(classes)))


def top_k_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """`test_top_3_accuracy` and `test_top_5_accuracy` (only k below the number of classes)
    for datasets of TOP_K_MIN_CLASSES classes or more; {} for fewer, where they say nothing."""
    probabilities = _probability_table(probabilities)
    classes = probabilities.shape[1]
    if classes < TOP_K_MIN_CLASSES:
        return {}
    return {
        f"test_top_{k}_accuracy": top_k_accuracy(y_true, probabilities, k)
        for k in TOP_K_VALUES
        if k < classes
    }


def binary_curves(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """The ROC and precision-recall curves of two-class data, class 1 positive.

    Keys: fpr, tpr, roc_thresholds, roc_auc; precision, recall, pr_thresholds,
    average_precision (the PR AUC, as sklearn's average precision, which does not interpolate
    optimistically); positive_fraction (the precision of guessing, the PR chance line).
    `probabilities` is (N, 2), or a sigmoid model's (N, 1).
    """
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    probabilities = _probability_table(probabilities)
    if probabilities.shape[1] != 2:
        raise ValueError(
            f"ROC and precision-recall curves need two classes, got probabilities for "
            f"{probabilities.shape[1]}: they are drawn only for two-class datasets"
        )
    y_true = check_class_indices("y_true", y_true, 2, len(probabilities), against="probabilities")
    present = np.unique(y_true)
    if len(present) < 2:
        raise ValueError(
            f"the test labels hold only class {int(present[0])}: ROC AUC and PR AUC are "
            "undefined unless the test split holds both classes"
        )
    scores = probabilities[:, 1]
    fpr, tpr, roc_thresholds = roc_curve(y_true, scores)
    precision, recall, pr_thresholds = precision_recall_curve(y_true, scores)
    return {
        "fpr": fpr,
        "tpr": tpr,
        "roc_thresholds": roc_thresholds,
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "precision": precision,
        "recall": recall,
        "pr_thresholds": pr_thresholds,
        "average_precision": float(average_precision_score(y_true, scores)),
        "positive_fraction": float(np.mean(y_true == 1)),
    }


def binary_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """`test_roc_auc` and `test_pr_auc` (average precision) of two-class data, class 1
    positive; the same ValueErrors as binary_curves."""
    curves = binary_curves(y_true, probabilities)
    return {"test_roc_auc": curves["roc_auc"], "test_pr_auc": curves["average_precision"]}


def most_confident_mistakes(y_true: np.ndarray, probabilities: np.ndarray, n: int) -> np.ndarray:
    """Indices of at most `n` wrongly predicted images, the most confident first: sorted by the
    probability of the predicted class, highest first (ties keep test-set order)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"n must be an integer, got {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    probabilities = _probability_table(probabilities)
    y_true = check_class_indices(
        "y_true", y_true, probabilities.shape[1], len(probabilities), against="probabilities"
    )
    predictions = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predictions != y_true)
    confidence = probabilities[wrong, predictions[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order][:n].astype(np.int64)


def _probability_table(probabilities) -> np.ndarray:
    """`probabilities` as an (N, classes) float table (a sigmoid's (N, 1) widened), or a
    ValueError saying what is wrong with it."""
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"probabilities must be 2-D (one row per image, one column per class), got shape "
            f"{array.shape}"
        )
    if len(array) == 0:
        raise ValueError("probabilities is empty: there are no test images to score")
    return class_probabilities(array)


def check_class_indices(
    name: str, values, classes: int, length: int | None = None, against: str = "the test images"
) -> np.ndarray:
    """`values` as a non-empty 1-D array of indices into `classes` classes (of `length`
    entries, as many as `against` has, when given), or a ValueError naming the argument."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per image), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: there are no test images to score")
    if length is not None and len(array) != length:
        raise ValueError(
            f"{name} has {len(array)} labels but {against} has {length}: both must describe "
            "the same test images"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    outside = array[(array < 0) | (array >= classes)]
    if outside.size:
        raise ValueError(f"{name} holds {outside[0]}, not an index into the {classes} classes")
    return array
