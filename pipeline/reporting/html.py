"""The pipeline's HTML report: one self-contained page comparing the strategies of one run.

`render_report` turns a `ReportContent` (the dataset card, the comparison and significance
tables, one section per strategy) into an HTML string; `write_report` writes it atomically.
The page has no network references at all: CSS is inline, every image is embedded as a
base64 `data:` URI, so it opens the same from disk, from a CI artifact or from MLflow, where
it is logged as a single file. Everything that comes from data (class names are users'
folder names) is escaped by the template engine's autoescaping.

Rendering is pure: the timestamp is passed in and figures are read from the paths given, so
equal content gives an equal page. `collect_strategy_figures` and
`read_classification_report` read one strategy's report folder by the file names below,
which are those the evaluate stage writes (pipeline/evaluation/report.py).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import numpy as np
import pandas as pd
from PIL import Image

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
    ROC_PNG,
)
from pipeline.store import Split, atomic_write

logger = logging.getLogger(__name__)

REPORT_FILE = "index.html"

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

# Groups whose figures are wide mosaics or 2 x 2 panels: one per row, so their small titles
# stay readable; the others (confusion matrices, curves, activation grids) share rows.
WIDE_GROUPS = frozenset({"Training curves", "Grad-CAM", "Predictions and mistakes", "Augmentation"})

DATA_FILES = ("template.html.j2",)
"""Read at run time: part of the report stage's code for DVC (see pipeline/wiring.py)."""
TEMPLATE = DATA_FILES[0]


# Example images smaller than this (pixels, longer side) are enlarged by a whole factor without
# blurring, so that 8 x 8 digits stay readable; larger ones are shrunk to at most the maximum,
# which keeps a page of many classes small.
MIN_EXAMPLE_PIXELS = 64
MAX_EXAMPLE_PIXELS = 128

_AVERAGE_ROWS = ("macro avg", "weighted avg", "accuracy", "micro avg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DASH = "\u2014"


# --- the content ------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Figure:
    caption: str
    path: Path


@dataclass(frozen=True)
class FigureGroup:
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


@dataclass(frozen=True)
class ReportContent:
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
    splits: Mapping[str, Split],
    validation: Mapping[str, Any] | None = None,
    examples_per_class: int = 6,
    example_split: str = "train",
) -> DatasetCard:
    """A DatasetCard from the prepared splits: counts per split and class, and the first
    `examples_per_class` images of each class of `example_split` (deterministic)."""
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
        for index, class_name in enumerate(classes):
            rows = np.flatnonzero(source.y == index)[:examples_per_class]
            if len(rows):
                examples[class_name] = source.x[rows]
    return DatasetCard(name, classes, counts, examples, validation)


def mlflow_run_url(base: str, run_id: str, experiment_id: str | None = None) -> str:
    """The MLflow UI's page of a run: with the experiment id when known, else the UI's
    direct route, which finds the experiment itself."""
    base = base.rstrip("/")
    run = quote(str(run_id), safe="")
    if experiment_id is not None:
        return f"{base}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{run}"
    return f"{base}/#/runs/{run}"


# --- rendering --------------------------------------------------------------------------------


def render_report(content: ReportContent) -> str:
    """The report as one self-contained HTML page (a pure function of `content`)."""
    strategies = _strategy_views(content)
    footnotes, markers = _significance_footnotes(content.significance, content.alpha)
    comparison = _comparison_view(content.comparison, markers)
    anchors = {strategy["name"]: strategy["anchor"] for strategy in strategies}
    for row in comparison["rows"]:
        row["anchor"] = anchors.get(row["name"])
    page = {
        "title": content.title,
        "generated": _format_time(content.generated),
        "dataset": _dataset_view(content.dataset),
        "comparison": comparison,
        "footnotes": footnotes,
        "significance": _significance_view(content.significance, content.alpha),
        "alpha": _format_alpha(content.alpha),
        "strategies": strategies,
        "highlights": _highlights(content),
    }
    return _environment().get_template(TEMPLATE).render(**page)


def write_report(content: ReportContent, path: Path) -> Path:
    """Render the report and write it to `path` atomically (UTF-8, whatever the locale)."""
    path = Path(path)
    text = render_report(content)
    with atomic_write(path, "wb") as stream:
        stream.write(text.encode("utf-8"))
    return path


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# --- views: plain dicts of already formatted strings, for the template -----------------------


