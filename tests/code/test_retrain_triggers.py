"""What starts a retraining cycle (pipeline.retraining.triggers and the cycle's detect step):
new labelled images retrain; a drift verdict no cycle has acted on, alone, writes a review
queue instead of retraining on the same images; both retrain; --force retrains whatever it
finds; a verdict acted on starts nothing again.

A whole cycle runs in process (pipeline.retraining.cycle.run_cycle): a real image folder, a
real MLflow SQLite store with a registered version carrying its monitoring reference, real
prediction records. Only DVC is faked (Cycle.run_dvc records its arguments and writes the
promotion decision the `promote` stage would), and git (the run's commit tag)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.datasets.fingerprint import fingerprint_dataset
from pipeline.errors import PipelineError, RegistryError, RetrainFailed
from pipeline.monitoring.reference import Reference, save_reference
from pipeline.retraining import cycle as cycle_module
from pipeline.retraining import steps, triggers
from pipeline.retraining.cycle import RECORD_FILE, run_cycle
from pipeline.serving.recorder import PredictionRecorder
from pipeline.store import image_digests, read_json, write_json
from pipeline.tracking import server
from tests.serving_models import tracking_store

REPO = Path(__file__).resolve().parents[2]
NAME = "image-folder-classifier"  # the default name for dataset image_folder
START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REPORT = "reports/monitoring/20240501T121000Z.json"
TRAINING_STAGES = ["train_scratch", "train_feature_extraction", "train_fine_tune"]


@dataclass
class Project:
    """A project copy with an image folder already trained on, and the fake DVC's calls."""

    root: Path
    store: str
    dvc_calls: list[tuple[str, ...]] = field(default_factory=list)
    fail_repro: bool = False

    @property
    def images(self) -> Path:
        return self.root / "images"

    def add_image(self, label: str, seed: int) -> None:
        pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(self.images / label / f"new-{seed}.png")

    def drift_verdict(self, report: str = REPORT, drift: bool = True) -> dict:
        """latest.json as `pipeline monitor` writes it, for the window of _record_traffic."""
        verdict = {
            "drift": drift,
            "fired": ["embedding_shift"] if drift else [],
            "registered_model": NAME,
            "model_version": "1",
            "window_start": START.isoformat(),
            "window_end": (START + timedelta(minutes=10)).isoformat(),
            "predictions_dir": str(self.root / "predictions"),
            "report": report,
        }
        write_json(self.root / "reports/monitoring/latest.json", verdict)
        return verdict

    def handled(self) -> dict | None:
        path = self.root / triggers.HANDLED_FILE
        return read_json(path) if path.is_file() else None

    def retrains(self) -> bool:
        return ("repro",) in self.dvc_calls


def _write_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{index}.png")


