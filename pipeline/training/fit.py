"""Fitting: seeds, optimizers, early stopping and the per-epoch history, shared by every
strategy. Functions here take arrays and plain values, never params.yaml or paths."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import keras
import numpy as np

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
