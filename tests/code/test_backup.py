"""Resumable training: `TrainingBackup` saves weights, optimizer state and history after every
epoch, atomically, and a process killed mid-epoch resumes where the last epoch ended."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from pipeline.errors import PipelineError
from pipeline.training import backup as backup_module
from pipeline.training.backup import (
    OPTIMIZER_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    BackupState,
    TrainingBackup,
)
from tests import backup_worker

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLES, BATCH_SIZE = 32, 8
STEPS = SAMPLES // BATCH_SIZE


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((SAMPLES, 5), dtype=np.float32), rng.integers(0, 3, SAMPLES)


def _model(optimizer: str = "adam", frozen_first: bool = False) -> keras.Model:
    """A tiny two-layer classifier; `frozen_first` freezes its first layer, as the head phase
    of a fine-tuning freezes the base."""
    inputs = keras.Input(shape=(5,))
    hidden = layers.Dense(4, activation="relu")
    outputs = layers.Dense(3, activation="softmax")(hidden(inputs))
    model = keras.Model(inputs, outputs)
    hidden.trainable = not frozen_first
    optimizers = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}
    model.compile(optimizers[optimizer](learning_rate=1e-2), "sparse_categorical_crossentropy")
    return model


def _fit(model: keras.Model, epochs: int, callbacks: list, initial_epoch: int = 0) -> None:
    x, y = _data()
    model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        verbose=0,
    )


def _values(variables) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(variable) for variable in variables]


def _assert_same(left: list[np.ndarray], right: list[np.ndarray]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_restore_gives_the_saved_weights_and_optimizer_state(
    tmp_path: Path, optimizer: str
) -> None:
    backup = TrainingBackup(tmp_path / "backup", "fingerprint-a")
    trained = _model(optimizer)
    _fit(trained, 2, [backup.callback("train", meta={"run_id": "abc"})])

    fresh = _model(optimizer)
    assert not fresh.optimizer.built
    state = backup.restore(fresh)

    assert state == BackupState(
        epoch=2, phase="train", history=state.history, meta={"run_id": "abc"}
    )
    assert len(state.history["loss"]) == 2
    _assert_same(_values(fresh.weights), _values(trained.weights))
    _assert_same(_values(fresh.optimizer.variables), _values(trained.optimizer.variables))
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 2 * STEPS
    # The slots (moments) are restored, not only the step: they are nonzero after training.
    assert any(np.abs(value).sum() > 0 for value in _values(fresh.optimizer.variables[2:]))


def test_a_resumed_fit_draws_the_dropout_masks_an_uninterrupted_one_draws(tmp_path: Path) -> None:
    """The seed generators' states (dropout's) are in the snapshot: two epochs, then a resume
    for the third, end at the weights of three epochs straight, to the bit."""

    def dropout_model() -> keras.Model:
        keras.utils.set_random_seed(3)
        inputs = keras.Input(shape=(5,))
        hidden = layers.Dropout(0.5)(layers.Dense(8, activation="relu")(inputs))
        model = keras.Model(inputs, layers.Dense(3, activation="softmax")(hidden))
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
        return model

    x, y = _data()
    straight = dropout_model()
    straight.fit(x, y, batch_size=BATCH_SIZE, epochs=3, shuffle=False, verbose=0)

    backup = TrainingBackup(tmp_path / "backup", "fingerprint-a")
    first = dropout_model()
    first.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[backup.callback("train")],
    )
    resumed = dropout_model()
    assert backup.restore(resumed).epoch == 2
    resumed.fit(x, y, batch_size=BATCH_SIZE, epochs=3, initial_epoch=2, shuffle=False, verbose=0)
    _assert_same(_values(resumed.weights), _values(straight.weights))


def test_optimizer_variables_keep_one_order_between_builds() -> None:
    """The .npz is matched by position: two builds of one model give the same layout
    (iteration, learning rate, then each trainable variable's slots), names aside."""
    layouts = []
    for _ in range(2):
        model = _model("adam")
        model.optimizer.build(model.trainable_variables)
        layouts.append([tuple(v.shape) for v in model.optimizer.variables])
        names = [v.path.split("/")[-1] for v in model.optimizer.variables]
    assert layouts[0] == layouts[1]
    assert names[:2] == ["iteration", "learning_rate"]
    assert len(layouts[0]) == 2 + 2 * len(model.trainable_variables)


def test_the_history_runs_on_across_a_resume_and_a_phase(tmp_path: Path) -> None:
    backup = TrainingBackup(tmp_path / "backup", "fingerprint-a")
    model = _model()
    _fit(model, 1, [backup.callback("head")])
    head = backup.load()
    _fit(model, 3, [backup.callback("tune", history_so_far=head.history)], initial_epoch=1)
    state = backup.load()
    assert (state.epoch, state.phase) == (3, "tune")
    assert len(state.history["loss"]) == 3
    assert state.history["loss"][0] == head.history["loss"][0]


def test_a_backup_of_another_training_is_ignored_and_removed(tmp_path: Path) -> None:
    directory = tmp_path / "backup"
    _fit(_model(), 1, [TrainingBackup(directory, "params-v1").callback("train")])
    model = _model()
    before = _values(model.weights)

    assert TrainingBackup(directory, "params-v2").restore(model) is None

    _assert_same(_values(model.weights), before)
    assert not directory.exists()


def test_a_backup_of_another_phase_is_not_restored(tmp_path: Path) -> None:
    """The caller skips the head phase when the backup says "tune"; restoring a tune backup
    into the head phase's model is refused, the model left as it was."""
    backup = TrainingBackup(tmp_path / "backup", "fingerprint-a")
    _fit(_model(), 1, [backup.callback("tune")])
    head_model = _model(frozen_first=True)
    before = _values(head_model.weights)

    assert backup.restore(head_model, phase="head") is None

    _assert_same(_values(head_model.weights), before)
    assert backup.load().phase == "tune"


def test_a_backup_that_does_not_fit_the_model_names_the_fix(tmp_path: Path) -> None:
    """Other trainable variables (another phase's freezing) give another optimizer layout."""
    backup = TrainingBackup(tmp_path / "backup", "fingerprint-a")
    _fit(_model(), 1, [backup.callback("train")])
    with pytest.raises(PipelineError, match=r"does not fit this model.*Delete"):
        backup.restore(_model(frozen_first=True))


def test_a_kill_during_a_save_leaves_the_last_complete_backup(tmp_path: Path) -> None:
    directory = tmp_path / "backup"
    backup = TrainingBackup(directory, "fingerprint-a")
    trained = _model()
    _fit(trained, 1, [backup.callback("train")])
    saved = _values(trained.weights)
    complete = next(directory.glob("backup-*"))
    # What SIGKILL leaves during a save: a staging folder with a truncated weights file and
    # no state.json (the rename never happened).
    staging = directory / ".backup-000002.killed"
    staging.mkdir()
    data = (complete / WEIGHTS_FILE).read_bytes()
    (staging / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])

    model = _model()
    state = backup.restore(model)

    assert state.epoch == 1
    _assert_same(_values(model.weights), saved)
    # The next save clears the leftover.
    backup.save(model, BackupState(epoch=2, phase="train"))
    assert [entry.name for entry in directory.iterdir()] == ["backup-000002"]


