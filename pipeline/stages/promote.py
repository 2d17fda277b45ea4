"""The promotion gate: register the best strategy's model as the `challenger`, re-score the
`champion` on the same test split, and move `champion` only when the challenger passes every
criterion of `promote.*`.

Writes reports/promotion.json (DVC metrics): the decision, each criterion with its observed
value and threshold, and both versions. The reasons also go on the model version as tags, and
the whole decision is an MLflow run of its own. A failure at any step leaves `champion` where
it was: the alias is the last thing this stage changes.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import STRATEGY_NAMES, PipelineConfig, load_config
from pipeline.entry import run_entry
from pipeline.errors import ConfigError, RegistryError
from pipeline.io import (
    MODEL_FILE,
    RUN_FILE,
    content_version,
    load_split,
    read_json,
    split_paths,
    write_json,
)
from pipeline.tracking.server import check_tracking_server, git_commit, tracking_uri

logger = logging.getLogger("pipeline.stages.promote")


def choose_strategy(
    metrics: dict, available: Sequence[str], wanted: str, metrics_file: Path
) -> str:
    """`wanted` by name, or with `best` the highest test accuracy (ties: the first listed)."""
    if wanted != "best":
        if wanted not in available or wanted not in metrics:
            raise ConfigError(
                f"promote.strategy = {wanted!r} has no evaluated model here; "
                f"evaluated: {', '.join(s for s in available if s in metrics)}"
            )
        return wanted
    scored = [name for name in available if name in metrics]
    if not scored:
        raise RegistryError(f"{metrics_file} holds no evaluated strategy: run evaluate first")
    return max(scored, key=lambda name: (metrics[name]["test_accuracy"], -scored.index(name)))


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
    parser.add_argument("--out", type=Path, required=True, help="the decision JSON (metrics)")
    args = parser.parse_args(argv)
    config = load_config()
    unknown = [path for path in args.model if path.name not in STRATEGY_NAMES]
    if unknown:
        raise ConfigError(f"--model {unknown[0]}: its folder must be named after a strategy")
    check_tracking_server(tracking_uri(Path.cwd()))
    write_json(args.out, promote(config, args.prepared, args.metrics, args.model))


def promote(
    config: PipelineConfig, prepared: Path, metrics_file: Path, model_dirs: list[Path]
) -> dict:
    """Run the gate and return the decision record (see the module docstring)."""
    # MLflow and Keras load only after the server check (see the train stage).
    import mlflow

    from pipeline import registry
    from pipeline.evaluation.promotion import GateThresholds
    from pipeline.tracking.runs import configure_tracking, create_run

    name = config.mlflow.registered_model_name(config.data.dataset)
    by_name = {path.name: path for path in model_dirs}
    strategy = choose_strategy(
        read_json(metrics_file), list(by_name), config.promote.strategy, metrics_file
    )
    model_dir = by_name[strategy]
    source = read_json(model_dir / RUN_FILE)
    test_paths = split_paths(prepared)
    test = load_split(test_paths["test"])
    thresholds = GateThresholds(
        min_accuracy=config.promote.min_accuracy,
        min_improvement=config.promote.min_improvement,
        alpha=config.promote.alpha,
        min_class_recall=config.promote.min_class_recall,
    )
    experiment_id = configure_tracking(Path.cwd(), config.mlflow.experiment_name)
    data_version = content_version(test_paths.values())
    tags = {
        "dataset": config.data.dataset,
        "strategy": strategy,
        "git_commit": git_commit(Path.cwd()),
        "data_version": data_version,
        "pipeline.kind": "promotion",
        "source_run_id": str(source.get("run_id")),
    }
    run_id = create_run(experiment_id, f"{config.data.dataset}-promote", tags)
    with mlflow.start_run(run_id=run_id):
        info = registry.log_classifier(model_dir / MODEL_FILE, test.classes, test.x[:2])
        challenger_version = registry.register_challenger(
            name, info.model_uri, {**tags, "promotion_run_id": run_id}
        )
        logger.info(
            "registered %s version %s (%s) as challenger",
            name,
            challenger_version.version,
            strategy,
        )
        challenger = registry.score_version(name, challenger_version, test.x, test.classes)
        champion_version = registry.champion_version(name)
        champion = (
            registry.score_version(name, champion_version, test.x, test.classes)
            if champion_version is not None
            else None
        )
        decision = registry.gate_challenger(test.y, challenger, champion, test.classes, thresholds)
        registry.record_decision(
            name, challenger.version, decision, champion.version if champion else None
        )
        record = {
            "passed": decision.passed,
            "registered_model": name,
            "strategy": strategy,
            "challenger": {
                "version": int(challenger.version),
                "run_id": run_id,
                "source_run_id": source.get("run_id"),
                "test_accuracy": decision.challenger_accuracy,
            },
            "champion": None
            if champion is None
            else {
                "version": int(champion.version),
                "run_id": champion.run_id,
                "test_accuracy": decision.champion_accuracy,
            },
            **{key: value for key, value in decision.to_dict().items() if key != "passed"},
            "reasons": decision.reasons(),
            "data_version": data_version,
            "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        mlflow.log_dict(record, "promotion.json")
        mlflow.log_metric("promotion_passed", float(decision.passed))
        if decision.passed:
            registry.crown(name, challenger.version)
            record["champion_after"] = int(challenger.version)
            logger.info("promoted %s version %s to champion", name, challenger.version)
        else:
            record["champion_after"] = int(champion.version) if champion else None
            logger.warning(
                "kept the champion (%s): %s",
                f"version {champion.version}" if champion else "none yet",
                "; ".join(decision.reasons()),
            )
    return record


if __name__ == "__main__":
    run_entry(main, "stage 'promote'")
