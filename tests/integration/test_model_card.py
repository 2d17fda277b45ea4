"""Every registered version carries its model card: the promote stage, run in this process on a
small project against a real MLflow store (SQLite, the project's default kind), registers the
model, sets the card as the version's description and logs it as model_card.md into the
promotion's run; every figure in the card equals the one in evaluation.json and promotion.json;
promoting the same model again refreshes the description; and `pipeline card` prints it, or
fails saying why (unknown version, no champion, no card, a tracking server that is down) with
exit 2 and no traceback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import yaml

from pipeline import cli
from pipeline.entry import run_entry
from pipeline.evaluation.metrics import (
    classification_report_frame,
    per_class_metrics,
    predict_probabilities,
    probability_metrics,
)
from pipeline.promotion import upstream_lock_digest
from pipeline.store import (
    MANIFEST_FILE,
    MODEL_FILE,
    PLAN_FILE,
    members_digest,
    open_split,
    read_store_index,
    sha256_of,
    write_json,
    write_manifest,
    write_store_from_arrays,
)
from pipeline.tracking.record import RunRecord
from tests.code.test_model_card import check_card_figures, table_figures
from tests.code.test_model_checks import CLASSES, SHAPE
from tests.code.test_model_checks import _save_model as save_tiny_model
from tests.project import PROJECT_ROOT, git
from tests.servers import free_port
from tests.serving_models import tracking_store

pytestmark = pytest.mark.integration

NAME = "digits-classifier"  # what params.yaml's dataset (digits) names the registered model
EXPERIMENT = "image-classifiers"


def _prepared(root: Path) -> Path:
    """A store of 60 random images of two classes, and its split.json."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, *SHAPE), dtype=np.uint8)
    y = np.arange(60) % 2
    splits = {"train": (x[:24], y[:24]), "val": (x[24:34], y[24:34]), "test": (x[34:], y[34:])}
    prepared = root / "data" / "prepared"
    index = write_store_from_arrays(prepared, splits, CLASSES)
    members = {}
    for name in splits:
        split = open_split(prepared, name)
        members[name] = members_digest(split.digests())
        split.close()
    write_json(
        prepared / PLAN_FILE,
        {
            "dataset": "digits",
            "scheme": "stratified",
            "images": 60,
            "skipped": 0,
            "counts": {name: len(labels) for name, (_, labels) in splits.items()},
            "assignment": "content_hash",
            "seed": 42,
            "classes": CLASSES,
            "members": members,
            "data_version": index.version,
        },
    )
    return prepared


def _trained_model(root: Path, prepared: Path, client: mlflow.MlflowClient) -> Path:
    """models/scratch as training leaves it: the model, history, manifest and run.json, whose
    run is in the store and holds its evaluation."""
    model_dir = root / "models" / "scratch"
    save_tiny_model(model_dir, seed=0)
    train = open_split(prepared, "train")
    write_manifest(model_dir / MANIFEST_FILE, train.digests())
    train.close()
    (model_dir / "history.csv").write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy\n"
        "0,0.71,0.5,0.70,0.5\n1,0.69,0.55,0.68,0.6\n2,0.68,0.58,0.69,0.6\n"
    )
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    tags = {"strategy": "scratch", "dataset": "digits", "pipeline.evaluated": "true"}
    run = client.create_run(experiment, tags=tags, run_name="digits-scratch")
    client.set_terminated(run.info.run_id)
    params = {
        "data.dataset": "digits",
        "data.resize": "stretch",
        "train.architecture": "digits_convnet",
        "train.epochs": 3,
        "train.early_stopping_patience": 2,
        "train.early_stopping_monitor": "val_loss",
        "train.learning_rate": 0.001,
    }
    RunRecord(
        run_id=run.info.run_id,
        experiment_id=experiment,
        experiment_name=EXPERIMENT,
        run_name="digits-scratch",
        backbone_weights="none",
        tracked=True,
        tags={**tags, "backbone_weights": "none", "precision": "float32"},
        params=params,
        validation_summary={},
        training_seconds=3.25,
    ).write(model_dir)
    return model_dir


