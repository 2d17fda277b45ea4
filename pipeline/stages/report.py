"""Write reports/index.html: which model the registry gate registered and whether it became the
champion (when the promote stage's decision is given), the strategies side by side (with the
significant differences marked), the dataset, the suspected label errors (when the
label-issues stage's list is given) and each strategy's figures, in one self-contained page;
log it, and the label-issues list, as artifacts under report/ of this execution's comparison
run (the strategy runs belong to the executions that trained them and are not written to).

The stage runs after promote, so that the page's first screen answers "which model, and is it
in service?"; rendered without promotion.json it says the run was not promoted yet.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import load_config
from pipeline.entry import run_entry
from pipeline.store import open_splits, read_json
from pipeline.tracking.record import RunRecord

logger = logging.getLogger("pipeline.stages.report")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument(
        "--validation", type=Path, required=True, help="the data gate's summary JSON"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="the metrics JSON")
    parser.add_argument("--comparison", type=Path, required=True, help="comparison.csv")
    parser.add_argument("--significance", type=Path, required=True, help="significance.csv")
    parser.add_argument(
        "--strategy",
        nargs=2,
        action="append",
        type=Path,
        required=True,
        metavar=("REPORT_DIR", "RUN_JSON"),
        help="a strategy's report folder (named after the strategy) and its run.json",
    )
    parser.add_argument(
        "--comparison-run", type=Path, required=True, help="the compare stage's run record"
    )
    parser.add_argument(
        "--label-issues",
        type=Path,
        help="the label-issues stage's list (label_issues.csv); left out of the page if absent",
    )
    parser.add_argument(
        "--promotion",
        type=Path,
        help="the promote stage's decision (promotion.json); the page says 'not promoted yet' "
        "when it is left out or not there",
    )
    parser.add_argument("--out", type=Path, required=True, help="the HTML page to write")
    args = parser.parse_args(argv)
    config = load_config()

    from pipeline.tracking.server import check_tracking_server, tracking_uri

    uri = tracking_uri(Path.cwd())
    check_tracking_server(uri)

    import pandas as pd

    from pipeline.reporting.content import (
        ReportContent,
        StrategySection,
        build_dataset_card,
        collect_strategy_figures,
        read_classification_report,
        read_label_issues,
        read_promotion,
    )
    from pipeline.reporting.html import write_report
    from pipeline.tracking.comparison_runs import log_report
    from pipeline.tracking.runs import configure_tracking

    configure_tracking(Path.cwd())
    # Labels for the counts; a few train images for the examples, read by row.
    splits = open_splits(args.prepared)
    validation = read_json(args.validation) if args.validation.exists() else None
    label_issues_file = (
        args.label_issues if args.label_issues and args.label_issues.is_file() else None
    )
    if args.label_issues and label_issues_file is None:
        logger.info("%s is not there: the page has no label-issues section", args.label_issues)
    label_issues = None
    try:
        dataset = build_dataset_card(
            config.data.dataset,
            splits,
            validation,
            near_duplicate_distance=config.validation.near_duplicate_distance,
        )
        if label_issues_file is not None:
            # The gallery's images come from the train and val splits, by digest.
            label_issues = read_label_issues(
                label_issues_file,
                splits,
                config.label_issues.gallery_images,
                folder=config.data.dataset == "image_folder",
            )
    finally:
        for split in splits.values():
            split.close()
    metrics = read_json(args.metrics)
    promotion = read_promotion(args.promotion) if args.promotion else None
    if promotion is None:
        where = f"{args.promotion} is not there" if args.promotion else "no --promotion given"
        logger.info("%s: the page says the run was not promoted yet", where)
    sections = []
    for report_dir, run_file in args.strategy:
        strategy = report_dir.name
        run = RunRecord.read_file(run_file)
        sections.append(
            StrategySection(
                name=strategy,
                run_id=run.run_id,
                experiment_id=run.experiment_id,
                metrics=metrics.get(strategy, {}),
                classification_report=read_classification_report(report_dir),
                figures=collect_strategy_figures(report_dir),
                # What the run trained with, as its run.json records it (metrics.json and the
                # evaluation carry the same value on).
                backbone_weights=run.backbone_weights,
            )
        )
    content = ReportContent(
        title=f"{config.data.dataset}: three ways to train a convnet",
        generated=datetime.now(UTC),
        dataset=dataset,
        comparison=pd.read_csv(args.comparison, index_col=0),
        significance=pd.read_csv(args.significance),
        alpha=config.evaluate.alpha,
        strategies=sections,
        mlflow_url=config.evaluate.mlflow_ui or _ui_address(uri),
        backbone=config.backbone.name,
        label_issues=label_issues,
        promotion=promotion,
        # Without --promotion the page names the file as ReportContent does by default.
        **({"promotion_file": str(args.promotion)} if args.promotion else {}),
    )
    write_report(content, args.out)
    logger.info("report written to %s", args.out)
    # The page shows the promotion's decision, so it goes into the promotion's run: a DVC
    # experiment that only moves a gate threshold re-runs promote and this stage, and must not
    # write into the baseline's comparison run. Without a promotion, the comparison's run.
    promotion_run = ((promotion or {}).get("challenger") or {}).get("run_id")
    if promotion_run is None:
        comparison_run = read_json(args.comparison_run)
        if not comparison_run.get("tracked", True):
            logger.warning("the comparison's MLflow run is incomplete: the report is not logged")
            return
        promotion_run = comparison_run["run_id"]
    log_report(promotion_run, args.out)
    if label_issues_file is not None:
        # Beside the page, under report/: the whole list, of which the page shows the worst.
        log_report(promotion_run, label_issues_file)


def _ui_address(uri: str) -> str | None:
    """A tracking server's own address is its UI's; a file or database store has none."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


if __name__ == "__main__":
    run_entry(main, "stage 'report'")