def _dataset_view(card: DatasetCard) -> dict:
    splits = list(card.counts)
    classes = [str(name) for name in card.class_names]
    rows = []
    totals = {split: 0 for split in splits}
    class_totals = []
    for name in classes:
        values = [int(card.counts[split].get(name, 0)) for split in splits]
        for split, value in zip(splits, values, strict=True):
            totals[split] += value
        class_totals.append(sum(values))
        rows.append({"name": name, "counts": [_integer(value) for value in values]})
    largest = max(class_totals, default=0) or 1
    for row, total in zip(rows, class_totals, strict=True):
        row["total"] = _integer(total)
        row["bar"] = _percent(total / largest)
    examples = []
    for name in classes:
        images = card.examples.get(name)
        if images is None:
            continue
        examples.append(
            {"name": name, "images": [_embed_array(image, name) for image in _as_batch(images)]}
        )
    return {
        "name": card.name,
        "class_count": len(classes),
        "image_count": _integer(sum(totals.values())),
        "splits": splits,
        "rows": rows,
        "totals": [_integer(totals[split]) for split in splits],
        "total": _integer(sum(totals.values())),
        "examples": examples,
        "gate": _gate_view(card.validation),
    }


def _gate_view(summary: Mapping[str, Any] | None) -> dict | None:
    """The data gate's verdict, failures and warnings, from its summary.json."""
    if summary is None:
        return None
    failed = int(summary.get("failures", len(summary.get("failed_expectations", []))))
    passed = bool(summary.get("passed", failed == 0))
    total = summary.get("expectations")
    if total is not None:
        counted = f"{_integer(int(total) - failed)} of {_integer(total)} expectations passed"
    elif failed == 0:
        counted = "All expectations met"
    else:
        counted = f"{_integer(failed)} failed expectation{'s' if failed != 1 else ''}"
    facts = []
    if "rows" in summary:
        facts.append(("Images checked", _integer(summary["rows"])))
    for split, count in (summary.get("rows_per_split") or {}).items():
        facts.append((f"  {split}", _integer(count)))
    warnings = [
        (label, summary[key])
        for key, label in (
            ("near_duplicates", "near-duplicate images"),
            ("blank_images", "blank images"),
            ("exact_duplicates_across_splits", "exact duplicates across splits"),
        )
        if key in summary
    ]
    drift = summary.get("drift_max_ks")
    return {
        "passed": passed,
        "counted": counted,
        "facts": facts,
        "warnings": [
            {"label": label, "count": _integer(count), "flag": bool(count)}
            for label, count in warnings
        ],
        "warning_total": _integer(summary.get("warnings", sum(int(c) for _, c in warnings))),
        "drift": None if drift is None else f"{float(drift):.3f}",
        "failed": [str(line) for line in summary.get("failed_expectations", [])],
    }


def _comparison_view(frame: pd.DataFrame, markers: Mapping[str, list[int]]) -> dict:
    """Formatted rows of the comparison table, with bars, the best accuracy and footnote
    markers on the accuracy of each strategy significantly better than another."""
    accuracy = _column(frame, "test_accuracy")
    finite = [value for value in accuracy if _is_number(value)]
    best = max(finite) if finite else None
    seconds = _column(frame, "training_seconds")
    throughput = _column(frame, "images_per_second")
    most_seconds = max((v for v in seconds if _is_number(v)), default=0.0) or 1.0
    most_throughput = max((v for v in throughput if _is_number(v)), default=0.0) or 1.0
    rows = []
    for position, name in enumerate(frame.index):
        name = str(name)

        def value(column: str, position: int = position):
            return _column(frame, column)[position]

        rows.append(
            {
                "name": name,
                "anchor": None,
                "best": best is not None and accuracy[position] == best,
                "accuracy": _decimal(value("test_accuracy"), 4),
                "accuracy_bar": _bar(value("test_accuracy"), 1.0),
                "markers": markers.get(name, []),
                "macro_f1": _decimal(value("test_macro_f1"), 4),
                "loss": _decimal(value("test_loss"), 4),
                "total_params": _integer(value("total_params")),
                "trainable_params": _integer(value("trainable_params")),
                "seconds": _decimal(value("training_seconds"), 1),
                "seconds_bar": _bar(value("training_seconds"), most_seconds),
                "throughput": _decimal(value("images_per_second"), 0),
                "throughput_bar": _bar(value("images_per_second"), most_throughput),
            }
        )
    return {"rows": rows, "best": None if best is None else _decimal(best, 4)}


def _significance_footnotes(
    frame: pd.DataFrame, alpha: float
) -> tuple[list[dict], dict[str, list[int]]]:
    """One footnote per significant pair ("A is significantly better than B (McNemar p=..)"),
    and the footnote numbers to mark on each better strategy's accuracy."""
    footnotes: list[dict] = []
    markers: dict[str, list[int]] = {}
    for row in _significance_rows(frame):
        if not row["significant"] or not row["better"]:
            continue
        worse = row["model_b"] if row["better"] == row["model_a"] else row["model_a"]
        number = len(footnotes) + 1
        footnotes.append(
            {
                "number": number,
                "better": row["better"],
                "worse": worse,
                "p": _p_equation(row["p_value"]),
                "alpha": _format_alpha(alpha),
            }
        )
        markers.setdefault(row["better"], []).append(number)
    return footnotes, markers


