"""Evaluate every strategy's model on the test split; write its metrics, confusion matrices,
per-class figures, curves, galleries and explanations; compare the strategies (comparison.csv,
pairwise McNemar tests in significance.csv); and log the same numbers and files to each
strategy's MLflow run.

A strategy whose run lost the tracking server (run.json says `tracked: false`) is evaluated as
usual; `pipeline sync-mlflow` logs its run, with these numbers, once the server is back.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import load_config
from pipeline.entry import run_entry
from pipeline.io import RUN_FILE, load_split, read_json, split_paths, write_json

logger = logging.getLogger("pipeline.stages.evaluate")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument(
        "--strategy",
        nargs=2,
        action="append",
        type=Path,
        required=True,
        metavar=("MODEL_DIR", "REPORT_DIR"),
        help="a strategy's model folder (named after the strategy) and its report folder",
    )
    parser.add_argument("--metrics", type=Path, required=True, help="the metrics JSON")
    parser.add_argument(
        "--comparison", type=Path, required=True, help="the CSV comparing the strategies"
    )
    parser.add_argument(
        "--significance", type=Path, required=True, help="the CSV of pairwise McNemar tests"
    )
    args = parser.parse_args(argv)
    options = load_config().evaluate

    from pipeline.tracking.server import check_tracking_server, tracking_uri

    check_tracking_server(tracking_uri(Path.cwd()))

    # Keras and MLflow load only after the server check (see the train stage).
    from pipeline.evaluation.report import (
        TestImages,
        compare_strategies,
        evaluate_strategy,
        log_evaluation,
        significance_metrics,
    )
    from pipeline.models.backbones import BACKBONES
    from pipeline.tracking.runs import configure_tracking

    configure_tracking(Path.cwd())
    paths = split_paths(args.prepared)
    split = load_split(paths["test"])
    test = TestImages(split.x, split.y, list(split.classes))
    # One training image for the augmentation figure: the first, as the course's listing 5.12.
    train_image = load_split(paths["train"]).x[0]
    evaluations, runs, report_dirs = [], {}, {}
    for model_dir, report_dir in args.strategy:
        strategy = model_dir.name
        run = read_json(model_dir / RUN_FILE)
        backbone = BACKBONES.get(run.get("params", {}).get("backbone.name", ""))
        evaluation = evaluate_strategy(
            strategy,
            model_dir,
            report_dir,
            test,
            run,
            options,
            train_image=train_image,
            backbone_layers=backbone.pattern_layers if backbone else (),
        )
        evaluations.append(evaluation)
        runs[strategy], report_dirs[strategy] = run, report_dir
        logger.info("%s: %s", strategy, evaluation.metrics)

    comparison, significance = compare_strategies(evaluations, test.y, options.alpha)
    args.comparison.parent.mkdir(parents=True, exist_ok=True)
    comparison.to_csv(args.comparison)
    significance.to_csv(args.significance, index=False)
    for row in significance.itertuples(index=False):
        verdict = f"{row.better} is better" if row.significant else "no significant difference"
        logger.info("%s vs %s: p=%.4g, %s", row.model_a, row.model_b, row.p_value, verdict)

    for evaluation in evaluations:
        run = runs[evaluation.name]
        if not run.get("tracked", True):
            logger.warning(
                "%s: its MLflow run is incomplete (%s); `pipeline sync-mlflow` will log it",
                evaluation.name,
                run.get("tracking_error"),
            )
            continue
        log_evaluation(
            run["run_id"],
            {
                **evaluation.metrics,
                **evaluation.mlflow_metrics,
                **significance_metrics(significance, evaluation.name),
            },
            report_dirs[evaluation.name],
            extra_files=(args.comparison, args.significance),
        )
    write_json(
        args.metrics,
        {
            evaluation.name: {
                **evaluation.metrics,
                "backbone_weights": runs[evaluation.name]["backbone_weights"],
            }
            for evaluation in evaluations
        },
    )


if __name__ == "__main__":
    run_entry(main, "stage 'evaluate'")
