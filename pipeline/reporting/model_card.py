"""The model card of a registered version: Markdown generated from the pipeline's records, never
written by hand, so a reviewer who opens the version in the MLflow UI sees what data, what
training, what figures and what limits it carries (mlflow#3613).

Pure: it reads files it is given (history.csv, split.json, the label-issues CSV, ...) and
renders text; the promotion (pipeline.promotion) gathers what only MLflow knows (run ids, the
last drift verdict), writes the card, logs it and sets it as the version's description.

Every figure is printed from the record that holds it (evaluation.json, promotion.json) with
the digits the logs use (4 decimals; p-values 4 significant digits), so the card and the
records agree figure for figure.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from pipeline.config import (
    BackboneConfig,
    DataConfig,
    FeatureExtractionConfig,
    FineTuneConfig,
    ScratchConfig,
    TrainConfig,
)
from pipeline.datasets.sources import DATASETS
from pipeline.errors import DataError
from pipeline.evaluation.label_issues import COLUMNS, CONFLICT, unescape_cell
from pipeline.evaluation.metrics import AVERAGE_ROWS, metric_safe_names
from pipeline.models.weight_kinds import describe_weights

CARD_FILE = "model_card.md"
"""The card's name as an artifact of the promotion's MLflow run."""
MAX_DESCRIPTION_CHARS = 5000
"""MLflow keeps a model version's description in a String(5000) column (model_versions.
description): PostgreSQL and MySQL refuse a longer one."""
WORST_LABEL_ISSUES = 5
"""Suspected label errors listed by name in the card (the report's gallery shows more)."""
SMALL_TEST_IMAGES = 1000
"""Below this many test images, one image moves accuracy by more than 0.001: a small split."""
SMALL_CLASS_IMAGES = 30
"""Below this many test images of a class, its recall moves in steps of more than 0.03."""
REQUIRED_LABEL_ISSUE_COLUMNS = tuple(column for column in COLUMNS if column != "issue")
"""label_issues.csv's columns the card reads (`issue` is optional: suspect when absent)."""
NOT_RECORDED = "not recorded"
_REPORT_FIGURES = ("precision", "recall", "f1")

_STRATEGY_BLOCKS: dict[str, type[BaseModel]] = {
    "scratch": ScratchConfig,
    "feature_extraction": FeatureExtractionConfig,
    "fine_tune": FineTuneConfig,
}
# Run params shown elsewhere in the card (the resolved architecture, the dataset).
_SHOWN_ELSEWHERE = frozenset({"train.architecture", "data.dataset"})
METRIC_NAMES = {
    "test_accuracy": "Test accuracy",
    "test_macro_f1": "Test macro F1",
    "test_loss": "Test loss (NLL)",
    "test_top_3_accuracy": "Top-3 accuracy",
    "test_top_5_accuracy": "Top-5 accuracy",
    "test_roc_auc": "ROC AUC",
    "test_pr_auc": "PR AUC (average precision)",
    "test_ece": "Expected calibration error (ECE, 15 bins)",
    "test_brier": "Brier score (multi-class, 0 to 2)",
    "test_nll": "Negative log-likelihood",
    "test_ece_uncalibrated": "ECE before temperature scaling",
    "test_brier_uncalibrated": "Brier score before temperature scaling",
    "test_loss_uncalibrated": "Test loss (NLL) before temperature scaling",
}
"""evaluation.json's `metrics` as the card's figures table names them, in its order; any other
number there is shown under its own key."""
CALIBRATION_METRICS = ("test_ece", "test_brier", "test_nll")
CRITERIA_NAMES = {
    "accuracy_floor": "Accuracy floor",
    "class_recall_floor": "Lowest class recall",
    "improvement": "Gain over the champion",
    "mcnemar": "McNemar p-value",
    "fair_test_split": "Share of test images neither model trained on",
    "comparable": "Same classes as the champion",
    "new_model": "A model other than the champion",
    "not_rolled_back": "Not rolled back before",
    "calibration": "Test ECE (a ceiling)",
}
"""The gate's criteria (promotion.json's `criteria`) as the card's table names them."""


@dataclass(frozen=True)
class Lineage:
    """Where the version came from: the code, the pipeline's lock and the runs."""

    git_commit: str | None = None
    dvc_lock_sha256: str | None = None
    """None where no dvc.lock was found (a stage run outside `dvc repro`)."""
    training_run: str | None = None
    evaluation_run: str | None = None
    comparison_run: str | None = None
    promotion_run: str | None = None
    dvc_experiment: str | None = None


@dataclass(frozen=True)
class CardRecords:
    """Everything a card is generated from, read from the pipeline's records."""

    registered_model: str
    version: str | None
    """None inside a DVC experiment, where nothing is registered."""
    new_version: bool
    """Registered by this promotion (so never served yet)."""
    strategy: str
    dataset: str
    classes: list[str]
    image_shape: tuple[int, ...]
    class_counts: Mapping[str, Sequence[int]]
    """Split name -> images per class, in `classes` order."""
    run: Mapping[str, Any]
    """The strategy's run.json (pipeline.tracking.record.RunRecord, as a dict)."""
    history: Sequence[Mapping[str, float]]
    """history.csv's rows."""
    evaluation: Mapping[str, Any]
    """The strategy's evaluation.json."""
    decision: Mapping[str, Any]
    """The promotion's record (promotion.json)."""
    lineage: Lineage
    generated_at: str
    split_plan: Mapping[str, Any] | None = None
    """split.json; None when it is missing."""
    manifest_sha256: str | None = None
    classification_report: Sequence[Mapping[str, Any]] | None = None
    """classification_report.csv's rows, used where evaluation.json lacks per-class figures."""
    label_issues: Sequence[Mapping[str, str]] | None = None
    """label_issues.csv's rows, worst first; None when label issues were not looked for."""
    drift: Mapping[str, Any] | None = None
    """The last `pipeline monitor` verdict on this version, if any."""


# --- reading the records ------------------------------------------------------------------------


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv's rows, numbers as floats (empty cells as NaN)."""
    with open(path, newline="", encoding="utf-8") as stream:
        return [
            {key: _float(value) for key, value in row.items() if key}
            for row in csv.DictReader(stream)
        ]


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV's rows as dicts of text."""
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def read_label_issues(path: Path) -> list[dict[str, str]]:
    """label_issues.csv's rows, worst first, cells as they were before the CSV made them
    spreadsheet-safe; a DataError naming a missing column."""
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        header = reader.fieldnames or []
        rows = [
            {key: unescape_cell(value or "") for key, value in row.items() if key} for row in reader
        ]
    missing = [column for column in REQUIRED_LABEL_ISSUE_COLUMNS if column not in header]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)}: rerun the label_issues stage "
            "(dvc repro label_issues)"
        )
    return rows


