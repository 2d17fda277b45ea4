"""The data-validation gate: Great Expectations 1.x suites over the per-image table.

Suites check the schema, shapes, labels, pixels, split sizes, class balance, leakage across
splits and, against a reference dataset, drift. Every failed expectation becomes one line naming
the split, the column, what was observed against what was expected, example image indices and
the params key that fixes or relaxes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.store import ImageSplit
from pipeline.validation.profile import (
    build_image_table,
    class_table,
    count_near_duplicates,
    drift_table,
)
from pipeline.validation.suites import (
    GateSettings,
    class_expectations,
    conflict_expectations,
    drift_expectations,
    image_expectations,
)

logger = logging.getLogger(__name__)


@dataclass
class FailedExpectation:
    split: str
    column: str
    expectation: str
    observed: str
    expected: str
    examples: list[int]
    fix: str
    # The names of example classes, beside their labels: "class 2" alone names nothing.
    example_names: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        kind = "image indices" if self.split in ("train", "val", "test") else "classes"
        shown: list = list(self.examples)
        if self.example_names:
            pairs = zip(self.examples, self.example_names, strict=True)
            shown = [f"{label} {name!r}" for label, name in pairs]
        examples = f"; example {kind} [{', '.join(map(str, shown))}]" if shown else ""
        return (
            f"split '{self.split}', column '{self.column}': {self.expectation}: observed "
            f"{self.observed}, expected {self.expected}{examples}. Fix: {self.fix}"
        )


@dataclass
class GateResult:
    failures: list[FailedExpectation]
    warnings: dict[str, int]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def class_mismatch(classes: list[str], reference_classes: list[str]) -> str | None:
    """Why a drift reference is not comparable with the data, or None: per-class pixel
    statistics of another class list differ by the switch of data, not by drift."""
    if list(reference_classes) != list(classes):
        return f"the reference's classes {list(reference_classes)} differ from {list(classes)}"
    return None


def run_gate(
    splits: Mapping[str, ImageSplit],
    settings: GateSettings,
    docs_dir: Path | None = None,
    reference: Mapping[str, ImageSplit] | None = None,
    drift_note: str | None = None,
    label_conflicts: Sequence[Mapping[str, Any]] = (),
) -> GateResult:
    """Build the tables, run every suite in one Checkpoint (Data Docs to `docs_dir`), and
    turn each failed expectation into a FailedExpectation. The splits' images (and the
    reference's) are read a batch at a time (`build_image_table`), never a split at once.

    Drift is tested only against a `reference` with the same classes. `drift_note` says why
    (with a reference) or why not (without one, when the caller found it not comparable).
    `label_conflicts` are the split's identical images under several classes (split.json's
    `label_conflicts`: a digest and its files, each with its class); any fails the gate.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    compared = reference is not None
    if reference is not None:
        mismatch = class_mismatch(settings.class_names, reference["train"].classes)
        if mismatch:
            compared, drift_note = False, mismatch
    if not compared and drift_note:
        # A reference was given but is not like the data: a skipped check, said once.
        logger.warning("no comparable reference: %s", drift_note)
    drift_summary = {
        "compared": compared,
        "reason": drift_note
        or ("the reference has the same classes" if compared else "no reference given"),
    }
    table = build_image_table(splits)
    classes = class_table(table, len(settings.class_names))
    # Each batch: its rows, its expectations, and the columns that identify a failing row.
    batches: dict[str, tuple[pd.DataFrame, list, list[str]]] = {}
    for name in splits:
        batches[f"images_{name}"] = (
            table[table["split"] == name].reset_index(drop=True),
            image_expectations(name, settings, len(table)),
            ["index"],
        )
    batches["class_balance"] = (classes, class_expectations(settings), ["split", "label"])
    batches["label_conflicts"] = (
        conflict_table(label_conflicts),
        conflict_expectations(),
        ["digest"],
    )
    drift = None
    if compared:
        drift = drift_table(table, build_image_table(reference), len(settings.class_names))
        batches["drift"] = (drift, drift_expectations(settings), ["label"])

    context = gx.get_context(mode="ephemeral")
    # GE's "Calculating Metrics" bars, one per suite, write escape codes into DVC's log.
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="validation",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
            },
        )
    source = context.data_sources.add_pandas("prepared")
    failures: list[FailedExpectation] = []
    for name, (frame, expectations, index_columns) in batches.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"gate_{name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")] if docs_dir else [],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": index_columns,
                },
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for validation in result.run_results.values():
            failures += [
                _describe_failure(name, item, settings.class_names)
                for item in validation.results
                if not item.success
            ]

    blank = int((table["std"] == 0).sum())
    near = count_near_duplicates(table, settings.near_duplicate_distance)
    warnings = {"near_duplicates": near, "blank_images": blank}
    summary = {
        "passed": not failures,
        "rows": int(len(table)),
        "rows_per_split": {name: int((table["split"] == name).sum()) for name in splits},
        "failures": len(failures),
        "warnings": int(sum(warnings.values())),
        "near_duplicates": near,
        "blank_images": blank,
        "exact_duplicates_across_splits": int(table["in_train"].sum()),
        "label_conflicts": len(label_conflicts),
        "failed_expectations": [str(failure) for failure in failures],
        "drift": drift_summary,
    }
    if drift is not None:
        summary["drift_max_ks"] = float(drift["ks_statistic"].max())
    return GateResult(failures, warnings, summary)


