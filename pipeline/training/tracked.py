"""Train one strategy and record it: the DVC outs first, MLflow alongside.

What the model folder holds is enough to log the run again from scratch (`pipeline
sync-mlflow`): the model, its history, and in run.json the run's name, tags and params and
whether MLflow got all of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd

from pipeline.config import PipelineConfig, flatten_params
from pipeline.datasets.sources import DATASETS
from pipeline.models.backbones import (
    BACKBONES,
    ResolvedWeights,
    resolve_unfreeze_from,
    resolve_weights,
)
from pipeline.models.builders import resolve_architecture
from pipeline.store import (
    EXTRACTOR_FILE,
    FEATURES_INFO_FILE,
    FIRST_KERNEL_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    RUN_FILE,
    Split,
    read_json,
    write_json,
    write_manifest,
)
from pipeline.tracking.runs import (
    VALIDATION_ARTIFACT,
    RunRecorder,
    configure_tracking,
    create_run,
    log_keras_model,
)
from pipeline.training.backup import TrainingBackup
from pipeline.training.devices import (
    apply_precision,
    choose_precision,
    describe_devices,
    process_grid,
    training_scope,
)
from pipeline.training.fit import TrainingResult, set_global_seed
from pipeline.training.strategies import STRATEGIES, Strategy, TrainingContext

logger = logging.getLogger(__name__)

CLOCK_KEY = "training_seconds"
"""The backup meta key of the seconds trained so far."""


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
) -> RunRecorder | None:
    """Train `strategy`, write its model folder `out`, and log the run to MLflow as it goes.

    A backup after every epoch, under `.pipeline/backup/<strategy>` (outside DVC's outs, which
    DVC deletes before re-running the stage), lets a crashed run resume where it stopped, in
    the same MLflow run.
    """
    set_global_seed(config.train.seed, config.train.deterministic)
    precision = choose_precision(config.train.precision, describe_devices())
    apply_precision(precision)
    backbone_weights = backbone_weights_of(strategy, config, features_dir)
    if process_grid()[1] != 0:
        # Another process of a multi-process run: it trains the same model; process 0
        # writes the outputs and the MLflow run.
        context = _context(strategy, config, None, None)
        _train(strategy, config, splits, backbone_weights, features_dir, context)
        return None
    tags = {
        **identity.tags,
        "backbone_weights": backbone_weights.kind if backbone_weights else "none",
        "precision": precision,
    }
    backup = TrainingBackup(
        backup_directory(project_root, strategy.name), training_fingerprint(identity, tags)
    )
    experiment_id = configure_tracking(project_root, identity.experiment_name)
    previous = backup.load()
    run_id = previous.meta.get("run_id") if previous is not None else None
    if run_id is None:
        run_id = create_run(experiment_id, identity.run_name, tags)
    else:
        logger.warning("continuing MLflow run %s of the training that stopped", run_id)
    recorder = RunRecorder(run_id)
    backup.meta = {"run_id": run_id}
    with recorder.active():
        if previous is None:
            recorder("params", mlflow.log_params, identity.params)
            recorder(
                "gate summary", mlflow.log_dict, identity.validation_summary, VALIDATION_ARTIFACT
            )
        context = _context(strategy, config, recorder, backup)
        # Seconds spent training, carried over from the run that crashed when resuming.
        clock = TrainingClock(backup, previous.meta.get(CLOCK_KEY, 0.0) if previous else 0.0)
        context.callbacks.append(clock)
        with training_scope():
            result = _train(strategy, config, splits, backbone_weights, features_dir, context)
        training_seconds = clock.elapsed()
        out.mkdir(parents=True, exist_ok=True)
        result.model.save(out / MODEL_FILE)
        if result.first_kernel_before is not None:
            np.save(out / FIRST_KERNEL_FILE, result.first_kernel_before)
        history = pd.DataFrame({"epoch": np.arange(len(result.history["loss"])), **result.history})
        history.to_csv(out / HISTORY_FILE, index=False)
        # What the model trained on, by content: the promotion gate checks test images against it.
        write_manifest(out / MANIFEST_FILE, splits["train"].digests())
        recorder("training manifest", mlflow.log_artifact, str(out / MANIFEST_FILE))
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
            "training_seconds": round(training_seconds, 3),
            "phase_boundaries": result.phase_boundaries,
            "augmentation": (
                context.augmentation.model_dump() if context.augmentation is not None else None
            ),
        },
    )
    backup.clear()
    logger.info(
        "%s: trained %d epochs, MLflow run %s", strategy.name, len(history), recorder.run_id
    )
    return recorder


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs `loss`, `accuracy`, `val_loss`, `val_accuracy` with step = epoch, as training runs."""

    def __init__(self, recorder: RunRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {key: float(value) for key, value in (logs or {}).items() if np.isscalar(value)}
        self.recorder("epoch metrics", mlflow.log_metrics, metrics, step=epoch)


class TrainingClock(keras.callbacks.Callback):
    """Wall-clock seconds of training, kept in the backup's meta after every epoch so that a
    resumed run reports the time of the whole training, not only of its last part."""

    def __init__(self, backup: TrainingBackup, seconds_before: float) -> None:
        super().__init__()
        self.backup = backup
        self.seconds_before = float(seconds_before)
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # Runs before the backup's own callback (fit_model appends that one last).
        self.backup.meta[CLOCK_KEY] = self.elapsed()


def backup_directory(project_root: Path, strategy_name: str) -> Path:
    """Where a strategy's training backup lives: outside every DVC out."""
    return project_root / ".pipeline" / "backup" / strategy_name


def training_fingerprint(identity: RunIdentity, tags: dict[str, str]) -> str:
    """What a backup must match to be resumed: the same params, data and code."""
    described = json.dumps(
        {"params": identity.params, "run_name": identity.run_name, "tags": tags},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(described.encode()).hexdigest()


def _context(
    strategy: Strategy,
    config: PipelineConfig,
    recorder: RunRecorder | None,
    backup: TrainingBackup | None,
) -> TrainingContext:
    """The callbacks, backup and dataset-dependent choices (`auto`) for this strategy."""
    block = getattr(config.train, strategy.name)
    spec = DATASETS[config.data.dataset]
    augmentation = block.augmentation.resolve(spec.augment_by_default)
    if strategy.trains_on_features(block):
        augmentation = None
    return TrainingContext(
        callbacks=[EpochMetricsLogger(recorder)] if recorder is not None else [],
        backup=backup,
        augmentation=augmentation,
        architecture=(
            resolve_architecture(block.architecture, config.data.dataset)
            if strategy.name == "scratch"
            else None
        ),
    )


def run_params(strategy_name: str, config: PipelineConfig) -> dict:
    """The params a strategy used, with its train block under `train.*` so that every
    strategy's runs share column names in the MLflow UI."""
    values = config.model_dump(by_alias=True)
    train = values["train"]
    params = {
        "data": values["data"],
        "train": {
            **train[strategy_name],
            **{key: train[key] for key in ("seed", "deterministic", "precision")},
        },
    }
    if STRATEGIES[strategy_name].uses_backbone:
        params["backbone"] = values["backbone"]
    if strategy_name == "scratch":
        params["train"]["architecture"] = resolve_architecture(
            config.train.scratch.architecture, config.data.dataset
        ).name
    return flatten_params(params)


def backbone_weights_of(
    strategy: Strategy, config: PipelineConfig, features_dir: Path | None
) -> ResolvedWeights | None:
    """The weights this strategy's backbone really has: recorded by `features`, or resolved."""
    if not strategy.uses_backbone:
        return None
    if strategy.trains_on_features(getattr(config.train, strategy.name)):
        recorded = read_json(features_dir / FEATURES_INFO_FILE)
        return ResolvedWeights(recorded["weights"], recorded["weights_file"])
    return resolve_weights(config.backbone.weights, BACKBONES[config.backbone.name])


def _train(
    strategy: Strategy,
    config: PipelineConfig,
    splits: dict[str, Split],
    backbone_weights: ResolvedWeights | None,
    features_dir: Path | None,
    context: TrainingContext,
) -> TrainingResult:
    train, val = splits["train"], splits["val"]
    num_classes = len(train.classes)
    block = getattr(config.train, strategy.name)
    if strategy.trains_on_features(block):
        extractor = keras.saving.load_model(features_dir / EXTRACTOR_FILE)
        features = {name: np.load(features_dir / f"{name}.npy") for name in ("train", "val")}
        return strategy.train_on_features(
            extractor,
            (features["train"], train.y),
            (features["val"], val.y),
            num_classes,
            block,
            context,
        )
    if strategy.uses_backbone:
        backbone = BACKBONES[config.backbone.name]
        base = backbone.build(config.backbone.image_size, backbone_weights.path)
        return strategy.train(
            (train.x, train.y),
            (val.x, val.y),
            num_classes,
            backbone,
            base,
            resolve_unfreeze_from(backbone, config.backbone.unfreeze_from),
            block,
            context,
        )
    return strategy.train((train.x, train.y), (val.x, val.y), num_classes, block, context)
