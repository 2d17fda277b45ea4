"""`pipeline sync-mlflow`: log what a lost tracking server missed, from the DVC outs.

A strategy whose run.json says `tracked: false` (the server dropped during training) is logged
as a fresh run with the same name, tags and params, its per-epoch history, its model and, once
evaluated, its test metrics and report files: the run it would have been. The partial run, if
the server kept one, is marked FAILED and points at its replacement. A tracked run that missed
its evaluation gets it. Running it twice logs nothing twice: what was synced is remembered in
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
from pipeline.evaluation.report import EVALUATED_MODEL_FILE, EVALUATED_TAG, EVALUATION_ARTIFACTS
from pipeline.store import (
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    RUN_FILE,
    load_split,
    read_json,
    sha256_of,
    split_paths,
    write_json,
)
from pipeline.tracking.runs import (
    VALIDATION_ARTIFACT,
    configure_tracking,
    log_history,
    log_keras_model,
    numeric_metrics,
)

logger = logging.getLogger(__name__)

SYNC_STATE_FILE = ".pipeline/synced_runs.json"


@dataclass(frozen=True)
class SyncOutcome:
    strategy: str
    run_id: str
    actions: tuple[str, ...]


def sync_runs(root: Path, paths: dict[str, str]) -> list[SyncOutcome]:
    """Bring every strategy's MLflow run up to date with its DVC outs; return what was done."""
    configure_tracking(root)
    client = mlflow.MlflowClient()
    state_file = root / SYNC_STATE_FILE
    state = read_json(state_file) if state_file.is_file() else {}
    outcomes = []
    for strategy in STRATEGY_NAMES:
        model_dir = root / paths["models"] / strategy
        if not (model_dir / RUN_FILE).is_file():
            continue
        record = read_json(model_dir / RUN_FILE)
        fingerprint = sha256_of(model_dir / RUN_FILE)
        actions = []
        run_id = _existing_run(client, record, state.get(strategy), fingerprint)
        if run_id is None:
            run_id = _log_training(client, root, paths, strategy, model_dir, record)
            state[strategy] = {"run_json": fingerprint, "run_id": run_id}
            write_json(state_file, state)
            actions.append(f"logged the training run {run_id}")
        report_dir = root / paths["reports"] / strategy
        evaluated = (report_dir / EVALUATED_MODEL_FILE).is_file()
        if evaluated and not _evaluated(report_dir, model_dir):
            actions.append("its evaluation is of another model: run `dvc repro`, then sync again")
        elif evaluated and EVALUATED_TAG not in client.get_run(run_id).data.tags:
            evaluation = read_json(report_dir / EVALUATED_MODEL_FILE)
            numbers = numeric_metrics({**evaluation["metrics"], **evaluation["mlflow_metrics"]})
            for key, value in numbers.items():
                client.log_metric(run_id, key, value)
            client.log_artifacts(run_id, str(report_dir), EVALUATION_ARTIFACTS)
            client.set_tag(run_id, EVALUATED_TAG, "true")
            actions.append("logged its evaluation")
        outcomes.append(SyncOutcome(strategy, run_id, tuple(actions) or ("up to date",)))
    return outcomes


def _evaluated(report_dir: Path, model_dir: Path) -> bool:
    """Whether the report folder describes the model now in the model folder."""
    marker = report_dir / EVALUATED_MODEL_FILE
    if not marker.is_file():
        return False
    return read_json(marker).get("model_sha256") == sha256_of(model_dir / MODEL_FILE)


def _existing_run(client, record: dict, synced: dict | None, fingerprint: str) -> str | None:
    """The run that already holds this training: the original if tracked, else an earlier sync."""
    candidates = []
    if record.get("tracked", True) and record.get("run_id"):
        candidates.append(record["run_id"])
    if synced and synced.get("run_json") == fingerprint:
        candidates.append(synced["run_id"])
    for run_id in candidates:
        try:
            client.get_run(run_id)
        except MlflowException:
            continue
        return run_id
    return None


def _log_training(
    client, root: Path, paths: dict, strategy: str, model_dir: Path, record: dict
) -> str:
    """Log a strategy's training from its model folder as a new, finished run."""
    experiment = mlflow.set_experiment(record["experiment_name"])
    tags = {**record["tags"], "pipeline.synced": "true"}
    original = record.get("run_id")
    if original:
        tags["pipeline.original_run_id"] = original
    run = client.create_run(experiment.experiment_id, run_name=record["run_name"], tags=tags)
    run_id = run.info.run_id
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(record["params"])
        if record.get("validation_summary") is not None:
            mlflow.log_dict(record["validation_summary"], VALIDATION_ARTIFACT)
        history = pd.read_csv(model_dir / HISTORY_FILE)
        log_history({column: history[column].tolist() for column in history.columns})
        if (model_dir / MANIFEST_FILE).is_file():
            mlflow.log_artifact(str(model_dir / MANIFEST_FILE))
        model = keras.saving.load_model(model_dir / MODEL_FILE)
        log_keras_model(model, _input_example(root, paths, model))
    if original:
        try:
            client.set_terminated(original, "FAILED")
            client.set_tag(original, "pipeline.superseded_by", run_id)
        except MlflowException:
            logger.info("%s: the partial run %s is not on this server", strategy, original)
    return run_id


def _input_example(root: Path, paths: dict, model: keras.Model) -> np.ndarray:
    """Two test images, as the train stage logs; zeros of the model's input shape without them."""
    test_file = split_paths(root / paths["prepared"])["test"]
    if test_file.is_file():
        return load_split(test_file).x[:2]
    return np.zeros((2, *model.input_shape[1:]), dtype=np.uint8)
