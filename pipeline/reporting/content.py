"""What the HTML report shows, and reading it from a run's outputs.

The dataclasses are the report's content: `render_report` (html.py) turns a `ReportContent`
into a page. `collect_strategy_figures` and `read_classification_report` read one strategy's
report folder by the file names the evaluate stage writes (pipeline/evaluation/layout.py), so
the report stage needs neither Keras nor MLflow. `read_promotion` reads the promote stage's
decision (reports/promotion.json) for the page's first screen.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.evaluation.label_issues import COLUMNS as LABEL_ISSUE_COLUMNS
from pipeline.evaluation.label_issues import CONFLICT, SCORED_SPLITS, unescape_cell
from pipeline.evaluation.layout import (
    ACTIVATIONS_DIR,
    AUGMENTED_PNG,
    CLASSIFICATION_REPORT,
    CONFUSION_NORMALIZED_PNG,
    CONFUSION_PNG,
    CURVES_PNG,
    FILTERS_PNG,
    GRADCAM_PNG,
    MISTAKES_PNG,
    MOSAIC_PNG,
    PATTERNS_PNG,
    PR_PNG,
    RELIABILITY_PNG,
    ROC_PNG,
)
from pipeline.store import ImageSplit

# The figure groups of a strategy section, in page order: (group title, ((file, caption), ...)).
# ACTIVATIONS_DIR stands for every PNG in that folder, in name order.
FIGURE_GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Confusion matrices",
        (
            (CONFUSION_PNG, "Counts: rows are true classes, columns predicted ones"),
            (CONFUSION_NORMALIZED_PNG, "Row-normalized: the diagonal is each class's recall"),
        ),
    ),
    ("Training curves", ((CURVES_PNG, "Loss and accuracy per epoch, training and validation"),)),
    (
        "Calibration",
        (
            (
                RELIABILITY_PNG,
                "Reliability on the test split: accuracy per confidence bin, before and after "
                "temperature scaling (the diagonal is perfect calibration)",
            ),
        ),
    ),
    (
        "Per-class",
        (
            (ROC_PNG, "ROC curve on the test split"),
            (PR_PNG, "Precision-recall curve on the test split"),
        ),
    ),
    (
        "Grad-CAM",
        ((GRADCAM_PNG, "Where the network looked for its prediction (mistakes first)"),),
    ),
    (
        "Inside the network",
        (
            (FILTERS_PNG, "First-layer filters, before and after training"),
            (ACTIVATIONS_DIR, "Activations"),
            (PATTERNS_PNG, "Input patterns that excite chosen filters most"),
        ),
    ),
    (
        "Predictions and mistakes",
        (
            (MOSAIC_PNG, "Test images: true / predicted (confidence)"),
            (MISTAKES_PNG, "The most confident mistakes"),
        ),
    ),
    ("Augmentation", ((AUGMENTED_PNG, "Augmented versions of one training image"),)),
)


@dataclass(frozen=True)
class DatasetCard:
    """What the report says about the data: names, counts, examples and the data gate."""

    name: str
    class_names: Sequence[str]
    counts: Mapping[str, Mapping[str, int]]
    """Split ("train", "val", "test") -> class name -> number of images."""
    examples: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Class name -> uint8 images (n, H, W, C), C 1 or 3 (or (n, H, W) gray)."""
    validation: Mapping[str, Any] | None = None
    """The data gate's summary (reports/validation/summary.json), or None when there is none."""
    near_duplicate_distance: int | None = None
    """`validate.near_duplicate_distance`: how many dHash bits make a held-out image a near
    copy of a train image (the summary counts them, without the distance); None: unknown."""


@dataclass(frozen=True)
class Figure:
    """One figure file of a strategy's report folder, with the caption shown under it."""

    caption: str
    path: Path


@dataclass(frozen=True)
class FigureGroup:
    """Figures shown together under one heading of a strategy's section."""

    title: str
    figures: tuple[Figure, ...]


@dataclass(frozen=True)
class StrategySection:
    """One strategy's part of the page: its run, its metrics, its per-class table, figures."""

    name: str
    run_id: str | None = None
    run_url: str | None = None
    """A link to the run in the MLflow UI; else built from the report's `mlflow_url` (and
    `experiment_id`, when given); else the run id is shown as text."""
    experiment_id: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    classification_report: pd.DataFrame | None = None
    """Precision, recall, f1 and support per class (index = class), average rows last."""
    figures: Sequence[FigureGroup] = ()
    backbone_weights: str | None = None
    """The weights its backbone had, as its run records them (imagenet, hed, random, file;
    None or "none" for a strategy without a backbone)."""


