"""check_params refuses, in well under a second and before any stage deletes an output, what
params alone reveal beyond their types: class folders no model could answer with, and an http(s)
tracking server that does not answer."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml

from pipeline.columns import ANSWER_COLUMNS, class_name_problems
from pipeline.config import load_config
from pipeline.errors import DataError, TrackingUnavailable
from pipeline.stages import check_params
from tests.project import PROJECT_ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image_folder(root: Path, classes: list[str]) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        (root / name / "a.png").write_bytes(PNG_SIGNATURE)
    return root


def _project(tmp_path: Path, **data) -> Path:
    """A project folder whose params.yaml is the project's, with `data` merged into data."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"].update(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("name", ["error", "predicted_class", "model_version"])
def test_a_class_folder_named_like_an_answer_column_is_refused_at_once(
    tmp_path: Path, name: str
) -> None:
    folder = _image_folder(tmp_path / "images", ["circle", name, "square"])
    config = load_config(_project(tmp_path, dataset="image_folder", image_folder=str(folder)))
    start = time.monotonic()
    with pytest.raises(DataError) as error:
        check_params.check_dataset_source(config)
    assert time.monotonic() - start < 1.0
    message = str(error.value)
    assert str(folder) in message and "data.image_folder" in message
    assert f"'{name}' is the name of a column of every answer" in message
    assert f"rename it, e.g. to '{name}_class'" in message
    assert "'circle'" not in message and "'square'" not in message


def test_class_folders_that_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images", ["Cat", "cat", "dog"])
    config = load_config(_project(tmp_path, dataset="image_folder", image_folder=str(folder)))
    with pytest.raises(DataError, match="'Cat' and 'cat' differ only in case"):
        check_params.check_dataset_source(config)


def test_ordinary_class_names_pass() -> None:
    assert class_name_problems(["circle", "square", "Error_class", "errors", "top3"]) == []
    assert class_name_problems([" "]) == ["' ' is empty or blank: give the class a name"]
    # One source of truth: the served model answers with exactly these columns.
    from pipeline.serving import model

    assert set(model.ANSWER_COLUMNS) == set(ANSWER_COLUMNS)


def test_a_dead_http_tracking_server_fails_check_params_fast_naming_the_uri(
    tmp_path: Path, monkeypatch
) -> None:
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as error:
        check_params.main(["--out", "reports/params_check.json"])
    assert time.monotonic() - start < 2.0
    message = str(error.value)
    assert uri in message and "Start the server" in message and "unset it" in message
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("uri", [None, "sqlite:///{root}/mlflow.db", "file:///{root}/mlruns"])
def test_a_local_store_is_not_contacted_by_check_params(
    tmp_path: Path, monkeypatch, uri: str | None
) -> None:
    """The default (the project's SQLite file) and other local stores cost check_params
    nothing: only an http(s) server is asked whether it answers."""
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    if uri is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(root=tmp_path))

    def contacted(*args, **kwargs) -> None:
        raise AssertionError(f"check_tracking_server{args} was called")

    monkeypatch.setattr(check_params, "check_tracking_server", contacted)
    check_params.main(["--out", "reports/params_check.json"])
    assert (tmp_path / "reports" / "params_check.json").is_file()
