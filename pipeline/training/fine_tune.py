"""Strategy `fine_tune`: the course's five steps on a pretrained base.

(1) add a head to the base, (2) freeze the base, (3) train the head, (4) unfreeze the base
from `backbone.unfreeze_from` on, (5) train both at a low learning rate.
"""

from __future__ import annotations

import logging

import keras

from pipeline.config import FeatureExtractionConfig, FineTuneConfig
from pipeline.models.heads import build_fine_tune_model, set_trainable_from
from pipeline.training.fit import (
    HISTORY_KEYS,
    FitOptions,
    TrainingResult,
    compile_classifier,
)
from pipeline.training.interface import Strategy, TrainingContext, TrainingData

logger = logging.getLogger(__name__)


def build_transfer_model(
    data: TrainingData,
    config: FineTuneConfig | FeatureExtractionConfig,
    context: TrainingContext,
    name: str = "fine_tune",
) -> keras.Model:
    """The context's base with a new head for `data`, augmentation in front: what fine-tuning
    trains, and end-to-end feature extraction with the base kept frozen."""
    backbone = context.require_backbone(name)
    return build_fine_tune_model(
        data.input_shape,
        data.num_classes,
        backbone.descriptor,
        backbone.base,
        dense_units=config.dense_units,
        dropout_rate=config.dropout_rate,
        augmentation=context.augmentation,
        name=name,
    )


def train_fine_tune(
    data: TrainingData, config: FineTuneConfig, context: TrainingContext
) -> TrainingResult:
    """Head first on the frozen base, then both from the unfreeze point. The history runs
    across both phases on one epoch axis.

    After a crash in phase 2, phase 1 is not repeated: its history comes from the backup.
    """
    backbone = context.require_backbone("fine_tune")
    model = build_transfer_model(data, config, context)
    state = context.backup.load() if context.backup is not None else None
    if state is not None and state.phase == "tune":
        head_history = {
            key: list(state.history.get(key, []))[: config.head_epochs] for key in HISTORY_KEYS
        }
        logger.info("fine_tune phase 1 finished before the crash: skipped")
    else:
        set_trainable_from(backbone.base, None)
        compile_classifier(model, config.optimizer, config.head_learning_rate)
        logger.info("fine_tune phase 1: %d epochs on the head, base frozen", config.head_epochs)
        head_history = context.fit(
            model,
            data,
            FitOptions.of(config, epochs=config.head_epochs, schedules=False),
            phase="head",
        )
    set_trainable_from(backbone.base, backbone.unfreeze_from)
    # Recompiling is what makes the new trainable flags take effect.
    compile_classifier(model, config.optimizer, config.learning_rate)
    logger.info("fine_tune phase 2: %d epochs from %s on", config.epochs, backbone.unfreeze_from)
    tune_history = context.fit(
        model,
        data,
        FitOptions.of(config),
        initial_epoch=len(head_history["loss"]),
        phase="tune",
        history_before=head_history,
    )
    history = {key: head_history[key] + tune_history[key] for key in HISTORY_KEYS}
    return TrainingResult(model, history, phase_boundaries=[len(head_history["loss"])])


FINE_TUNE = Strategy("fine_tune", train_fine_tune, uses_backbone=True)
