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
import numpy as np
import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.datasets.sources import DATASETS
from pipeline.evaluation.calibration import TemperatureFit, calibrate_model
from pipeline.models.backbones import (
    BACKBONES,
    ResolvedWeights,
    resolve_unfreeze_from,
    resolve_weights,
)
from pipeline.store import (
    EXTRACTOR_FILE,
    FEATURES_INFO_FILE,
    FIRST_KERNEL_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    ImageSplit,
    atomic_directory,
    read_json,
    write_classes,
    write_manifest,
)
from pipeline.tracking.context import flatten_params
from pipeline.tracking.record import RunRecord, class_weight_metrics
from pipeline.tracking.runs import RunRecorder, configure_tracking, create_run
from pipeline.tracking.strategy_runs import (
    input_example,
    log_calibration,
    log_epoch_metrics,
    log_tensorboard_logs,
    log_training_inputs,
    log_training_outputs,
    tensorboard_directory,
)
from pipeline.training.accelerators import training_scope
from pipeline.training.backup import TrainingBackup
from pipeline.training.feed import FeedSource
from pipeline.training.fit import HISTORY_KEYS, TrainingResult, set_global_seed
from pipeline.training.interface import (
    BackboneSetup,
    DeviceSetup,
    Strategy,
    TrainingContext,
    TrainingData,
)
from pipeline.training.precision import apply_precision, choose_precision, describe_devices
from pipeline.training.tensorboard import tensorboard_callback
from pipeline.training.workers import process_grid

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
    splits: dict[str, ImageSplit],
    identity: RunIdentity,
    features_dir: Path | None,
    out: Path,
    project_root: Path,
) -> RunRecorder | None:
    """Train `strategy`, calibrate it (`train.calibration`: a temperature fitted on the val
    split, folded into its output layer, so the model saved, logged and served gives calibrated
    probabilities), write its model folder `out`, and log the run to MLflow as it goes.

    `out` is written whole or not at all: the model folder is assembled in a staging folder
    beside it that replaces it only when the model, its history, its manifest and run.json are
    all there, so a training that fails leaves the previous model folder byte-identical (DVC
    persists it: see dvc.yaml). A backup after every epoch, under `.pipeline/backup/<strategy>`
    (outside DVC's outs), lets a crashed run resume where it stopped, in the same MLflow run.
    """
    set_global_seed(config.train.seed, config.train.deterministic)
    devices = describe_devices()
    precision = choose_precision(config.train.precision, devices)
    apply_precision(precision)
    process_count, process_index = process_grid()
    device_setup = DeviceSetup(precision, tuple(devices), process_count, process_index)
    backbone_weights = backbone_weights_of(strategy, config, features_dir)
    if process_index != 0:
        # Another process of a multi-process run: it trains the same model; process 0
        # writes the outputs and the MLflow run.
        context = _context(strategy, config, device_setup, [], None)
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
            recorder("params", log_training_inputs, identity.params, identity.validation_summary)
        # Seconds spent training, carried over from the run that crashed when resuming.
        clock = TrainingClock(backup, previous.meta.get(CLOCK_KEY, 0.0) if previous else 0.0)
        callbacks: list[keras.callbacks.Callback] = [EpochMetricsLogger(recorder), clock]
        # One directory per run (a resumed run continues its own), both fine-tuning phases in
        # it on one epoch axis.
        board_dir = tensorboard_directory(project_root, strategy.name, run_id)
        board = tensorboard_callback(board_dir) if config.train.tensorboard else None
        if board is not None:
            callbacks.append(board)
        context = _context(strategy, config, device_setup, callbacks, backup)
        result = _train(strategy, config, splits, backbone_weights, features_dir, context)
        training_seconds = clock.elapsed()
        # Before anything is written: the saved, logged and served model is the calibrated one.
        fit = calibrate(result.model, splits["val"], config.train.calibration)
        calibration = {
            "temperature": fit.temperature if fit else 1.0,
            "val_nll_before": fit.val_nll_before if fit else None,
            "val_nll_after": fit.val_nll_after if fit else None,
        }
        class_weights = _weights_by_index(result.class_weights)
        # Logged now, so that run.json's `tracked` below covers it too.
        recorder(
            "calibration",
            log_calibration,
            {
                **{key: value for key, value in calibration.items() if value is not None},
                **class_weight_metrics(class_weights),
            },
        )
        # Nothing is written into `out` itself until every file of the new folder is.
        with atomic_directory(out) as staging:
            history = write_model_folder(staging, result, splits["train"])
            model_uri = recorder(
                "model", log_training_outputs, staging, result.model, input_example(splits["test"])
            )
            if board is not None and board_dir.is_dir():
                recorder("tensorboard logs", log_tensorboard_logs, board_dir)
                logger.info("TensorBoard logs in %s (make tensorboard)", board_dir)
            RunRecord(
                run_id=recorder.run_id,
                experiment_id=experiment_id,
                experiment_name=identity.experiment_name,
                run_name=identity.run_name,
                model_uri=model_uri,
                backbone_weights=tags["backbone_weights"],
                # False when the server was lost: `pipeline sync-mlflow` logs the run again.
                tracked=not recorder.lost,
                tracking_error=recorder.error,
                tags=tags,
                params=identity.params,
                validation_summary=identity.validation_summary,
                training_seconds=round(training_seconds, 3),
                phase_boundaries=result.phase_boundaries,
                augmentation=(
                    context.augmentation.model_dump() if context.augmentation is not None else None
                ),
                **calibration,
                class_weights=class_weights,
            ).write(staging)
    backup.clear()
    logger.info(
        "%s: trained %d epochs, MLflow run %s", strategy.name, len(history), recorder.run_id
    )
    return recorder


