"""Evaluate every strategy's model on the test split; write metrics, confusion matrices and
curves, and log the same numbers and files to each strategy's MLflow run.

A strategy whose run lost the tracking server (run.json says `tracked: false`) is evaluated as
usual; `pipeline sync-mlflow` logs its run, with these numbers, once the server is back.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.entry import run_entry
from pipeline.io import RUN_FILE, load_split, read_json, split_paths, write_json
from pipeline.tracking.server import check_tracking_server, tracking_uri

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
    args = parser.parse_args(argv)
    check_tracking_server(tracking_uri(Path.cwd()))

    # Keras and MLflow load only after the server check (see the train stage).
    from pipeline.evaluation.report import evaluate_strategy, log_evaluation
    from pipeline.tracking.runs import configure_tracking

    configure_tracking(Path.cwd())
    test = load_split(split_paths(args.prepared)["test"])
    all_metrics = {}
    for model_dir, report_dir in args.strategy:
        strategy = model_dir.name
        run = read_json(model_dir / RUN_FILE)
        metrics = evaluate_strategy(strategy, model_dir, report_dir, test.x, test.y, test.classes)
        if run.get("tracked", True):
            log_evaluation(run["run_id"], metrics, report_dir)
        else:
            logger.warning(
                "%s: its MLflow run is incomplete (%s); `pipeline sync-mlflow` will log it",
                strategy,
                run.get("tracking_error"),
            )
        all_metrics[strategy] = {**metrics, "backbone_weights": run["backbone_weights"]}
        logger.info("%s: %s", strategy, metrics)
    write_json(args.metrics, all_metrics)


if __name__ == "__main__":
    run_entry(main, "stage 'evaluate'")
