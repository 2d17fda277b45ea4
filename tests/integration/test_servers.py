"""The real tracking servers of tests/servers.py, on each backend: what a client writes over HTTP
(runs, metrics, proxied artifacts, registered models, aliases) reads back, and is still there
after the server stops and starts again on the same port."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest

from tests.servers import http_ok, port_in_use

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _quick_http_retries(monkeypatch) -> None:
    # MLflow's client retries a closed port for minutes by default; fail fast instead.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def test_tracking_server_round_trip_survives_restart(tracking_server, tmp_path) -> None:
    server = tracking_server
    assert server.uri.startswith("http://127.0.0.1:")
    assert server.backend in ("sqlite", "postgresql")
    assert server.backend_uri.startswith(server.backend)

    client = mlflow.MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    tag = uuid.uuid4().hex[:8]
    experiment_id = client.create_experiment(f"servers-{server.backend}-{tag}")
    run = client.create_run(experiment_id, tags={"purpose": "servers test"})
    run_id = run.info.run_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri

    client.log_param(run_id, "backend", server.backend)
    client.log_metric(run_id, "accuracy", 0.5, step=0)
    client.log_metric(run_id, "accuracy", 0.75, step=1)
    note = tmp_path / "note.txt"
    note.write_text(f"hello from {server.backend}\n")
    client.log_artifact(run_id, str(note), artifact_path="model")
    client.set_terminated(run_id)

    model_name = f"servers-model-{server.backend}-{tag}"
    client.create_registered_model(model_name)
    version = client.create_model_version(model_name, source=f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(model_name, "champion", version.version)

    def check_everything_is_there() -> None:
        got = client.get_run(run_id)
        assert got.info.status == "FINISHED"
        assert got.data.params == {"backend": server.backend}
        assert got.data.metrics == {"accuracy": 0.75}
        history = client.get_metric_history(run_id, "accuracy")
        assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.75)]
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/note.txt"]
        download = tmp_path / f"download-{uuid.uuid4().hex[:6]}"
        download.mkdir()
        local = client.download_artifacts(run_id, "model/note.txt", str(download))
        assert Path(local).read_text() == f"hello from {server.backend}\n"
        by_alias = client.get_model_version_by_alias(model_name, "champion")
        assert (by_alias.version, by_alias.run_id) == (version.version, run_id)
        assert client.get_registered_model(model_name).aliases == {"champion": version.version}

    check_everything_is_there()
    # The artifact went through the server's proxy into its artifacts folder.
    assert list(server.artifacts_destination.rglob("note.txt"))

    port = server.port
    try:
        server.stop()
        assert not server.running
        assert not port_in_use(port)
        assert not http_ok(f"{server.uri}/health")
    finally:
        server.start()  # the fixture is shared: leave it running whatever happened
    assert server.port == port
    assert http_ok(f"{server.uri}/health")
    check_everything_is_there()
