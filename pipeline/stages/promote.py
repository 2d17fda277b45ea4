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
from pipeline.evaluation.promotion import Criterion
from pipeline.store import (
    MANIFEST_FILE,
    MODEL_FILE,
    RUN_FILE,
    content_version,
    load_split,
    read_json,
    sha256_of,
    split_paths,
    write_json,
)
from pipeline.tracking.context import dvc_experiment, execution_tags
from pipeline.tracking.server import check_tracking_server, tracking_uri

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
    parser.add_argument("--out", type=Path, required=True, help="the decision JSON")
    parser.add_argument(
        "--summary", type=Path, required=True, help="the decision's numbers (DVC metrics)"
    )
    args = parser.parse_args(argv)
    config = load_config()
    unknown = [path for path in args.model if path.name not in STRATEGY_NAMES]
    if unknown:
        raise ConfigError(f"--model {unknown[0]}: its folder must be named after a strategy")
    check_tracking_server(tracking_uri(Path.cwd()))
    record = promote(config, args.prepared, args.metrics, args.model)
    write_json(args.out, record)
    write_json(args.summary, gate_summary(record))


def gate_summary(record: dict) -> dict:
    """The decision in a few numbers: what `dvc metrics show` and `dvc exp show` compare."""
    return {
        "gate_passed": record["passed"],
        "gate_challenger_accuracy": record["challenger"]["test_accuracy"],
        "gate_champion_accuracy": (record["champion"] or {}).get("test_accuracy"),
        "train_test_overlap": record["train_test_overlap"],
    }


