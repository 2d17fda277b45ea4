"""A training process killed in the middle of an epoch resumes where it stopped: `dvc repro`
after a SIGKILL starts at the last finished epoch, optimizer state included, ends with the
full epoch count, continues the same MLflow run instead of starting a second one, and ends
with the history an uninterrupted training has."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest

from tests.project import dvc, make_project_copy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 6


def _six_scratch_epochs(params: dict) -> dict:
    params["train"]["scratch"].update(epochs=EPOCHS, early_stopping_patience=0)
    return params


def _backup_epoch(root: Path) -> int:
    """Epochs finished according to the newest complete snapshot (0 when there is none)."""
    states = sorted((root / ".pipeline" / "backup" / "scratch").glob("backup-*/state.json"))
    for state in reversed(states):
        try:
            return json.loads(state.read_text())["epoch"]
        except (OSError, ValueError):
            continue
    return 0


def _training_processes(parent: psutil.Process) -> list[psutil.Process]:
    """The train stage's processes under `parent`: the Python process, and the shell DVC
    runs it through when that shell does not exec its command (dash, when SHELL is unset)."""
    found = []
    for child in parent.children(recursive=True):
        try:
            if "pipeline.stages.train" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_killed_training_resumes_from_its_last_epoch_in_the_same_run(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    env = make_project_copy(root, _six_scratch_epochs)
    first = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train_scratch"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 600
    killed_after = None
    while time.monotonic() < deadline and first.poll() is None:
        if _backup_epoch(root) >= 2:
            trainers = _training_processes(psutil.Process(first.pid))
            if trainers:
                # Epoch 3 has just begun: a kill now lands in the middle of it. Every one is
                # killed, deepest first: killing only a shell would leave Python training on.
                for trainer in reversed(trainers):
                    os.kill(trainer.pid, signal.SIGKILL)
                killed_after = _backup_epoch(root)
                break
        time.sleep(0.02)
    output = first.communicate(timeout=120)[0]
    assert killed_after is not None, output[-3000:]
    assert 2 <= killed_after < EPOCHS
    assert first.returncode != 0  # DVC saw its stage die

    second = dvc(root, env, "repro", "train_scratch")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert f"resuming train after epoch {killed_after} of {EPOCHS}" in log
    assert f"Epoch {killed_after + 1}/{EPOCHS}" in log and "Epoch 1/" not in log

    history = pd.read_csv(root / "models" / "scratch" / "history.csv")
    assert history["epoch"].tolist() == list(range(EPOCHS))
    assert history["loss"].notna().all()
    # The backup is gone once the outputs are written.
    assert not (root / ".pipeline" / "backup" / "scratch").exists()

    run_id = json.loads((root / "models" / "scratch" / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    scratch_runs = [run for run in runs if run.data.tags.get("strategy") == "scratch"]
    assert [run.info.run_id for run in scratch_runs] == [run_id]
    assert scratch_runs[0].info.status == "FINISHED"
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(EPOCHS))

    # The same training never interrupted: the resumed one saw each epoch's images in the
    # same order (the feed's order is a function of the seed and the epoch), from the same
    # weights and optimizer state, so its history is the same, number for number.
    other = tmp_path / "uninterrupted"
    other.mkdir()
    other_env = make_project_copy(other, _six_scratch_epochs)
    whole = dvc(other, other_env, "repro", "train_scratch")
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    uninterrupted = pd.read_csv(other / "models" / "scratch" / "history.csv")
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[column].tolist() == uninterrupted[column].tolist(), column
