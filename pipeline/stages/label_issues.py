"""Find the suspected label errors of the train and val splits: each image scored out of fold by
a logistic regression on the cached backbone features, cleanlab ranking the suspects, and
identical images stored under two classes listed first. Writes reports/label_issues.csv, worst
first, with each image's source file, so a user can fix the folder. Never reads the test split.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import load_config
from pipeline.entry import log_result, log_start, run_entry
from pipeline.evaluation.label_issues import (
    COLUMNS,
    LabelIssueReport,
    find_label_issues,
    load_scored_images,
)
from pipeline.store import DROPPED_CONFLICTS_KEY, PLAN_FILE, read_json, write_csv

logger = logging.getLogger("pipeline.stages.label_issues")


def result_line(report: LabelIssueReport) -> str:
    """The stage's result: how many suspects among how many images, and the worst one."""
    found = f"{report.suspects} suspect(s) among {report.images} train and val images"
    if report.conflicts:
        found = f"{report.conflicts} image(s) under two classes and {found}"
    if not report.issues:
        return found
    worst = report.issues[0]
    return (
        f"{found}; the worst: {worst.path or worst.digest} ({worst.split}), "
        f"labelled {worst.given}, looks like {worst.suggested} (score {worst.score:.3g})"
    )


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="label_issues", description=__doc__)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument("--features", type=Path, required=True, help="the features folder")
    parser.add_argument(
        "--sources", type=Path, help="the split stage's table of each image's source file"
    )
    parser.add_argument("--out", type=Path, required=True, help="label_issues.csv to write")
    args = parser.parse_args(argv)
    config = load_config()
    folds = config.label_issues.folds
    log_start(f"{folds}-fold out-of-fold probabilities over {args.features}")
    images, classes = load_scored_images(args.prepared, args.features, args.sources)
    plan = read_json(args.prepared / PLAN_FILE)
    # Identical images under two classes: still in the store (the data gate fails on them),
    # or left out by `validate.label_conflicts: drop` (split.json keeps them apart).
    conflicts = plan.get("label_conflicts") or []
    dropped = plan.get(DROPPED_CONFLICTS_KEY) or []
    report = find_label_issues(images, classes, folds, config.data.seed, conflicts, dropped)
    if report.test_conflicts:
        logger.warning(
            "%d image(s) under two classes are in the test split: not listed (this stage reads "
            "no test label); the data gate names them",
            report.test_conflicts,
        )
    # File names are the user's text: every cell goes through spreadsheet_safe.
    write_csv(args.out, COLUMNS, [issue.as_row() for issue in report.issues])
    log_result(result_line(report))


if __name__ == "__main__":
    run_entry(main, "stage 'label_issues'")