def calibrate(model: keras.Model, val: ImageSplit, method: str) -> TemperatureFit | None:
    """With `method` temperature, fit the temperature on the val split and fold it into the
    model's output layer (evaluation.calibration.calibrate_model); None when the method is
    none, or there is no val image or no val mistake to fit on (the model is left as trained:
    T = 1)."""
    if method == "none":
        return None
    if not len(val):
        logger.warning("the val split is empty: no temperature fitted, the model keeps T = 1")
        return None
    fit = calibrate_model(model, val, val.y)
    # No val mistake, no temperature (calibrate_model says why): recorded as none fitted.
    return None if fit.no_mistakes else fit


def _weights_by_index(weights: dict[int, float] | None) -> dict[str, float] | None:
    """The class weights a training used, keyed by the class index as JSON text."""
    if weights is None:
        return None
    return {str(index): float(weight) for index, weight in sorted(weights.items())}


def write_model_folder(out: Path, result: TrainingResult, train: ImageSplit) -> pd.DataFrame:
    """The model, its class names, its first kernel as initialised (where it has one), its
    history, and the manifest of what it trained on, into the folder `out` (a staging folder:
    see `train_and_record`); return the history."""
    out.mkdir(parents=True, exist_ok=True)
    result.model.save(out / MODEL_FILE)
    write_classes(out, train.classes)
    if result.first_kernel_before is not None:
        np.save(out / FIRST_KERNEL_FILE, result.first_kernel_before)
    history = pd.DataFrame({"epoch": np.arange(len(result.history["loss"])), **result.history})
    history.to_csv(out / HISTORY_FILE, index=False)
    # What the model trained on, by content: the promotion gate checks test images against it.
    write_manifest(out / MANIFEST_FILE, train.digests())
    return history


class EpochMetricsLogger(keras.callbacks.Callback):
    """Logs each epoch's history columns (`loss`, `accuracy`, `val_*`, `learning_rate`) with
    step = epoch, as training runs: the keys history.csv keeps, so a synced run has them too."""

    def __init__(self, recorder: RunRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = {key: value for key, value in (logs or {}).items() if key in HISTORY_KEYS}
        self.recorder("epoch metrics", log_epoch_metrics, values, epoch)


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
    devices: DeviceSetup,
    callbacks: list[keras.callbacks.Callback],
    backup: TrainingBackup | None,
) -> TrainingContext:
    """The callbacks, backup, devices and dataset-dependent choices (`auto`) for this strategy;
    the backbone is built later, inside the training scope."""
    block = strategy.block(config)
    augmentation = block.augmentation.resolve(DATASETS[config.data.dataset].augment_by_default)
    return TrainingContext(
        devices=devices,
        callbacks=callbacks,
        backup=backup,
        # Features are computed once: nothing to augment.
        augmentation=None if strategy.trains_on_features(block) else augmentation,
        architecture=strategy.architecture(block, config.data.dataset),
    )


def run_params(strategy: Strategy, config: PipelineConfig) -> dict:
    """The params a strategy used, with its train block under `train.*` so that every
    strategy's runs share column names in the MLflow UI."""
    values = config.model_dump(by_alias=True)
    block = strategy.block(config)
    params = {
        "data": values["data"],
        "train": {
            **block.model_dump(by_alias=True),
            **{
                key: values["train"][key]
                for key in ("seed", "deterministic", "precision", "calibration")
            },
        },
    }
    if strategy.uses_backbone:
        params["backbone"] = values["backbone"]
    architecture = strategy.architecture(block, config.data.dataset)
    if architecture is not None:
        params["train"]["architecture"] = architecture.name
    return flatten_params(params)


def backbone_weights_of(
    strategy: Strategy, config: PipelineConfig, features_dir: Path | None
) -> ResolvedWeights | None:
    """The weights this strategy's backbone really has: recorded by `features`, or resolved."""
    if not strategy.uses_backbone:
        return None
    if strategy.trains_on_features(strategy.block(config)):
        recorded = read_json(features_dir / FEATURES_INFO_FILE)
        return ResolvedWeights(recorded["weights"], recorded["weights_file"])
    return resolve_weights(config.backbone.weights, BACKBONES[config.backbone.name])


def _train(
    strategy: Strategy,
    config: PipelineConfig,
    splits: dict[str, ImageSplit],
    backbone_weights: ResolvedWeights | None,
    features_dir: Path | None,
    context: TrainingContext,
) -> TrainingResult:
    """Build what the strategy declared it needs, inside the training scope (so a replicated
    base is built where it is trained), and train it."""
    block = strategy.block(config)
    with training_scope():
        data = load_training_data(strategy, block, splits, features_dir, config.train.seed)
        if strategy.builds_backbone(block):
            backbone = BACKBONES[config.backbone.name]
            context.backbone = BackboneSetup(
                backbone,
                backbone.build(config.backbone.image_size, backbone_weights.path),
                resolve_unfreeze_from(backbone, config.backbone.unfreeze_from),
            )
        return strategy.train(data, block, context)


def load_training_data(
    strategy: Strategy,
    block,
    splits: dict[str, ImageSplit],
    features_dir: Path | None,
    seed: int = 0,
) -> TrainingData:
    """The images, or the features stage's cached outputs and their extractor, streamed
    from disk batch by batch (`training.feed`)."""
    train, val = splits["train"], splits["val"]
    if not strategy.trains_on_features(block):
        return TrainingData(
            FeedSource.from_split(train), FeedSource.from_split(val), len(train.classes), seed=seed
        )
    return TrainingData(
        FeedSource.from_features(features_dir / "train.npy", train),
        FeedSource.from_features(features_dir / "val.npy", val),
        len(train.classes),
        kind="features",
        extractor=keras.saving.load_model(features_dir / EXTRACTOR_FILE),
        seed=seed,
    )
