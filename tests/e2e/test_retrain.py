"""Scheduled retraining against a real `mlflow server`, with a SQLite and a PostgreSQL backend.

One project per backend, on a user's folder of generated images (three classes that differ in
brightness), goes through the cycles a schedule would run, in order: the first promotes; a
second with no new data does nothing, quickly; new images retrain, and a challenger made
deliberately worse through params is rejected by the gate while the champion stays; the
champion serves class names over HTTP; two concurrent cycles do not both run, and a killed
cycle's lock is taken over.

The PostgreSQL project (tests/e2e/test_retrain_postgres.py, the same tests) runs the first
cycles, the registry checks and the lock. The checks
whose code does not depend on the backend run on SQLite only, to keep the suite short: new
images with the worse challenger, serving, and losing the server during training (nothing is
lost, and `pipeline sync-mlflow` logs the run afterwards). The SQLite project also checks what
`dvc repro` makes of a user's folder: the snapshot, the unreadable file, a missing folder.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from PIL import Image

from pipeline.config import STRATEGY_NAMES
from pipeline.store import SPLITS, open_split, sha256_of
from tests import fakes
from tests.conftest import _start_tracking_server
from tests.project import dvc, make_project_copy, pipeline_command, tiny_params
from tests.servers import model_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLASSES = {"dark": 40, "mid": 40, "light": 40}
MODEL = "photos-classifier"
EXPERIMENT = "retrain-e2e"


def _edit(images: Path):
    def edit(params: dict) -> dict:
        params = tiny_params(params)
        params["train"]["scratch"].update(
            epochs=30, batch_size=8, conv_filters=[8, 16], dense_units=16
        )
        params["data"].update(dataset="image_folder", image_folder=str(images), image_size=16)
        params["mlflow"].update(experiment_name=EXPERIMENT, registered_model=MODEL)
        return params

    return edit


def retrain(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return pipeline_command(root, env, "retrain", *args)


def _report(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def _record(root: Path) -> dict:
    return json.loads((root / "reports" / "retrain.json").read_text())


class Project:
    """The project copy, its environment and the cycles run so far."""

    def __init__(self, root: Path, env: dict, images: Path, server) -> None:
        self.root, self.env, self.images, self.server = root, env, images, server
        self.client = mlflow.MlflowClient(tracking_uri=server.uri)
        self.cycles: list[tuple[subprocess.CompletedProcess, dict, float]] = []

    def cycle(self, *args: str) -> tuple[subprocess.CompletedProcess, dict, float]:
        start = time.monotonic()
        result = retrain(self.root, self.env, *args)
        elapsed = time.monotonic() - start
        assert result.returncode == 0, _report(result)
        self.cycles.append((result, _record(self.root), elapsed))
        return self.cycles[-1]

    def champion(self) -> str:
        return self.client.get_model_version_by_alias(MODEL, "champion").version

    def versions(self) -> list[str]:
        return sorted(
            (v.version for v in self.client.search_model_versions(f"name='{MODEL}'")), key=int
        )


@pytest.fixture(scope="module", params=["sqlite"], ids=["sqlite"])
def tracking_server(request, tmp_path_factory):
    """This module's project runs on SQLite; tests/e2e/test_retrain_postgres.py runs the same
    tests on PostgreSQL as a module of its own, so pytest-xdist runs the two side by side."""
    yield from _start_tracking_server(
        request.param, tmp_path_factory.mktemp(f"tracking-{request.param}")
    )


@pytest.fixture(scope="module")
def project(tracking_server, tmp_path_factory) -> Project:
    images = tmp_path_factory.mktemp("user") / "photos"
    fakes.write_image_folder(images, CLASSES, size=16)
    (images / "mid" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    root = tmp_path_factory.mktemp(f"project-{tracking_server.backend}")
    env = make_project_copy(root, _edit(images))
    env["MLFLOW_TRACKING_URI"] = tracking_server.uri
    project = Project(root, env, images, tracking_server)
    project.cycle()
    return project


def test_the_first_cycle_trains_and_promotes(project: Project) -> None:
    result, record, _ = project.cycles[0]
    assert record["outcome"] == "promoted", _report(result)
    assert [step["name"] for step in record["steps"]] == [
        "tracking", "detect", "prepare", "validate", "pipeline", "promote",
    ]  # fmt: skip
    assert record["data"]["summary"] == "no record of the data last trained on"
    decision = json.loads((project.root / "reports" / "promotion.json").read_text())
    assert decision["passed"] is True and decision["champion"] is None
    # No champion yet: the two floors alone decide.
    assert set(decision["criteria"]) == {"accuracy_floor", "class_recall_floor"}
    version = str(decision["challenger"]["version"])
    assert project.champion() == version
    alias = project.client.get_model_version_by_alias(MODEL, "challenger")
    assert alias.version == version and alias.tags["gate.passed"] == "true"
    shown = dvc(project.root, project.env, "metrics", "show", "reports/gate.json").stdout
    assert "reports/gate.json" in shown and "gate_passed" in shown


def test_the_cycle_is_an_mlflow_run_with_the_strategy_runs_as_children(project: Project) -> None:
    _, record, _ = project.cycles[0]
    cycle = project.client.get_run(record["mlflow_run_id"])
    assert cycle.data.tags["retrain"] == "true" and cycle.info.status == "FINISHED"
    assert cycle.data.tags["outcome"] == "promoted"
    assert "seconds_pipeline" in cycle.data.metrics
    children = project.client.search_runs(
        [cycle.info.experiment_id], f"tags.mlflow.parentRunId = '{cycle.info.run_id}'"
    )
    strategies = {run.data.tags.get("strategy") for run in children}
    assert {"scratch", "feature_extraction", "fine_tune"} <= strategies
    assert set(record["strategy_runs"].values()) <= {run.info.run_id for run in children}
    assert cycle.data.tags["strategy_run.scratch"] == record["strategy_runs"]["scratch"]


@pytest.mark.sqlite_only
def test_the_folder_is_snapshotted_and_its_unreadable_file_listed(project: Project) -> None:
    root = project.root
    raw = root / "data" / "raw" / "image_folder"
    # The class folders, and the snapshot's own list of what it left out: nothing here, since
    # broken.jpg starts like a JPEG (it is copied; split finds it unreadable).
    assert sorted(p.name for p in raw.iterdir()) == [".skipped.csv", "dark", "light", "mid"]
    with open(raw / ".skipped.csv") as stream:
        assert list(csv.DictReader(stream)) == []
    with open(root / "reports" / "data" / "skipped.csv") as stream:
        assert [row["path"] for row in csv.DictReader(stream)] == ["mid/broken.jpg"]
    plan = json.loads((root / "data" / "prepared" / "split.json").read_text())
    assert plan["skipped"] == 1 and sum(plan["counts"].values()) == 120
    summary = json.loads((root / "reports" / "validation" / "summary.json").read_text())
    assert summary["passed"] is True and summary["rows"] == 120
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    # Three brightness levels: the small CNN learns them in a few short epochs.
    assert metrics["scratch"]["test_accuracy"] > 0.8


@pytest.mark.sqlite_only
def test_a_missing_image_folder_stops_the_pipeline_and_keeps_outputs(project: Project) -> None:
    root, env, images = project.root, project.env, project.images
    before = (root / "reports" / "metrics.json").read_bytes()
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace(str(images), str(images) + "_typo"))
    try:
        result = dvc(root, env, "repro")
    finally:
        (root / "params.yaml").write_text(params)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "_typo" in result.stdout + result.stderr
    assert (root / "reports" / "metrics.json").read_bytes() == before
    assert (root / "data" / "raw" / "image_folder").is_dir()


def test_a_cycle_with_no_new_data_does_nothing_quickly(project: Project) -> None:
    versions = project.versions()
    result, record, elapsed = project.cycle()
    assert record["outcome"] == "no new data"
    assert "no new data" in result.stdout
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert project.versions() == versions


def _shard_bytes(prepared) -> dict[str, str]:
    """Each shard file of the store, by name: the SHA-256 of its bytes."""
    return {path.name: sha256_of(path) for path in (prepared / "shards").iterdir()}


@pytest.mark.sqlite_only
def test_new_images_retrain_and_a_worse_challenger_is_rejected(project: Project) -> None:
    """New images are found and trained on; the challenger, made deliberately worse through
    params (one epoch at a learning rate that barely moves), fails the gate against the
    champion re-scored on the new test split, and the champion alias stays where it was."""
    champion = project.champion()
    prepared = project.root / "data" / "prepared"
    before = {name: set(open_split(prepared, name).digests()) for name in SPLITS}
    shards_before = _shard_bytes(prepared)
    rng = np.random.default_rng(7)
    for index, (name, level) in enumerate((("dark", 40), ("mid", 100), ("light", 160)) * 2):
        pixels = np.clip(level + rng.integers(0, 40, (16, 22, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(project.images / name / f"new-{index}.png")
    status = dvc(project.root, project.env, "status")
    assert "download" in status.stdout and "modified" in status.stdout
    params_file = project.root / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    for strategy in STRATEGY_NAMES:
        params["train"][strategy].update(epochs=1, learning_rate=1e-7)
    params["train"]["fine_tune"].update(head_epochs=1, head_learning_rate=1e-7)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result, record, _ = project.cycle()
    finally:
        params_file.write_text(original)
    assert record["data"]["added"] == 6, record["data"]
    assert record["outcome"] == "rejected", _report(result)
    decision = record["decision"]
    assert decision["champion"]["version"] == int(champion)
    # With a champion, all four criteria are judged on the same, new test split.
    assert set(decision["criteria"]) == {
        "accuracy_floor", "class_recall_floor", "improvement", "mcnemar",
    }  # fmt: skip
    assert decision["passed"] is False
    assert decision["criteria"]["accuracy_floor"]["passed"] is False
    assert project.champion() == champion
    rejected = project.client.get_model_version(MODEL, str(decision["challenger"]["version"]))
    assert rejected.tags["gate.passed"] == "false"
    assert "accuracy" in rejected.tags["gate.reasons"]
    assert rejected.tags["gate.compared_with"] == f"version {champion}"
    assert project.client.get_model_version_by_alias(MODEL, "challenger").version == (
        rejected.version
    )
    # The split stayed put: every earlier image is where it was, so the gate's test split
    # holds no image that either model trained on, by proof of their manifests.
    after = {name: set(open_split(prepared, name).digests()) for name in SPLITS}
    for name in SPLITS:
        assert before[name] <= after[name], name
    assert sum(len(after[name]) - len(before[name]) for name in SPLITS) == 6
    # Through DVC (data/prepared persists while split runs): the earlier shards are the same
    # files, byte for byte; the new images went into new shards.
    shards_after = _shard_bytes(prepared)
    assert {name: shards_after.get(name) for name in shards_before} == shards_before
    assert len(shards_after) > len(shards_before)
    challenger_manifest = set(
        (project.root / "models" / decision["strategy"] / "training_manifest.txt")
        .read_text()
        .split()
    )
    mlflow.set_tracking_uri(project.server.uri)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").unwrap_python_model()
    assert served.training_manifest and challenger_manifest
    assert not after["test"] & (challenger_manifest | served.training_manifest)
    assert decision["train_test_overlap"] == 0
    assert decision["overlap"]["in_champion_training"] == 0
    assert decision["overlap"]["scored"] == len(after["test"])


@pytest.mark.sqlite_only
def test_the_champion_answers_in_class_names(project: Project) -> None:
    # One raw uint8 image per class, as a client would send them: pixels, in their column.
    images = np.stack([np.full((16, 16, 3), level, np.uint8) for level in (50, 110, 170)])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(project.server.uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        frame = model.predict(pd.DataFrame({"pixels": list(images)}))
    finally:
        mlflow.set_tracking_uri(previous)
    columns = ["predicted_class", "probability", "top_classes", "top_probabilities"]
    columns += [*sorted(CLASSES), "model_name", "model_version", "model_alias", "error"]
    assert list(frame.columns) == columns
    assert set(frame["predicted_class"]) <= set(CLASSES)
    np.testing.assert_allclose(frame[list(CLASSES)].sum(axis=1), 1.0, rtol=1e-4)
    with model_server(f"models:/{MODEL}@champion", project.env) as url:
        payload = {"inputs": {"pixels": images.tolist()}}
        response = requests.post(f"{url}/invocations", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [row["predicted_class"] for row in rows] == list(frame["predicted_class"])
    assert list(rows[0]) == columns
    # The answer says what answered it: the registered model, its version and its aliases.
    assert rows[0]["model_name"] == MODEL
    assert rows[0]["model_version"] == project.champion()
    assert "champion" in rows[0]["model_alias"].split(",")


@pytest.mark.sqlite_only
def test_losing_the_server_during_training_loses_nothing(project: Project) -> None:
    """The server drops after the first epochs: training finishes, the outs are written, and
    `pipeline sync-mlflow` logs the run (then its evaluation) once the server is back."""
    root, env, client = project.root, project.env, project.client
    params_file = root / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    # 200 epochs, all of them: early stopping must not end training before the server drops.
    params["train"]["scratch"].update(epochs=200, early_stopping_patience=0)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    started = int(time.time() * 1000)
    training = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train_scratch"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        run_id = _wait_for_first_epochs(client, experiment, started)
        project.server.stop()
        output, _ = training.communicate(timeout=600)
    finally:
        if not project.server.running:
            project.server.start()
    try:
        _check_the_outs_and_sync(project, output, run_id, training.returncode)
    finally:
        params_file.write_text(original)


def _check_the_outs_and_sync(project: Project, output: str, run_id: str, status: int) -> None:
    root, env, client = project.root, project.env, project.client
    assert status == 0, output[-5000:]
    assert "lost the MLflow tracking server" in output and "Traceback" not in output
    record = json.loads((root / "models" / "scratch" / "run.json").read_text())
    assert record["run_id"] == run_id and record["tracked"] is False
    assert (root / "models" / "scratch" / "model.keras").is_file()
    history = (root / "models" / "scratch" / "history.csv").read_text().splitlines()
    assert len(history) == 201

    # Evaluated once the server is back: this run is untracked, so evaluate leaves it to sync.
    assert dvc(root, env, "repro", "--single-item", "evaluate@scratch").returncode == 0
    synced = _sync(root, env)
    assert "scratch: logged the training run" in synced.stdout, _report(synced)
    assert "logged its evaluation" in synced.stdout, _report(synced)
    replacement = client.get_run(client.get_run(run_id).data.tags["pipeline.superseded_by"])
    assert client.get_run(run_id).info.status == "FAILED"
    assert replacement.info.run_name == record["run_name"]
    assert replacement.data.tags["strategy"] == "scratch"
    assert replacement.data.params["train.epochs"] == "200"
    steps = client.get_metric_history(replacement.info.run_id, "val_loss")
    assert sorted(metric.step for metric in steps) == list(range(200))
    evaluation = json.loads((root / "reports" / "scratch" / "evaluation.json").read_text())
    metrics = evaluation["metrics"]
    assert replacement.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert client.list_artifacts(replacement.info.run_id, "evaluation")


def _wait_for_first_epochs(client, experiment: str, since_ms: int) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = client.search_runs(
            [experiment], "tags.strategy = 'scratch'", order_by=["attributes.start_time DESC"]
        )
        fresh = runs and runs[0].info.start_time >= since_ms
        if fresh and len(client.get_metric_history(runs[0].info.run_id, "val_loss")) >= 2:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError("the training run logged no epoch within two minutes")


def _sync(root: Path, env: dict) -> subprocess.CompletedProcess:
    return pipeline_command(root, env, "sync-mlflow", timeout=600)


def test_concurrent_cycles_do_not_both_run_and_a_stale_lock_is_taken_over(
    project: Project,
) -> None:
    lock = project.root / ".pipeline" / "retrain.lock"
    first = subprocess.Popen(
        [str(Path(sys.executable).parent / "pipeline"), "retrain", "--force"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if lock.is_file() and lock.read_text().strip():
                break
            time.sleep(0.1)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid
        start = time.monotonic()
        second = retrain(project.root, project.env)
        assert second.returncode == 75, _report(second)
        assert time.monotonic() - start < 10
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # as the OOM killer or a reboot would
        first.wait()
    third = retrain(project.root, project.env)
    assert third.returncode == 0, _report(third)
    assert f"took over a stale lock: the cycle of pid {first.pid}" in third.stderr
