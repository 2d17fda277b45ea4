"""Models are checked before they answer (issue 33, items 6 and 7): a registered version whose
model file changed in the artifact store after registration is refused, naming the version, by
the one check every loader shares (the gate, `pipeline predict`, `pipeline serve`); a champion
that cannot be loaded leaves the gate judging on the floors alone, with no traceback; predict
without --model uses the champion or fails saying why; a local MLflow model folder runs its
code only with --trust-code; every answer names its model; CSV cells are spreadsheet-safe.

The registry is a real SQLite store (a copy of the template_store fixture) holding small real
classifiers, logged and registered with the project's own code.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from PIL import Image

from pipeline import cli, registry
from pipeline.entry import run_entry
from pipeline.errors import ModelError, PipelineError, RegistryError, TrackingUnavailable
from pipeline.evaluation.promotion import GateThresholds
from pipeline.prediction.choice import ModelChoice, choose_model
from pipeline.prediction.results import FilePrediction, write_predictions
from pipeline.serving.holder import VersionHolder
from pipeline.serving.verification import (
    MODEL_SHA_TAG,
    keras_model_file,
    load_verified_version,
    verified_model_path,
)
from pipeline.store import MODEL_FILE, sha256_of, write_classes, write_store_from_arrays
from tests.serving_models import tracking_store

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NAME = "digits-classifier"  # what params.yaml's dataset (digits) names the registered model
CLASSES = ["cat", "dog"]
SHAPE = (8, 8, 1)


def _save_model(folder: Path, seed: int) -> Path:
    """A tiny uint8 8x8 gray classifier of two classes, saved with its classes.json."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=SHAPE, dtype="uint8")
    hidden = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    hidden = keras.layers.Dense(4, activation="relu")(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="predictions")(hidden)
    folder.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(folder / MODEL_FILE)
    write_classes(folder, CLASSES)
    return folder / MODEL_FILE


