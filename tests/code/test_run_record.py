"""One typed run record, one logging path: a run rebuilt by `pipeline sync-mlflow` from the DVC
outs is the run the train and evaluate stages logged, field by field.

A toy strategy is trained and its evaluation recorded the normal way, into a local SQLite
MLflow store in tmp_path (no server, no subprocess). Then its run.json is marked untracked, as
after a lost server, and sync logs the same outputs again as a new run. The two runs must have
the same params, metric keys and per-epoch steps, artifact paths and tags. What must differ
is ignored, and only that: the run id, start and end times, the status (sync marks the
original FAILED, superseded) and the three tags that say a run was synced or superseded.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pipeline.evaluation.layout import CONFUSION_CSV, EVALUATION_JSON
from pipeline.store import MODEL_FILE, read_json, sha256_of, write_json
from pipeline.tracking.record import RunRecord
from pipeline.tracking.runs import configure_tracking
from pipeline.tracking.strategy_runs import (
    EVALUATED_TAG,
    ORIGINAL_RUN_TAG,
    SUPERSEDED_TAG,
    SYNCED_TAG,
)
from tests.code.test_strategies import TOY, project_config, train_toy_run

SYNC_ONLY_TAGS = {SYNCED_TAG, ORIGINAL_RUN_TAG}
"""Set on the synced run only: it says it was synced, and from which partial run."""
SUPERSEDED_ONLY_TAGS = {SUPERSEDED_TAG}
"""Set on the original run only, by sync: the run that replaces it."""


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A project root whose embedded MLflow store (mlflow.db, mlruns/) is in tmp_path."""
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    previous = mlflow.get_tracking_uri()
    yield tmp_path
    mlflow.set_tracking_uri(previous)


def record_toy_evaluation(root: Path, model_dir: Path) -> Path:
    """The evaluate stage's recording of an evaluation (evaluation.json and MLflow), with the
    dict `evaluate_strategy` returns made by hand: the logging, not the scoring, is tested."""
    from pipeline.stages.evaluate import record_evaluation

    report_dir = root / "reports" / TOY.name
    report_dir.mkdir(parents=True)
    (report_dir / CONFUSION_CSV).write_text("zero,one,two\n1,0,0\n0,1,0\n0,0,1\n")
    (report_dir / "figures").mkdir()
    (report_dir / "figures" / "curves.txt").write_text("a nested artifact\n")
    evaluation = {
        "strategy": TOY.name,
        "model_sha256": sha256_of(model_dir / MODEL_FILE),
        "metrics": {"test_accuracy": 0.5, "test_loss": 1.25, "test_macro_f1": 0.4},
        "mlflow_metrics": {
            "recall_zero": 1.0,
            "recall_one": 0.5,
            "recall_two": 0.0,
            "images_per_second": 321.0,
        },
        "total_params": 195,
        "trainable_params": 195,
        "images_per_second": 321.0,
        "training_seconds": 1.5,
    }
    run = RunRecord.read(model_dir)
    experiment_id = configure_tracking(root, run.experiment_name)
    record_evaluation(run, evaluation, report_dir, experiment_id, {"dataset": "digits"})
    return report_dir


