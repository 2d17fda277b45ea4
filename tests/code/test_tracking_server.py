"""A tracking server that is down is found in seconds, before any training, with its URI."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import TrackingUnavailable
from pipeline.tracking.server import check_tracking_server, tracking_uri
from tests.project import PROJECT_ROOT


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the probe is


def test_a_closed_port_fails_at_once_naming_the_uri() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as down:
        check_tracking_server(uri)
    assert time.monotonic() - start < 2
    assert uri in str(down.value) and "refused" in str(down.value)
    assert "MLFLOW_TRACKING_URI" in str(down.value)


def test_a_sqlite_store_in_a_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(TrackingUnavailable, match="does not exist"):
        check_tracking_server(f"sqlite:///{tmp_path}/missing/mlflow.db")
    check_tracking_server(f"sqlite:///{tmp_path}/mlflow.db")  # a new store there is fine


def test_an_unreachable_database_is_reported() -> None:
    uri = f"postgresql+psycopg://mlflow@127.0.0.1:{_closed_port()}/mlflow"
    with pytest.raises(TrackingUnavailable) as down:
        check_tracking_server(uri, timeout=2)
    assert uri in str(down.value)


def test_the_default_store_is_the_project_sqlite(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(tmp_path) == "http://tracking.example:5000"


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "pipeline.stages.train", "scratch", "--prepared", "data/prepared",
         "--gate", "gate.json", "--out", "models/scratch"],
        ["-m", "pipeline", "retrain"],
    ],
    ids=["train-stage", "retrain"],
)  # fmt: skip
def test_training_stops_within_ten_seconds_without_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    uri = f"http://127.0.0.1:{_closed_port()}"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert uri in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()
