"""The file names of a strategy's report folder (reports/<strategy>/) and of the comparison
across strategies: written by the evaluate stage, read by the report stage and by DVC's plots.

Names only, no imports, so the HTML report reads them without loading Keras.
"""

from __future__ import annotations

CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_NORMALIZED_CSV = "confusion_matrix_normalized.csv"
CONFUSION_PNG = "confusion_matrix.png"
CONFUSION_NORMALIZED_PNG = "confusion_matrix_normalized.png"
CONFUSION_PLOT = "confusion.json"
"""True and predicted class of every test image, for DVC's `confusion` plot template."""
CLASSIFICATION_REPORT = "classification_report.csv"
PREDICTIONS_CSV = "predictions.csv"
CURVES_PNG = "training_curves.png"
ROC_PNG = "roc_curve.png"
PR_PNG = "precision_recall_curve.png"
MOSAIC_PNG = "predictions.png"
MISTAKES_PNG = "mistakes.png"
AUGMENTED_PNG = "augmented.png"
GRADCAM_PNG = "gradcam.png"
FILTERS_PNG = "filters.png"
PATTERNS_PNG = "patterns.png"
RELIABILITY_PNG = "reliability.png"
"""The reliability diagram: accuracy against confidence, before and after temperature scaling."""
ACTIVATIONS_DIR = "activations"
"""One PNG per conv layer, numbered in model order."""

COMPARISON_COLUMNS: tuple[str, ...] = (
    "test_accuracy",
    "test_macro_f1",
    "test_loss",
    "total_params",
    "trainable_params",
    "training_seconds",
    "images_per_second",
)
"""comparison.csv's columns after `strategy` (one row per strategy)."""
EVALUATION_JSON = "evaluation.json"
"""The folder's record: the model it describes, its run, metrics, parameters and speed; what
comparing strategies and `pipeline sync-mlflow` read."""