def _evaluation(root: Path, model_dir: Path, prepared: Path) -> dict:
    """reports/scratch as the evaluate stage leaves it (the figures computed from the model's
    own predictions; calibration and speed as the evaluate stage would record them)."""
    import keras

    model = keras.saving.load_model(model_dir / MODEL_FILE)
    test = open_split(prepared, "test")
    probabilities = predict_probabilities(model, test)
    test.close()
    metrics = probability_metrics(test.y, probabilities)
    # The val figures the evaluate stage adds, which promote.strategy best chooses on.
    val = open_split(prepared, "val")
    metrics.update(probability_metrics(val.y, predict_probabilities(model, val), "val"))
    val.close()
    metrics.update(
        test_ece=0.0412345,
        test_ece_uncalibrated=0.1123456,
        test_brier=0.4987,
        test_brier_uncalibrated=0.5123,
        test_loss_uncalibrated=0.7345,
    )
    report = classification_report_frame(test.y, probabilities.argmax(axis=1), CLASSES)
    out = root / "reports" / "scratch"
    out.mkdir(parents=True)
    report.to_csv(out / "classification_report.csv", index_label="class")
    evaluation = {
        "strategy": "scratch",
        "model_sha256": sha256_of(model_dir / MODEL_FILE),
        "metrics": metrics,
        "mlflow_metrics": {**per_class_metrics(report), "images_per_second": 4321.0987},
        "total_params": 262,
        "trainable_params": 262,
        "images_per_second": 4321.0987,
        "training_seconds": 3.25,
        "run_id": RunRecord.read(model_dir).run_id,
        "backbone_weights": "none",
    }
    write_json(out / "evaluation.json", evaluation)
    write_json(
        root / "reports" / "metrics.json", {"scratch": {**metrics, "backbone_weights": None}}
    )
    return evaluation


