"""Fitting the three strategies: seeds, optimizers, early stopping, two-phase fine-tuning.

Functions here take arrays and typed config blocks, never params.yaml or paths.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import keras
import numpy as np

from pipeline.config import FeatureExtractionConfig, FineTuneConfig, ScratchConfig
from pipeline.models import (
    assemble_feature_extraction_model,
    build_feature_head,
    build_fine_tune_model,
    build_scratch_cnn,
    set_trainable_from,
)

logger = logging.getLogger(__name__)

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class TrainingResult:
    """The trained model and its per-epoch history (epoch numbers start at 0)."""

    model: keras.Model
    history: dict[str, list[float]] = field(default_factory=dict)


def set_global_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend; make TensorFlow's ops deterministic when it runs."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    optimizers = {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
    }
    return optimizers[name](learning_rate=learning_rate)


def compile_classifier(model: keras.Model, optimizer: str, learning_rate: float) -> None:
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def fit_model(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    early_stopping_patience: int = 0,
    callbacks: list[keras.callbacks.Callback] | None = None,
    initial_epoch: int = 0,
) -> dict[str, list[float]]:
    """`model.fit` with validation data and optional early stopping; returns the history."""
    callbacks = list(callbacks or [])
    if early_stopping_patience > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=early_stopping_patience, restore_best_weights=True
            )
        )
    history = model.fit(
        train[0],
        train[1],
        validation_data=val,
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        batch_size=batch_size,
        callbacks=callbacks,
        shuffle=True,
        # One line per epoch when logged to a file (DVC, CI); Keras' bar on a terminal.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return {key: [float(v) for v in history.history.get(key, [])] for key in HISTORY_KEYS}


def train_scratch(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    config: ScratchConfig,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainingResult:
    """A small CNN from scratch on the raw images."""
    model = build_scratch_cnn(
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
