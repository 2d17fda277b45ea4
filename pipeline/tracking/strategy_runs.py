"""What a strategy's MLflow run holds, logged by one set of functions: live, by the train and
evaluate stages, and replayed from the DVC outs by `pipeline sync-mlflow`. So a synced run
is the run it would have been: the same params, metric keys, artifacts and tags.

Each function logs into the active run (`RunRecorder.active` or `mlflow.start_run`), except
`log_evaluation`, which chooses its run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import numpy as np

from pipeline.store import CLASSES_FILE, MANIFEST_FILE, ImageSplit
from pipeline.tracking.runs import RunRecorder, create_run, log_keras_model, numeric_metrics
from pipeline.tracking.server import store_root

logger = logging.getLogger(__name__)

VALIDATION_ARTIFACT = "validation/summary.json"
"""Where a strategy's run keeps the data gate's summary of the data it trained on."""

EVALUATION_ARTIFACTS = "evaluation"
"""The artifact folder of a run that holds a strategy's report folder."""
EVALUATED_TAG = "pipeline.evaluated"
"""Set on a run once it holds an evaluation: later executions never write to it again."""
EVALUATES_RUN_TAG = "pipeline.evaluates_run"
"""On a re-evaluation's own run: the training run whose model it evaluated."""
SYNCED_TAG = "pipeline.synced"
"""On a run that `pipeline sync-mlflow` logged from the DVC outs."""
ORIGINAL_RUN_TAG = "pipeline.original_run_id"
"""On a synced run: the partial run the lost server kept, if any."""
SUPERSEDED_TAG = "pipeline.superseded_by"
"""On that partial run: the synced run that replaces it."""


def input_example(split: ImageSplit) -> np.ndarray:
    """The images a logged or registered model shows as its input example: the split's first
    two (fewer in a smaller split), read alone. The train stage, the registry and
    `pipeline sync-mlflow` all log these, so a synced run is the run it would have been."""
    return split.read(np.arange(min(2, len(split))))


def log_training_inputs(params: dict, validation_summary: dict | None) -> None:
    """The run's params and the data gate's summary of the data it trained on."""
    mlflow.log_params(params)
    if validation_summary is not None:
        mlflow.log_dict(validation_summary, VALIDATION_ARTIFACT)


def log_epoch_metrics(values: dict[str, float], step: int) -> None:
    """One epoch's history (the columns of history.csv), step = epoch."""
    mlflow.log_metrics(numeric_metrics(values), step=step)


def log_calibration(values: dict[str, float]) -> None:
    """The temperature folded into the model and the val NLL before and after it
    (RunRecord.calibration_metrics), as metrics of the training run."""
    mlflow.log_metrics(numeric_metrics(values))


def log_training_outputs(model_dir: Path, model, example: np.ndarray) -> str:
    """The training-set manifest, the class names (so `runs:/<id>/model` answers in them) and
    the model (with a signature and `example`); return the model's URI."""
    for name in (MANIFEST_FILE, CLASSES_FILE):
        path = Path(model_dir) / name
        if path.is_file():
            mlflow.log_artifact(str(path))
    return log_keras_model(model, example)


EVALUATED_VAL_PREFIX = "evaluated_"
"""The evaluation's val figures (of the calibrated model, what choices are made on) are logged
as evaluated_val_accuracy, ...: val_accuracy and val_loss are Keras' per-epoch curves in the
same run, which a figure at step 0 would bend."""


def evaluation_metrics(evaluation: dict) -> dict[str, float]:
    """What an evaluation (evaluation.json's dict) logs as metrics: the test metrics, the val
    figures (as evaluated_val_*), the per-class figures and images per second."""
    metrics = {
        f"{EVALUATED_VAL_PREFIX}{key}" if key.startswith("val_") else key: value
        for key, value in evaluation["metrics"].items()
    }
    return numeric_metrics({**metrics, **evaluation.get("mlflow_metrics", {})})


def log_evaluation(
    run_id: str | None,
    evaluation: dict,
    report_dir: Path,
    experiment_id: str,
    tags: dict[str, str],
) -> str | None:
    """Log an evaluation (evaluation.json's dict) and its report folder once; return the run
    that holds them, None when the server was lost.

    Into the training run `run_id` when it holds no evaluation yet (the execution that
    trained it); else into a new run tagged with the one it evaluates, so a finished run is
    never rewritten. A lost server is a warning (see RunRecorder), never a lost evaluation.
    """
    strategy = evaluation["strategy"]
    target = _unevaluated_run(run_id)
    if target is None:
        target = create_run(
            experiment_id,
            f"{tags.get('dataset', 'pipeline')}-{strategy}-evaluation",
            {
                **tags,
                "strategy": strategy,
                "pipeline.kind": "evaluation",
                EVALUATES_RUN_TAG: str(run_id),
            },
        )
        logger.info(
            "%s: run %s already holds an evaluation; this one goes to run %s",
            strategy,
            run_id,
            target,
        )
    recorder = RunRecorder(target)
    with recorder.active():
        recorder("test metrics", mlflow.log_metrics, evaluation_metrics(evaluation))
        recorder(
            "evaluation artifacts",
            mlflow.log_artifacts,
            str(report_dir),
            artifact_path=EVALUATION_ARTIFACTS,
        )
        recorder("evaluated tag", mlflow.set_tag, EVALUATED_TAG, "true")
    return None if recorder.lost else target


def is_evaluated(run_id: str) -> bool:
    """Whether the run already holds an evaluation."""
    return EVALUATED_TAG in mlflow.MlflowClient().get_run(run_id).data.tags


def _unevaluated_run(run_id: str | None) -> str | None:
    """`run_id` if that run exists in this store and holds no evaluation yet."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return None if is_evaluated(run_id) else run_id
    except MlflowException:
        return None


TENSORBOARD_LOGS_DIR = "logs"
"""Under the (main) project's root, outside every DVC out: `dvc status` never sees it."""
TENSORBOARD_ARTIFACTS = "tensorboard"
"""Where a strategy's run keeps a copy of its training's TensorBoard logs."""


def tensorboard_directory(project_root: Path, strategy: str, run_id: str) -> Path:
    """logs/<strategy>/<run id> under the project whose MLflow store the run uses (a queued DVC
    experiment's copy writes into the main project, as its runs do)."""
    return store_root(project_root) / TENSORBOARD_LOGS_DIR / strategy / run_id


def log_tensorboard_logs(board_dir: Path) -> bool:
    """Copy a training's TensorBoard logs into the active run, under tensorboard/: by the train
    stage, and by `pipeline sync-mlflow` for a run it logs again. False when there are none."""
    if not board_dir.is_dir():
        return False
    mlflow.log_artifacts(str(board_dir), TENSORBOARD_ARTIFACTS)
    return True
