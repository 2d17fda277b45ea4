"""The template's views of a report's content: plain dicts of already formatted strings, so
the template only lays them out (and escapes them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipeline.reporting import formatting
from pipeline.reporting.content import (
    DatasetCard,
    LabelIssuesCard,
    ReportContent,
    mlflow_run_url,
)
from pipeline.reporting.images import embed_examples, embed_figure, embed_image
from pipeline.reporting.weights import random_caveat, strategy_weights_line

# Groups whose figures are wide mosaics or 2 x 2 panels: one per row, so their small titles
# stay readable; the others (confusion matrices, curves, activation grids) share rows.
WIDE_GROUPS = frozenset({"Training curves", "Grad-CAM", "Predictions and mistakes", "Augmentation"})

_AVERAGE_ROWS = ("macro avg", "weighted avg", "accuracy", "micro avg")


def dataset_view(card: DatasetCard) -> dict:
    """The dataset card: counts per class and split with bars, embedded examples, the gate."""
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
        rows.append({"name": name, "counts": [formatting.integer(value) for value in values]})
    largest = max(class_totals, default=0) or 1
    for row, total in zip(rows, class_totals, strict=True):
        row["total"] = formatting.integer(total)
        row["bar"] = formatting.percent(total / largest)
    examples = []
    for name in classes:
        images = card.examples.get(name)
        if images is None:
            continue
        examples.append({"name": name, "images": embed_examples(images, name)})
    return {
        "name": card.name,
        "class_count": len(classes),
        "image_count": formatting.integer(sum(totals.values())),
        "splits": splits,
        "rows": rows,
        "totals": [formatting.integer(totals[split]) for split in splits],
        "total": formatting.integer(sum(totals.values())),
        "examples": examples,
        "gate": gate_view(card.validation),
    }


def gate_view(summary: Mapping[str, Any] | None) -> dict | None:
    """The data gate's verdict, failures and warnings, from its summary.json."""
    if summary is None:
        return None
    failed = int(summary.get("failures", len(summary.get("failed_expectations", []))))
    passed = bool(summary.get("passed", failed == 0))
    total = summary.get("expectations")
    if total is not None:
        passed_count = formatting.integer(int(total) - failed)
        counted = f"{passed_count} of {formatting.integer(total)} expectations passed"
    elif failed == 0:
        counted = "All expectations met"
    else:
        counted = f"{formatting.integer(failed)} failed expectation{'s' if failed != 1 else ''}"
    facts = []
    if "rows" in summary:
        facts.append(("Images checked", formatting.integer(summary["rows"])))
    for split, count in (summary.get("rows_per_split") or {}).items():
        facts.append((f"  {split}", formatting.integer(count)))
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
            {"label": label, "count": formatting.integer(count), "flag": bool(count)}
            for label, count in warnings
        ],
        "warning_total": formatting.integer(
            summary.get("warnings", sum(int(c) for _, c in warnings))
        ),
        "drift": None if drift is None else f"{float(drift):.3f}",
        "failed": [str(line) for line in summary.get("failed_expectations", [])],
    }


def label_issues_view(card: LabelIssuesCard | None) -> dict | None:
    """The label-issues section: counts, what to do, and the gallery of the worst, each
    captioned `given -> suggested` with its file; None when there is no card."""
    if card is None:
        return None
    examples = []
    for example in card.examples:
        image = None
        if example.image is not None:
            image = embed_image(example.image, f"label issue {example.path or example.split}")
        examples.append(
            {
                "image": image,
                "given": example.given,
                "suggested": example.suggested,
                "path": example.path,
                "split": example.split,
                # The out-of-fold probability of the given label: often far below 0.001.
                "score": "<0.001"
                if formatting.is_number(example.score) and 0 <= example.score < 0.001
                else formatting.decimal(example.score, 3),
                "conflict": example.conflict,
            }
        )
    suspects = card.count - card.conflicts
    return {
        "count": formatting.integer(card.count),
        "none": card.count == 0,
        "suspects": formatting.integer(suspects),
        "conflicts": formatting.integer(card.conflicts),
        "has_conflicts": card.conflicts > 0,
        "checked": formatting.integer(card.checked),
        "shown": len(examples),
        "examples": examples,
        "csv": card.csv_name,
        "folder": card.folder,
    }


def comparison_view(frame: pd.DataFrame, markers: Mapping[str, list[int]]) -> dict:
    """Formatted rows of the comparison table, with bars, the best accuracy and footnote
    markers on the accuracy of each strategy significantly better than another."""
    accuracy = formatting.column_values(frame, "test_accuracy")
    finite = [value for value in accuracy if formatting.is_number(value)]
    best = max(finite) if finite else None
    seconds = formatting.column_values(frame, "training_seconds")
    throughput = formatting.column_values(frame, "images_per_second")
    most_seconds = max((v for v in seconds if formatting.is_number(v)), default=0.0) or 1.0
    most_throughput = max((v for v in throughput if formatting.is_number(v)), default=0.0) or 1.0
    rows = []
    for position, name in enumerate(frame.index):
        name = str(name)

        def value(column: str, position: int = position):
            return formatting.column_values(frame, column)[position]

        rows.append(
            {
                "name": name,
                "anchor": None,
                "best": best is not None and accuracy[position] == best,
                "accuracy": formatting.decimal(value("test_accuracy"), 4),
                "accuracy_bar": formatting.bar(value("test_accuracy"), 1.0),
                "markers": markers.get(name, []),
                "macro_f1": formatting.decimal(value("test_macro_f1"), 4),
                "loss": formatting.decimal(value("test_loss"), 4),
                "total_params": formatting.integer(value("total_params")),
                "trainable_params": formatting.integer(value("trainable_params")),
                "seconds": formatting.decimal(value("training_seconds"), 1),
                "seconds_bar": formatting.bar(value("training_seconds"), most_seconds),
                "throughput": formatting.decimal(value("images_per_second"), 0),
                "throughput_bar": formatting.bar(value("images_per_second"), most_throughput),
            }
        )
    return {"rows": rows, "best": None if best is None else formatting.decimal(best, 4)}