@dataclass(frozen=True)
class LabelIssueExample:
    """One suspected label error shown in the gallery: its file, labels and image."""

    path: str
    split: str
    given: str
    suggested: str
    score: float
    conflict: bool = False
    """The same image is stored under another class too (not a model's opinion)."""
    image: np.ndarray | None = None
    """uint8 (H, W, C) as the split stores it; None where the store no longer holds it."""


@dataclass(frozen=True)
class LabelIssuesCard:
    """The label-issues stage's findings: how many, where, and the worst few with images."""

    count: int
    """Rows of label_issues.csv: suspects and images under two classes."""
    conflicts: int
    checked: int
    """Train and val images checked."""
    examples: Sequence[LabelIssueExample]
    csv_name: str
    """Where the full list is (label_issues.csv's path as the stage was given it)."""
    folder: bool = True
    """The data is the user's image folder (paths are files to move), not a bundled dataset."""


@dataclass(frozen=True)
class ReportContent:
    """Everything the page shows; `render_report` is a pure function of it."""

    title: str
    generated: datetime | str
    """When the report was made; passed in so that the page is a pure function of its content."""
    dataset: DatasetCard
    comparison: pd.DataFrame
    """One row per strategy (index = strategy name), the COMPARISON_COLUMNS."""
    significance: pd.DataFrame
    """Pairwise McNemar (pipeline.evaluation.significance.pairwise_mcnemar's columns)."""
    alpha: float
    strategies: Sequence[StrategySection]
    mlflow_url: str | None = None
    """The MLflow UI's base address, e.g. http://127.0.0.1:5000; None: no links."""
    backbone: str | None = None
    """The backbone of the strategies that use one (`backbone.name`), for the headline."""
    label_issues: LabelIssuesCard | None = None
    """Suspected label errors of train and val; None: the section is left out."""
    promotion: Mapping[str, Any] | None = None
    """The promote stage's decision (reports/promotion.json, see `read_promotion`); None: the
    page says the run was not promoted yet."""
    promotion_file: str = "reports/promotion.json"
    """Where the decision is (or would be), as the report stage was given it."""


# --- reading a run's outputs ------------------------------------------------------------------


def collect_strategy_figures(report_dir: Path) -> list[FigureGroup]:
    """The figures of one strategy's report folder, grouped as FIGURE_GROUPS; files that are
    not there are left out, and so is a group with none."""
    report_dir = Path(report_dir)
    groups = []
    for title, entries in FIGURE_GROUPS:
        figures: list[Figure] = []
        for name, caption in entries:
            if name == ACTIVATIONS_DIR:
                folder = report_dir / ACTIVATIONS_DIR
                paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
                figures += [Figure(f"{caption}: {_layer_caption(path)}", path) for path in paths]
            elif (report_dir / name).is_file():
                figures.append(Figure(caption, report_dir / name))
        if figures:
            groups.append(FigureGroup(title, tuple(figures)))
    return groups


def read_classification_report(report_dir: Path) -> pd.DataFrame | None:
    """classification_report.csv of a strategy's report folder (index = class), or None."""
    path = Path(report_dir) / CLASSIFICATION_REPORT
    if not path.is_file():
        return None
    # Class names are text even when they look like numbers ("0" .. "9" for digits).
    return pd.read_csv(path, index_col=0, dtype={0: str}, keep_default_na=False)


def build_dataset_card(
    name: str,
    splits: Mapping[str, ImageSplit],
    validation: Mapping[str, Any] | None = None,
    examples_per_class: int = 6,
    example_split: str = "train",
    near_duplicate_distance: int | None = None,
) -> DatasetCard:
    """A DatasetCard from the prepared splits: counts per split and class (from the labels
    alone), and the first `examples_per_class` images of each class of `example_split`
    (deterministic), the only images read. `near_duplicate_distance` is the data gate's
    `validate.near_duplicate_distance`, which its warnings are explained with."""
    if not splits:
        raise ValueError("splits is empty: the dataset card needs the prepared splits")
    classes = list(next(iter(splits.values())).classes)
    counts = {
        split_name: {
            class_name: int(np.sum(split.y == index)) for index, class_name in enumerate(classes)
        }
        for split_name, split in splits.items()
    }
    examples: dict[str, np.ndarray] = {}
    source = splits.get(example_split)
    if source is not None and examples_per_class > 0:
        chosen = {
            class_name: np.flatnonzero(source.y == index)[:examples_per_class]
            for index, class_name in enumerate(classes)
        }
        chosen = {class_name: rows for class_name, rows in chosen.items() if len(rows)}
        if chosen:
            # One read of a few dozen rows, not one per class.
            rows = np.concatenate(list(chosen.values()))
            images = source.read(rows)
            start = 0
            for class_name, class_rows in chosen.items():
                examples[class_name] = images[start : start + len(class_rows)]
                start += len(class_rows)
    return DatasetCard(name, classes, counts, examples, validation, near_duplicate_distance)


