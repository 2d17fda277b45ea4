"""`pipeline sync-mlflow`: log what a lost tracking server missed, from the DVC outs.

A strategy whose run record says `tracked: false` (the server dropped during training) is
logged as a fresh run with the same name, tags and params, its per-epoch history, its model
and, once evaluated, its evaluation: the run it would have been, logged by the same functions
as the train and evaluate stages (pipeline/tracking/strategy_runs.py). The partial run, if the
server kept one, is marked FAILED and points at its replacement. A tracked run that missed its
evaluation gets it. Running it twice logs nothing twice: what was synced is remembered in
.pipeline/synced_runs.json (not in the DVC outs, which would make DVC retrain).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from pipeline.config import STRATEGY_NAMES
from pipeline.evaluation.layout import EVALUATION_JSON
from pipeline.store import (
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILE,
    STORE_FILE,
    open_split,
    read_json,
    sha256_of,
    write_json,
)
from pipeline.tracking.record import RunRecord
from pipeline.tracking.runs import configure_tracking, create_run
from pipeline.tracking.strategy_runs import (
    ORIGINAL_RUN_TAG,
    SUPERSEDED_TAG,
    SYNCED_TAG,
    input_example,
    is_evaluated,
    log_calibration,
    log_epoch_metrics,
    log_evaluation,
    log_tensorboard_logs,
    log_training_inputs,
    log_training_outputs,
    tensorboard_directory,
)

logger = logging.getLogger(__name__)

SYNC_STATE_FILE = ".pipeline/synced_runs.json"


@dataclass(frozen=True)
class SyncOutcome:
    strategy: str
    run_id: str
    actions: tuple[str, ...]


def sync_runs(
    root: Path, paths: dict[str, str], strategies: tuple[str, ...] = STRATEGY_NAMES
) -> list[SyncOutcome]:
    """Bring every strategy's MLflow run up to date with its DVC outs; return what was done."""
    configure_tracking(root)
    client = mlflow.MlflowClient()
    state_file = root / SYNC_STATE_FILE
    state = read_json(state_file) if state_file.is_file() else {}
    outcomes = []
    for strategy in strategies:
        model_dir = root / paths["models"] / strategy
        if not (model_dir / RUN_FILE).is_file():
            continue
        record = RunRecord.read(model_dir)
        fingerprint = sha256_of(model_dir / RUN_FILE)
        experiment_id = configure_tracking(root, record.experiment_name)
        actions = []
        run_id = _existing_run(client, record, state.get(strategy), fingerprint)
        if run_id is None:
            example = _input_example(root, paths, model_dir)
            board_dir = tensorboard_directory(root, strategy, record.run_id)
            run_id = log_training_run(record, model_dir, example, experiment_id, board_dir)
            state[strategy] = {"run_json": fingerprint, "run_id": run_id}
            write_json(state_file, state)
            actions.append(f"logged the training run {run_id}")
        report_dir = root / paths["reports"] / strategy
        evaluation_file = report_dir / EVALUATION_JSON
        evaluation = read_json(evaluation_file) if evaluation_file.is_file() else None
        if evaluation is not None and not _evaluates(evaluation, model_dir):
            actions.append("its evaluation is of another model: run `dvc repro`, then sync again")
        elif evaluation is not None and not is_evaluated(run_id):
            tags = {"dataset": record.tags.get("dataset", "pipeline")}
            if log_evaluation(run_id, evaluation, report_dir, experiment_id, tags) is None:
                actions.append("lost the server while logging its evaluation: sync again")
            else:
                actions.append("logged its evaluation")
        outcomes.append(SyncOutcome(strategy, run_id, tuple(actions) or ("up to date",)))
    return outcomes


def log_training_run(
    record: RunRecord,
    model_dir: Path,
    example: np.ndarray,
    experiment_id: str,
    board_dir: Path | None = None,
) -> str:
    """Log a strategy's training from its model folder (and its TensorBoard logs in
    `board_dir`, when there) as a new, finished run, as the train stage would have; mark the
    partial run it replaces. Return the new run's id."""
    tags = {**record.tags, SYNCED_TAG: "true", ORIGINAL_RUN_TAG: record.run_id}
    run_id = create_run(experiment_id, record.run_name, tags)
    with mlflow.start_run(run_id=run_id):
        log_training_inputs(record.params, record.validation_summary)
        history = pd.read_csv(model_dir / HISTORY_FILE)
        for step, row in enumerate(history.drop(columns="epoch").to_dict("records")):
            log_epoch_metrics(row, step)
        log_calibration(record.calibration_metrics())
        model = keras.saving.load_model(model_dir / MODEL_FILE)
        log_training_outputs(model_dir, model, example)
        if board_dir is not None:
            log_tensorboard_logs(board_dir)
    client = mlflow.MlflowClient()
    try:
        client.set_terminated(record.run_id, "FAILED")
        client.set_tag(record.run_id, SUPERSEDED_TAG, run_id)
    except MlflowException:
        logger.info("%s: the partial run %s is not on this server", record.strategy, record.run_id)
    return run_id


def _evaluates(evaluation: dict, model_dir: Path) -> bool:
    """Whether an evaluation (evaluation.json's dict) is of the model now in the model folder."""
    return evaluation.get("model_sha256") == sha256_of(model_dir / MODEL_FILE)


def _existing_run(client, record: RunRecord, synced: dict | None, fingerprint: str) -> str | None:
    """The run that already holds this training: the original if tracked, else an earlier sync."""
    candidates = []
    if record.tracked:
        candidates.append(record.run_id)
    if synced and synced.get("run_json") == fingerprint:
        candidates.append(synced["run_id"])
    for run_id in candidates:
        try:
            client.get_run(run_id)
        except MlflowException:
            continue
        return run_id
    return None


def _input_example(root: Path, paths: dict, model_dir: Path) -> np.ndarray:
    """Two test images (fewer in a smaller split), as the train stage logs, read alone; zeros
    of the model's input shape without any."""
    prepared = root / paths["prepared"]
    if (prepared / STORE_FILE).is_file():
        test = open_split(prepared, "test")
        try:
            if len(test):
                return input_example(test)
        finally:
            test.close()
    model = keras.saving.load_model(model_dir / MODEL_FILE)
    return np.zeros((2, *model.input_shape[1:]), dtype=np.uint8)