def conflict_table(label_conflicts: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per image filed under several classes: its digest and, in `conflict`, every
    copy's path and class ("circle/a.png (circle) and square/a.png (square)")."""
    rows = [
        {
            "digest": str(entry.get("digest", "")),
            "conflict": " and ".join(
                f"{item.get('path')} ({item.get('class')})" for item in entry.get("files", [])
            ),
        }
        for entry in label_conflicts
    ]
    return pd.DataFrame(rows, columns=["digest", "conflict"], dtype=object)


def _describe_failure(batch: str, item, class_names: Sequence[str] = ()) -> FailedExpectation:
    """One readable record from a Great Expectations result.

    Image batches give example image indices; class-level batches give class labels (with
    their names), and name the splits they were found in; label conflicts give their files.
    """
    config = item.expectation_config
    kwargs = {key: value for key, value in config.kwargs.items() if key != "batch_id"}
    result = item.result or {}
    column = kwargs.pop("column", "(table)")
    values = result.get("partial_unexpected_list", [])[:5]
    if "unexpected_count" in result:
        observed = f"{result['unexpected_count']} unexpected value(s), e.g. {_plain(values)}"
    else:
        observed = _plain(result.get("observed_value"))
    expected = ", ".join(
        f"{key}={_plain(value)}" for key, value in kwargs.items() if value is not None
    )
    rows = [
        entry
        for entry in result.get("partial_unexpected_index_list", [])
        if isinstance(entry, dict)
    ]
    names: list[str] = []
    if batch.startswith("images_"):
        split = batch.removeprefix("images_")
        examples = [int(row["index"]) for row in rows[:5]]
    elif batch == "label_conflicts":
        split, examples, expected = batch, [], "each image under one class"
        count = int(result.get("unexpected_count", len(values)))
        observed = (
            f"{count} image(s) filed under more than one class: {'; '.join(map(str, values))}"
            + ("; ..." if count > len(values) else "")
        )
    else:
        found_in = sorted({str(row["split"]) for row in rows if "split" in row})
        split = f"{batch}: {', '.join(found_in)}" if found_in else batch
        examples = [int(row["label"]) for row in rows[:5]]
        names = [class_names[label] if 0 <= label < len(class_names) else "?" for label in examples]
    return FailedExpectation(
        split=split,
        column=str(column),
        expectation=config.type,
        observed=str(observed),
        expected=expected or "(see Data Docs)",
        examples=examples,
        fix=(config.meta or {}).get("fix", "see reports/validation/data_docs/index.html"),
        example_names=names if len(class_names) else [],
    )


def _plain(value: Any) -> Any:
    """NumPy scalars and containers as plain Python, for readable messages and JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
