"""The MLflow run of one retraining cycle (`pipeline retrain`): opened before the pipeline
runs, so the strategy runs can point to it, and closed with the cycle's record."""

from __future__ import annotations

from pathlib import Path

from pipeline.tracking.context import execution_tags
from pipeline.tracking.runs import RunRecorder, configure_tracking, create_run

CYCLE_RECORD_ARTIFACT = "retrain.json"


def open_cycle_run(
    root: Path, experiment_name: str, run_name: str, tags: dict[str, str]
) -> RunRecorder:
    """Create the cycle's run in `experiment_name`, tagged with its execution (git commit)."""
    experiment_id = configure_tracking(root, experiment_name)
    return RunRecorder(create_run(experiment_id, run_name, {**execution_tags(root), **tags}))


def close_cycle_run(
    recorder: RunRecorder,
    record: dict,
    tags: dict[str, str],
    step_seconds: dict[str, float],
    status: str,
) -> None:
    """Tag the cycle's run with its outcome, log each step's seconds and the record itself, and
    end it with `status`; a lost server is noted by `recorder`, never raised."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        recorder(f"tag {key}", client.set_tag, recorder.run_id, key, value)
    for step, seconds in step_seconds.items():
        recorder("step metrics", client.log_metric, recorder.run_id, f"seconds_{step}", seconds)
    recorder("cycle record", client.log_dict, recorder.run_id, record, CYCLE_RECORD_ARTIFACT)
    recorder("end run", client.set_terminated, recorder.run_id, status)