def _significance_view(frame: pd.DataFrame, alpha: float) -> list[dict]:
    rows = []
    for row in _significance_rows(frame):
        rows.append(
            {
                "model_a": row["model_a"],
                "model_b": row["model_b"],
                "a_only": _integer(row["a_only_correct"]),
                "b_only": _integer(row["b_only_correct"]),
                "statistic": _decimal(row["statistic"], 3),
                "p": _format_p(row["p_value"]),
                "test": "exact" if row["exact"] else "chi-square",
                "significant": row["significant"],
                "better": row["better"],
            }
        )
    return rows


def _significance_rows(frame: pd.DataFrame) -> list[dict]:
    """The rows of a significance table as plain values. `significant` and `better` are taken
    as given (pairwise_mcnemar decided them at its alpha); `better` read back from a CSV is NaN
    where it was "", and becomes "" again."""
    rows = []
    for record in frame.to_dict("records"):
        better = record.get("better")
        better = "" if better is None or _is_nan(better) else str(better)
        rows.append(
            {
                "model_a": str(record.get("model_a", "")),
                "model_b": str(record.get("model_b", "")),
                "a_only_correct": record.get("a_only_correct"),
                "b_only_correct": record.get("b_only_correct"),
                "statistic": record.get("statistic"),
                "p_value": record.get("p_value"),
                "exact": _truthy(record.get("exact")),
                "significant": _truthy(record.get("significant")),
                "better": better,
            }
        )
    return rows


def _strategy_views(content: ReportContent) -> list[dict]:
    used: set[str] = {"top", "dataset", "comparison", "significance"}
    views = []
    for section in content.strategies:
        url = _safe_url(section.run_url)
        if url is None and section.run_id and content.mlflow_url:
            url = _safe_url(
                mlflow_run_url(content.mlflow_url, section.run_id, section.experiment_id)
            )
        groups = []
        for group in section.figures:
            figures = [
                embedded
                for embedded in (_embed_figure(figure) for figure in group.figures)
                if embedded is not None
            ]
            if figures:
                groups.append(
                    {"title": group.title, "figures": figures, "wide": group.title in WIDE_GROUPS}
                )
        views.append(
            {
                "name": section.name,
                "anchor": _anchor(f"strategy-{section.name}", used),
                "run_id": section.run_id,
                "run_url": url,
                "metrics": [
                    {"name": str(key), "value": _metric(value)}
                    for key, value in section.metrics.items()
                ],
                "report": _report_view(section.classification_report),
                "groups": groups,
            }
        )
    return views


def _report_view(frame: pd.DataFrame | None) -> dict | None:
    """The classification report's rows, with a tint from red (0) to green (1) on the
    precision, recall and f1 of each class, so the weak classes stand out."""
    if frame is None or frame.empty:
        return None
    scores = [column for column in ("precision", "recall", "f1") if column in frame.columns]
    rows = []
    for name, record in frame.iterrows():
        cells = [
            {
                "value": _decimal(record[column], 4),
                "tint": None if str(name) in _AVERAGE_ROWS else _tint(record[column]),
            }
            for column in scores
        ]
        support = record["support"] if "support" in frame.columns else None
        rows.append(
            {
                "name": str(name),
                "average": str(name) in _AVERAGE_ROWS,
                "cells": cells,
                "support": _integer(support),
            }
        )
    return {"columns": scores, "rows": rows, "has_support": "support" in frame.columns}


def _highlights(content: ReportContent) -> list[dict]:
    """The headline cards: the best accuracy, the fastest model, the smallest trainable part
    and the data gate's verdict."""
    frame = content.comparison
    cards = []

    def leader(column: str, pick) -> tuple[str, float] | None:
        values = [
            (str(name), value)
            for name, value in zip(frame.index, _column(frame, column), strict=True)
            if _is_number(value)
        ]
        return pick(values, key=lambda item: item[1]) if values else None

    best = leader("test_accuracy", max)
    if best:
        cards.append({"label": "Best test accuracy", "value": _decimal(best[1], 4), "who": best[0]})
    fastest = leader("images_per_second", max)
    if fastest:
        cards.append(
            {
                "label": "Fastest inference",
                "value": f"{_decimal(fastest[1], 0)} img/s",
                "who": fastest[0],
            }
        )
    smallest = leader("trainable_params", min)
    if smallest:
        cards.append(
            {
                "label": "Fewest trained parameters",
                "value": _integer(smallest[1]),
                "who": smallest[0],
            }
        )
    gate = content.dataset.validation
    if gate is not None:
        view = _gate_view(gate)
        cards.append(
            {
                "label": "Data gate",
                "value": "passed" if view["passed"] else "FAILED",
                "who": f"{view['counted']}; {view['warning_total']} warning(s)",
                "state": "good" if view["passed"] else "bad",
            }
        )
    return cards


