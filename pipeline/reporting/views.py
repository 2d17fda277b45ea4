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
        "gate": gate_view(card.validation, card.near_duplicate_distance),
    }


def gate_view(summary: Mapping[str, Any] | None, near_distance: int | None = None) -> dict | None:
    """The data gate's verdict, failures and warnings, from its summary.json; each warning
    kind with what it means, so that a count of near copies is not read as a failure.
    `near_distance` is `validate.near_duplicate_distance` (not in the summary)."""
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
    per_split = summary.get("rows_per_split") or {}
    for split, count in per_split.items():
        facts.append((f"  {split}", formatting.integer(count)))
    held_out = sum(
        int(count)
        for split, count in per_split.items()
        if split != "train" and formatting.is_number(count)
    )
    warnings = [
        {
            "label": label,
            "count": formatting.integer(summary[key]),
            "flag": formatting.is_number(summary[key]) and summary[key] > 0,
            "meaning": meaning,
        }
        for key, label, meaning in _gate_warnings(near_distance, held_out, summary)
        if key in summary
    ]
    drift = summary.get("drift_max_ks")
    warning_total = summary.get("warnings")
    if not formatting.is_number(warning_total):
        warning_total = sum(
            int(summary[key])
            for key, _, _ in _gate_warnings(near_distance, held_out, summary)
            if formatting.is_number(summary.get(key))
        )
    return {
        "passed": passed,
        "counted": counted,
        "facts": facts,
        "warnings": warnings,
        "warning_total": formatting.integer(warning_total),
        "warning_count": int(warning_total),
        "drift": None if drift is None else f"{float(drift):.3f}",
        "failed": [str(line) for line in summary.get("failed_expectations", [])],
    }


