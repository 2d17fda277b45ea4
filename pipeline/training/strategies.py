"""The training strategies, by name: each entry is a train function and what it needs.

Adding a strategy is one `Strategy` entry, its train function and its params block
(`train.<name>` in pipeline/config.py). Train functions take arrays, a typed config block and
callbacks, never params.yaml or paths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from pipeline.config import FeatureExtractionConfig, FineTuneConfig, ScratchConfig
from pipeline.models.backbones import Backbone
from pipeline.models.builders import ARCHITECTURES, DEFAULT_ARCHITECTURE
from pipeline.models.heads import (
    assemble_feature_extraction_model,
    build_feature_head,
    build_fine_tune_model,
    set_trainable_from,
)
from pipeline.training.fit import HISTORY_KEYS, TrainingResult, compile_classifier, fit_model

logger = logging.getLogger(__name__)


def train_scratch(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    config: ScratchConfig,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainingResult:
    """A small CNN from scratch on the raw images."""
    model = ARCHITECTURES[DEFAULT_ARCHITECTURE].build(
        train[0].shape[1:],
        num_classes,
        conv_filters=config.conv_filters,
        dense_units=config.dense_units,
        dropout_rate=config.dropout_rate,
        augmentation=config.augmentation,
    )
    compile_classifier(model, config.optimizer, config.learning_rate)
    history = fit_model(
        model,
        train,
        val,
        epochs=config.epochs,
        batch_size=config.batch_size,
        early_stopping_patience=config.early_stopping_patience,
        callbacks=callbacks,
    )
    return TrainingResult(model, history)


def train_feature_extraction(
    extractor: keras.Model,
    train_features: tuple[np.ndarray, np.ndarray],
    val_features: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    config: FeatureExtractionConfig,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainingResult:
    """A dense head on cached conv-base features, then assembled with the extractor.

    The head never sees augmentation: features are computed once, which is the point of the
    strategy (Chollet's "fast feature extraction without data augmentation").
    """
    head = build_feature_head(
        train_features[0].shape[1:], num_classes, config.dense_units, config.dropout_rate
    )
    compile_classifier(head, config.optimizer, config.learning_rate)
    history = fit_model(
        head,
        train_features,
        val_features,
        epochs=config.epochs,
        batch_size=config.batch_size,
        early_stopping_patience=config.early_stopping_patience,
        callbacks=callbacks,
    )
    return TrainingResult(assemble_feature_extraction_model(extractor, head), history)


def train_fine_tune(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    backbone: Backbone,
    base: keras.Model,
    unfreeze_from: str,
    config: FineTuneConfig,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainingResult:
    """Phase 1 trains the new head on a frozen base; phase 2 also trains the base from
    `unfreeze_from` on, at a low learning rate. The history runs across both phases."""
    model = build_fine_tune_model(
        train[0].shape[1:],
        num_classes,
        backbone,
        base,
        dense_units=config.dense_units,
        dropout_rate=config.dropout_rate,
        augmentation=config.augmentation,
    )
    set_trainable_from(base, None)
    compile_classifier(model, config.optimizer, config.head_learning_rate)
    logger.info("fine_tune phase 1: %d epochs on the head, base frozen", config.head_epochs)
    head_history = fit_model(
        model,
        train,
        val,
        epochs=config.head_epochs,
        batch_size=config.batch_size,
        callbacks=callbacks,
    )
    set_trainable_from(base, unfreeze_from)
    # Recompiling is what makes the new trainable flags take effect.
    compile_classifier(model, config.optimizer, config.learning_rate)
    logger.info("fine_tune phase 2: %d epochs from %s on", config.epochs, unfreeze_from)
    tune_history = fit_model(
        model,
        train,
        val,
        epochs=config.epochs,
        batch_size=config.batch_size,
        early_stopping_patience=config.early_stopping_patience,
        callbacks=callbacks,
        initial_epoch=len(head_history["loss"]),
    )
    history = {key: head_history[key] + tune_history[key] for key in HISTORY_KEYS}
    return TrainingResult(model, history)


@dataclass(frozen=True)
class Strategy:
    """`train` fits the strategy's model. `uses_backbone`: built on a pretrained base, whose
    weights its runs report. `uses_features`: trained on the cached conv-base features of the
    features stage rather than on images."""

    name: str
    train: Callable[..., TrainingResult]
    uses_backbone: bool
    uses_features: bool


STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy
    for strategy in (
        Strategy("scratch", train_scratch, uses_backbone=False, uses_features=False),
        Strategy(
            "feature_extraction", train_feature_extraction, uses_backbone=True, uses_features=True
        ),
        Strategy("fine_tune", train_fine_tune, uses_backbone=True, uses_features=False),
    )
}