@pytest.fixture
def store(tmp_path, template_store, monkeypatch) -> Iterator[SimpleNamespace]:
    """A registry of its own (SQLite, for this process and the CLI alike) and an experiment."""
    shutil.copy(template_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with tracking_store(uri):
        experiment = mlflow.create_experiment(
            "checks", artifact_location=(tmp_path / "artifacts").as_uri()
        )
        yield SimpleNamespace(root=tmp_path, uri=uri, experiment=experiment)


def _register(store, seed: int, tagged: bool = True, champion: bool = True) -> str:
    """Log and register a new tiny classifier (tagged with its model file's SHA-256, as the
    promotion gate tags every version); return its version."""
    model_file = _save_model(store.root / f"model-{seed}", seed)
    example = np.zeros((1, *SHAPE), np.uint8)
    with mlflow.start_run(experiment_id=store.experiment):
        info = registry.log_classifier(model_file, CLASSES, example)
    tags = {MODEL_SHA_TAG: sha256_of(model_file)} if tagged else {}
    version = str(registry.register_challenger(NAME, info.model_uri, tags).version)
    if champion:
        registry.set_champion(NAME, version)
    return version


def _stored_model_file(version: str) -> Path:
    """The model file of `version` where the artifact store keeps it (what an attacker or a
    damaged disk changes)."""
    location = mlflow.MlflowClient().get_model_version_download_uri(NAME, version)
    folder = Path(location.removeprefix("file://"))
    found = keras_model_file(folder)
    assert found is not None and found.is_file(), location
    return found


def _replace_model(store, version: str) -> None:
    """Another valid model file in place of `version`'s, in the artifact store."""
    other = _save_model(store.root / "other", seed=99)
    shutil.copy(other, _stored_model_file(version))


def _truncate_model(version: str) -> None:
    path = _stored_model_file(version)
    path.write_bytes(path.read_bytes()[:1000])


# --- the one check ---------------------------------------------------------------------------


def test_an_intact_version_loads_from_the_folder_it_was_checked_in(store, tmp_path) -> None:
    version = _register(store, seed=0)
    folder = verified_model_path(NAME, version, tmp_path / "download")
    assert sha256_of(keras_model_file(folder)) == sha256_of(_stored_model_file(version))
    model = load_verified_version(NAME, version, tmp_path / "again")
    # Loaded from the downloaded folder, it still knows which registered version it is.
    assert model.unwrap_python_model().identity[:2] == (NAME, version)


@pytest.mark.parametrize("damage", [_replace_model, _truncate_model], ids=["replaced", "truncated"])
def test_a_model_file_changed_after_registration_is_refused_naming_the_version(
    store, tmp_path, damage
) -> None:
    version = _register(store, seed=0)
    if damage is _replace_model:
        damage(store, version)
    else:
        damage(version)
    message = (
        rf"version {version} of '{NAME}': model.keras has SHA-256 [0-9a-f]{{16}}\.\.\., "
        r"registered [0-9a-f]{16}\.\.\.; the artifact store was changed after registration: "
        r"roll back \(`pipeline rollback --to <version>`\) or re-register"
    )
    with pytest.raises(ModelError, match=message):
        load_verified_version(NAME, version, tmp_path / "download")


def test_a_version_registered_without_the_tag_warns_and_loads(store, tmp_path, caplog) -> None:
    version = _register(store, seed=0, tagged=False)
    caplog.set_level(logging.WARNING, logger="pipeline.serving.verification")
    model = load_verified_version(NAME, version, tmp_path / "download")
    assert model.unwrap_python_model().classes == CLASSES
    assert f"version {version} of '{NAME}' was registered without a {MODEL_SHA_TAG}" in (
        caplog.text
    )


# --- the server's holder ---------------------------------------------------------------------


def test_the_holder_never_serves_a_changed_model_file_and_status_says_why(store) -> None:
    first = _register(store, seed=0)
    holder = VersionHolder(NAME, "champion", poll_seconds=60)
    try:
        assert holder.load_initial().version == first
        second = _register(store, seed=1)
        _replace_model(store, second)
        outcome = holder.poll_once()
        assert outcome.startswith(f"version {second} failed: version {second} of '{NAME}'")
        assert holder.current.version == first, "the old version keeps serving"
        status = holder.status()
        assert status["version"] == first and status["failed_version"] == second
        assert "model.keras has SHA-256" in status["failure"]
        assert "pipeline rollback" in status["failure"]
    finally:
        holder.stop()


def test_the_holder_refuses_a_changed_first_version_naming_it(store) -> None:
    version = _register(store, seed=0)
    _truncate_model(version)
    holder = VersionHolder(NAME, "champion", poll_seconds=60)
    try:
        with pytest.raises(RegistryError, match=f"version {version} of {NAME}.*SHA-256"):
            holder.load_initial()
    finally:
        holder.stop()


# --- pipeline predict ---------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path) -> Path:
    """Three gray PNGs, one named as a spreadsheet formula."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "=HYPERLINK(1).png"):
        Image.fromarray(rng.integers(0, 256, SHAPE[:2], dtype=np.uint8)).save(folder / name)
    return folder


def _project(root: Path) -> Path:
    """A project folder whose params.yaml names the registered model digits-classifier."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    return root


def _predict(capsys, *args: str) -> list[dict[str, str]]:
    capsys.readouterr()
    assert cli.main(["predict", *args]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_predict_answers_with_the_champion_and_names_its_version(store, images, capsys) -> None:
    version = _register(store, seed=0)
    rows = _predict(capsys, str(images), "--root", str(_project(store.root / "project")))
    assert len(rows) == 3
    assert {row["model"] for row in rows} == {f"models:/{NAME}/{version}"}
    assert all(row["predicted_class"] in CLASSES and row["error"] == "" for row in rows)


def test_predict_refuses_a_champion_whose_model_file_changed(store, images) -> None:
    version = _register(store, seed=0)
    _replace_model(store, version)
    root = _project(store.root / "project")
    with pytest.raises(ModelError, match=f"version {version} of '{NAME}': model.keras has SHA"):
        cli.main(["predict", str(images), "--root", str(root)])
    # The alias named explicitly goes through the same check.
    with pytest.raises(ModelError, match=f"version {version} of '{NAME}'"):
        cli.main(["predict", str(images), "--model", f"models:/{NAME}@champion"])


def _exit_status(argv: list[str], capsys) -> tuple[int, str]:
    """`pipeline ARGV` as its console script runs it, in this process: (status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_entry(cli.main, "pipeline", argv)
    return exited.value.code, capsys.readouterr().err


def test_predict_without_a_champion_fails_saying_why(store, images, capsys) -> None:
    """No substitution: a local model beside the project is not used, and the run fails."""
    root = _project(store.root / "project")
    _save_model(root / "models" / "fine_tune", seed=0)
    status, err = _exit_status(["predict", str(images), "--root", str(root)], capsys)
    assert status == 2
    assert f"holds no version of {NAME}" in err
    assert "--model <strategy>" in err
    # Versions, but none promoted: said so too.
    _register(store, seed=0, champion=False)
    status, err = _exit_status(["predict", str(images), "--root", str(root)], capsys)
    assert status == 2 and "but no `champion` alias" in err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_predict_with_the_tracking_server_down_fails_instead_of_a_local_model(
    tmp_path, images, monkeypatch, capsys
) -> None:
    root = _project(tmp_path / "project")
    _save_model(root / "models" / "fine_tune", seed=0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    previous = mlflow.get_tracking_uri()
    try:
        with pytest.raises(TrackingUnavailable, match="no champion to predict with.*--model"):
            cli.main(["predict", str(images), "--root", str(root)])
    finally:
        mlflow.set_tracking_uri(previous)
    assert capsys.readouterr().out == "", "no answer from a substitute model"


def test_predict_without_params_cannot_name_the_registered_model(tmp_path, images) -> None:
    with pytest.raises(PipelineError, match="no params.yaml.*--model <strategy>"):
        cli.main(["predict", str(images), "--root", str(tmp_path)])


def test_a_strategy_named_answers_and_is_named(tmp_path, images, capsys) -> None:
    root = tmp_path / "project"
    _save_model(root / "models" / "scratch", seed=0)
    rows = _predict(capsys, str(images), "--model", "scratch", "--root", str(root))
    assert len(rows) == 3 and {row["model"] for row in rows} == {"models/scratch"}


def test_the_choice_is_the_model_asked_for_else_the_champion(tmp_path) -> None:
    models = tmp_path / "models"

    def no_champion() -> str:
        raise RegistryError("the registry holds no version of x")

    assert choose_model("m.keras", no_champion, models) == ModelChoice("m.keras", "--model")
    assert choose_model("fine_tune", no_champion, models) == ModelChoice(
        str(models / "fine_tune"), "--model fine_tune", "models/fine_tune"
    )
    found = choose_model(None, lambda: "models:/x/3", models)
    assert found == ModelChoice("models:/x/3", "the registry's champion", "models:/x/3")
    with pytest.raises(RegistryError, match="no champion to predict with: the registry holds"):
        choose_model(None, no_champion, models)


class _Marker(mlflow.pyfunc.PythonModel):
    """A pyfunc model whose loading leaves a file behind: code that ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def load_context(self, context) -> None:
        Path(self.marker).write_text("this code ran")

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_local_pyfunc_folder_runs_its_code_only_with_trust_code(tmp_path, images) -> None:
    marker = tmp_path / "ran.txt"
    folder = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(str(folder), python_model=_Marker(str(marker)))
    marker.unlink(missing_ok=True)  # MLflow loads the model once while saving it.
    with pytest.raises(ModelError, match="MLflow model folder.*could be anything.*--trust-code"):
        cli.main(["predict", str(images), "--model", str(folder)])
    assert not marker.exists(), "the folder's code ran before the refusal"
    # Trusted, its code runs (this one is no image classifier, so predict then says so).
    with pytest.raises(ModelError, match="image size it takes is unknown"):
        cli.main(["predict", str(images), "--model", str(folder), "--trust-code"])
    assert marker.read_text() == "this code ran"


def test_a_trusted_copy_of_a_registered_version_answers(store, tmp_path, images, capsys) -> None:
    version = _register(store, seed=0)
    folder = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{NAME}/{version}", dst_path=str(tmp_path / "copy")
        )
    )
    with pytest.raises(ModelError, match="--trust-code"):
        cli.main(["predict", str(images), "--model", str(folder)])
    rows = _predict(capsys, str(images), "--model", str(folder), "--trust-code")
    assert len(rows) == 3 and {row["model"] for row in rows} == {str(folder)}


