"""A training process for tests/code/test_backup.py's crash test: it trains a tiny model for
4 epochs with a `TrainingBackup`, resuming from it when there is one, and can SIGKILL itself
in the middle of an epoch, as the OOM killer or a preempted machine would.

    python -m tests.backup_worker BACKUP_DIR RESULT_JSON [--kill-at EPOCH BATCH]

On success it writes RESULT_JSON: where it started (epoch, optimizer step), the steps per
epoch, and the backup's history after the last epoch; then it clears the backup, as the
pipeline does once a model is saved.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402 - after the log level, which TensorFlow reads at import
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from pipeline.training.backup import TrainingBackup  # noqa: E402

EPOCHS = 4
SAMPLES = 64
BATCH_SIZE = 8
STEPS_PER_EPOCH = SAMPLES // BATCH_SIZE
FINGERPRINT = "crash-test"


class KillAt(keras.callbacks.Callback):
    """SIGKILL this process after batch `batch` (0-based) of epoch `epoch` (0-based): no
    cleanup, no `finally`, no callback after it runs, exactly as a real kill."""

    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.kill_epoch, self.kill_batch, self.epoch = epoch, batch, -1

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if (self.epoch, batch) == (self.kill_epoch, self.kill_batch):
            os.kill(os.getpid(), signal.SIGKILL)


def build_model() -> keras.Model:
    """A tiny convolutional classifier, compiled with Adam (which has per-weight moments)."""
    inputs = keras.Input(shape=(6, 6, 1))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    x = layers.Flatten()(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backup_dir", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--kill-at", type=int, nargs=2, metavar=("EPOCH", "BATCH"))
    arguments = parser.parse_args()

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((SAMPLES, 6, 6, 1), dtype=np.float32)
    y = rng.integers(0, 3, SAMPLES)
    model = build_model()
    backup = TrainingBackup(arguments.backup_dir, FINGERPRINT)
    state = backup.restore(model, phase="train")
    initial_epoch = state.epoch if state is not None else 0
    start_step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    callbacks = [backup.callback("train", history_so_far=state.history if state else None)]
    if arguments.kill_at:
        callbacks.append(KillAt(*arguments.kill_at))
    model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        verbose=0,
    )
    final = backup.load()
    arguments.result.write_text(
        json.dumps(
            {
                "initial_epoch": initial_epoch,
                "start_step": start_step,
                "end_step": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
                "steps_per_epoch": STEPS_PER_EPOCH,
                "epoch": final.epoch,
                "history": final.history,
            }
        )
    )
    backup.clear()


if __name__ == "__main__":
    main()
