"""Strategy `fine_tune`: the course's five steps on a pretrained base.

(1) add a head to the base, (2) freeze the base, (3) train the head, (4) unfreeze the base
from `backbone.unfreeze_from` on, (5) train both at a low learning rate.
"""

from __future__ import annotations

import logging

import keras

from pipeline.config import FeatureExtractionConfig, FineTuneConfig
from pipeline.models.heads import build_fine_tune_model, set_trainable_from
from pipeline.training.fit import HISTORY_KEYS, FitOptions, TrainingResult
from pipeline.training.frozen import frozen_view
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
    # Both phases weight the classes alike: the head learns the same balance it is tuned with.
    weights = data.class_weights(config.class_weight, "fine_tune")
    state = context.backup.load() if context.backup is not None else None
    # Neither phase trains a layer below unfreeze_from: without augmentation, both train
    # the layers above it on activations computed once (`training.frozen`), the head phase
    # on the base's outputs computed once from those.
    with frozen_view(model, backbone.unfreeze_from, data, context) as view:
        if state is not None and state.phase == "tune":
            head_history = {
                key: list(state.history.get(key, []))[: config.head_epochs] for key in HISTORY_KEYS
            }
            logger.info("fine_tune phase 1 finished before the crash: skipped")
        else:
            set_trainable_from(backbone.base, None)
            logger.info("fine_tune phase 1: %d epochs on the head, base frozen", config.head_epochs)
            # The whole base frozen: the head trains on the base's outputs, computed once.
            with view.at_head() as head_view:
                head_view.compile(config.optimizer, config.head_learning_rate)
                head_history = head_view.fit(
                    context,
                    FitOptions.of(
                        config,
                        epochs=config.head_epochs,
                        schedules=False,
                        class_weights=weights,
                    ),
                    phase="head",
                )
        set_trainable_from(backbone.base, backbone.unfreeze_from)
        # Recompiling is what makes the new trainable flags take effect.
        view.compile(config.optimizer, config.learning_rate)
        logger.info(
            "fine_tune phase 2: %d epochs from %s on", config.epochs, backbone.unfreeze_from
        )
        tune_history = view.fit(
            context,
            FitOptions.of(config, class_weights=weights),
            initial_epoch=len(head_history["loss"]),
            phase="tune",
            history_before=head_history,
        )
    history = {key: head_history[key] + tune_history[key] for key in HISTORY_KEYS}
    return TrainingResult(
        model, history, phase_boundaries=[len(head_history["loss"])], class_weights=weights
    )


FINE_TUNE = Strategy("fine_tune", train_fine_tune, uses_backbone=True)