def count_classes(labels: np.ndarray, class_count: int) -> list[int]:
    """Images per class (label indices into the classes)."""
    return [int(count) for count in np.bincount(np.asarray(labels), minlength=class_count)]


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


# --- what the records mean ----------------------------------------------------------------------


def kept_epoch(
    history: Sequence[Mapping[str, float]], params: Mapping[str, Any], phase_start: int
) -> tuple[int, int, str] | None:
    """(the epoch the saved model is from, counted from 1, the epochs trained, how it was
    chosen): early stopping keeps the best epoch of the last phase by its monitor (val_loss, or
    val_accuracy with ties broken by the lower val_loss), as training's BestEpochStopping does;
    without it the last epoch is kept. None when the history is empty."""
    if not history:
        return None
    total = len(history)
    patience = int(params.get("train.early_stopping_patience") or 0)
    monitor = str(params.get("train.early_stopping_monitor") or "val_loss")
    candidates = range(min(max(phase_start, 0), total - 1), total)
    if patience <= 0 or not all("val_loss" in history[index] for index in candidates):
        return total, total, "the last epoch (no early stopping)"

    def loss(index: int) -> float:
        value = history[index].get("val_loss", math.nan)
        return math.inf if math.isnan(value) else value

    if monitor == "val_accuracy":
        best = min(candidates, key=lambda i: (-history[i].get("val_accuracy", -math.inf), loss(i)))
        why = "the highest val_accuracy, ties broken by the lower val_loss"
    else:
        best = min(candidates, key=loss)
        why = "the lowest val_loss"
    return best + 1, total, f"{why} (early stopping, patience {patience})"


