"""The callbacks that decide when training stops and how fast it learns, and the plain progress
line: early stopping on the report's own criterion, ReduceLROnPlateau on val_loss, both
resumable from a training backup (`training.backup`), so a resumed run stops where an
uninterrupted one would."""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np

logger = logging.getLogger("pipeline.training.fit")


class BestEpochStopping(keras.callbacks.Callback):
    """Stops after `patience` epochs without a better epoch and restores the best epoch's
    weights. With `val_accuracy`, better is a higher val_accuracy, or the same with a lower
    val_loss (small validation sets tie a lot); with `val_loss`, a lower val_loss.

    Logs one line at the end saying which epoch it kept and why. Its state (best epoch, its
    values and weights, the patience count) goes into every training backup, so a resumed run
    keeps what the crashed one had found."""

    resume_key = "early_stopping"

    def __init__(self, monitor: str = "val_accuracy", patience: int = 15) -> None:
        super().__init__()
        if monitor not in ("val_accuracy", "val_loss"):
            raise ValueError(f"monitor must be val_accuracy or val_loss, got {monitor!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self._pending: tuple[dict, list[np.ndarray] | None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.best_epoch: int | None = None
        self.best: dict[str, float] = {}
        self.best_weights: list[np.ndarray] | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.last_epoch: int | None = None

    def is_better(self, accuracy: float, loss: float) -> bool:
        """Whether an epoch with these validation values beats the best so far."""
        if self.best_epoch is None:
            return True
        if self.monitor == "val_loss":
            return loss < self.best["val_loss"]
        best_accuracy, best_loss = self.best["val_accuracy"], self.best["val_loss"]
        return accuracy > best_accuracy or (accuracy == best_accuracy and loss < best_loss)

    def on_train_begin(self, logs: dict | None = None) -> None:
        # Keras calls this at every fit: a state restored from a backup is applied here.
        self._reset()
        if self._pending is not None:
            state, arrays = self._pending
            self._pending = None
            self.best_epoch = state.get("best_epoch")
            self.best = {key: float(value) for key, value in state.get("best", {}).items()}
            self.wait = int(state.get("wait", 0))
            self.best_weights = arrays

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.last_epoch = epoch
        accuracy, loss = logs.get("val_accuracy"), logs.get("val_loss")
        if accuracy is None or loss is None:
            logger.warning("early stopping needs val_accuracy and val_loss: not applied")
            return
        accuracy, loss = float(accuracy), float(loss)
        if math.isnan(loss):
            self.wait += 1
        elif self.is_better(accuracy, loss):
            self.best_epoch = epoch
            self.best = {"val_accuracy": accuracy, "val_loss": loss}
            self.best_weights = self.model.get_weights()
            self.wait = 0
            return
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_epoch is None or self.last_epoch is None:
            return
        if self.best_weights is not None and self.best_epoch != self.last_epoch:
            self.model.set_weights(self.best_weights)
        logger.info("early stopping: %s", self.describe())

    def describe(self) -> str:
        """Which epoch was kept and why, epochs counted from 1 as the progress lines do."""
        why = (
            f"stopped after {self.patience} epochs without a better one"
            if self.stopped_epoch is not None
            else "ran every epoch"
        )
        return (
            f"kept epoch {self.best_epoch + 1} of {self.last_epoch + 1} (best {self.monitor}"
            f"{', ties broken by val_loss' if self.monitor == 'val_accuracy' else ''}: "
            f"val_accuracy {self.best['val_accuracy']:.4f}, val_loss {self.best['val_loss']:.4f}"
            f"; {why})"
        )

    # --- the training backup's protocol (training.backup.Resumable) ---------------------------

    def get_resume_state(self) -> dict:
        return {
            "best_epoch": self.best_epoch,
            "best": dict(self.best),
            "wait": self.wait,
            # The backup rewrites the weights only when this changes.
            "arrays_version": self.best_epoch,
        }

    def get_resume_arrays(self) -> list[np.ndarray] | None:
        return self.best_weights

    def set_resume_state(self, state: dict, arrays: list[np.ndarray] | None) -> None:
        self._pending = (state, arrays)


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras' ReduceLROnPlateau whose counters (best, wait, cooldown) survive a resume; the
    reduced rate itself is an optimizer variable, which the backup restores anyway."""

    resume_key = "reduce_lr"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self._pending is not None:
            best = self._pending.get("best")
            self.best = None if best is None else float(best)
            self.wait = int(self._pending.get("wait", 0))
            self.cooldown_counter = int(self._pending.get("cooldown_counter", 0))
            self._pending = None

    def get_resume_state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"best": best, "wait": int(self.wait), "cooldown_counter": self.cooldown_counter}

    def get_resume_arrays(self) -> list[np.ndarray] | None:
        return None

    def set_resume_state(self, state: dict, arrays: list[np.ndarray] | None) -> None:
        self._pending = dict(state)


class EpochLine(keras.callbacks.Callback):
    """One plain log line per epoch, for logs that are not a terminal (DVC's, CI's): Keras'
    own verbose=2 prints two lines per epoch and its bar is full of escape codes."""

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " - ".join(
            f"{key}: {float(value):.4g}"
            for key, value in (logs or {}).items()
            if isinstance(value, (int, float, np.floating))
        )
        logger.info(
            "Epoch %d/%s - %.1fs - %s",
            epoch + 1,
            self.params.get("epochs", "?"),
            time.monotonic() - self.started,
            values,
        )


def schedule_callbacks(options) -> list[keras.callbacks.Callback]:
    """Early stopping (best epoch restored) and ReduceLROnPlateau (on val_loss), each when
    `options` (a `fit.FitOptions`) asks for it."""
    callbacks: list[keras.callbacks.Callback] = []
    if options.early_stopping_patience > 0:
        callbacks.append(
            BestEpochStopping(options.early_stopping_monitor, options.early_stopping_patience)
        )
    if options.reduce_lr_patience > 0:
        callbacks.append(
            ResumableReduceLROnPlateau(
                monitor="val_loss",
                factor=options.reduce_lr_factor,
                patience=options.reduce_lr_patience,
                min_lr=options.min_learning_rate,
            )
        )
    return callbacks
