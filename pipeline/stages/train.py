"""Train one strategy (`python -m pipeline.stages.train <strategy> ...`) and track it in MLflow.

Writes the strategy's model folder: model.keras, history.csv (the DVC plot) and run.json (the
MLflow run id, for the evaluate stage, and the backbone weights used).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline.config import STRATEGY_NAMES, PipelineConfig, flatten_params, load_config
from pipeline.entry import run_entry
from pipeline.errors import ConfigError
from pipeline.io import (
    EXTRACTOR_FILE,
    FEATURES_INFO_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILE,
    Split,
    content_version,
    load_splits,
    read_json,
    split_paths,
    write_json,
)
from pipeline.models.backbones import BACKBONES, DEFAULT_BACKBONE, ResolvedWeights, resolve_weights
from pipeline.tracking import (
    EpochMetricsLogger,
    configure_tracking,
    git_commit,
    log_keras_model,
    start_strategy_run,
)
from pipeline.training.fit import TrainingResult, set_global_seed
from pipeline.training.strategies import STRATEGIES, Strategy

logger = logging.getLogger("pipeline.stages.train")


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train", description=__doc__)
    parser.add_argument("strategy", help=f"one of {', '.join(STRATEGY_NAMES)}")
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument("--gate", type=Path, required=True, help="the data gate's summary JSON")
    parser.add_argument("--features", type=Path, help="the features folder (feature_extraction)")
    parser.add_argument("--out", type=Path, required=True, help="the strategy's model folder")
    args = parser.parse_args(argv)
    if args.strategy not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {args.strategy!r}; allowed strategies: {', '.join(STRATEGIES)}"
        )
    if STRATEGIES[args.strategy].uses_features and args.features is None:
        raise ConfigError(f"strategy {args.strategy} trains on cached features: pass --features")
    return args


def main(argv: Sequence[str]) -> None:
    args = parse_arguments(argv)
    strategy = STRATEGIES[args.strategy]
    config = load_config()
    splits = load_splits(args.prepared)
    set_global_seed(config.data.seed)

    backbone_weights = _backbone_weights(strategy, config, args.features)
    experiment_id = configure_tracking(Path.cwd(), config.mlflow.experiment_name)
    tags = {
        "dataset": config.data.dataset,
        "strategy": strategy.name,
        "git_commit": git_commit(Path.cwd()),
        "data_version": content_version(split_paths(args.prepared).values()),
        "backbone_weights": backbone_weights.kind if backbone_weights else "none",
        **_validation_tags(args.gate),
    }
    run_name = f"{config.data.dataset}-{strategy.name}"
    with start_strategy_run(experiment_id, run_name, tags) as run:
        mlflow.log_params(_run_params(strategy, config))
        mlflow.log_artifact(str(args.gate), artifact_path="validation")
        result = _train(strategy, config, splits, backbone_weights, args.features)
        args.out.mkdir(parents=True, exist_ok=True)
        result.model.save(args.out / MODEL_FILE)
        history = pd.DataFrame({"epoch": np.arange(len(result.history["loss"])), **result.history})
        history.to_csv(args.out / HISTORY_FILE, index=False)
        model_uri = log_keras_model(result.model, splits["test"].x[:2])
        write_json(
            args.out / RUN_FILE,
            {
                "run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "model_uri": model_uri,
                "backbone_weights": tags["backbone_weights"],
            },
        )
    logger.info(
        "%s: trained %d epochs, MLflow run %s", strategy.name, len(history), run.info.run_id
    )


def _validation_tags(summary_file: Path) -> dict[str, str]:
    """The data gate's verdict on the data this run trains on."""
    summary = read_json(summary_file)
    return {
        "validation_passed": str(summary["passed"]).lower(),
        "validation_failures": str(summary["failures"]),
        "validation_warnings": str(summary["warnings"]),
    }


def _backbone_weights(
    strategy: Strategy, config: PipelineConfig, features_dir: Path | None
) -> ResolvedWeights | None:
    """The weights this strategy's backbone really has: recorded by `features`, or resolved."""
    if not strategy.uses_backbone:
        return None
    if strategy.uses_features:
        recorded = read_json(features_dir / FEATURES_INFO_FILE)
        return ResolvedWeights(recorded["weights"], recorded["weights_file"])
    return resolve_weights(config.backbone.weights, BACKBONES[DEFAULT_BACKBONE])


def _run_params(strategy: Strategy, config: PipelineConfig) -> dict:
    """The params this strategy used, with its train block under `train.*` so that every
    strategy's runs share column names in the MLflow UI."""
    values = config.model_dump(by_alias=True)
    params = {"data": values["data"], "train": values["train"][strategy.name]}
    if strategy.uses_backbone:
        params["backbone"] = values["backbone"]
    return flatten_params(params)


def _train(
    strategy: Strategy,
    config: PipelineConfig,
    splits: dict[str, Split],
    backbone_weights: ResolvedWeights | None,
    features_dir: Path | None,
) -> TrainingResult:
    train, val = splits["train"], splits["val"]
    num_classes = len(train.classes)
    block = getattr(config.train, strategy.name)
    callbacks = [EpochMetricsLogger()]
    if strategy.uses_features:
        extractor = keras.saving.load_model(features_dir / EXTRACTOR_FILE)
        features = {name: np.load(features_dir / f"{name}.npy") for name in ("train", "val")}
        return strategy.train(
            extractor,
            (features["train"], train.y),
            (features["val"], val.y),
            num_classes,
            block,
            callbacks,
        )
    if strategy.uses_backbone:
        backbone = BACKBONES[DEFAULT_BACKBONE]
        base = backbone.build(config.backbone.image_size, backbone_weights.path)
        return strategy.train(
            (train.x, train.y),
            (val.x, val.y),
            num_classes,
            backbone,
            base,
            config.backbone.unfreeze_from,
            block,
            callbacks,
        )
    return strategy.train((train.x, train.y), (val.x, val.y), num_classes, block, callbacks)


if __name__ == "__main__":
    run_entry(main, "stage 'train'")
