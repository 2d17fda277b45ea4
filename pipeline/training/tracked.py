"""Train one strategy and record it: the DVC outs first, MLflow alongside.

What the model folder holds is enough to log the run again from scratch (`pipeline
sync-mlflow`): the model, its history, and in run.json the run's name, tags and params and
whether MLflow got all of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline.config import PipelineConfig, flatten_params
from pipeline.io import (
    EXTRACTOR_FILE,
    FEATURES_INFO_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILE,
    Split,
    read_json,
    write_json,
)
from pipeline.models.backbones import BACKBONES, DEFAULT_BACKBONE, ResolvedWeights, resolve_weights
from pipeline.tracking.runs import (
    VALIDATION_ARTIFACT,
    EpochMetricsLogger,
    RunRecorder,
    configure_tracking,
    create_run,
    log_keras_model,
)
from pipeline.training.fit import TrainingResult, set_global_seed
from pipeline.training.strategies import STRATEGIES, Strategy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunIdentity:
    """What names and describes a strategy's run, in MLflow and in run.json alike."""

    experiment_name: str
    run_name: str
    tags: dict[str, str]
    params: dict
    validation_summary: dict
    """The data gate's summary for the data trained on, logged as validation/summary.json."""


def train_and_record(
    strategy: Strategy,
    config: PipelineConfig,
    splits: dict[str, Split],
    identity: RunIdentity,
    features_dir: Path | None,
    out: Path,
    project_root: Path,
) -> RunRecorder:
    """Train `strategy`, write its model folder `out`, and log the run to MLflow as it goes."""
    set_global_seed(config.data.seed)
    backbone_weights = backbone_weights_of(strategy, config, features_dir)
    tags = {
        **identity.tags,
        "backbone_weights": backbone_weights.kind if backbone_weights else "none",
    }
    experiment_id = configure_tracking(project_root, identity.experiment_name)
    recorder = RunRecorder(create_run(experiment_id, identity.run_name, tags))
    with recorder.active():
        recorder("params", mlflow.log_params, identity.params)
        recorder("gate summary", mlflow.log_dict, identity.validation_summary, VALIDATION_ARTIFACT)
        result = _train(strategy, config, splits, backbone_weights, features_dir, recorder)
        out.mkdir(parents=True, exist_ok=True)
        result.model.save(out / MODEL_FILE)
        history = pd.DataFrame({"epoch": np.arange(len(result.history["loss"])), **result.history})
        history.to_csv(out / HISTORY_FILE, index=False)
        model_uri = recorder("model", log_keras_model, result.model, splits["test"].x[:2])
    write_json(
        out / RUN_FILE,
        {
            "run_id": recorder.run_id,
            "experiment_id": experiment_id,
            "model_uri": model_uri,
            "backbone_weights": tags["backbone_weights"],
            # False when the server was lost: `pipeline sync-mlflow` logs the run again.
            "tracked": not recorder.lost,
            "tracking_error": recorder.error,
            "experiment_name": identity.experiment_name,
            "run_name": identity.run_name,
            "tags": tags,
            "params": identity.params,
            "validation_summary": identity.validation_summary,
        },
    )
    logger.info(
        "%s: trained %d epochs, MLflow run %s", strategy.name, len(history), recorder.run_id
    )
    return recorder


def run_params(strategy_name: str, config: PipelineConfig) -> dict:
    """The params a strategy used, with its train block under `train.*` so that every
    strategy's runs share column names in the MLflow UI."""
    values = config.model_dump(by_alias=True)
    params = {"data": values["data"], "train": values["train"][strategy_name]}
    if STRATEGIES[strategy_name].uses_backbone:
        params["backbone"] = values["backbone"]
    return flatten_params(params)


def backbone_weights_of(
    strategy: Strategy, config: PipelineConfig, features_dir: Path | None
) -> ResolvedWeights | None:
    """The weights this strategy's backbone really has: recorded by `features`, or resolved."""
    if not strategy.uses_backbone:
        return None
    if strategy.uses_features:
        recorded = read_json(features_dir / FEATURES_INFO_FILE)
        return ResolvedWeights(recorded["weights"], recorded["weights_file"])
    return resolve_weights(config.backbone.weights, BACKBONES[DEFAULT_BACKBONE])


def _train(
    strategy: Strategy,
    config: PipelineConfig,
    splits: dict[str, Split],
    backbone_weights: ResolvedWeights | None,
    features_dir: Path | None,
    recorder: RunRecorder,
) -> TrainingResult:
    train, val = splits["train"], splits["val"]
    num_classes = len(train.classes)
    block = getattr(config.train, strategy.name)
    callbacks = [EpochMetricsLogger(recorder)]
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
