"""Fitting: seeds, optimizers, early stopping and the per-epoch history, shared by every
strategy. Functions here take feed sources (`training.feed`) or arrays and plain values,
never params.yaml or paths."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import keras
import numpy as np

from pipeline.config import CLASS_WEIGHT_AUTO_RATIO
from pipeline.errors import ConfigError, DataError
from pipeline.models.outputs import is_single_unit
from pipeline.training.backup import TrainingBackup
from pipeline.training.feed import FeedSource, feeds_for
from pipeline.training.schedules import EpochLine, schedule_callbacks
from pipeline.training.workers import process_grid

logger = logging.getLogger(__name__)

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
"""Per-epoch values kept in history.csv and logged to MLflow, for every strategy alike."""


@dataclass
class TrainingResult:
    """The trained model and its per-epoch history (epoch numbers start at 0)."""

    model: keras.Model
    history: dict[str, list[float]] = field(default_factory=dict)
    phase_boundaries: list[int] = field(default_factory=list)
    """Epochs at which a new phase began (fine-tuning: after the head's epochs)."""
    first_kernel_before: np.ndarray | None = None
    """The first conv layer's kernel as initialised, before any training: the course shows
    the filters before and after."""
    class_weights: dict[int, float] | None = None
    """The weight of each class (by index) in the training loss, as `class_weight` resolved
    for the train split; None when the training was unweighted."""


def set_global_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and the backend; with `deterministic`, make TensorFlow's ops
    deterministic too, so two runs on a CPU give identical metrics."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        _enable_tensorflow_determinism()


def _enable_tensorflow_determinism() -> None:
    """TensorFlow-only: deterministic kernels (JAX on a CPU is deterministic already)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def resolve_class_weights(
    choice: str,
    labels: np.ndarray,
    num_classes: int,
    *,
    key: str = "class_weight",
    auto_ratio: float = CLASS_WEIGHT_AUTO_RATIO,
) -> tuple[dict[int, float] | None, str]:
    """`class_weight` (auto | none | balanced) resolved for the train split's `labels`: each
    class's weight in the loss (None: unweighted), and why, for the log.

    `balanced` is scikit-learn's `compute_class_weight("balanced")`, n / (k * count): every class
    then carries the same total weight. `auto` is balanced when the largest class has more than
    `auto_ratio` times the images of the smallest, and none otherwise, so that a balanced split
    trains exactly as it would unweighted. `key` names the setting in errors."""
    if choice == "none":
        return None, "none: unweighted"
    if choice not in ("auto", "balanced"):
        raise ConfigError(f"{key}: {choice!r} is not one of auto, none, balanced")
    labels = np.asarray(labels).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{key}: the train labels run from {labels.min()} to {labels.max()}, "
            f"outside the {num_classes} classes 0..{num_classes - 1}"
        )
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)
    missing = [index for index, count in enumerate(counts) if count == 0]
    if missing:
        absent = ", ".join(str(index) for index in missing)
        if choice == "auto":
            # A weight needs the class's images; the data gate fails on a class absent from a
            # split before training, so this is data that skipped it (a test, a notebook).
            return None, f"auto: class {absent} has no train images -> none"
        raise DataError(
            f"{key}: balanced needs images of every class, and class {absent} has none in the "
            f"train split (images per class: {counts.tolist()}): add images of it, or set "
            f"{key}: none"
        )
    ratio = float(counts.max() / counts.min())
    spread = f"largest class {ratio:.1f}x the smallest"
    if choice == "auto" and ratio <= auto_ratio:
        return None, f"auto: {spread} (at most {auto_ratio:g}x) -> none"
    # Imported here: scikit-learn takes a while to import, and only weighted runs need it.
    from sklearn.utils.class_weight import compute_class_weight

    values = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    weights = {index: float(value) for index, value in enumerate(values)}
    shown = "{" + ", ".join(f"{index}: {value:.4g}" for index, value in weights.items()) + "}"
    if choice == "auto":
        return weights, f"auto: {spread} -> balanced: {shown}"
    return weights, f"balanced ({spread}): {shown}"


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    optimizers = {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
    }
    return optimizers[name](learning_rate=learning_rate)


def compile_classifier(model: keras.Model, optimizer: str, learning_rate: float) -> None:
    """Binary cross-entropy for a one-unit sigmoid output (two classes), else sparse
    categorical cross-entropy; "accuracy" resolves to the matching accuracy either way."""
    binary = is_single_unit(model.output_shape)
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate),
        loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


@dataclass(frozen=True)
class FitOptions:
    """How to fit, from a `train.<strategy>` block: shared by every strategy and phase."""

    epochs: int
    batch_size: int
    early_stopping_patience: int = 0
    early_stopping_monitor: str = "val_loss"
    reduce_lr_patience: int = 0
    reduce_lr_factor: float = 0.2
    min_learning_rate: float = 1e-6
    class_weights: dict[int, float] | None = field(default=None, hash=False)
    """Each class's weight in the training loss (`resolve_class_weights`); None: unweighted.
    Validation is never weighted, so val_loss stays comparable across runs."""

    @classmethod
    def of(
        cls,
        block,
        epochs: int | None = None,
        schedules: bool = True,
        class_weights: dict[int, float] | None = None,
    ) -> FitOptions:
        """The options of a config block; `schedules=False` leaves out early stopping and
        the learning-rate schedule (fine-tuning's short head phase); `class_weights` as the
        strategy resolved them for its train split."""
        return cls(
            epochs=epochs or block.epochs,
            batch_size=block.batch_size,
            early_stopping_patience=block.early_stopping_patience if schedules else 0,
            early_stopping_monitor=block.early_stopping_monitor,
            reduce_lr_patience=block.reduce_lr.patience if schedules else 0,
            reduce_lr_factor=block.reduce_lr.factor,
            min_learning_rate=block.reduce_lr.min_learning_rate,
            class_weights=class_weights,
        )


class LearningRateLog(keras.callbacks.Callback):
    """Puts the learning rate an epoch ran at into its logs, so history.csv and MLflow show it
    for every strategy and phase (ReduceLROnPlateau alone adds it only where it runs)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            logs["learning_rate"] = float(rate)


def fit_model(
    model: keras.Model,
    train: FeedSource | tuple[np.ndarray, np.ndarray],
    val: FeedSource | tuple[np.ndarray, np.ndarray],
    options: FitOptions,
    *,
    seed: int = 0,
    callbacks: list[keras.callbacks.Callback] | None = None,
    initial_epoch: int = 0,
    backup: TrainingBackup | None = None,
    phase: str = "train",
    history_before: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """`model.fit` with validation data, the schedules in `options`, and a backup after every
    epoch. When `backup` holds this phase's state from a run that crashed, training resumes
    after its last finished epoch, weights and optimizer state restored, and the feed visits
    that epoch's images in the order it would have (`training.feed`: the order is a function
    of `seed` and the epoch). Returns the history of this phase's epochs (the resumed ones
    included)."""
    schedules = schedule_callbacks(options)
    # A terminal gets Keras' bar; a log (DVC, CI) one plain line per epoch, no escape codes.
    interactive = sys.stdout.isatty()
    callbacks = [
        LearningRateLog(),
        *schedules,
        *([] if interactive else [EpochLine()]),
        *(callbacks or []),
    ]
    earlier = {key: [] for key in HISTORY_KEYS}
    if backup is not None:
        # Restores only a snapshot of this phase; None leaves the model as built.
        state = backup.restore(model, phase=phase, resumables=schedules)
        if state is not None:
            before = len((history_before or {}).get("loss", []))
            earlier = {key: list(state.history.get(key, []))[before:] for key in HISTORY_KEYS}
            logger.warning(
                "resuming %s after epoch %d of %d, from the backup in %s",
                phase,
                state.epoch,
                initial_epoch + options.epochs,
                backup.directory,
            )
            initial_epoch = state.epoch
        so_far = {key: list((history_before or {}).get(key, [])) for key in HISTORY_KEYS}
        for key in HISTORY_KEYS:
            so_far[key] += earlier[key]
        # Last, so that the snapshot holds every other callback's view of the epoch.
        callbacks.append(backup.callback(phase, history_so_far=so_far, resumables=schedules))
    end_epoch = initial_epoch + options.epochs - len(earlier["loss"])
    # Across processes (initialize_workers), each reads its own shards and feeds its share of
    # every global batch.
    train_feed, val_feed = feeds_for(
        FeedSource.of(train),
        FeedSource.of(val),
        options.batch_size,
        seed=seed,
        first_epoch=initial_epoch,
        epochs=end_epoch - initial_epoch,
        process_grid=process_grid(),
    )
    try:
        history = model.fit(
            train_feed,
            steps_per_epoch=train_feed.steps_per_epoch,
            # The feed shuffles (per epoch, seeded); Keras' own shuffle would reorder its
            # batches across epochs.
            shuffle=False,
            validation_data=val_feed,
            # Keras turns these into per-sample weights of the training batches only (its
            # PyDataset adapter, on every backend; a one-unit sigmoid's labels 0/1 included).
            class_weight=options.class_weights,
            epochs=end_epoch,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=1 if interactive else 0,
        )
    finally:
        train_feed.close()
        val_feed.close()
    return {
        key: earlier[key] + [float(v) for v in history.history.get(key, [])] for key in HISTORY_KEYS
    }