def promote(
    config: PipelineConfig, prepared: Path, metrics_file: Path, model_dirs: list[Path]
) -> dict:
    """Run the gate and return the decision record (see the module docstring)."""
    # MLflow and Keras load only after the server check (see the train stage).
    import dataclasses

    import mlflow
    import numpy as np

    from pipeline import registry
    from pipeline.evaluation.promotion import GateThresholds, find_test_overlap, unfair_decision
    from pipeline.tracking.runs import configure_tracking, create_run

    name = config.mlflow.registered_model_name(config.data.dataset)
    by_name = {path.name: path for path in model_dirs}
    strategy = choose_strategy(
        read_json(metrics_file), list(by_name), config.promote.strategy, metrics_file
    )
    model_dir = by_name[strategy]
    model_file = model_dir / MODEL_FILE
    manifest_file = model_dir / MANIFEST_FILE
    source = read_json(model_dir / RUN_FILE)
    test_paths = split_paths(prepared)
    test = load_split(test_paths["test"])
    thresholds = GateThresholds(
        min_accuracy=config.promote.min_accuracy,
        min_improvement=config.promote.min_improvement,
        alpha=config.promote.alpha,
        min_class_recall=config.promote.min_class_recall,
    )
    experiment = dvc_experiment()
    experiment_id = configure_tracking(Path.cwd(), config.mlflow.experiment_name)
    data_version = content_version(test_paths.values())
    model_sha256 = sha256_of(model_file)
    tags = {
        "dataset": config.data.dataset,
        "strategy": strategy,
        **execution_tags(Path.cwd()),
        "data_version": data_version,
        "pipeline.kind": "promotion",
        "source_run_id": str(source.get("run_id")),
        registry.MODEL_SHA_TAG: model_sha256,
    }
    run_id = create_run(experiment_id, f"{config.data.dataset}-promote", tags)
    with mlflow.start_run(run_id=run_id):
        challenger = registry.score_model_file(model_file, test.x, test.classes, manifest_file)
        champion_version = registry.champion_version(name)
        champion = (
            registry.score_version(name, champion_version, test.x, test.classes)
            if champion_version is not None
            else None
        )
        if champion is not None and champion.training_manifest is None:
            logger.warning(
                "champion version %s was registered without a training manifest: the gate "
                "cannot check that it never trained on today's test images",
                champion.version,
            )
        # The gate is fair by proof: test images either model trained on are left out.
        overlap = find_test_overlap(
            test.digests(),
            challenger.training_manifest,
            champion.training_manifest if champion else None,
        )
        if overlap.excluded:
            logger.warning(
                "%d of %d test images are in a model's training manifest (challenger %d, "
                "champion %s): the gate leaves them out",
                overlap.excluded,
                overlap.test_images,
                overlap.in_challenger_training,
                overlap.in_champion_training,
            )
        keep = overlap.keep

        def kept(scored):
            if scored is None or scored.predictions is None:
                return scored
            return dataclasses.replace(scored, predictions=scored.predictions[keep])

        if overlap.fair:
            decision = registry.gate_challenger(
                test.y[keep], kept(challenger), kept(champion), test.classes, thresholds
            )
        else:
            decision = unfair_decision(overlap, float(np.mean(challenger.predictions == test.y)))

        version = None
        if experiment is not None:
            logger.info(
                "inside DVC experiment %s: the gate is computed and written to promotion.json; "
                "nothing is registered and no alias moves",
                experiment,
            )
        else:
            version = registry.version_of_model(name, model_sha256)
            if version is not None:
                logger.info(
                    "%s's model is already %s version %s: not registered again",
                    strategy,
                    name,
                    version.version,
                )
                registry.name_challenger(name, version.version)
            else:
                info = registry.log_classifier(model_file, test.classes, test.x[:2], manifest_file)
                version = registry.register_challenger(
                    name, info.model_uri, {**tags, "promotion_run_id": run_id}
                )
                logger.info(
                    "registered %s version %s (%s) as challenger",
                    name,
                    version.version,
                    strategy,
                )
            if champion is not None and champion.version == version.version:
                decision = dataclasses.replace(
                    decision,
                    passed=False,
                    criteria=(
                        *decision.criteria,
                        Criterion(
                            "new_model",
                            False,
                            0.0,
                            1.0,
                            f"version {version.version} is already the champion: nothing "
                            "to promote",
                        ),
                    ),
                )
            registry.record_decision(
                name, version.version, decision, champion.version if champion else None
            )
        record = {
            "passed": decision.passed,
            "registered_model": name,
            "strategy": strategy,
            # Registration happens on the main line only (dvc repro, pipeline retrain).
            "registered": version is not None,
            "dvc_experiment": experiment,
            "challenger": {
                "version": int(version.version) if version is not None else None,
                "run_id": run_id,
                "source_run_id": source.get("run_id"),
                "model_sha256": model_sha256,
                "test_accuracy": decision.challenger_accuracy,
            },
            "champion": None
            if champion is None
            else {
                "version": int(champion.version),
                "run_id": champion.run_id,
                "test_accuracy": decision.champion_accuracy,
                "has_training_manifest": champion.training_manifest is not None,
            },
            # Test images either model trained on, excluded from the scores: 0 when fair.
            "train_test_overlap": overlap.excluded,
            "overlap": overlap.to_dict(),
            **{key: value for key, value in decision.to_dict().items() if key != "passed"},
            "reasons": decision.reasons(),
            "data_version": data_version,
            "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        mlflow.log_dict(record, "promotion.json")
        mlflow.log_metric("promotion_passed", float(decision.passed))
        mlflow.log_metric("train_test_overlap", float(overlap.excluded))
        if decision.passed and version is not None:
            registry.set_champion(name, version.version)
            record["champion_after"] = int(version.version)
            logger.info("promoted %s version %s to champion", name, version.version)
        else:
            record["champion_after"] = int(champion.version) if champion else None
            if experiment is None:
                logger.warning(
                    "kept the champion (%s): %s",
                    f"version {champion.version}" if champion else "none yet",
                    "; ".join(decision.reasons()),
                )
            else:
                logger.info(
                    "the gate would %s: %s",
                    "promote" if decision.passed else "keep the champion",
                    "; ".join(decision.reasons()),
                )
    return record


if __name__ == "__main__":
    run_entry(main, "stage 'promote'")
