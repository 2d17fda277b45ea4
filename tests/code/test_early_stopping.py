"""Early stopping keeps the epoch the report would pick (best val_accuracy, ties broken by the
lower val_loss), says which epoch it kept and why, and survives a crash and resume: a resumed
training stops at the epoch an uninterrupted one stops at, with the same weights. A log that
is not a terminal gets one plain line per epoch."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from pipeline.training.backup import TrainingBackup
from pipeline.training.fit import FitOptions, fit_model, set_global_seed
from pipeline.training.schedules import BestEpochStopping
from tests.crash import CrashAt, Killed

# (val_accuracy, val_loss) per epoch: epoch 2 ties epoch 1's accuracy with a lower loss;
# epoch 4 has the lowest loss but a lower accuracy.
EPOCHS = [(0.90, 0.30), (0.95, 0.20), (0.95, 0.15), (0.95, 0.18), (0.94, 0.10)]


def _model() -> keras.Model:
    inputs = keras.Input(shape=(5,))
    hidden = layers.Dense(8, activation="relu")(inputs)
    outputs = layers.Dense(3, activation="softmax")(layers.Dropout(0.2)(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def _replay(monitor: str, patience: int) -> tuple[BestEpochStopping, keras.Model, list]:
    """Feed EPOCHS to the callback, the model's weights set to the epoch's number each time."""
    model = _model()
    stopping = BestEpochStopping(monitor, patience)
    stopping.set_model(model)
    stopping.on_train_begin()
    for epoch, (accuracy, loss) in enumerate(EPOCHS):
        model.set_weights([np.full(w.shape, epoch, w.dtype) for w in model.get_weights()])
        stopping.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
        if model.stop_training:
            break
    stopping.on_train_end()
    return stopping, model, model.get_weights()


def test_val_accuracy_ties_go_to_the_lower_val_loss(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="pipeline.training.fit"):
        stopping, model, weights = _replay("val_accuracy", patience=2)
    assert stopping.best_epoch == 2
    assert model.stop_training and stopping.stopped_epoch == 4
    assert all((w == 2).all() for w in weights)  # the kept epoch's weights, restored
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("early")]
    assert lines == [
        "early stopping: kept epoch 3 of 5 (best val_accuracy, ties broken by val_loss: "
        "val_accuracy 0.9500, val_loss 0.1500; stopped after 2 epochs without a better one)"
    ]


def test_val_loss_keeps_the_lowest_loss() -> None:
    stopping, model, weights = _replay("val_loss", patience=2)
    assert stopping.best_epoch == 4
    assert not model.stop_training
    assert all((w == 4).all() for w in weights)
    assert "kept epoch 5 of 5 (best val_loss" in stopping.describe()
    assert "ran every epoch" in stopping.describe()


def _noise(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((count, 5), dtype=np.float32), rng.integers(0, 3, count)


def _train(backup: TrainingBackup, options: FitOptions, callbacks=()) -> tuple:
    set_global_seed(3)
    model = _model()
    history = fit_model(
        model,
        _noise(48, 0),
        _noise(24, 1),
        options,
        seed=3,
        backup=backup,
        callbacks=list(callbacks),
    )
    return model, history


def test_a_resumed_training_stops_and_keeps_where_an_uninterrupted_one_does(
    tmp_path: Path, caplog
) -> None:
    options = FitOptions(epochs=30, batch_size=8, early_stopping_patience=3)
    with caplog.at_level(logging.INFO, logger="pipeline.training.fit"):
        whole, whole_history = _train(TrainingBackup(tmp_path / "a", "f"), options)
    kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith("early")]
    stopped = len(whole_history["loss"])
    assert stopped < 30, "the noise must make early stopping stop, or this test tests nothing"

    caplog.clear()
    backup = TrainingBackup(tmp_path / "b", "f")
    # Crash as the stopping epoch begins: the backup holds a patience count of 2 and a best
    # epoch before it, which the resumed run must know to stop where the whole one did.
    with pytest.raises(Killed):
        _train(backup, options, [CrashAt(stopped - 1)])
    state = backup.load()
    assert state.callbacks["early_stopping"]["wait"] == 2
    with caplog.at_level(logging.INFO, logger="pipeline.training.fit"):
        resumed, resumed_history = _train(backup, options)
    assert resumed_history == whole_history
    for a, b in zip(resumed.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("early")] == kept


def test_a_log_gets_one_plain_line_per_epoch(capfd, caplog) -> None:
    """Under pytest stdout is no terminal, as under DVC: no Keras bar, no escape codes."""
    options = FitOptions(epochs=3, batch_size=8)
    with caplog.at_level(logging.INFO, logger="pipeline.training.fit"):
        fit_model(_model(), _noise(48, 0), _noise(24, 1), options, seed=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Epoch ")]
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all("val_accuracy: " in line and "learning_rate: " in line for line in lines)
    captured = capfd.readouterr()
    for text in (captured.out, captured.err, *lines):
        assert "\x1b" not in text and "\r" not in text