def _register_version_with_reference(root: Path, embeddings_width: int = 2) -> None:
    """Version 1 of NAME: an MLmodel naming its monitoring reference, as log_classifier
    writes it, and the reference itself (the review queue measures drift against it)."""
    source = root / "registered"
    (source / "artifacts").mkdir(parents=True)
    save_reference(
        source / "artifacts" / "monitoring_reference.npz",
        Reference(
            embeddings=np.random.default_rng(1).normal(0, 0.1, (30, embeddings_width)),
            predicted=np.zeros(30, dtype=np.int64),
            confidences=np.full(30, 0.9),
            classes=("cat", "dog"),
        ),
    )
    mlmodel = {
        "flavors": {
            "python_function": {
                "artifacts": {
                    "monitoring_reference": {"path": "artifacts/monitoring_reference.npz"}
                }
            }
        }
    }
    (source / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    client.create_model_version(NAME, source=source.as_uri())


def _record_traffic(predictions: Path) -> list[str]:
    """Served answers of version 1 in the verdict's window (three images, one of them far from
    the reference), one before it, one after it and one of version 2 inside it; return the
    window's digests, most in need of a label first."""
    images = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    batches = [
        # (when, version, image, probability, embedding)
        (START - timedelta(minutes=1), "1", 0, 0.2, [9.0, 9.0]),
        (START, "1", 1, 0.95, [0.0, 0.0]),
        (START + timedelta(minutes=5), "1", 2, 0.3, [6.0, 6.0]),
        (START + timedelta(minutes=10), "1", 3, 0.9, [0.1, 0.0]),
        (START + timedelta(minutes=11), "1", 4, 0.1, [9.0, 9.0]),
        (START + timedelta(minutes=5), "2", 5, 0.1, [9.0, 9.0]),
    ]
    with PredictionRecorder(predictions, source="serve", keep_images=True) as recorder:
        for when, version, index, probability, embedding in batches:
            recorder.record(
                model_name=NAME,
                model_version=version,
                model_alias="champion",
                images=images[index : index + 1],
                predicted_class=["cat"],
                probability=[probability],
                top_classes=[["cat"]],
                top_probabilities=[[probability]],
                embeddings=np.array([embedding], np.float32),
                when=when,
            )
    return [image_digests(images[index : index + 1])[0] for index in (2, 3, 1)]


@pytest.fixture
def project(tmp_path, template_store, monkeypatch) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"dataset": "image_folder", "image_folder": "images"})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").touch()
    _write_images(root / "images")
    # The images there now are what the last cycle trained on.
    write_json(
        root / steps.TRAINED_DATA_FILE,
        fingerprint_dataset("image_folder", root / "images", None, {}),
    )

    shutil.copy(template_store, tmp_path / "mlflow.db")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    # The cycle sets MLflow's HTTP defaults where unset: set here, they are restored after.
    for name, value in server._HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    # No git in a unit test: the run's commit tag, and params.yaml as committed.
    monkeypatch.setattr(
        "pipeline.tracking.cycle_runs.execution_tags", lambda root: {"git_commit": "test"}
    )
    monkeypatch.setattr(steps, "uncommitted_params", lambda root: None)

    project = Project(root, store)

    def run_dvc(self, *arguments: str, env: dict | None = None) -> None:
        project.dvc_calls.append(arguments)
        if arguments == ("repro",):
            if project.fail_repro:
                raise PipelineError("`dvc repro` exited with status 1:\n    train_scratch failed")
            # What the promote stage writes.
            write_json(
                root / "reports/promotion.json",
                {
                    "passed": True,
                    "strategy": "scratch",
                    "challenger": {"version": "2", "run_id": "run-2"},
                    "champion": {"version": "1"},
                    "reasons": [],
                },
            )

    monkeypatch.setattr(cycle_module.Cycle, "run_dvc", run_dvc)
    with tracking_store(store):
        _register_version_with_reference(root)
        yield project


def _run_tags(record) -> dict[str, str]:
    return mlflow.MlflowClient().get_run(record.mlflow_run_id).data.tags


# --- the cycles ---------------------------------------------------------------------------------


def test_nothing_new_starts_nothing(project) -> None:
    record = run_cycle(project.root)
    assert record.outcome == "no new data" and record.triggers == []
    assert project.dvc_calls == [] and record.mlflow_run_id is None
    assert record.steps[-1].name == "detect" and record.steps[-1].status == "skipped"
    assert "no drift verdict to act on" in record.steps[-1].detail
    assert read_json(project.root / RECORD_FILE)["outcome"] == "no new data"


def test_a_verdict_without_drift_starts_nothing(project) -> None:
    project.drift_verdict(drift=False)
    record = run_cycle(project.root)
    assert record.outcome == "no new data" and record.triggers == []
    assert project.handled() is None