def artifact_paths(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> list:
    """Every file of a run's artifacts, recursively, sorted."""
    found = []
    for entry in client.list_artifacts(run_id, path):
        found += artifact_paths(client, run_id, entry.path) if entry.is_dir else [entry.path]
    return sorted(found)


def metric_steps(client: mlflow.MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {
        key: sorted(
            (m.step, round(m.value, 6)) for m in client.get_metric_history(run.info.run_id, key)
        )
        for key in run.data.metrics
    }


def test_a_synced_run_is_the_run_the_stages_logged(project, monkeypatch) -> None:
    from pipeline.tracking.sync import sync_runs

    config = project_config()
    model_dir = train_toy_run(project, config)
    report_dir = record_toy_evaluation(project, model_dir)
    assert read_json(report_dir / EVALUATION_JSON)["run_id"] == RunRecord.read(model_dir).run_id
    original = RunRecord.read(model_dir)
    # As after a server lost mid-run: the outs are complete, MLflow is not to be trusted.
    original.model_copy(update={"tracked": False, "tracking_error": "lost"}).write(model_dir)

    paths = {"models": "models", "reports": "reports", "prepared": "data/prepared"}
    (outcome,) = sync_runs(project, paths, strategies=(TOY.name,))
    assert outcome.run_id != original.run_id
    assert outcome.actions == (f"logged the training run {outcome.run_id}", "logged its evaluation")

    client = mlflow.MlflowClient()
    logged, synced = client.get_run(original.run_id), client.get_run(outcome.run_id)
    assert synced.info.run_name == logged.info.run_name
    assert synced.info.experiment_id == logged.info.experiment_id
    assert synced.data.params == logged.data.params
    assert sorted(synced.data.metrics) == sorted(logged.data.metrics)
    assert metric_steps(client, synced) == metric_steps(client, logged)
    assert {"val_loss", "test_accuracy", "recall_two", "images_per_second"} <= set(
        synced.data.metrics
    )
    assert artifact_paths(client, outcome.run_id) == artifact_paths(client, original.run_id)
    assert "evaluation/figures/curves.txt" in artifact_paths(client, outcome.run_id)
    assert synced.data.tags[EVALUATED_TAG] == "true"
    assert synced.data.tags[ORIGINAL_RUN_TAG] == original.run_id
    assert logged.data.tags[SUPERSEDED_TAG] == outcome.run_id
    assert {key: value for key, value in synced.data.tags.items() if key not in SYNC_ONLY_TAGS} == {
        key: value for key, value in logged.data.tags.items() if key not in SUPERSEDED_ONLY_TAGS
    }
    assert client.get_logged_model(synced.outputs.model_outputs[0].model_id).name == "model"

    # Once synced, a second sync logs nothing.
    (again,) = sync_runs(project, paths, strategies=(TOY.name,))
    assert again.run_id == outcome.run_id and again.actions == ("up to date",)


def test_the_run_record_rejects_a_loose_dict(project) -> None:
    from pipeline.errors import PipelineError

    write_json(project / "run.json", {"run_id": "abc", "tracked": True})
    with pytest.raises(PipelineError, match="not a run record"):
        RunRecord.read(project)


def test_the_input_example_is_read_from_the_store_two_test_images_at_most(tmp_path) -> None:
    """sync-mlflow logs two test images as the input example, as training does, reading those
    alone; fewer when the test split is smaller, zeros of the model's input without a store."""
    import keras
    import numpy as np

    from pipeline.store import write_store_from_arrays
    from pipeline.tracking.sync import _input_example

    paths = {"prepared": "data/prepared"}
    x = np.arange(5 * 4 * 4 * 1, dtype=np.uint8).reshape(5, 4, 4, 1)
    labels = np.array([0, 1, 0, 1, 0])
    splits = {"train": (x[:2], labels[:2]), "val": (x[2:3], labels[2:3]), "test": (x, labels)}
    # One image a shard: the two images come from two shards.
    write_store_from_arrays(tmp_path / "data" / "prepared", splits, ["a", "b"], shard_bytes=16)
    np.testing.assert_array_equal(_input_example(tmp_path, paths, tmp_path / "none"), x[:2])

    small = tmp_path / "small"
    write_store_from_arrays(
        small / "data" / "prepared", {**splits, "test": (x[4:], labels[4:])}, ["a", "b"]
    )
    np.testing.assert_array_equal(_input_example(small, paths, tmp_path / "none"), x[4:])

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    inputs = keras.Input(shape=(4, 4, 1), dtype="uint8")
    keras.Model(inputs, keras.layers.Flatten()(inputs)).save(model_dir / MODEL_FILE)
    example = _input_example(tmp_path / "no-project", paths, model_dir)
    assert example.shape == (2, 4, 4, 1) and example.dtype == np.uint8 and not example.any()


def test_the_class_weights_a_training_used_are_recorded_and_logged_as_metrics(tmp_path) -> None:
    """run.json keeps the resolved weights by class index, and what the run logs of them
    (also what `pipeline sync-mlflow` logs again) names each class's weight."""
    from pipeline.training.tracked import _weights_by_index

    weights = _weights_by_index({1: 5.5, 0: 0.55})
    assert weights == {"0": 0.55, "1": 5.5}
    record = RunRecord(
        run_id="r",
        experiment_id="1",
        experiment_name="e",
        run_name="n",
        backbone_weights="none",
        tracked=True,
        tags={},
        params={},
        validation_summary={},
        training_seconds=1.0,
        class_weights=weights,
    )
    record.write(tmp_path)
    again = RunRecord.read(tmp_path)
    assert again.class_weights == {"0": 0.55, "1": 5.5}
    assert again.calibration_metrics() == {
        "class_weight_0": 0.55,
        "class_weight_1": 5.5,
    }
    # Unweighted training (and every run recorded before) logs no class weight.
    assert _weights_by_index(None) is None
    assert (
        "class_weight_0"
        not in record.model_copy(update={"class_weights": None}).calibration_metrics()
    )