@pytest.fixture
def project(tmp_path, template_store, monkeypatch) -> Iterator[SimpleNamespace]:
    """A project whose every record the promote stage reads is there, and a registry (SQLite,
    MLFLOW_TRACKING_URI) of its own, with the training and comparison runs in it."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["promote"].update(min_accuracy=0.0, min_class_recall=0.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(template_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(root)
    with tracking_store(uri):
        client = mlflow.MlflowClient()
        experiment = client.create_experiment(
            EXPERIMENT, artifact_location=(root / "mlruns").as_uri()
        )
        prepared = _prepared(root)
        model_dir = _trained_model(root, prepared, client)
        evaluation = _evaluation(root, model_dir, prepared)
        comparison = client.create_run(experiment, tags={"pipeline.kind": "comparison"})
        write_json(root / "reports" / "comparison_run.json", {"run_id": comparison.info.run_id})
        (root / "reports" / "label_issues.csv").write_text(
            "path,digest,split,given,suggested,score\n"
            f"data/images/cat/c1.png,{'1' * 32},train,cat,dog,0.0123\n"
            f"data/images/dog/d7.png,{'2' * 32},val,dog,cat,0.0456\n"
        )
        (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
        git(root, "init", "-q")
        git(root, "add", "dvc.yaml", "params.yaml")
        git(root, "commit", "-qm", "project")
        yield SimpleNamespace(
            root=root, client=client, evaluation=evaluation, comparison=comparison.info.run_id
        )


PROMOTE_ARGS = [
    "--prepared", "data/prepared", "--metrics", "reports/metrics.json",
    "--model", "models/scratch", "--evaluation", "reports/scratch",
    "--label-issues", "reports/label_issues.csv", "--comparison-run", "reports/comparison_run.json",
    "--card", "reports/model_card.md", "--out", "reports/promotion.json",
    "--summary", "reports/gate.json",
]  # fmt: skip


def _promote(root: Path) -> tuple[str, dict]:
    """The promote stage as dvc.yaml runs it, in this process: (the card, promotion.json)."""
    from pipeline.stages import promote

    promote.main(PROMOTE_ARGS)
    card = (root / "reports" / "model_card.md").read_text()
    return card, json.loads((root / "reports" / "promotion.json").read_text())


def _exit_status(argv: list[str], capsys) -> tuple[int, str, str]:
    """`pipeline ARGV` as its console script runs it, in this process: (status, out, err)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_entry(cli.main, "pipeline", argv)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_a_registered_version_describes_itself_with_its_card(project, capsys) -> None:
    card, decision = _promote(project.root)
    version = str(decision["challenger"]["version"])
    assert decision["registered"] and decision["passed"] and version == "1"

    # The version's description is the card, and so is model_card.md in the promotion's run.
    stored = project.client.get_model_version(NAME, version)
    assert stored.description == card
    logged = mlflow.artifacts.download_artifacts(
        run_id=decision["challenger"]["run_id"], artifact_path="model_card.md"
    )
    assert Path(logged).read_text() == card

    # Every figure equals the one in evaluation.json and promotion.json, as written.
    evaluation = json.loads((project.root / "reports/scratch/evaluation.json").read_text())
    assert check_card_figures(card, evaluation, decision, CLASSES) >= 12
    # And the rest of the card says what the records say.
    rows = table_figures(card)
    assert card.startswith(f"# Model card: {NAME} version 1")
    assert rows["Backbone"] == ["none (trained from scratch)"]
    assert rows["Epoch kept"] == ["2 of 3: the lowest val_loss (early stopping, patience 2)"]
    assert rows["Training run"] == [f"`{evaluation['run_id']}`"]
    assert rows["Evaluation run"] == [f"`{evaluation['run_id']}`"]
    assert rows["Comparison run"] == [f"`{project.comparison}`"]
    assert rows["Promotion run"] == [f"`{decision['challenger']['run_id']}`"]
    lock_digest = upstream_lock_digest(project.root / "dvc.lock")
    assert lock_digest and rows["dvc.lock SHA-256 (every stage but promote)"] == [
        f"`{lock_digest}`"
    ]
    assert rows["Git commit"] == [f"`{git(project.root, 'rev-parse', 'HEAD')}`"]
    assert rows["Data version"] == [f"`{read_store_index(project.root / 'data/prepared').version}`"]
    assert "Label issues: 2 suspected in train and val" in card and "c1.png" in card
    assert "A small test split: 26 images" in card
    assert "a new version, not yet served" in card

    # `pipeline card` prints it: the champion's by default, or a version by number.
    assert cli.main(["card", "--root", str(project.root)]) == 0
    assert capsys.readouterr().out == card
    assert cli.main(["card", "1", "--model", NAME, "--root", str(project.root)]) == 0
    assert capsys.readouterr().out == card


def test_the_champion_promoted_again_keeps_the_card_of_its_promotion(project) -> None:
    first, _ = _promote(project.root)
    # Today's figures change (a re-evaluation, in a run of its own); the model file is the
    # same, and `pipeline monitor` has judged the version's traffic since.
    evaluation_file = project.root / "reports/scratch/evaluation.json"
    evaluation = json.loads(evaluation_file.read_text())
    evaluation["images_per_second"] = evaluation["mlflow_metrics"]["images_per_second"] = 999.5
    write_json(evaluation_file, evaluation)
    experiment = project.client.get_experiment_by_name(EXPERIMENT).experiment_id
    tags = {"pipeline.kind": "evaluation", "pipeline.evaluates_run": evaluation["run_id"]}
    reevaluation = project.client.create_run(experiment, tags=tags).info.run_id
    monitor_tags = {
        "pipeline.kind": "monitor",
        "registered_model": NAME,
        "model_version": "1",
        "window": "last 24h",
        "window_end": "2025-01-02T00:00:00+00:00",
        "drift": "true",
        "fired": "confidence",
    }
    project.client.create_run(experiment, tags=monitor_tags)
    again, decision = _promote(project.root)
    assert table_figures(again)["Evaluation run"] == [f"`{reevaluation}`"]
    assert (
        "Drift: the last `pipeline monitor` verdict on this version was drift (confidence), "
        "window last 24h ending 2025-01-02T00:00:00+00:00." in again
    )
    assert decision["registered"] and decision["challenger"]["version"] == 1
    assert "not_rolled_back" not in decision["criteria"] and "new_model" in decision["criteria"]
    assert again != first and table_figures(again)["Inference speed (images/s)"] == ["999.5"]
    check_card_figures(again, evaluation, decision, CLASSES)
    # Today's card is logged into today's promotion run, but the champion's page keeps the
    # card of its promotion: "already the champion, nothing to promote" does not replace why
    # it serves.
    logged = mlflow.artifacts.load_text(f"runs:/{decision['challenger']['run_id']}/model_card.md")
    assert logged == again
    versions = project.client.search_model_versions(f"name = '{NAME}'")
    assert [str(version.version) for version in versions] == ["1"]
    assert versions[0].description == first