def _gate_warnings(
    near_distance: int | None, held_out: int, summary: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """(summary key, label, what it means) of each warning the data gate counts without
    failing (pipeline.validation.gate)."""
    within = (
        f"within {near_distance} bit{'s' if near_distance != 1 else ''}"
        if near_distance is not None
        else "within validate.near_duplicate_distance bits"
    )
    near = summary.get("near_duplicates")
    share = ""
    if held_out and formatting.is_number(near):
        share = (
            f" Here {formatting.integer(near)} of the {formatting.integer(held_out)} val and "
            f"test images ({formatting.percent_text(float(near) / held_out)})."
        )
    return [
        (
            "near_duplicates",
            "near-duplicate images",
            f"Val and test images {within} (dHash: a 64-bit fingerprint of a shrunken gray "
            "copy) of a train image, exact copies left out: a near copy the model may have "
            "seen in training, so its test answer may flatter the model. Not an error unless "
            f"many.{share}",
        ),
        (
            "blank_images",
            "blank images",
            "Images of one single value (no contrast): nothing for a model to learn from; the "
            "gate fails past validate.max_blank_fraction.",
        ),
        (
            "exact_duplicates_across_splits",
            "exact duplicates across splits",
            "Val and test images whose bytes equal a train image's: the model saw them; the "
            "registry gate leaves images a model trained on out of its scores.",
        ),
    ]


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


def comparison_view(
    frame: pd.DataFrame,
    markers: Mapping[str, list[int]],
    val_accuracy: Mapping[str, Any] | None = None,
    badge: Mapping[str, str] | None = None,
) -> dict:
    """Formatted rows of the comparison table, with bars, the best accuracy, footnote markers
    on the accuracy of each strategy significantly better than another, each strategy's val
    accuracy (the frame's column, else `val_accuracy`: strategy -> value, from metrics.json)
    and `badge` (strategy, text, state) on the strategy that went through the registry gate."""
    if "val_accuracy" in frame.columns:
        val = formatting.column_values(frame, "val_accuracy")
    else:
        val = [(val_accuracy or {}).get(str(name)) for name in frame.index]
    # The best is the highest val accuracy, as promote.strategy best chooses: the test split
    # judges the choice, it does not make it.
    finite = [value for value in val if formatting.is_number(value)]
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
                "best": best is not None and val[position] == best,
                "badge": badge if badge and badge.get("strategy") == name else None,
                "val_accuracy": formatting.decimal(val[position], 4),
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


# --- the promotion outcome ---------------------------------------------------------------------

# promotion.json's criteria (pipeline.evaluation.promotion.Criterion names): how the first
# screen names each, and how its observed value and threshold read.
_CRITERIA = {
    "accuracy_floor": ("Accuracy floor", "floor"),
    "class_recall_floor": ("Lowest class recall", "floor"),
    "improvement": ("Gain over the champion", "gain"),
    "mcnemar": ("McNemar's test vs the champion", "p"),
    "calibration": ("Calibration (test ECE)", "ceiling"),
    "fair_test_split": ("Test images neither model trained on", "share"),
    "comparable": ("Same classes as the champion", "check"),
    "new_model": ("A model other than the champion", "check"),
    "not_rolled_back": ("Not rolled back before", "check"),
}


def promotion_view(record: Mapping[str, Any] | None, source: str) -> dict:
    """The first screen's promotion outcome: which model was registered (or that none was, in
    a DVC experiment), whether it became the champion, and the gate's criteria with their
    observed values and verdicts. `record` is promotion.json (None: not promoted yet, the
    file `source` is not there)."""
    if record is None:
        return {
            "state": "pending",
            "verdict": "not promoted yet",
            "headline": "Not promoted yet: no model has been through the registry gate",
            "lines": [
                f"{source} is not there: this page was rendered without the promote stage. "
                "dvc repro runs the gate (promote), then writes this page again."
            ],
            "facts": [],
            "criteria": [],
            "failed": [],
        }
    strategy = str(record.get("strategy"))
    model = str(record.get("registered_model") or "the registered model")
    challenger = record.get("challenger") or {}
    version = challenger.get("version")
    champion = record.get("champion") or {}
    before = champion.get("version")
    after = record.get("champion_after", before)
    passed = bool(record.get("passed"))
    verdict = "gate passed" if passed else "gate failed"
    lines: list[str] = []
    if not record.get("registered"):
        experiment = record.get("dvc_experiment")
        state = "experiment"
        where = f"DVC experiment {experiment}" if experiment else "this run"
        headline = f"{strategy}: {verdict}, nothing registered ({where})"
        lines.append(
            f"Inside a DVC experiment the gate is computed and nothing is registered: {strategy} "
            + ("would have become" if passed else "would not have become")
            + f" the champion of {model}, whose champion "
            + (f"stays version {after}." if after is not None else "is still not set.")
        )
    elif version is not None and after is not None and str(after) == str(version):
        already = before is not None and str(before) == str(version)
        state = "champion"
        headline = f"{strategy} is the champion: {model} version {version}" + (
            " (already was)" if already else ""
        )
        if already:
            lines.append(f"Version {version} was already the champion: nothing to promote.")
        elif before is not None:
            lines.append(
                f"It passed every criterion of the gate against version {before}, "
                f"the champion until now, and holds the champion alias."
            )
        else:
            lines.append(
                "It passed the gate's floors (there was no champion to compare with) and is "
                "the first champion."
            )
    else:
        state = "kept"
        headline = f"{strategy} registered as {model} version {version}, not the champion"
        kept = f"the champion stays version {after}" if after is not None else "no champion is set"
        lines.append(
            f"The {verdict}: version {version} is the challenger, and {kept}."
            if not passed
            else f"The gate passed, yet {kept}."
        )
    unusable = record.get("champion_unusable")
    if unusable:
        lines.append(str(unusable))
    criteria, failed = _criteria_rows(record)
    return {
        "state": state,
        "verdict": verdict,
        "headline": headline,
        "lines": lines,
        "facts": _promotion_facts(record),
        "criteria": criteria,
        "failed": failed,
    }


def _promotion_facts(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The decision's figures beside the verdict: who, which version, the accuracies on the
    images the gate scored, and where the champion alias points before and after."""
    challenger = record.get("challenger") or {}
    champion = record.get("champion") or {}
    overlap = record.get("overlap") or {}
    facts = [
        ("Strategy", str(record.get("strategy"))),
        ("Registered model", str(record.get("registered_model") or formatting.DASH)),
        (
            "Version",
            str(challenger["version"])
            if challenger.get("version") is not None
            else "none (nothing registered)",
        ),
    ]
    accuracy = formatting.decimal(challenger.get("test_accuracy"), 4)
    if champion.get("version") is not None:
        theirs = (
            formatting.decimal(champion.get("test_accuracy"), 4)
            if champion.get("usable", True)
            else "cannot be loaded"
        )
        accuracy += f" vs champion v{champion['version']}: {theirs}"
    scored, total = overlap.get("scored"), overlap.get("test_images")
    if formatting.is_number(scored) and formatting.is_number(total):
        accuracy += (
            f" (all {formatting.integer(total)} test images)"
            if scored == total
            else f" (the {formatting.integer(scored)} of {formatting.integer(total)} test "
            "images neither model trained on)"
        )
    facts.append(("Test accuracy", accuracy))
    before = champion.get("version")
    after = record.get("champion_after", before)
    facts.append(
        (
            "Champion",
            f"v{before} \u2192 v{after}"
            if before is not None and after is not None and str(before) != str(after)
            else (f"v{after}" if after is not None else "none"),
        )
    )
    return facts


def _criteria_rows(record: Mapping[str, Any]) -> tuple[list[dict], list[str]]:
    """Each criterion of the gate with its observed value, what it needed and its verdict;
    and the sentences of the failed ones (promotion.json's explanations, else its reasons)."""
    criteria = record.get("criteria") or {}
    explanations = [str(line) for line in record.get("explanations") or []]
    # The explanations are in the criteria's order, one each (Decision.to_dict).
    details = dict(zip(criteria, explanations, strict=False)) if criteria else {}
    rows, failed = [], []
    for name, criterion in criteria.items():
        if not isinstance(criterion, Mapping):
            continue
        label, kind = _CRITERIA.get(name, (name.replace("_", " ").capitalize(), "check"))
        observed, needed = _criterion_values(kind, criterion)
        ok = bool(criterion.get("passed"))
        rows.append(
            {
                "name": label,
                "observed": observed,
                "needed": needed,
                "passed": ok,
                "detail": details.get(name, ""),
            }
        )
        if not ok and details.get(name):
            failed.append(details[name])
    if not rows or (not failed and not record.get("passed")):
        failed = [str(line) for line in record.get("reasons") or [] if line]
    return rows, failed


def _criterion_values(kind: str, criterion: Mapping[str, Any]) -> tuple[str, str]:
    """A criterion's observed value and what it needed, as the table prints them."""
    observed, threshold = criterion.get("observed"), criterion.get("threshold")
    if kind == "floor":
        return formatting.decimal(observed, 4), f"\u2265 {formatting.decimal(threshold, 4)}"
    if kind == "gain":
        gain = f"{float(observed):+.4f}" if formatting.is_number(observed) else formatting.DASH
        least = f"{float(threshold):+.4f}" if formatting.is_number(threshold) else formatting.DASH
        return gain, f"\u2265 {least}"
    if kind == "p":
        text = formatting.p_equation(observed)
        ours = criterion.get("challenger_only_correct")
        theirs = criterion.get("champion_only_correct")
        if ours is not None and theirs is not None:
            text += f"; right alone {formatting.integer(ours)} vs {formatting.integer(theirs)}"
        alpha = formatting.format_alpha(threshold) if formatting.is_number(threshold) else "?"
        return text, f"p < {alpha}, in its favour"
    if kind == "ceiling":
        value = formatting.decimal(observed, 4) if observed is not None else "not measured"
        return value, f"\u2264 {formatting.decimal(threshold, 4)}"
    if kind == "share":
        return formatting.percent_text(observed), f"\u2265 {formatting.percent_text(threshold)}"
    return ("yes" if criterion.get("passed") else "no"), "yes"


def promotion_badge(record: Mapping[str, Any] | None) -> dict | None:
    """The comparison row's badge of the strategy that went through the gate: "champion v4",
    "challenger v5", or "gate only" (a DVC experiment registers nothing); None before promote
    ran."""
    if record is None:
        return None
    view_state = promotion_view(record, "")["state"]
    version = (record.get("challenger") or {}).get("version")
    text, state, meaning = {
        "champion": (f"champion v{version}", "good", "registered, and now the champion"),
        "kept": (f"challenger v{version}", "warn", "registered; the gate kept the champion"),
    }.get(view_state, ("gate only", "plain", "judged by the gate; nothing registered"))
    return {"strategy": str(record.get("strategy")), "text": text, "state": state, "title": meaning}