def test_a_file_named_as_a_formula_is_text_in_the_csv(tmp_path, images, capsys, monkeypatch):
    """Relative paths in, relative paths out: the cell would begin with `=`."""
    root = tmp_path / "project"
    _save_model(root / "models" / "scratch", seed=0)
    monkeypatch.chdir(images)
    rows = _predict(capsys, "=HYPERLINK(1).png", "a.png", "--model", "scratch", "--root", str(root))
    assert [row["path"] for row in rows] == ["'=HYPERLINK(1).png", "a.png"]
    stream = io.StringIO()
    hostile = [
        FilePrediction(Path("+cmd.png"), np.array([0.2, 0.8])),
        FilePrediction(Path("@x.png"), None, "-not an image"),
    ]
    write_predictions(hostile, CLASSES, stream, "-model")
    lines = stream.getvalue().splitlines()
    assert lines[1] == "'+cmd.png,dog,0.800000,,'-model"
    assert lines[2] == "'@x.png,,,'-not an image,'-model"


# --- the promotion gate ---------------------------------------------------------------------


def _prepared(root: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(60, *SHAPE), dtype=np.uint8)
    y = np.arange(60) % 2
    write_store_from_arrays(
        root / "prepared",
        {"train": (x[:20], y[:20]), "val": (x[20:30], y[20:30]), "test": (x[30:], y[30:])},
        CLASSES,
    )
    return root / "prepared"


