"""One strategy's evaluation: its test metrics, confusion matrices, per-class figures, curves,
galleries and explanations, as files in its report folder, and the evaluation as one dict: what
the evaluate stage writes to evaluation.json (read by the comparison across strategies) and
logs to MLflow (pipeline/tracking/strategy_runs.py), so the two can never disagree.

The file names (pipeline/evaluation/layout.py) are the contract with the report stage
(pipeline/reporting/content.py finds figures by them) and with `dvc.yaml`'s plots.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline.config import AugmentationConfig, EvaluateConfig
from pipeline.evaluation.calibration import (
    calibration_metrics,
    reliability_bins,
    rescaled_probabilities,
)
from pipeline.evaluation.layout import (
    AUGMENTED_PNG,
    CLASSIFICATION_REPORT,
    CONFUSION_CSV,
    CONFUSION_NORMALIZED_CSV,
    CONFUSION_NORMALIZED_PNG,
    CONFUSION_PLOT,
    CONFUSION_PNG,
    CURVES_PNG,
    MISTAKES_PNG,
    MOSAIC_PNG,
    PR_PNG,
    PREDICTIONS_CSV,
    RELIABILITY_PNG,
    ROC_PNG,
)
from pipeline.evaluation.metrics import (
    binary_curves,
    binary_metrics,
    classification_report_frame,
    compute_confusion,
    most_confident_mistakes,
    normalize_confusion,
    per_class_metrics,
    predict_batch_size,
    predict_probabilities,
    probability_metrics,
    top_k_metrics,
)
from pipeline.evaluation.mosaics import (
    augmented_versions,
    plot_augmented_versions,
    plot_image_mosaic,
)
from pipeline.evaluation.plots import (
    plot_confusion,
    plot_history,
    plot_precision_recall_curve,
    plot_reliability,
    plot_roc_curve,
)
from pipeline.explain.cache import ExplanationCache
from pipeline.store import (
    FIRST_KERNEL_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    ImageSplit,
    sha256_of,
    spreadsheet_safe,
    write_json,
)

logger = logging.getLogger(__name__)

# Fewer images than this make an images-per-second figure mostly timer noise: at least this
# many are timed, warm (the first batch of a shape traces the predict function).
MIN_TIMED_IMAGES = 256


def evaluate_strategy(
    strategy: str,
    model_dir: Path,
    output: Path,
    test: ImageSplit,
    options: EvaluateConfig,
    *,
    phase_boundary: int | None = None,
    augmentation: AugmentationConfig | None = None,
    training_seconds: float | None = None,
    train_image: np.ndarray | None = None,
    backbone_layers: tuple[str, ...] = (),
    batch_size: int | None = None,
    cache: ExplanationCache | None = None,
    temperature: float = 1.0,
    val: ImageSplit | None = None,
) -> dict:
    """Score one strategy's model on the test split, write its report folder `output`
    (metrics, confusion matrices, per-class figures, curves, reliability diagram, galleries,
    explanations) and return the evaluation: `metrics` (metrics.json's), `mlflow_metrics`
    (per-class figures, images per second), the model's sha256 and size, its `temperature`
    and `training_seconds` as given.

    `temperature` is the one the train stage folded into the model (run.json's; 1: none): the
    model's probabilities are the calibrated ones it serves, and those before calibration are
    recovered from them exactly (calibration.rescaled_probabilities) for `test_ece_uncalibrated`
    and the diagram's "before", without predicting twice.

    The test images are predicted once, a batch at a time (`batch_size`, by default sized by
    memory: `predict_batch_size`); every metric and figure works from those probabilities and
    reads only the images it shows, and the images per second are timed on that pass's warm
    batches. `phase_boundary` marks where fine-tuning unfroze on the curves; `augmentation` and
    `train_image` draw the augmented versions of one training image; `cache` holds the
    explanations computed for the same weights before (None: computed).

    `val`, when given, is scored too, for `val_accuracy`, `val_loss` and `val_macro_f1`: the
    figures a choice between models (promote.strategy best, pipeline tune) is made on, so the
    test split judges the chosen model and never chooses it."""
    model = keras.saving.load_model(model_dir / MODEL_FILE)
    output.mkdir(parents=True, exist_ok=True)
    batch_size = batch_size or predict_batch_size(test.image_shape)
    timings: list[tuple[int, float]] = []
    probabilities = predict_probabilities(model, test, batch_size, timings=timings)
    predictions = probabilities.argmax(axis=1)
    images_per_second = measure_images_per_second(model, test.image_shape, timings)

    metrics = probability_metrics(test.y, probabilities)
    if val is not None and len(val):
        metrics.update(
            probability_metrics(val.y, predict_probabilities(model, val, batch_size), "val")
        )
    metrics.update(calibration_metrics(test.y, probabilities, temperature))
    metrics.update(top_k_metrics(test.y, probabilities))
    two_classes = len(test.classes) == 2
    curves = None
    if two_classes and len(np.unique(test.y)) == 2:
        curves = binary_curves(test.y, probabilities)
        metrics.update(binary_metrics(test.y, probabilities))
    report = classification_report_frame(test.y, predictions, test.classes)
    write_classification_report(report, output / CLASSIFICATION_REPORT)
    title = f"{strategy}: test accuracy {metrics['test_accuracy']:.3f}"

    write_confusion(test.y, predictions, test.classes, output, title)
    write_predictions(test.y, probabilities, test.classes, output / PREDICTIONS_CSV)
    if curves is not None:
        plot_roc_curve(curves, f"{strategy}: ROC curve", output / ROC_PNG)
        plot_precision_recall_curve(curves, f"{strategy}: precision-recall", output / PR_PNG)
    plot_reliability(
        reliability_bins(test.y, rescaled_probabilities(probabilities, temperature)),
        reliability_bins(test.y, probabilities),
        temperature,
        f"{strategy}: reliability on the test split",
        output / RELIABILITY_PNG,
    )
    history = pd.read_csv(model_dir / HISTORY_FILE)
    plot_history(
        history,
        f"{strategy}: training curves",
        output / CURVES_PNG,
        phase_boundary=phase_boundary,
    )
    write_galleries(test, probabilities, output, options, strategy)
    if augmentation is not None and train_image is not None and options.augmented_versions > 0:
        versions = augmented_versions(train_image, augmentation, count=options.augmented_versions)
        plot_augmented_versions(
            train_image,
            versions,
            output / AUGMENTED_PNG,
            title=f"{strategy}: augmented versions of one training image",
        )

    from pipeline.evaluation.explanations import write_explanations

    write_explanations(
        strategy,
        model,
        model_dir,
        test,
        probabilities,
        output,
        options,
        backbone_layers=backbone_layers,
        cache=cache,
    )
    return {
        "strategy": strategy,
        "model_sha256": sha256_of(model_dir / MODEL_FILE),
        "metrics": metrics,
        "mlflow_metrics": {**per_class_metrics(report), "images_per_second": images_per_second},
        "total_params": int(model.count_params()),
        "trainable_params": _count(model.trainable_weights),
        "images_per_second": images_per_second,
        "training_seconds": training_seconds,
        "temperature": float(temperature),
    }


def measure_images_per_second(
    model: keras.Model, image_shape: tuple[int, ...], timings: list[tuple[int, float]]
) -> float:
    """Inference throughput on raw uint8 images of `image_shape`, from the scoring pass's
    `timings` (images, seconds of each predict_on_batch, in order): its batches of the first
    batch's size after the first (which traced the predict function) are warm. Where they hold
    fewer than MIN_TIMED_IMAGES (a small test split), black batches of that size, already
    traced, make up the rest: a convnet does the same work whatever the pixels, so no test
    image is predicted twice and a large test split costs no extra pass."""
    if not timings:
        raise ValueError("no scoring batch was timed: predict the test images first")
    size = timings[0][0]
    warm = [seconds for count, seconds in timings[1:] if count == size]
    images, seconds = size * len(warm), sum(warm)
    if images < MIN_TIMED_IMAGES:
        batch = np.zeros((size, *image_shape), dtype=np.uint8)
        for _ in range(-(-(MIN_TIMED_IMAGES - images) // size)):
            start = time.perf_counter()
            model.predict_on_batch(batch)
            seconds += time.perf_counter() - start
            images += size
    return float(images / max(seconds, 1e-9))


def write_classification_report(report: pd.DataFrame, path: Path) -> None:
    """The per-class report as CSV, one row per class (its name in the `class` column) and the
    averages. Class names are anyone's folder names: one named `=HYPERLINK(...)` is written
    spreadsheet-safe, so it stays text in Excel; the figures are numbers, unchanged."""
    report.rename(index=spreadsheet_safe).to_csv(path, index_label="class")


def write_confusion(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], output: Path, title: str
) -> None:
    """Raw and row-normalized matrices as CSV and PNG, and the DVC confusion plot data."""
    counts = compute_confusion(y_true, y_pred, classes)
    normalized = normalize_confusion(counts)
    # The header is the class names, made spreadsheet-safe; the counts are numbers, unchanged.
    counts.rename(columns=spreadsheet_safe).to_csv(output / CONFUSION_CSV, index=False)
    normalized.round(6).rename(columns=spreadsheet_safe).to_csv(
        output / CONFUSION_NORMALIZED_CSV, index=False
    )
    plot_confusion(counts, title, output / CONFUSION_PNG, normalized=False)
    plot_confusion(normalized, f"{title} (row-normalized)", output / CONFUSION_NORMALIZED_PNG, True)
    records = [
        {"actual": classes[int(true)], "predicted": classes[int(pred)]}
        for true, pred in zip(y_true, y_pred, strict=True)
    ]
    write_json(output / CONFUSION_PLOT, records)


def write_predictions(
    y_true: np.ndarray, probabilities: np.ndarray, classes: list[str], path: Path
) -> None:
    """One row per test image: its index, true and predicted class, and the confidence (class
    names spreadsheet-safe: a folder named `=HYPERLINK(...)` is text in Excel)."""
    predicted = probabilities.argmax(axis=1)
    names = [spreadsheet_safe(name) for name in classes]
    pd.DataFrame(
        {
            "index": np.arange(len(y_true)),
            "true": [names[int(i)] for i in y_true],
            "predicted": [names[int(i)] for i in predicted],
            "confidence": probabilities.max(axis=1).round(6),
        }
    ).to_csv(path, index=False)


def write_galleries(
    test: ImageSplit,
    probabilities: np.ndarray,
    output: Path,
    options: EvaluateConfig,
    strategy: str,
) -> None:
    """A mosaic of test images and the most confident mistakes, with the true class, the
    predicted class and the confidence; only the images shown are read."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)

    def names(indices):
        return [test.classes[int(i)] for i in indices]

    if options.gallery_images > 0:
        shown = _spread(len(test.y), options.gallery_images)
        plot_image_mosaic(
            test.read(shown),
            names(test.y[shown]),
            names(predicted[shown]),
            confidence[shown],
            f"{strategy}: test images, true / predicted (confidence)",
            output / MOSAIC_PNG,
        )
    if options.mistakes > 0:
        wrong = most_confident_mistakes(test.y, probabilities, options.mistakes)
        plot_image_mosaic(
            test.read(wrong),
            names(test.y[wrong]),
            names(predicted[wrong]),
            confidence[wrong],
            f"{strategy}: the most confident mistakes",
            output / MISTAKES_PNG,
        )


def _spread(total: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over `total` images, so the mosaic shows every class."""
    if total <= count:
        return np.arange(total)
    return np.linspace(0, total - 1, count).round().astype(int)


def _count(weights) -> int:
    return int(sum(np.prod(weight.shape) for weight in weights))


def first_kernel_before(model_dir: Path) -> np.ndarray | None:
    """The scratch model's first conv kernel as initialised, saved by the train stage."""
    path = model_dir / FIRST_KERNEL_FILE
    return np.load(path) if path.exists() else None