def test_a_save_that_fails_midway_leaves_the_last_complete_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "backup"
    backup = TrainingBackup(directory, "fingerprint-a")
    model = _model()
    _fit(model, 1, [backup.callback("train")])

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(backup_module.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        backup.save(model, BackupState(epoch=2, phase="train"))

    assert backup.load().epoch == 1
    assert [entry.name for entry in directory.iterdir()] == ["backup-000001"]


def test_a_damaged_newest_snapshot_falls_back_to_the_one_before(tmp_path: Path) -> None:
    """A snapshot whose files no longer match their checksums (a disk error, a truncated
    copy) is passed over by `load` and `restore` alike, so both agree on the epoch."""
    directory = tmp_path / "backup"
    backup = TrainingBackup(directory, "fingerprint-a")
    trained = _model()
    _fit(trained, 1, [backup.callback("train")])
    saved = _values(trained.weights)
    damaged = directory / "backup-000002"
    shutil.copytree(directory / "backup-000001", damaged)
    payload = json.loads((damaged / STATE_FILE).read_text())
    (damaged / STATE_FILE).write_text(json.dumps({**payload, "epoch": 2}))
    (damaged / OPTIMIZER_FILE).write_bytes(b"truncated")

    model = _model()
    state = backup.restore(model)

    assert state.epoch == backup.load().epoch == 1
    _assert_same(_values(model.weights), saved)


def test_clear_removes_the_backup(tmp_path: Path) -> None:
    backup = TrainingBackup(tmp_path / "backup", "fingerprint-a")
    _fit(_model(), 1, [backup.callback("train")])
    backup.clear()
    assert backup.load() is None
    assert not (tmp_path / "backup").exists()


def _run_worker(backup_dir: Path, result: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.backup_worker", str(backup_dir), str(result), *extra],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_process_killed_mid_epoch_resumes_at_the_last_finished_epoch(tmp_path: Path) -> None:
    backup_dir, result = tmp_path / "backup", tmp_path / "result.json"
    steps = backup_worker.STEPS_PER_EPOCH

    killed = _run_worker(backup_dir, result, "--kill-at", "2", "3")

    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not result.exists()
    left = TrainingBackup(backup_dir, backup_worker.FINGERPRINT).load()
    assert left.epoch == 2
    assert len(left.history["loss"]) == 2

    resumed = _run_worker(backup_dir, result)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads(result.read_text())
    assert report["initial_epoch"] == 2
    assert report["start_step"] == 2 * steps
    assert report["end_step"] == backup_worker.EPOCHS * steps
    assert report["epoch"] == backup_worker.EPOCHS
    assert len(report["history"]["loss"]) == backup_worker.EPOCHS
    assert report["history"]["loss"][:2] == left.history["loss"]
    assert not backup_dir.exists()


class _Best:
    """A resumable callback: arrays that change only when `version` does."""

    resume_key = "best"

    def __init__(self) -> None:
        self.version = 0
        self.restored: tuple | None = None

    def get_resume_state(self) -> dict:
        return {"arrays_version": self.version, "wait": 3}

    def get_resume_arrays(self) -> list[np.ndarray]:
        return [np.full((2, 2), self.version, np.float32)]

    def set_resume_state(self, state: dict, arrays) -> None:
        self.restored = (state, arrays)


def test_callback_arrays_are_linked_while_unchanged_and_restored(tmp_path: Path) -> None:
    """Early stopping's best weights change rarely: a snapshot links the previous file rather
    than writing it again, and a restore hands state and arrays back to the callback."""
    backup = TrainingBackup(tmp_path / "backup", "fingerprint-a")
    model = _model()
    _fit(model, 1, [])
    best = _Best()
    first = backup.save(model, BackupState(1, "train"), [best])
    inode = (first / "callback-best.npz").stat().st_ino
    second = backup.save(model, BackupState(2, "train"), [best])
    assert (second / "callback-best.npz").stat().st_ino == inode
    best.version = 1
    third = backup.save(model, BackupState(3, "train"), [best])
    assert (third / "callback-best.npz").stat().st_ino != inode

    other = _Best()
    state = backup.restore(_model(), phase="train", resumables=[other])
    assert state.callbacks == {"best": {"arrays_version": 1, "wait": 3}}
    assert other.restored[0] == {"arrays_version": 1, "wait": 3}
    np.testing.assert_array_equal(other.restored[1][0], np.ones((2, 2), np.float32))
