"""`pipeline serve --backend onnx` as an operator runs it: the champion, registered with its ONNX
export (pipeline.export) into a SQLite store, answers over HTTP what the Keras backend answers
(the same columns, classes and, within 1e-4, probabilities) and records its answers with
embeddings; a version registered without its export is refused under onnx, naming the version,
the artifact and what to do: never swapped in while the old champion keeps answering, and a
server started on it exits saying why. Each server runs in a subprocess on 127.0.0.1 and a free
port, stopped with its whole process group (tests/servers.py)."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.servers import PIPELINE, PipelineServer, ServerStarter, run_to_exit
from tests.serving_models import tracking_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLASSES = [str(digit) for digit in range(10)]
NAME = "digits-onnx"
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Registered:
    """A project folder whose embedded SQLite store holds `NAME`: version 1 with its ONNX
    export (champion), version 2, the same Keras model, without one."""

    root: Path
    uri: str
    files: list[bytes]
    """sklearn's digits as PNG files, what clients send."""

    def set_champion(self, version: str) -> None:
        from pipeline import registry

        with tracking_store(self.uri):
            registry.set_champion(NAME, version)


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Iterator[Registered]:
    """A digits convnet trained one epoch, exported to ONNX with parity proven on the test
    split, logged and registered with the project's own code."""
    import keras
    import mlflow
    from sklearn.datasets import load_digits

    from pipeline import registry
    from pipeline.export.exporter import ExportSource, export_model
    from pipeline.models.builders import build_architecture, resolve_architecture
    from pipeline.registry import encode_png
    from pipeline.store import MODEL_FILE, ArraySplit
    from pipeline.tracking.runs import ensure_experiment

    root = tmp_path_factory.mktemp("serve-onnx-project")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    loaded = load_digits()
    images = np.round(loaded.images * 255 / 16).astype(np.uint8)[..., None]
    train = ArraySplit(images[:1200], loaded.target[:1200], CLASSES)
    test = ArraySplit(images[1400:], loaded.target[1400:], CLASSES)
    keras.utils.set_random_seed(0)
    network = build_architecture(
        resolve_architecture("auto", "digits"), images.shape[1:], len(CLASSES), None
    )
    network.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy")
    network.fit(train.x, train.y, epochs=1, batch_size=32, verbose=0)
    model_file = root / "models" / "scratch" / MODEL_FILE
    model_file.parent.mkdir(parents=True)
    network.save(model_file)
    exported = export_model(
        ExportSource(model_file, CLASSES, "models/scratch"),
        "onnx",
        "none",
        test,
        train,
        root / "exports",
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with tracking_store(uri):
        experiment = ensure_experiment("serve-onnx", (root / "mlruns").as_uri())
        for exports in ({"onnx": exported.folder}, None):
            with mlflow.start_run(experiment_id=experiment):
                info = registry.log_classifier(
                    model_file,
                    CLASSES,
                    images[:1],
                    monitoring_splits=(train, test),
                    exports=exports,
                )
            registry.register_challenger(NAME, info.model_uri, {})
        registry.set_champion(NAME, "1")
    yield Registered(root, uri, [encode_png(image) for image in images])


class OnnxTestServer(PipelineServer):
    """`pipeline serve` of NAME in the registered project, with the digits' PNG files to send."""

    def __init__(self, registered: Registered, log_path: Path, *options: str) -> None:
        super().__init__(registered, NAME, log_path, *options)
        self.registered = registered

    def predict(self, indices) -> list[dict]:
        """The answer's rows for the digits `indices`, sent as one batch of base64 PNG files."""
        files = self.registered.files
        rows = [[base64.b64encode(files[index]).decode("ascii")] for index in indices]
        response = requests.post(
            f"{self.uri}/invocations",
            json={"dataframe_split": {"columns": ["image"], "data": rows}},
            timeout=60,
        )
        assert response.status_code == 200, f"{response.status_code}: {response.text[:500]}"
        return response.json()["predictions"]


@pytest.fixture
def start_server(registered: Registered, tmp_path: Path) -> Iterator[Callable[..., PipelineServer]]:
    """Start `pipeline serve` with extra options (started and ready); every server started is
    stopped at the end of the test, passed or failed."""

    def make(log: Path, *options: str) -> OnnxTestServer:
        return OnnxTestServer(registered, log, *options)

    starter = ServerStarter(make, tmp_path)
    try:
        yield starter
    finally:
        starter.stop_all()


def _probabilities(rows: list[dict]) -> np.ndarray:
    return np.array([[row[name] for name in CLASSES] for row in rows], dtype=np.float64)


def test_the_onnx_backend_answers_the_champions_requests_as_the_keras_backend(
    registered: Registered, start_server, tmp_path: Path
) -> None:
    from pipeline.monitoring.records import read_window

    registered.set_champion("1")
    predictions = tmp_path / "predictions"
    onnx = start_server(
        "--backend", "onnx", "--predictions-dir", str(predictions), "--flush-seconds", "0.5"
    )
    keras = start_server("--backend", "keras", "--no-record")
    onnx_status, keras_status = onnx.status(), keras.status()
    assert (onnx_status["version"], onnx_status["backend"]) == ("1", "onnx"), onnx.explain()
    assert (keras_status["version"], keras_status["backend"]) == ("1", "keras"), keras.explain()

    # Every digit of the test part, in batches of 1 and of 64 (the same PNG files to both).
    batches = [[1400], [1401], *[list(range(start, start + 64)) for start in (1402, 1466)]]
    for indices in batches:
        from_onnx, from_keras = onnx.predict(indices), keras.predict(indices)
        assert len(from_onnx) == len(from_keras) == len(indices)
        assert [list(row) for row in from_onnx] == [list(row) for row in from_keras]
        assert [row["predicted_class"] for row in from_onnx] == [
            row["predicted_class"] for row in from_keras
        ]
        assert [row["top_classes"] for row in from_onnx] == [
            row["top_classes"] for row in from_keras
        ]
        difference = np.abs(_probabilities(from_onnx) - _probabilities(from_keras))
        assert difference.max() <= TOLERANCE, difference.max()
        assert {row["model_version"] for row in from_onnx} == {"1"}
    # The answers compared tell the digits apart: not one class, not one probability.
    answered = [row for indices in batches[2:] for row in onnx.predict(indices)]
    assert len({row["predicted_class"] for row in answered}) >= 4
    assert np.ptp([row["probability"] for row in answered]) > 0.1

    # Its answers are recorded with their embeddings (the Keras model's penultimate layer).
    sent = sum(len(indices) for indices in batches) + len(answered)
    onnx.wait_for(
        lambda status: status["recorder"]["written"] >= sent, 30, f"{sent} answers recorded"
    )
    records = read_window(predictions, last_n=10**6)
    assert len(records) == sent
    assert set(records["model_version"]) == {"1"}
    assert all(len(embedding) >= 1 for embedding in records["embedding"])


def test_a_version_without_its_onnx_export_is_refused_under_onnx(
    registered: Registered, start_server, tmp_path: Path
) -> None:
    registered.set_champion("1")
    onnx = start_server("--backend", "onnx", "--no-record")
    keras = start_server("--backend", "keras", "--no-record")
    registered.set_champion("2")
    # The keras server follows the alias; the onnx one refuses version 2 and keeps version 1.
    keras.wait_for(lambda status: status["version"] == "2", 60, "keras serves version 2")
    status = onnx.wait_for(
        lambda status: status["failed_version"] == "2", 60, "onnx refuses version 2"
    )
    assert status["version"] == "1" and status["backend"] == "onnx"
    failure = status["failure"]
    assert f"version 2 of {NAME!r} has no ONNX export" in failure, failure
    assert "export_onnx" in failure and "--backend keras" in failure, failure
    assert "promote.exports" in failure, failure
    assert {row["model_version"] for row in onnx.predict([0, 1, 2])} == {"1"}
    assert {row["model_version"] for row in keras.predict([0, 1, 2])} == {"2"}

    # Started on version 2, an onnx server exits at once with the reason and no traceback.
    server = OnnxTestServer(registered, tmp_path / "refused.log", "--backend", "onnx")
    stopped = run_to_exit(
        [str(PIPELINE), "serve", *server.serve_arguments(), "--backend", "onnx", "--no-record"],
        server.environment(),
        timeout=120,
    )
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0, output
    assert f"version 2 of {NAME} (@champion) cannot be served" in output, output
    assert f"version 2 of {NAME!r} has no ONNX export" in output, output
    assert "Traceback" not in output, output
