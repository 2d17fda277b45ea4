"""Train one strategy (`python -m pipeline.stages.train <strategy>`) and track it in MLflow.

Writes models/<strategy>/: model.keras, history.csv (the DVC plot) and run.json (the MLflow
run id, for the evaluate stage, and the backbone weights used).
"""

from __future__ import annotations

import logging

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline.backbone import ResolvedWeights, resolve_weights
from pipeline.config import PipelineConfig, check_strategy, flatten_params, load_config
from pipeline.datasets.split import SPLITS, Split, load_splits
from pipeline.errors import ConfigError
from pipeline.models import build_vgg16_base
from pipeline.stages._common import (
    FEATURES_DIR,
    MODELS_DIR,
    PARAMS_FILE,
    PREPARED_DIR,
    PROJECT_ROOT,
    REPORTS_DIR,
    read_json,
    run_stage,
    write_json,
)
from pipeline.tracking import (
    EpochMetricsLogger,
    configure_tracking,
    data_version,
    git_commit,
    log_keras_model,
    start_strategy_run,
)
from pipeline.training import (
    TrainingResult,
    set_global_seed,
    train_feature_extraction,
    train_fine_tune,
    train_scratch,
)

logger = logging.getLogger("pipeline.stages.train")


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ConfigError("usage: python -m pipeline.stages.train <strategy>")
    strategy = check_strategy(argv[0])
    config = load_config(PARAMS_FILE)
    splits = load_splits(PREPARED_DIR)
    set_global_seed(config.data.seed)

    backbone_weights = _backbone_weights(strategy, config)
    experiment_id = configure_tracking(PROJECT_ROOT, config.mlflow.experiment_name)
    tags = {
        "dataset": config.data.dataset,
        "strategy": strategy,
        "git_commit": git_commit(PROJECT_ROOT),
        "data_version": data_version(PREPARED_DIR / f"{name}.npz" for name in SPLITS),
        "backbone_weights": backbone_weights.kind if backbone_weights else "none",
        **_validation_tags(),
    }
    run_name = f"{config.data.dataset}-{strategy}"
    with start_strategy_run(experiment_id, run_name, tags) as run:
        mlflow.log_params(_run_params(strategy, config))
        mlflow.log_artifact(str(VALIDATION_SUMMARY), artifact_path="validation")
        result = _train(strategy, config, splits, backbone_weights, [EpochMetricsLogger()])
        output = MODELS_DIR / strategy
        output.mkdir(parents=True, exist_ok=True)
        result.model.save(output / "model.keras")
        history = pd.DataFrame({"epoch": np.arange(len(result.history["loss"])), **result.history})
        history.to_csv(output / "history.csv", index=False)
        model_uri = log_keras_model(result.model, splits["test"].x[:2])
        write_json(
            output / "run.json",
            {
                "run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "model_uri": model_uri,
                "backbone_weights": tags["backbone_weights"],
            },
        )
    logger.info("%s: trained %d epochs, MLflow run %s", strategy, len(history), run.info.run_id)


VALIDATION_SUMMARY = REPORTS_DIR / "validation" / "summary.json"


def _validation_tags() -> dict[str, str]:
    """The data gate's verdict on the data this run trains on."""
    summary = read_json(VALIDATION_SUMMARY)
    return {
        "validation_passed": str(summary["passed"]).lower(),
        "validation_failures": str(summary["failures"]),
        "validation_warnings": str(summary["warnings"]),
    }


def _backbone_weights(strategy: str, config: PipelineConfig):
    """The weights this strategy's VGG16 really has: recorded by `features`, or resolved now."""
    if strategy == "scratch":
        return None
    if strategy == "feature_extraction":
        recorded = read_json(FEATURES_DIR / "backbone.json")
        return ResolvedWeights(recorded["weights"], recorded["weights_file"])
    return resolve_weights(config.backbone.weights)


def _run_params(strategy: str, config: PipelineConfig) -> dict:
    """The params this strategy used, with its train block under `train.*` so that every
    strategy's runs share column names in the MLflow UI."""
    values = config.model_dump(by_alias=True)
    params = {"data": values["data"], "train": values["train"][strategy]}
    if strategy != "scratch":
        params["backbone"] = values["backbone"]
    return flatten_params(params)


def _train(
    strategy: str,
    config: PipelineConfig,
    splits: dict[str, Split],
    backbone_weights,
    callbacks: list,
) -> TrainingResult:
    train, val = splits["train"], splits["val"]
    num_classes = len(train.classes)
    if strategy == "scratch":
        return train_scratch(
            (train.x, train.y), (val.x, val.y), num_classes, config.train.scratch, callbacks
        )
    if strategy == "feature_extraction":
        extractor = keras.saving.load_model(FEATURES_DIR / "extractor.keras")
        features = {name: np.load(FEATURES_DIR / f"{name}.npy") for name in ("train", "val")}
        return train_feature_extraction(
            extractor,
            (features["train"], train.y),
            (features["val"], val.y),
            num_classes,
            config.train.feature_extraction,
            callbacks,
        )
    base = build_vgg16_base(config.backbone.image_size, backbone_weights.path)
    return train_fine_tune(
        (train.x, train.y),
        (val.x, val.y),
        num_classes,
        base,
        config.backbone.unfreeze_from,
        config.train.fine_tune,
        callbacks,
    )


if __name__ == "__main__":
    run_stage(main)