# --- images -----------------------------------------------------------------------------------


def _embed_figure(figure: Figure) -> dict | None:
    """A figure file as a PNG data URI with its size, or None (and a warning) when it is
    missing or not an image."""
    path = Path(figure.path)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if not data.startswith(_PNG_SIGNATURE):
                data = _png_bytes(image)
    except FileNotFoundError:
        logger.info("report: %s is not there; left out", path)
        return None
    except (OSError, ValueError) as exc:
        logger.warning("report: %s is not a readable image (%s); left out", path, exc)
        return None
    return {"caption": figure.caption, "src": _data_uri(data), "width": width, "height": height}


def _embed_array(image: np.ndarray, name: str) -> dict:
    """One uint8 example image as a PNG data URI: small images enlarged by a whole factor
    (nearest neighbour), large ones shrunk."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"examples[{name!r}] must be uint8 images, got {array.dtype}: pass the stored "
            "split's pixels, not preprocessed ones"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"examples[{name!r}] images must be (H, W), (H, W, 1) or (H, W, 3), got {array.shape}"
        )
    picture = Image.fromarray(array)
    longest = max(picture.size)
    if longest < MIN_EXAMPLE_PIXELS:
        factor = math.ceil(MIN_EXAMPLE_PIXELS / longest)
        picture = picture.resize(
            (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
        )
    elif longest > MAX_EXAMPLE_PIXELS:
        scale = MAX_EXAMPLE_PIXELS / longest
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
            Image.Resampling.LANCZOS,
        )
    return {
        "src": _data_uri(_png_bytes(picture)),
        "width": picture.width,
        "height": picture.height,
        # Shown at a fixed thumbnail size: enlarged without blurring only where it is small.
        "pixelated": longest < MIN_EXAMPLE_PIXELS,
    }


def _as_batch(images: np.ndarray) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[-1] not in (1, 3):
        return array  # (n, H, W) gray
    if array.ndim == 3:
        return array[None]  # one (H, W, C) image
    return array


def _png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- formatting -------------------------------------------------------------------------------


def _column(frame: pd.DataFrame, column: str) -> list:
    if column not in frame.columns:
        return [None] * len(frame)
    return [None if _is_nan(value) else value for value in frame[column].tolist()]


def _is_nan(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) and not _is_nan(value)


def _decimal(value: Any, places: int) -> str:
    return f"{float(value):,.{places}f}" if _is_number(value) else _DASH


def _integer(value: Any) -> str:
    return f"{round(float(value)):,}" if _is_number(value) else _DASH


def _metric(value: Any) -> str:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return _integer(value)
    return _decimal(value, 4) if _is_number(value) else str(value)


def _bar(value: Any, largest: float) -> str | None:
    if not _is_number(value) or largest <= 0:
        return None
    return _percent(float(value) / largest)


def _percent(fraction: float) -> str:
    return f"{max(0.0, min(1.0, fraction)) * 100:.1f}%"


def _tint(value: Any) -> str | None:
    """A light background from red (0.5 and below) through yellow (0.75) to green (1): the
    range where classifiers' per-class scores differ. Text stays dark on it."""
    if not _is_number(value):
        return None
    hue = round(120 * max(0.0, min(1.0, (float(value) - 0.5) / 0.5)))
    return f"hsl({hue}, 70%, 90%)"


def _format_p(value: Any) -> str:
    if not _is_number(value):
        return _DASH
    value = float(value)
    if value < 0.001:
        return "<0.001"
    return f"{value:.3f}"


def _p_equation(value: Any) -> str:
    """ "p=0.016", or "p<0.001" for a p-value too small to print."""
    text = _format_p(value)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def _format_alpha(alpha: float) -> str:
    return f"{float(alpha):g}"


def _format_time(value: datetime | str) -> str:
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M")
        zone = value.strftime("%Z")
        return f"{text} {zone}" if zone else text
    return str(value)


def _layer_caption(path: Path) -> str:
    """ "03_conv2d_1" -> "conv2d_1": the number only orders the files."""
    return re.sub(r"^\d+_", "", path.stem) or path.stem


def _anchor(text: str, used: set[str]) -> str:
    """An id made of [a-z0-9-] only, unique on the page."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    anchor, number = base, 2
    while anchor in used:
        anchor, number = f"{base}-{number}", number + 1
    used.add(anchor)
    return anchor


def _safe_url(url: str | None) -> str | None:
    """Only http(s) links: a `javascript:` or `data:` address from data never becomes one."""
    if not url:
        return None
    return url if re.match(r"^https?://", url.strip(), re.IGNORECASE) else None