def significance_footnotes(
    frame: pd.DataFrame, alpha: float, weights: Mapping[str, str | None] | None = None
) -> tuple[list[dict], dict[str, list[int]]]:
    """One footnote per significant pair ("A is significantly better than B (McNemar p=..)"),
    and the footnote numbers to mark on each better strategy's accuracy. `weights` (strategy
    -> backbone_weights) adds a caveat to pairs with a random-weight backbone."""
    weights = weights or {}
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
                "p": formatting.p_equation(row["p_value"]),
                "alpha": formatting.format_alpha(alpha),
                "caveat": random_caveat((row["better"], worse), weights),
            }
        )
        markers.setdefault(row["better"], []).append(number)
    return footnotes, markers


def significance_view(
    frame: pd.DataFrame, alpha: float, weights: Mapping[str, str | None] | None = None
) -> list[dict]:
    """The pairwise McNemar table's rows, formatted; a pair with a random-weight backbone
    says that its verdict is not about transfer."""
    weights = weights or {}
    rows = []
    for row in _significance_rows(frame):
        rows.append(
            {
                "model_a": row["model_a"],
                "model_b": row["model_b"],
                "a_only": formatting.integer(row["a_only_correct"]),
                "b_only": formatting.integer(row["b_only_correct"]),
                "statistic": formatting.decimal(row["statistic"], 3),
                "p": formatting.format_p(row["p_value"]),
                "test": "exact" if row["exact"] else "chi-square",
                "significant": row["significant"],
                "better": row["better"],
                "caveat": random_caveat((row["model_a"], row["model_b"]), weights),
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
        better = "" if better is None or formatting.is_nan(better) else str(better)
        rows.append(
            {
                "model_a": str(record.get("model_a", "")),
                "model_b": str(record.get("model_b", "")),
                "a_only_correct": record.get("a_only_correct"),
                "b_only_correct": record.get("b_only_correct"),
                "statistic": record.get("statistic"),
                "p_value": record.get("p_value"),
                "exact": formatting.truthy(record.get("exact")),
                "significant": formatting.truthy(record.get("significant")),
                "better": better,
            }
        )
    return rows


def strategy_views(content: ReportContent) -> list[dict]:
    """One section per strategy: its run link, metrics, per-class table and embedded figures,
    with an anchor unique on the page."""
    used: set[str] = {"top", "dataset", "comparison", "significance"}
    views = []
    for section in content.strategies:
        url = formatting.safe_url(section.run_url)
        if url is None and section.run_id and content.mlflow_url:
            url = formatting.safe_url(
                mlflow_run_url(content.mlflow_url, section.run_id, section.experiment_id)
            )
        groups = []
        for group in section.figures:
            figures = [
                embedded
                for embedded in (embed_figure(figure) for figure in group.figures)
                if embedded is not None
            ]
            if figures:
                groups.append(
                    {"title": group.title, "figures": figures, "wide": group.title in WIDE_GROUPS}
                )
        views.append(
            {
                "name": section.name,
                "anchor": formatting.anchor(f"strategy-{section.name}", used),
                "run_id": section.run_id,
                "run_url": url,
                "metrics": [
                    {"name": str(key), "value": formatting.metric(value)}
                    for key, value in section.metrics.items()
                ],
                "report": _report_view(section.classification_report),
                "weights": strategy_weights_line(section.backbone_weights, content.backbone),
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
                "value": formatting.decimal(record[column], 4),
                "tint": None if str(name) in _AVERAGE_ROWS else formatting.tint(record[column]),
            }
            for column in scores
        ]
        support = record["support"] if "support" in frame.columns else None
        rows.append(
            {
                "name": str(name),
                "average": str(name) in _AVERAGE_ROWS,
                "cells": cells,
                "support": formatting.integer(support),
            }
        )
    return {"columns": scores, "rows": rows, "has_support": "support" in frame.columns}


def highlights(content: ReportContent) -> list[dict]:
    """The headline cards: the best accuracy, the fastest model, the smallest trainable part
    and the data gate's verdict."""
    frame = content.comparison
    cards = []

    def leader(column: str, pick) -> tuple[str, float] | None:
        values = [
            (str(name), value)
            for name, value in zip(
                frame.index, formatting.column_values(frame, column), strict=True
            )
            if formatting.is_number(value)
        ]
        return pick(values, key=lambda item: item[1]) if values else None

    best = leader("test_accuracy", max)
    if best:
        cards.append(
            {"label": "Best test accuracy", "value": formatting.decimal(best[1], 4), "who": best[0]}
        )
    fastest = leader("images_per_second", max)
    if fastest:
        cards.append(
            {
                "label": "Fastest inference",
                "value": f"{formatting.decimal(fastest[1], 0)} img/s",
                "who": fastest[0],
            }
        )
    smallest = leader("trainable_params", min)
    if smallest:
        cards.append(
            {
                "label": "Fewest trained parameters",
                "value": formatting.integer(smallest[1]),
                "who": smallest[0],
            }
        )
    gate = content.dataset.validation
    if gate is not None:
        view = gate_view(gate)
        cards.append(
            {
                "label": "Data gate",
                "value": "passed" if view["passed"] else "FAILED",
                "who": f"{view['counted']}; {view['warning_total']} warning(s)",
                "state": "good" if view["passed"] else "bad",
            }
        )
    return cards