def read_label_issues(
    path: Path,
    splits: Mapping[str, ImageSplit],
    limit: int,
    folder: bool = True,
) -> LabelIssuesCard:
    """label_issues.csv's counts and its first `limit` rows, each with its image read from
    the train or val split by digest (one read per split; never the test split)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            missing = [
                name for name in LABEL_ISSUE_COLUMNS if name not in (reader.fieldnames or [])
            ]
            if missing:
                raise DataError(
                    f"{path} lacks the column(s) {', '.join(missing)}: rerun the label_issues "
                    "stage (dvc repro label_issues)"
                )
            rows = list(reader)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the label_issues stage first") from None
    chosen = rows[: max(0, int(limit))]
    images: dict[int, np.ndarray] = {}
    for name in SCORED_SPLITS:
        split = splits.get(name)
        wanted = [i for i, row in enumerate(chosen) if row["split"] == name]
        if split is None or not wanted:
            continue
        # The first stored copy of each digest: copies of one digest are the same pixels.
        digests = np.asarray(split.digests()).astype(str)
        first = {digest: position for position, digest in reversed(list(enumerate(digests)))}
        found = [(i, first[chosen[i]["digest"]]) for i in wanted if chosen[i]["digest"] in first]
        if found:
            pixels = split.read(np.array([position for _, position in found], dtype=np.int64))
            images.update({i: pixels[k] for k, (i, _) in enumerate(found)})
    examples = [
        LabelIssueExample(
            path=unescape_cell(row["path"]),
            split=row["split"],
            given=unescape_cell(row["given"]),
            suggested=unescape_cell(row["suggested"]),
            score=_number(row["score"]),
            conflict=row["issue"] == CONFLICT,
            image=images.get(i),
        )
        for i, row in enumerate(chosen)
    ]
    checked = sum(len(splits[name]) for name in SCORED_SPLITS if name in splits)
    conflicts = sum(row["issue"] == CONFLICT for row in rows)
    return LabelIssuesCard(len(rows), conflicts, checked, examples, str(path), folder)


PROMOTION_KEYS = ("strategy", "passed", "registered", "challenger")
"""What the first screen cannot do without in promotion.json (pipeline.promotion writes them)."""


def read_promotion(path: Path) -> dict | None:
    """promotion.json as the promote stage writes it; None when it is not there (a report
    rendered before the promote stage, or without it). A file that is not such a record is an
    error naming what it lacks."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} is not valid JSON ({error}): rerun the promote stage (dvc repro promote)"
        ) from None
    if not isinstance(record, dict):
        raise DataError(
            f"{path} holds a {type(record).__name__}, not the promote stage's decision (a JSON "
            "object): rerun the promote stage (dvc repro promote)"
        )
    missing = [key for key in PROMOTION_KEYS if key not in record]
    if missing or not isinstance(record["challenger"], dict):
        lacking = ", ".join(missing) or "challenger as an object"
        raise DataError(
            f"{path} lacks {lacking}: it is not a decision of this pipeline's promote stage; "
            "rerun it (dvc repro promote)"
        )
    return record


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def mlflow_run_url(base: str, run_id: str, experiment_id: str | None = None) -> str:
    """The MLflow UI's page of a run: with the experiment id when known, else the UI's
    direct route, which finds the experiment itself."""
    base = base.rstrip("/")
    run = quote(str(run_id), safe="")
    if experiment_id is not None:
        return f"{base}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{run}"
    return f"{base}/#/runs/{run}"


def _layer_caption(path: Path) -> str:
    """ "03_conv2d_1" -> "conv2d_1": the number only orders the files."""
    return re.sub(r"^\d+_", "", path.stem) or path.stem
