"""The promotion gate: register the best strategy's model as the `challenger`, re-score the
`champion` on the same test split, and move `champion` only when the challenger passes every
criterion of `promote.*`.

Test images that either model trained on (their training manifests, by content) are left out
of the scores, and counted in promotion.json; too few left and the gate refuses. The same model
file is registered once (versions are keyed by its SHA-256). Inside a DVC experiment
(`dvc exp run`) the gate is computed and written, and nothing is registered: only the main line
(`dvc repro` in the workspace, `pipeline retrain`) moves the registry.

Writes reports/promotion.json (DVC metrics): the decision, each criterion with its observed
value and threshold, and both versions. The reasons also go on the model version as tags, and
the whole decision is an MLflow run of its own. The model card (--card, always written) is
generated from the records: the promoted strategy's evaluation, run and history, the split, the
label issues, the decision and the runs; on the main line it is also the version's description
and model_card.md in the promotion's run. A failure at any step leaves `champion` where
it was: the alias is the last thing this stage changes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import STRATEGY_NAMES, load_config
from pipeline.entry import log_result, log_start, run_entry
from pipeline.errors import ConfigError
from pipeline.evaluation.promotion import GateThresholds, choose_strategy
from pipeline.store import read_json, write_json
from pipeline.tracking.context import dvc_experiment
from pipeline.tracking.record import RunRecord
from pipeline.tracking.server import check_tracking_server, tracking_uri

logger = logging.getLogger("pipeline.stages.promote")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument("--metrics", type=Path, required=True, help="the evaluate stage's metrics")
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        required=True,
        help="a strategy's model folder (named after the strategy); repeat for each",
    )
    parser.add_argument(
        "--evaluation",
        type=Path,
        action="append",
        required=True,
        help="a strategy's report folder (named after the strategy); repeat for each",
    )
    parser.add_argument(
        "--label-issues", type=Path, help="the suspected label errors (label_issues.csv)"
    )
    parser.add_argument(
        "--comparison-run", type=Path, help="the comparison's run record (comparison_run.json)"
    )
    parser.add_argument("--card", type=Path, required=True, help="the model card to write")
    parser.add_argument("--out", type=Path, required=True, help="the decision JSON")
    parser.add_argument(
        "--summary", type=Path, required=True, help="the decision's numbers (DVC metrics)"
    )
    args = parser.parse_args(argv)
    config = load_config()
    for option, paths in (("--model", args.model), ("--evaluation", args.evaluation)):
        unknown = [path for path in paths if path.name not in STRATEGY_NAMES]
        if unknown:
            raise ConfigError(f"{option} {unknown[0]}: its folder must be named after a strategy")
    project_root = Path.cwd()
    check_tracking_server(tracking_uri(project_root))
    by_name = {path.name: path for path in args.model}
    metrics = read_json(args.metrics)
    strategy = choose_strategy(metrics, list(by_name), config.promote.strategy, args.metrics)
    evaluations = {path.name: path for path in args.evaluation}
    if strategy not in evaluations:
        raise ConfigError(
            f"--evaluation: no report folder of {strategy}, the strategy promoted; pass "
            f"--evaluation <reports>/{strategy}"
        )
    chosen = f"promote.strategy: {config.promote.strategy}"
    if config.promote.strategy == "best":
        # Chosen on val; the test split below only judges it.
        chosen += ", the highest val accuracy: " + ", ".join(
            f"{name} {metrics[name]['val_accuracy']:.4f}" for name in by_name if name in metrics
        )
    log_start(f"{strategy} ({chosen}) through the gate")
    # MLflow and Keras load only after the server check (see the train stage).
    from pipeline.promotion import CardInputs, promote_challenger

    record = promote_challenger(
        registered_model=config.mlflow.registered_model_name(config.data.dataset),
        experiment_name=config.mlflow.experiment_name,
        dataset=config.data.dataset,
        strategy=strategy,
        model_dir=by_name[strategy],
        source_run_id=RunRecord.read(by_name[strategy]).run_id,
        prepared=args.prepared,
        resize=config.data.resize,
        max_pixels=config.data.max_pixels,
        thresholds=GateThresholds(
            min_accuracy=config.promote.min_accuracy,
            min_improvement=config.promote.min_improvement,
            alpha=config.promote.alpha,
            min_class_recall=config.promote.min_class_recall,
            max_ece=config.promote.max_ece,
        ),
        # None for an evaluation made before calibration was measured: with promote.max_ece
        # set, the gate then refuses the challenger, saying to re-run its evaluation.
        challenger_ece=metrics[strategy].get("test_ece"),
        project_root=project_root,
        dvc_experiment=dvc_experiment(),
        card=CardInputs(
            out=args.card,
            evaluation_dir=evaluations[strategy],
            label_issues=args.label_issues,
            comparison_run=args.comparison_run,
        ),
        exports=tuple(config.promote.exports),
    )
    write_json(args.out, record)
    write_json(args.summary, gate_summary(record))
    log_result(decision_line(record))


def decision_line(record: dict) -> str:
    """The stage's result line: the challenger, the verdict and where `champion` points (and,
    when the champion could not be loaded, that and how to recover)."""
    accuracy = record["challenger"].get("test_accuracy")
    who = record["strategy"] + (f" (test accuracy {accuracy:.4f})" if accuracy is not None else "")
    verdict = "passed" if record["passed"] else "failed"
    if not record["registered"]:
        line = (
            f"{who}: gate {verdict}; nothing registered (DVC experiment {record['dvc_experiment']})"
        )
    else:
        champion = record.get("champion_after")
        line = (
            f"{who} is version {record['challenger']['version']}: gate {verdict}; champion is "
            + (f"version {champion}" if champion is not None else "not set")
        )
    unusable = record.get("champion_unusable")
    return f"{line}. {unusable}" if unusable else line


def gate_summary(record: dict) -> dict:
    """The decision in a few numbers: what `dvc metrics show` and `dvc exp show` compare."""
    return {
        "gate_passed": record["passed"],
        "gate_challenger_accuracy": record["challenger"]["test_accuracy"],
        "gate_champion_accuracy": (record["champion"] or {}).get("test_accuracy"),
        "train_test_overlap": record["train_test_overlap"],
    }


if __name__ == "__main__":
    run_entry(main, "stage 'promote'")