def _promote(store, monkeypatch, seed: int, min_accuracy: float) -> dict:
    from pipeline import promotion

    monkeypatch.setattr(promotion, "execution_tags", lambda root: {})
    model_dir = store.root / "models" / f"scratch-{seed}"
    _save_model(model_dir, seed)
    return promotion.promote_challenger(
        registered_model=NAME,
        experiment_name="checks",
        dataset="digits",
        strategy="scratch",
        model_dir=model_dir,
        source_run_id="run",
        prepared=_prepared(store.root),
        thresholds=GateThresholds(min_accuracy, 0.0, 0.05, 0.0),
        project_root=store.root,
        dvc_experiment=None,
    )


def test_an_unusable_champion_leaves_the_floors_to_judge_and_says_how_to_roll_back(
    store, monkeypatch
) -> None:
    from pipeline.stages.promote import decision_line

    first = _promote(store, monkeypatch, seed=0, min_accuracy=0.0)
    assert first["passed"] and first["champion_after"] == 1
    _truncate_model("1")

    # The floor cannot be reached: rejected, the broken champion keeps the alias, and the
    # record says why and how to recover.
    kept = _promote(store, monkeypatch, seed=1, min_accuracy=1.0)
    assert kept["passed"] is False and kept["champion_after"] == 1
    assert kept["champion"] == {
        "version": 1,
        "usable": False,
        "unusable_reason": kept["champion"]["unusable_reason"],
        "test_accuracy": None,
    }
    assert (
        "version 1 of 'digits-classifier': model.keras has SHA-256"
        in (kept["champion"]["unusable_reason"])
    )
    assert set(kept["criteria"]) == {"accuracy_floor", "class_recall_floor"}
    assert kept["reasons"][0] == kept["champion_unusable"]
    assert kept["champion_unusable"].startswith("champion unusable: version 1 cannot be loaded")
    assert "pipeline rollback --to <version>" in kept["champion_unusable"]
    assert "champion unusable" in decision_line(kept)
    json.dumps(kept)  # reports/promotion.json

    # The floors reached: the challenger replaces the champion that cannot load.
    promoted = _promote(store, monkeypatch, seed=2, min_accuracy=0.0)
    assert promoted["passed"] is True and promoted["champion_after"] == 3
    assert promoted["champion"]["usable"] is False and promoted["champion_unusable"]
    tags = mlflow.MlflowClient().get_model_version(NAME, "3").tags
    assert tags["gate.compared_with"] == "no one: champion version 1 is unusable"


def test_the_retraining_record_shows_an_unusable_champion(tmp_path) -> None:
    from pipeline.retraining import steps
    from pipeline.retraining.cycle import Cycle

    cycle = Cycle(tmp_path, False, ["dvc"])
    decision = {
        "passed": False,
        "strategy": "scratch",
        "challenger": {"version": 2, "run_id": "r"},
        "champion": {"version": 1, "usable": False},
        "champion_unusable": "champion unusable: version 1 cannot be loaded (x); roll back",
        "reasons": ["champion unusable: version 1 cannot be loaded (x); roll back", "floor"],
    }
    (tmp_path / "promotion.json").write_text(json.dumps(decision))
    # Written by this cycle's promote stage: a file's mtime can trail the clock by a tick, so it
    # is set after the cycle's start explicitly (else the step would run `dvc repro promote`).
    os.utime(tmp_path / "promotion.json", (cycle.started + 1, cycle.started + 1))
    detail = steps._promote(cycle, tmp_path / "promotion.json")
    assert cycle.record.champion_unusable == decision["champion_unusable"]
    assert cycle.record.to_dict()["champion_unusable"] == decision["champion_unusable"]
    assert "champion unusable: version 1" in detail


# --- the review queue's CSV -------------------------------------------------------------------


