"""TensorBoard logs of a training: one `epoch_loss` scalar per epoch, train and validation, on
one epoch axis across fine-tuning's two fits; the graph on TensorFlow; nothing (and one line
why) without TensorFlow; logs/<strategy>/<run> under the main project's root."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from pipeline.tracking.strategy_runs import tensorboard_directory
from pipeline.training import tensorboard as tensorboard_module
from pipeline.training.fit import FitOptions, fit_model
from pipeline.training.tensorboard import tensorboard_callback

tf = pytest.importorskip("tensorflow")


def _model() -> keras.Model:
    inputs = keras.Input(shape=(5,))
    outputs = layers.Dense(3, activation="softmax")(layers.Dense(4, activation="relu")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((24, 5), dtype=np.float32), rng.integers(0, 3, 24)


def _events(directory: Path) -> list:
    """Every Event record in the event files under `directory`."""
    from tensorboard.compat.proto import event_pb2

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            events.append(event_pb2.Event.FromString(record.numpy()))
    return events


def _scalar_steps(directory: Path, tag: str) -> list[int]:
    return sorted(
        event.step
        for event in _events(directory)
        for value in event.summary.value
        if value.tag == tag
    )


def test_one_loss_scalar_per_epoch_across_two_fits(tmp_path: Path) -> None:
    """Fine-tuning's head fit (2 epochs) then tune fit (3 more): one directory, epochs 0-4."""
    board = tensorboard_callback(tmp_path / "run")
    model = _model()
    fit_model(model, _data(0), _data(1), FitOptions(epochs=2, batch_size=8), callbacks=[board])
    fit_model(
        model,
        _data(0),
        _data(1),
        FitOptions(epochs=3, batch_size=8),
        callbacks=[board],
        initial_epoch=2,
    )
    assert _scalar_steps(tmp_path / "run" / "train", "epoch_loss") == [0, 1, 2, 3, 4]
    assert _scalar_steps(tmp_path / "run" / "validation", "epoch_loss") == [0, 1, 2, 3, 4]
    assert _scalar_steps(tmp_path / "run" / "train", "epoch_accuracy") == [0, 1, 2, 3, 4]
    if keras.backend.backend() == "tensorflow":
        assert any(event.graph_def for event in _events(tmp_path / "run" / "train"))


def test_without_tensorflow_nothing_is_written_and_the_log_says_why(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        tensorboard_module.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tensorflow" else real(name, *args),
    )
    with caplog.at_level(logging.INFO, logger=tensorboard_module.__name__):
        assert tensorboard_callback(tmp_path / "run") is None
    assert "needs TensorFlow, which is not installed" in caplog.text
    assert not (tmp_path / "run").exists()


def test_logs_go_under_the_main_project(tmp_path: Path, monkeypatch) -> None:
    """A queued DVC experiment runs in a copy; its logs land in the main project (DVC_ROOT),
    beside its MLflow runs."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tensorboard_directory(tmp_path, "scratch", "abc") == tmp_path / "logs/scratch/abc"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "main"))
    assert (
        tensorboard_directory(tmp_path / "copy", "fine_tune", "abc")
        == tmp_path / "main/logs/fine_tune/abc"
    )