def test_new_data_alone_retrains(project) -> None:
    project.add_image("cat", seed=10)
    record = run_cycle(project.root)
    assert record.triggers == [triggers.NEW_DATA]
    assert record.outcome == "promoted"
    assert project.dvc_calls == [("repro", "split"), ("repro",)]
    assert record.data["added"] == 1 and record.drift_report is None
    assert [step.name for step in record.steps] == [
        "tracking",
        "detect",
        "prepare",
        "validate",
        "pipeline",
        "promote",
    ]
    assert not (project.root / triggers.REVIEW_DIR).exists()
    assert project.handled() is None
    # The new images are the ones trained on now.
    trained = read_json(project.root / steps.TRAINED_DATA_FILE)
    assert "cat/new-10.png" in trained["files"]
    assert _run_tags(record)["trigger"] == "new data"
    assert read_json(project.root / RECORD_FILE)["triggers"] == ["new data"]
    # Trained on: the next cycle finds nothing new.
    project.dvc_calls.clear()
    assert run_cycle(project.root).outcome == "no new data" and project.dvc_calls == []


def test_drift_alone_queues_a_review_instead_of_retraining(project) -> None:
    needing = _record_traffic(project.root / "predictions")
    verdict = project.drift_verdict()
    record = run_cycle(project.root)

    assert record.triggers == [triggers.DRIFT]
    assert record.outcome == "review queued"
    assert project.dvc_calls == []  # no dvc repro of any kind
    assert record.drift_report == REPORT
    assert [step.name for step in record.steps] == ["tracking", "detect", "review"]
    detect = record.steps[1].detail
    assert "no new data" in detect
    assert f"drift in {NAME} version 1's traffic (embedding_shift; {REPORT})" in detect
    assert "3 served images to label" in record.steps[2].detail

    # The queue: version 1's images of the window only, the one far from the reference first.
    review = project.root / triggers.REVIEW_DIR
    assert record.review == {
        "csv": str(review / "queue.csv"),
        "html": str(review / "index.html"),
        "images": 3,
        "with_files": 3,
    }
    with open(review / "queue.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["digest"] for row in rows] == needing
    assert {row["model_version"] for row in rows} == {"1"}
    page = (review / "index.html").read_text()
    assert f"To label: drift in {NAME} version 1" in page
    assert "<code>images/&lt;class name&gt;/</code>" in page

    assert project.handled() == {
        "report": REPORT,
        "window_end": verdict["window_end"],
        "action": "review queued",
    }
    tags = _run_tags(record)
    assert tags["trigger"] == "drift" and tags["drift_report"] == REPORT
    assert tags["outcome"] == "review queued"
    saved = read_json(project.root / RECORD_FILE)
    assert saved["outcome"] == "review queued" and saved["review"]["images"] == 3

    # The same verdict again: acted on, so nothing starts and the queue stays as it was.
    written = (review / "queue.csv").stat().st_mtime_ns
    again = run_cycle(project.root)
    assert again.outcome == "no new data" and again.triggers == []
    assert project.dvc_calls == []
    assert (review / "queue.csv").stat().st_mtime_ns == written

    # A newer verdict that still says drift: a new queue.
    project.drift_verdict(report="reports/monitoring/20240502T000000Z.json")
    assert run_cycle(project.root).outcome == "review queued"
    assert project.handled()["report"] == "reports/monitoring/20240502T000000Z.json"


def test_drift_and_new_data_retrain_and_mark_the_verdict_handled(project) -> None:
    verdict = project.drift_verdict()
    project.add_image("dog", seed=11)
    record = run_cycle(project.root)
    assert record.triggers == [triggers.NEW_DATA, triggers.DRIFT]
    assert record.outcome == "promoted"
    assert project.dvc_calls == [("repro", "split"), ("repro",)]
    assert record.review is None and not (project.root / triggers.REVIEW_DIR).exists()
    assert project.handled() == {
        "report": REPORT,
        "window_end": verdict["window_end"],
        "action": "retrained",
    }
    assert _run_tags(record)["trigger"] == "new data,drift"
    project.dvc_calls.clear()
    assert run_cycle(project.root).outcome == "no new data" and project.dvc_calls == []


@pytest.mark.parametrize("drift", [False, True], ids=["nothing-else", "with-drift"])
def test_force_retrains_whatever_detect_finds(project, drift: bool) -> None:
    verdict = project.drift_verdict() if drift else None
    record = run_cycle(project.root, force=True)
    expected = [triggers.DRIFT, triggers.FORCED] if drift else [triggers.FORCED]
    assert record.triggers == expected
    assert record.outcome == "promoted"
    assert record.steps[1].detail.endswith("forced")
    assert ("repro", "--force", "--single-item", *TRAINING_STAGES) in project.dvc_calls
    assert project.dvc_calls[-1] == ("repro",)
    # Forced with drift, it retrained: the verdict is acted on, and no queue was written.
    assert not (project.root / triggers.REVIEW_DIR).exists()
    assert project.handled() == (
        {"report": REPORT, "window_end": verdict["window_end"], "action": "retrained"}
        if drift
        else None
    )
    assert _run_tags(record)["trigger"] == ",".join(expected)


# --- failures leave the verdict to the next cycle -----------------------------------------------


def test_a_review_that_cannot_be_written_fails_the_cycle_and_keeps_the_verdict(project) -> None:
    project.drift_verdict()
    mlflow.MlflowClient().delete_registered_model(NAME)
    with pytest.raises(RetrainFailed) as failed:
        run_cycle(project.root)
    message = str(failed.value)
    assert message.startswith("retraining failed at step 'review': version 1 of")
    assert "The champion model was left where it was." in message
    saved = read_json(project.root / RECORD_FILE)
    assert (saved["outcome"], saved["failed_step"]) == ("failed", "review")
    assert project.handled() is None
    # The next cycle acts on the same verdict again.
    assert triggers.pending_drift(project.root)["report"] == REPORT


def test_a_failed_retraining_keeps_the_drift_verdict_for_the_next_cycle(project) -> None:
    project.drift_verdict()
    project.add_image("cat", seed=12)
    project.fail_repro = True
    with pytest.raises(RetrainFailed, match="step 'pipeline'"):
        run_cycle(project.root)
    assert project.handled() is None
    assert triggers.pending_drift(project.root)["report"] == REPORT


# --- the trigger functions ----------------------------------------------------------------------


def test_pending_drift_is_the_latest_drift_verdict_no_cycle_acted_on(tmp_path) -> None:
    latest = tmp_path / "reports/monitoring/latest.json"
    assert triggers.pending_drift(tmp_path) is None  # no monitor has run
    write_json(latest, {"drift": False, "report": "reports/monitoring/a.json"})
    assert triggers.pending_drift(tmp_path) is None
    verdict = {"drift": True, "report": "reports/monitoring/a.json", "window_end": "t1"}
    write_json(latest, verdict)
    assert triggers.pending_drift(tmp_path) == verdict
    triggers.mark_handled(tmp_path, verdict, "review queued")
    assert json.loads((tmp_path / triggers.HANDLED_FILE).read_text()) == {
        "report": "reports/monitoring/a.json",
        "window_end": "t1",
        "action": "review queued",
    }
    assert triggers.pending_drift(tmp_path) is None
    newer = {"drift": True, "report": "reports/monitoring/b.json", "window_end": "t2"}
    write_json(latest, newer)
    assert triggers.pending_drift(tmp_path) == newer


def test_describe_drift_names_the_version_the_tests_and_the_report() -> None:
    verdict = {
        "registered_model": "digits-classifier",
        "model_version": "4",
        "fired": ["class_shift", "confidence_shift"],
        "report": "reports/monitoring/x.json",
    }
    assert triggers.describe_drift(verdict) == (
        "drift in digits-classifier version 4's traffic (class_shift, confidence_shift; "
        "reports/monitoring/x.json)"
    )
    assert "(a test; " in triggers.describe_drift({**verdict, "fired": []})


def test_write_review_of_a_version_without_a_reference_names_the_fix(project) -> None:
    """A version registered before monitoring: the queue cannot rank by drift."""
    source = project.root / "old"
    source.mkdir()
    (source / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {}}}))
    mlflow.MlflowClient().create_model_version(NAME, source=source.as_uri())
    verdict = {**project.drift_verdict(), "model_version": "2"}
    with pytest.raises(RegistryError, match="registered without a monitoring reference"):
        triggers.write_review(project.root, verdict, "images")
    assert not (project.root / triggers.REVIEW_DIR).exists()