def test_the_review_queue_csv_escapes_formula_cells(tmp_path) -> None:
    import pandas as pd

    from pipeline.retraining.review import QUEUE_COLUMNS, write_review_queue

    queue = pd.DataFrame(
        {
            "digest": ["0" * 32],
            "time": [pd.Timestamp("2024-03-01", tz="UTC")],
            "model_version": ["4"],
            "predicted_class": ['=HYPERLINK("http://x")'],
            "probability": [0.5],
            "drift_distance": [0.25],
            "need_score": [-1.5],
            "image_file": ["@evil.png"],
        }
    )
    assert list(queue.columns) == list(QUEUE_COLUMNS)
    write_review_queue(tmp_path, queue, tmp_path / "predictions", "Review")
    with open(tmp_path / "queue.csv", newline="", encoding="utf-8") as stream:
        (row,) = list(csv.DictReader(stream))
    assert row["predicted_class"] == '\'=HYPERLINK("http://x")'
    assert row["image_file"] == "'@evil.png" and row["probability"] == "0.5"
    assert row["need_score"] == "-1.5", "numbers stay numbers, negative ones included"


# --- pipeline serve's request limits ----------------------------------------------------------


def _serve_args(*flags: str):
    return cli.build_parser().parse_args(["serve", *flags])


def test_serve_limits_are_read_from_the_command_line() -> None:
    assert cli._serving_limits(_serve_args()) == {}, "ServeOptions' own defaults apply"
    limits = cli._serving_limits(_serve_args("--max-body-mb", "1.5", "--max-json-depth", "40"))
    assert limits == {"max_body_bytes": 3 << 19, "max_json_depth": 40}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-body-mb", "0"], "must be above 0"),
        (["--max-body-mb", "lots"], "is not a number"),
        (["--max-body-mb", "inf"], "must be a finite number"),
        (["--max-body-mb", "nan"], "must be above 0"),
        (["--max-json-depth", "0"], "must be at least 1"),
        (["--max-json-depth", "2.5"], "is not a whole number"),
    ],
)
def test_serve_limits_must_be_positive(capsys, flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        _serve_args(*flags)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_serve_passes_its_limits_into_the_server_options(monkeypatch) -> None:
    import dataclasses

    from pipeline.serving import server

    started = []
    monkeypatch.setattr(server, "serve", started.append)
    monkeypatch.setattr(cli, "_tracking", lambda root: "sqlite:///unused.db")
    common = ["serve", "--root", str(PROJECT_ROOT), "--no-record"]
    assert cli.main([*common, "--max-body-mb", "2", "--max-json-depth", "30"]) == 0
    assert (started[0].max_body_bytes, started[0].max_json_depth) == (2 << 20, 30)
    assert cli.main(common) == 0
    defaults = {field.name: field.default for field in dataclasses.fields(server.ServeOptions)}
    assert started[1].max_body_bytes == defaults["max_body_bytes"] == 64 << 20
    assert started[1].max_json_depth == defaults["max_json_depth"]


def test_a_registry_that_stops_answering_is_no_verdict_on_the_champion(monkeypatch) -> None:
    """Loading the champion failed because the store went away, not because its model is bad:
    the gate stops (the alias stays) instead of judging the challenger on the floors alone."""
    from mlflow.exceptions import MlflowException

    from pipeline.evaluation.promotion import ScoredVersion

    answers = iter([SimpleNamespace(version=1)])

    def champion_version(name):
        try:
            return next(answers)
        except StopIteration:
            raise MlflowException("API request to http://x failed: connection refused") from None

    def score_version(*args):
        raise MlflowException("API request to http://x failed: connection refused")

    challenger = ScoredVersion(None, CLASSES, np.zeros(4, int), None)
    monkeypatch.setattr(registry, "score_model_file", lambda *args: challenger)
    monkeypatch.setattr(registry, "champion_version", champion_version)
    monkeypatch.setattr(registry, "score_version", score_version)
    with pytest.raises(TrackingUnavailable, match="stopped answering while champion version 1"):
        registry.score_contenders(NAME, Path("m.keras"), Path("manifest"), None, CLASSES, None)


def test_the_same_model_file_as_a_damaged_champion_is_registered_afresh(store, monkeypatch):
    """The champion's stored copy damaged while models/<strategy> still holds the same file: the
    gate logs a new version rather than reusing the damaged one forever."""
    first = _promote(store, monkeypatch, seed=0, min_accuracy=0.0)
    assert first["champion_after"] == 1
    _truncate_model("1")
    again = _promote(store, monkeypatch, seed=0, min_accuracy=0.0)
    assert again["challenger"]["version"] == 2
    assert again["passed"] is True and again["champion_after"] == 2
    assert again["champion"]["usable"] is False


def test_a_rollback_to_a_version_whose_file_changed_is_refused(store) -> None:
    first = _register(store, seed=0)
    _register(store, seed=1)
    _replace_model(store, first)
    with pytest.raises(RegistryError, match=f"version {first} of {NAME} cannot be served"):
        registry.roll_back_champion(NAME, "test", "tester")
    assert str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version) == "2"