def test_inside_a_dvc_experiment_the_card_is_written_and_nothing_registered(
    project, monkeypatch
) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lark")
    card, decision = _promote(project.root)
    assert not decision["registered"] and decision["challenger"]["version"] is None
    assert card.startswith(f"# Model card: {NAME} (not registered: DVC experiment brisk-lark)")
    assert project.client.search_model_versions(f"name = '{NAME}'") == []
    logged = mlflow.artifacts.download_artifacts(
        run_id=decision["challenger"]["run_id"], artifact_path="model_card.md"
    )
    assert Path(logged).read_text() == card
    evaluation = json.loads((project.root / "reports/scratch/evaluation.json").read_text())
    check_card_figures(card, evaluation, decision, CLASSES)


def test_pipeline_card_fails_saying_why(project, capsys, monkeypatch) -> None:
    root = str(project.root)
    status, _, err = _exit_status(["card", "--root", root], capsys)
    assert status == 2 and f"{NAME} has no registered version" in err

    _promote(project.root)
    status, _, err = _exit_status(["card", "7", "--root", root], capsys)
    assert (status, err.strip()) == (
        2,
        f"error in pipeline: {NAME} has no version 7; its versions are 1",
    )
    status, _, err = _exit_status(["card", "staging", "--root", root], capsys)
    assert status == 2 and "has no alias 'staging' (its aliases: challenger, champion)" in err
    # A digit that is no number (str.isdigit says yes to it) is an alias name, not a crash.
    status, _, err = _exit_status(["card", "\u00b2", "--root", root], capsys)
    assert status == 2 and "has no alias" in err and "Traceback" not in err

    # A version registered by hand: no champion, and no card.
    source = project.root / "source"
    source.mkdir()
    project.client.create_registered_model("by-hand")
    project.client.create_model_version("by-hand", source=source.as_uri())
    status, _, err = _exit_status(["card", "--model", "by-hand", "--root", root], capsys)
    assert status == 2 and "by-hand has no champion: pass a version (1)" in err
    status, _, err = _exit_status(["card", "1", "--model", "by-hand", "--root", root], capsys)
    assert status == 2 and "version 1 of by-hand has no model card" in err

    # A tracking server that does not answer.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    status, _, err = _exit_status(["card", "--root", root], capsys)
    assert status == 2 and "cannot be reached" in err
    for message in (err,):
        assert "Traceback" not in message


def test_pipeline_card_prints_the_whole_card_when_the_description_is_cut(
    project, capsys, monkeypatch
) -> None:
    """MLflow keeps 5,000 characters of a description (PostgreSQL refuses more): a longer
    card is cut there, and `pipeline card` prints the whole one from the promotion's run."""
    from pipeline import promotion

    monkeypatch.setattr(promotion, "MAX_DESCRIPTION_CHARS", 600)
    card, decision = _promote(project.root)
    stored = project.client.get_model_version(NAME, str(decision["challenger"]["version"]))
    assert len(stored.description) <= 600 < len(card)
    assert "model_card.md" in stored.description
    assert cli.main(["card", "--root", str(project.root)]) == 0
    assert capsys.readouterr().out == card