def default_params(strategy: str) -> dict[str, Any]:
    """The defaults of pipeline.config for the keys of a strategy's run params (data.*,
    backbone.*, and train.* from its block and the train-wide keys); a key without a default
    (epochs) maps to `_REQUIRED`."""
    block = _STRATEGY_BLOCKS.get(strategy)
    defaults: dict[str, Any] = {}
    defaults.update(_model_defaults(DataConfig, "data."))
    defaults.update(_model_defaults(BackboneConfig, "backbone."))
    for name, info in TrainConfig.model_fields.items():
        if name not in _STRATEGY_BLOCKS:
            defaults[f"train.{name}"] = _default_of(info)
    if block is not None:
        defaults.update(_model_defaults(block, "train."))
    return defaults


class _Required:
    def __repr__(self) -> str:
        return "no default"


_REQUIRED = _Required()


def _default_of(info) -> Any:
    return _REQUIRED if info.is_required() else info.get_default(call_default_factory=True)


def _model_defaults(model: type[BaseModel], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        default = _default_of(info)
        if isinstance(default, BaseModel):
            flat.update(_flatten(default.model_dump(by_alias=True), f"{key}."))
        else:
            flat[key] = default
    return flat


def _flatten(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_params(strategy: str, params: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value, default) for every run param that differs from pipeline.config's default
    or has none, in key order; the dataset and resolved architecture are shown elsewhere."""
    defaults = default_params(strategy)
    changed = []
    for key in sorted(params):
        if key in _SHOWN_ELSEWHERE:
            continue
        value = params[key]
        default = defaults.get(key, _REQUIRED)
        if default is _REQUIRED or not _same(value, default):
            changed.append((key, value, default))
    return changed


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default or value == default and type(value) is type(default)
    if isinstance(value, int | float) and isinstance(default, int | float):
        return math.isclose(float(value), float(default), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(value, list | tuple) and isinstance(default, list | tuple):
        return list(value) == list(default)
    if isinstance(default, Mapping) and not default:
        return value in ({}, None)
    return value == default


def per_class_figures(
    classes: Sequence[str],
    evaluation: Mapping[str, Any],
    report_rows: Sequence[Mapping[str, Any]] | None,
) -> dict[str, dict[str, float]] | None:
    """Class -> precision, recall, F1: evaluation.json's `mlflow_metrics` (the per-class
    figures logged to MLflow), else classification_report.csv's rows; None when neither has
    them."""
    logged = evaluation.get("mlflow_metrics") or {}
    safe = metric_safe_names(classes)
    figures: dict[str, dict[str, float]] = {}
    for name, metric_name in zip(classes, safe, strict=True):
        keys = {column: f"test_{column}_{metric_name}" for column in _REPORT_FIGURES}
        if all(key in logged for key in keys.values()):
            figures[name] = {column: float(logged[key]) for column, key in keys.items()}
    if len(figures) == len(classes):
        return figures
    if not report_rows:
        return None
    rows = {str(row.get("class", "")).removeprefix("'"): row for row in report_rows}
    figures = {}
    for name in classes:
        row = rows.get(name) or rows.get(str(name).removeprefix("'"))
        if row is None or name in AVERAGE_ROWS:
            return None
        figures[name] = {column: _float(row.get(column)) for column in _REPORT_FIGURES}
    return figures


# --- the card -----------------------------------------------------------------------------------


def render_model_card(records: CardRecords) -> str:
    """The card in Markdown: intended use and classes, data, training, figures, limits,
    lineage."""
    sections = [
        _title(records),
        _intended_use(records),
        _data(records),
        _training(records),
        _figures(records),
        _exports(records),
        _limits(records),
        _lineage(records),
    ]
    return "\n\n".join(section.strip("\n") for section in sections if section) + "\n"


def fit_description(card: str, artifact_note: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """The card as a model version's description: whole when it fits MLflow's limit, else cut
    at the last line that fits, followed by `artifact_note` (where the whole card is)."""
    if len(card) <= limit:
        return card
    note = f"\n\n_{artifact_note}_\n"
    lines = card.splitlines(keepends=True)
    kept, size = [], len(note)
    for line in lines:
        if size + len(line) > limit:
            break
        kept.append(line)
        size += len(line)
    return "".join(kept).rstrip("\n") + note


def _title(records: CardRecords) -> str:
    who = (
        f"{records.registered_model} version {records.version}"
        if records.version is not None
        else f"{records.registered_model} (not registered: DVC experiment "
        f"{records.lineage.dvc_experiment})"
    )
    return (
        f"# Model card: {who}\n\n"
        f"Generated from the pipeline's records by the promote stage on {records.generated_at}; "
        "never written by hand. Strategy "
        f"`{records.strategy}`, trained on `{records.dataset}`."
    )


def _intended_use(records: CardRecords) -> str:
    spec = DATASETS.get(records.dataset)
    described = f" ({spec.description})" if spec is not None else ""
    shape = "x".join(str(size) for size in records.image_shape)
    resize = (records.run.get("params") or {}).get("data.resize", "stretch")
    classes = ", ".join(f"`{_inline(name)}`" for name in records.classes)
    return (
        "## Intended use\n\n"
        f"Sorts images like those of `{records.dataset}`{described} into "
        f"{len(records.classes)} classes: {classes}. Takes image files or uint8 pixels of any "
        f"size, decoded as the split stage decodes (data.resize `{resize}`) to {shape}. "
        'Not for anything else: with no "none of these" answer, any image gets one of these '
        "classes."
    )


def _data(records: CardRecords) -> str:
    plan = records.split_plan or {}
    params = records.run.get("params") or {}
    source = records.dataset
    if records.dataset == "image_folder" and params.get("data.image_folder"):
        source = f"image_folder `{_inline(params['data.image_folder'])}`"
    counts = ", ".join(
        f"{split} {sum(records.class_counts[split])}"
        for split in ("train", "val", "test")
        if split in records.class_counts
    )
    skipped = f"; {plan['skipped']} skipped" if plan.get("skipped") else ""
    rows = [
        ("Source", source),
        ("Data version", _code(plan.get("data_version"))),
        ("Split", f"{_split_scheme(plan)}: {counts}{skipped} (per class: see Figures)"),
        ("Training manifest SHA-256", _code(records.manifest_sha256)),
        (
            "Model file SHA-256",
            _code((records.decision.get("challenger") or {}).get("model_sha256")),
        ),
    ]
    lines = ["## Data", "", *_table(("", ""), rows, header=False), "", _label_issues(records)]
    return "\n".join(lines)


def _split_scheme(plan: Mapping[str, Any]) -> str:
    if not plan:
        return "split.json " + NOT_RECORDED
    assignment = str(plan.get("assignment", "content_hash")).replace("_", " ")
    return f"{plan.get('scheme', '?')} by {assignment}, seed {plan.get('seed')}"


def _label_issues(records: CardRecords) -> str:
    issues = records.label_issues
    if issues is None:
        return (
            "Label issues: not looked for (no label_issues.csv): the labels of train and val "
            "were not checked."
        )
    if not issues:
        return "Label issues: none found in train and val (label_issues.csv)."
    conflicts = sum(row.get("issue") == CONFLICT for row in issues)
    kinds = (
        f" ({len(issues) - conflicts} by out-of-fold prediction, {conflicts} identical images "
        "under two classes)"
        if conflicts
        else ""
    )
    lines = [
        f"Label issues: {len(issues)} suspected in train and val{kinds} (label_issues.csv); "
        f"the worst {min(len(issues), WORST_LABEL_ISSUES)}:",
        "",
    ]
    rows = []
    for row in issues[:WORST_LABEL_ISSUES]:
        name = row.get("path") or f"digest {str(row.get('digest', ''))[:12]}"
        rows.append(
            (
                _inline(name),
                _inline(row.get("split", "")),
                _inline(row.get("given", "")),
                _inline(row.get("suggested", "")),
                _fixed(_float(row.get("score"))),
            )
        )
    lines += _table(("image", "split", "given", "suggested", "score"), rows)
    return "\n".join(lines)


def _training(records: CardRecords) -> str:
    run = records.run
    params = run.get("params") or {}
    tags = run.get("tags") or {}
    architecture = params.get("train.architecture") or _architecture_of(records.strategy, params)
    rows = [("Strategy", f"`{records.strategy}`"), ("Architecture", _inline(architecture))]
    weights = run.get("backbone_weights") or tags.get("backbone_weights")
    if params.get("backbone.name") or weights not in (None, "none"):
        rows.append(
            (
                "Backbone",
                f"`{_inline(params.get('backbone.name', '?'))}`, weights `{weights}`: "
                f"{describe_weights(weights)}",
            )
        )
    else:
        rows.append(("Backbone", "none (trained from scratch)"))
    boundaries = run.get("phase_boundaries") or []
    kept = kept_epoch(records.history, params, boundaries[-1] if boundaries else 0)
    if kept is not None:
        epoch, total, why = kept
        rows.append(("Epoch kept", f"{epoch} of {total}: {why}"))
    if boundaries:
        rows.append(
            ("Phases", f"a new phase from epoch {', '.join(str(b + 1) for b in boundaries)}")
        )
    rows.append(("Temperature", _temperature(run)))
    rows.append(("Class weights", _class_weights(run, params, records.classes)))
    seconds = run.get("training_seconds")
    rows.append(("Training time", f"{seconds:.1f} s" if seconds is not None else NOT_RECORDED))
    if tags.get("precision"):
        rows.append(("Precision", f"`{tags['precision']}`"))
    lines = ["## Training", "", *_table(("", ""), rows, header=False)]
    changed = changed_params(records.strategy, params)
    lines += ["", "Params that differ from pipeline/config.py's defaults:", ""]
    if changed:
        lines += _table(
            ("param", "value", "default"),
            [(f"`{key}`", _value(value), _value(default)) for key, value, default in changed],
        )
    else:
        lines.append("none.")
    return "\n".join(lines)


def _temperature(run: Mapping[str, Any]) -> str:
    """The temperature inside the saved model, and whether it was fitted (run.json)."""
    temperature = run.get("temperature")
    if temperature is None:
        return NOT_RECORDED + " (trained before calibration existed)"
    before, after = run.get("val_nll_before"), run.get("val_nll_after")
    if before is None or after is None:
        return (
            f"{_fixed(temperature)}: none fitted (train.calibration none, or no val image or "
            "val mistake to fit on)"
        )
    return (
        f"{_fixed(temperature)}, fitted on val (val NLL {_fixed(before)} -> {_fixed(after)}), "
        "inside the served model"
    )


def _architecture_of(strategy: str, params: Mapping[str, Any]) -> str:
    """The network, in words, of a strategy whose run records no architecture name."""
    backbone = params.get("backbone.name", "the backbone")
    head = f"a dense head ({params.get('train.dense_units', '?')} units"
    head += f", dropout {params.get('train.dropout_rate', '?')})"
    if strategy == "feature_extraction":
        return f"{head} on {backbone}'s features ({params.get('train.mode', 'cached')})"
    if strategy == "fine_tune":
        unfreeze = params.get("backbone.unfreeze_from", "auto")
        return f"{backbone} and {head}, fine-tuned from backbone.unfreeze_from {unfreeze}"
    return NOT_RECORDED


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _class_weights(run: Mapping[str, Any], params: Mapping[str, Any], classes: list[str]) -> str:
    setting = params.get("train.class_weight")
    weights = run.get("class_weights")
    prefix = f"`{setting}`" if setting is not None else NOT_RECORDED
    if isinstance(weights, Mapping) and weights:
        shown = ", ".join(
            f"{_class_name(key, classes)} {_fixed(value)}" for key, value in weights.items()
        )
        return f"{prefix}: {shown}"
    if setting is not None and "class_weights" in run:
        return f"{prefix}: unweighted"
    if setting in ("auto", "balanced"):
        return f"{prefix} (the weights it gave are not in run.json)"
    return prefix


def _class_name(key: Any, classes: list[str]) -> str:
    text = str(key)
    if text.isdigit() and int(text) < len(classes):
        return _inline(classes[int(text)])
    return _inline(text)


def _figures(records: CardRecords) -> str:
    evaluation = records.evaluation
    metrics = evaluation.get("metrics") or {}
    images = metrics.get("test_images")
    lines = [
        "## Figures",
        "",
        f"Test split ({images if images is not None else '?'} images), from evaluation.json:",
        "",
    ]
    known = [key for key in METRIC_NAMES if key in metrics]
    others = sorted(
        key
        for key, value in metrics.items()
        if key not in METRIC_NAMES and key != "test_images" and _is_number(value)
    )
    rows = [(METRIC_NAMES.get(key, f"`{key}`"), _fixed(metrics[key])) for key in known + others]
    speed = evaluation.get("images_per_second")
    rows.append(("Inference speed (images/s)", f"{speed:.1f}" if speed is not None else "?"))
    lines += _table(("metric", "value"), rows)
    if not any(metrics.get(key) is not None for key in CALIBRATION_METRICS):
        lines += ["", "Calibration (ECE, Brier, NLL): not measured for this evaluation."]
    lines += ["", "Per class: images per split, and test figures:", "", *_per_class(records)]
    lines += ["", _significance(records.decision)]
    return "\n".join(lines)


def _per_class(records: CardRecords) -> list[str]:
    figures = per_class_figures(records.classes, records.evaluation, records.classification_report)
    splits = [split for split in ("train", "val", "test") if split in records.class_counts]
    rows = []
    for index, name in enumerate(records.classes):
        counts = [str(records.class_counts[split][index]) for split in splits]
        values = (figures or {}).get(name)
        shown = [_fixed(values[key]) for key in _REPORT_FIGURES] if values else ["?"] * 3
        rows.append((_inline(name), *counts, *shown))
    totals = [f"**{sum(records.class_counts[split])}**" for split in splits]
    rows.append(("**all**", *totals, "", "", ""))
    lines = _table(("class", *splits, "precision", "recall", "F1"), rows)
    if figures is None:
        lines += ["", "Per-class test figures: " + NOT_RECORDED + "."]
    return lines


EXPORT_COLUMNS = (
    "export",
    "runtime",
    "top-1 agreement",
    "max difference",
    "accuracy",
    "size / keras",
)


def _exports(records: CardRecords) -> str:
    """The exports the version carries, each with its parity on the test split (empty when
    none were made: a DVC experiment, a version registered before, promote.exports: [])."""
    exports = records.decision.get("exports") or {}
    if not exports:
        return ""
    rows = []
    for name, figures in exports.items():
        if not figures.get("passed"):
            rows.append((_code(name), "refused", "", "", "", _inline(figures.get("refused", ""))))
            continue
        rows.append(
            (
                _code(name),
                f"{figures.get('runtime')} {figures.get('runtime_version')}",
                _fixed(figures.get("top1_agreement")),
                _short(figures.get("max_abs_diff")),
                _fixed(figures.get("export_accuracy")),
                f"{_fixed(figures.get('size_ratio'), 2)}x",
            )
        )
    lines = [
        "## Exports",
        "",
        "Artifacts of the version, each proven on every test image by its own runtime.",
        "",
        *_table(EXPORT_COLUMNS, rows),
    ]
    return "\n".join(lines)


def _significance(decision: Mapping[str, Any]) -> str:
    champion = decision.get("champion") or {}
    criteria = decision.get("criteria") or {}
    overlap = decision.get("overlap") or {}
    verdict = "passed" if decision.get("passed") else "failed"
    scored = overlap.get("scored", "the")
    lines = ["### The gate (promotion.json)", ""]
    against = "with no champion to compare with: the floors alone decided"
    if champion.get("version") is not None and not champion.get("usable", True):
        against = (
            f"champion version {champion['version']} could not be loaded: the floors alone decided"
        )
    elif champion.get("version") is not None:
        against = (
            f"against champion version {champion['version']} (test accuracy "
            f"{_fixed(champion.get('test_accuracy'))} on them)"
        )
    compared = champion.get("version") is not None
    trained = "neither model trained on" if compared else "it never trained on"
    sentence = (
        f"It {verdict} on {scored} test images {trained} "
        f"({decision.get('train_test_overlap')} left out), {against}."
    )
    mcnemar = criteria.get("mcnemar")
    if mcnemar is not None:
        kind = "exact binomial" if mcnemar.get("exact") else "chi-square"
        sentence += (
            f" McNemar's test ({kind}): the challenger alone right on "
            f"{mcnemar.get('challenger_only_correct')}, the champion alone on "
            f"{mcnemar.get('champion_only_correct')}, p = {_p_value(mcnemar.get('p_value'))}."
        )
    lines.append(sentence)
    if criteria:
        gate_rows = []
        for name, criterion in criteria.items():
            observed, threshold = criterion.get("observed"), criterion.get("threshold")
            is_p = name == "mcnemar"
            gate_rows.append(
                (
                    CRITERIA_NAMES.get(name, name.replace("_", " ")),
                    _p_value(observed) if is_p else _fixed(observed),
                    _p_value(threshold) if is_p else _fixed(threshold),
                    "passed" if criterion.get("passed") else "failed",
                )
            )
        lines += ["", *_table(("criterion", "observed", "threshold", "verdict"), gate_rows)]
    return "\n".join(lines)


def _limits(records: CardRecords) -> str:
    bullets = []
    weights = records.run.get("backbone_weights")
    if weights == "random":
        bullets.append(
            "The backbone had random weights: nothing was transferred from pretraining, and "
            "these figures say nothing about transfer learning."
        )
    elif weights == "hed":
        bullets.append(
            "HED edge-detector weights (VGG16 initialised from ImageNet, then trained for edges "
            "on BSDS500), not ImageNet classifier weights: what transferred was learnt for edges."
        )
    test_counts = records.class_counts.get("test")
    if test_counts is not None:
        total, smallest = sum(test_counts), min(test_counts)
        index = list(test_counts).index(smallest)
        if total < SMALL_TEST_IMAGES or smallest < SMALL_CLASS_IMAGES:
            bullets.append(
                f"A small test split: {total} images, {smallest} of class "
                f"`{_inline(records.classes[index])}` (the smallest): one image moves accuracy "
                f"by 1/{total}, that class's recall by 1/{smallest}."
            )
    issues = records.label_issues
    if issues is None:
        bullets.append("The labels were not checked for errors (no label_issues.csv).")
    elif issues:
        bullets.append(
            f"{len(issues)} train and val images are suspected of wrong labels: they may cap "
            "accuracy."
        )
    bullets.append(_drift_line(records))
    metrics = records.evaluation.get("metrics") or {}
    if metrics.get("test_ece") is None:
        bullets.append("Calibration was not measured: a probability of 0.9 may not mean 90%.")
    lines = ["## Limits", "", *(f"- {bullet}" for bullet in bullets)]
    return "\n".join(lines)


def _drift_line(records: CardRecords) -> str:
    if records.version is None:
        return "Drift: not registered (DVC experiment), so never served."
    if records.drift:
        drift = records.drift
        verdict = "drift" if drift.get("drift") else "no drift"
        fired = f" ({drift['fired']})" if drift.get("fired") else ""
        return (
            f"Drift: the last `pipeline monitor` verdict on this version was {verdict}{fired}, "
            f"window {drift.get('window', '?')} ending {drift.get('window_end', '?')}."
        )
    if records.new_version:
        return "Drift: a new version, not yet served: no traffic to judge."
    return "Drift: no `pipeline monitor` verdict recorded for this version."


def _lineage(records: CardRecords) -> str:
    lineage = records.lineage
    rows = [
        ("Git commit", _code(lineage.git_commit)),
        ("dvc.lock SHA-256 (every stage but promote)", _code(lineage.dvc_lock_sha256)),
        ("Training run", _code(lineage.training_run)),
        ("Evaluation run", _code(lineage.evaluation_run)),
        ("Comparison run", _code(lineage.comparison_run)),
        ("Promotion run", _code(lineage.promotion_run)),
    ]
    if lineage.dvc_experiment:
        rows.append(("DVC experiment", _code(lineage.dvc_experiment)))
    lines = ["## Lineage", "", *_table(("", ""), rows, header=False)]
    return "\n".join(lines)


# --- Markdown -----------------------------------------------------------------------------------


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], header: bool = True) -> list[str]:
    """A Markdown table's lines. Without `header` the header row is left blank (a table of
    names and values): Markdown tables need one."""
    shown = list(columns) if header else [" "] * len(columns)
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _fixed(value: Any, digits: int = 4) -> str:
    """A figure as the logs print it: 4 decimals; missing ones say so."""
    if value is None:
        return NOT_RECORDED
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _short(value: Any) -> str:
    """A small difference in two significant figures (3e-06); missing ones say so."""
    return NOT_RECORDED if value is None else f"{float(value):.2g}"


def _p_value(value: Any) -> str:
    return NOT_RECORDED if value is None else f"{float(value):.4g}"


def _value(value: Any) -> str:
    if value is _REQUIRED:
        return "(no default: always set)"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return f"`{_inline(value)}`"


def _code(value: Any) -> str:
    return f"`{_inline(value)}`" if value else NOT_RECORDED


def _inline(value: Any) -> str:
    """Text safe inside a Markdown table cell: one line, pipes and backticks escaped."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")
