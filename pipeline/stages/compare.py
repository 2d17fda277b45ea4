"""Compare the strategies (`dvc.yaml`'s `compare`): reports/metrics.json (every test metric of
every strategy), one small file per strategy with its main metrics (DVC's metrics: `dvc metrics
show` prints a row per strategy), comparison.csv and significance.csv (pairwise McNemar
tests), from each strategy's report folder; and one MLflow run of its own for this execution,
tagged with the strategy runs it compared. The strategy runs themselves are never written to:
they belong to the execution that trained them.

Every out is staged and replaces the previous one only once the comparison and its MLflow run
are done (DVC persists them), so a comparison that fails leaves the last one whole.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipeline.config import STRATEGY_NAMES, load_config
from pipeline.entry import log_result, log_start, run_entry
from pipeline.errors import ConfigError
from pipeline.evaluation.comparison import (
    compare_strategies,
    metrics_by_strategy,
    read_evaluated_strategy,
    significance_metrics,
)
from pipeline.store import atomic_directory, open_split, write_json
from pipeline.tracking.context import execution_tags
from pipeline.tracking.server import check_tracking_server, tracking_uri

logger = logging.getLogger("pipeline.stages.compare")

MAIN_METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_ece")
"""Each strategy's row in `dvc metrics show` and `dvc exp show` (its backbone's weights too,
where it has one): about 115 columns, the headers' width. The val figures are what a choice
between experiments is made on (`pipeline tune` reads them, and only them); the test figures
judge the chosen one. `val_loss` is the val NLL; `test_ece` is of the calibrated
probabilities the model serves. reports/metrics.json keeps every metric (test_macro_f1,
test_loss, test_brier, per class, before calibration)."""


def main_metrics(metrics: dict) -> dict[str, dict]:
    """{strategy: its MAIN_METRICS and backbone_weights} from reports/metrics.json's content."""
    rows = {}
    for strategy, values in metrics.items():
        row = {key: values[key] for key in MAIN_METRICS if key in values}
        if values.get("backbone_weights") is not None:
            row["backbone_weights"] = values["backbone_weights"]
        rows[strategy] = row
    return rows


def write_strategy_metrics(folder: Path, metrics: dict) -> None:
    """One `<strategy>.json` per strategy in `folder`, replacing the folder as a whole (a
    strategy no longer compared leaves no stale row)."""
    with atomic_directory(folder) as staging:
        for strategy, row in main_metrics(metrics).items():
            write_json(staging / f"{strategy}.json", row)


@contextlib.contextmanager
def staged_files(*targets: Path) -> Iterator[list[Path]]:
    """Yield, for each target file, a path of the same name in a staging folder beside it; the
    staged files replace the targets when the block succeeds, and are dropped, leaving the
    targets as they were, when it fails. Same names: what is logged from them to MLflow is
    named as the outs are."""
    folders: list[Path] = []
    try:
        staged = []
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            folders.append(Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.")))
            staged.append(folders[-1] / target.name)
        yield staged
        for path, target in zip(staged, targets, strict=True):
            os.replace(path, target)
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument(
        "--evaluation",
        type=Path,
        action="append",
        required=True,
        help="a strategy's report folder (named after the strategy); repeat for each",
    )
    parser.add_argument("--metrics", type=Path, required=True, help="the metrics JSON to write")
    parser.add_argument(
        "--strategy-metrics",
        type=Path,
        required=True,
        help="the folder of per-strategy main metrics to write (DVC metrics)",
    )
    parser.add_argument("--comparison", type=Path, required=True, help="comparison.csv to write")
    parser.add_argument(
        "--significance", type=Path, required=True, help="significance.csv to write"
    )
    parser.add_argument(
        "--run", type=Path, required=True, help="where to record the comparison's MLflow run"
    )
    args = parser.parse_args(argv)
    unknown = [path for path in args.evaluation if path.name not in STRATEGY_NAMES]
    if unknown:
        raise ConfigError(f"--evaluation {unknown[0]}: its folder must be named after a strategy")
    config = load_config()
    log_start(f"{len(args.evaluation)} strategies on the test split of {args.prepared}")
    check_tracking_server(tracking_uri(Path.cwd()))

    # The test split's labels and class names only: no image is read.
    test = open_split(args.prepared, "test")
    strategies = [read_evaluated_strategy(folder, list(test.classes)) for folder in args.evaluation]
    comparison, significance = compare_strategies(strategies, test.y, config.evaluate.alpha)
    metrics = metrics_by_strategy(strategies)
    for row in significance.itertuples(index=False):
        verdict = f"{row.better} is better" if row.significant else "no significant difference"
        logger.debug("%s vs %s: p=%.4g, %s", row.model_a, row.model_b, row.p_value, verdict)

    from pipeline.tracking.comparison_runs import comparison_tags, log_comparison
    from pipeline.tracking.runs import configure_tracking

    compared = {strategy.name: str(strategy.record.get("run_id")) for strategy in strategies}
    outs = (args.metrics, args.comparison, args.significance, args.run)
    with staged_files(*outs) as (metrics_file, comparison_file, significance_file, run_file):
        comparison.to_csv(comparison_file)
        significance.to_csv(significance_file, index=False)
        write_json(metrics_file, metrics)
        experiment_id = configure_tracking(Path.cwd(), config.mlflow.experiment_name)
        recorder = log_comparison(
            experiment_id,
            f"{config.data.dataset}-comparison",
            comparison_tags(config.data.dataset, compared, execution_tags(Path.cwd())),
            metrics,
            significance_metrics(significance),
            [metrics_file, comparison_file, significance_file],
        )
        write_json(
            run_file,
            {"run_id": recorder.run_id, "tracked": not recorder.lost, "compared_runs": compared},
        )
        # Last: the folder is swapped in at once, and the staged files right after it.
        write_strategy_metrics(args.strategy_metrics, metrics)
    accuracies = ", ".join(
        f"{name} {values['test_accuracy']:.4f}" for name, values in metrics.items()
    )
    significant = int(significance["significant"].sum()) if len(significance) else 0
    log_result(
        f"test accuracy {accuracies}; {significant} of {len(significance)} pair(s) "
        f"significantly different; MLflow run {recorder.run_id}"
    )


if __name__ == "__main__":
    run_entry(main, "stage 'compare'")
