"""The training strategies, by name: each entry is a train function and what it needs.

Adding a strategy is one `Strategy` entry, its train function and its params block
(`train.<name>` in pipeline/config.py). Train functions take arrays, a typed config block and
callbacks, never params.yaml or paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from pipeline.config import (
    AugmentationConfig,
    FeatureExtractionConfig,
    FineTuneConfig,
    ScratchConfig,
)
from pipeline.models.backbones import Backbone
from pipeline.models.builders import Architecture, build_architecture
from pipeline.models.heads import (
    assemble_feature_extraction_model,
    build_feature_head,
    build_fine_tune_model,
    set_trainable_from,
)
from pipeline.training.backup import TrainingBackup
from pipeline.training.fit import (
    HISTORY_KEYS,
    FitOptions,
    TrainingResult,
    compile_classifier,
    fit_model,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainingContext:
    """What every train function gets besides data and its config block: the callbacks that
    record it, the backup it resumes from, and the choices made for this dataset."""

    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)
    backup: TrainingBackup | None = None
    augmentation: AugmentationConfig | None = None
    """The strategy's augmentation, resolved for the dataset (None: off)."""
    architecture: Architecture | None = None
    """The scratch architecture, resolved for the dataset (`auto`)."""


def train_scratch(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    config: ScratchConfig,
    context: TrainingContext,
) -> TrainingResult:
    """A CNN from scratch on the raw images: the architecture's listing, with augmentation."""
    model = build_architecture(
        context.architecture,
        train[0].shape[1:],
        num_classes,
        context.augmentation,
        conv_filters=config.conv_filters,
        dense_units=config.dense_units,
        dropout_rate=config.dropout_rate,
    )
    compile_classifier(model, config.optimizer, config.learning_rate)
    # Before fit_model, which may restore a backup: a resumed run rebuilds the same initial
    # weights from the seed, so this is the kernel its first epoch started from.
    first_kernel = first_conv_kernel(model)
    history = fit_model(
        model,
        train,
        val,
        FitOptions.of(config),
        callbacks=context.callbacks,
        backup=context.backup,
    )
    return TrainingResult(model, history, first_kernel_before=first_kernel)


def first_conv_kernel(model: keras.Model) -> np.ndarray | None:
    """A copy of the kernel of the model's first Conv2D layer (None when it has none)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return keras.ops.convert_to_numpy(layer.kernel).copy()
    return None


def train_feature_extraction(
    extractor: keras.Model,
    train_features: tuple[np.ndarray, np.ndarray],
    val_features: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    config: FeatureExtractionConfig,
    context: TrainingContext,
) -> TrainingResult:
    """Mode cached: a dense head on the cached conv-base features (listing 5.18), then
    assembled with the extractor that computed them.

    The head never sees augmentation: features are computed once, which is the point of the
    mode (Chollet's "fast feature extraction without data augmentation").
    """
    head = build_feature_head(
        train_features[0].shape[1:], num_classes, config.dense_units, config.dropout_rate
    )
    compile_classifier(head, config.optimizer, config.learning_rate)
    history = fit_model(
        head,
        train_features,
        val_features,
        FitOptions.of(config),
        callbacks=context.callbacks,
        backup=context.backup,
    )
    return TrainingResult(assemble_feature_extraction_model(extractor, head), history)


def train_feature_extraction_end_to_end(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    backbone: Backbone,
    base: keras.Model,
    config: FeatureExtractionConfig,
    context: TrainingContext,
) -> TrainingResult:
    """Mode end_to_end: the frozen base inside the model, run on every batch of every epoch,
    so augmentation applies (listings 5.20/5.21). Much slower than mode cached."""
    model = build_fine_tune_model(
        train[0].shape[1:],
        num_classes,
        backbone,
        base,
        dense_units=config.dense_units,
        dropout_rate=config.dropout_rate,
        augmentation=context.augmentation,
        name="feature_extraction",
    )
    set_trainable_from(base, None)
    compile_classifier(model, config.optimizer, config.learning_rate)
    history = fit_model(
        model,
        train,
        val,
        FitOptions.of(config),
        callbacks=context.callbacks,
        backup=context.backup,
    )
    return TrainingResult(model, history)


def train_fine_tune(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    backbone: Backbone,
    base: keras.Model,
    unfreeze_from: str,
    config: FineTuneConfig,
    context: TrainingContext,
) -> TrainingResult:
    """The course's five steps: (1) add a head to the base, (2) freeze the base, (3) train
    the head, (4) unfreeze the base from `unfreeze_from` on, (5) train both at a low learning
    rate. The history runs across both phases on one epoch axis.

    After a crash in phase 2, phase 1 is not repeated: its history comes from the backup.
    """
    model = build_fine_tune_model(
        train[0].shape[1:],
        num_classes,
        backbone,
        base,
        dense_units=config.dense_units,
        dropout_rate=config.dropout_rate,
        augmentation=context.augmentation,
    )
    state = context.backup.load() if context.backup is not None else None
    if state is not None and state.phase == "tune":
        head_history = {
            key: list(state.history.get(key, []))[: config.head_epochs] for key in HISTORY_KEYS
        }
        logger.info("fine_tune phase 1 finished before the crash: skipped")
    else:
        set_trainable_from(base, None)
        compile_classifier(model, config.optimizer, config.head_learning_rate)
        logger.info("fine_tune phase 1: %d epochs on the head, base frozen", config.head_epochs)
        head_history = fit_model(
            model,
            train,
            val,
            FitOptions.of(config, epochs=config.head_epochs, schedules=False),
            callbacks=context.callbacks,
            backup=context.backup,
            phase="head",
        )
    set_trainable_from(base, unfreeze_from)
    # Recompiling is what makes the new trainable flags take effect.
    compile_classifier(model, config.optimizer, config.learning_rate)
    logger.info("fine_tune phase 2: %d epochs from %s on", config.epochs, unfreeze_from)
    tune_history = fit_model(
        model,
        train,
        val,
        FitOptions.of(config),
        callbacks=context.callbacks,
        initial_epoch=len(head_history["loss"]),
        backup=context.backup,
        phase="tune",
        history_before=head_history,
    )
    history = {key: head_history[key] + tune_history[key] for key in HISTORY_KEYS}
    return TrainingResult(model, history, phase_boundaries=[len(head_history["loss"])])


@dataclass(frozen=True)
class Strategy:
    """`train` fits the strategy's model on images; `train_on_features`, where there is one,
    fits it on the features stage's cached conv-base outputs instead. `uses_backbone`: built
    on a pretrained base, whose weights its runs report."""

    name: str
    train: Callable[..., TrainingResult]
    uses_backbone: bool
    train_on_features: Callable[..., TrainingResult] | None = None

    def trains_on_features(self, block) -> bool:
        """Whether this run trains on cached features (`feature_extraction.mode: cached`)."""
        return self.train_on_features is not None and getattr(block, "mode", "cached") == "cached"


def _train_feature_extraction_on_images(
    train, val, num_classes, backbone, base, unfreeze_from, config, context
) -> TrainingResult:
    """End-to-end feature extraction takes what fine-tuning takes; the base stays frozen."""
    del unfreeze_from
    return train_feature_extraction_end_to_end(
        train, val, num_classes, backbone, base, config, context
    )


STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy
    for strategy in (
        Strategy("scratch", train_scratch, uses_backbone=False),
        Strategy(
            "feature_extraction",
            _train_feature_extraction_on_images,
            uses_backbone=True,
            train_on_features=train_feature_extraction,
        ),
        Strategy("fine_tune", train_fine_tune, uses_backbone=True),
    )
}
