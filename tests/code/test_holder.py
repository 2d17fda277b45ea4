"""The version holder (pipeline.serving.holder): it serves what `champion` points at, swaps a
new version in only once it has loaded and warmed up, keeps the old one through any failure
and through a registry that does not answer, and cleans up what it downloaded.

The registry is a real MLflow SQLite store; the versions it loads are fakes of the served
pyfunc model (what the holder touches of it: metadata, unwrap_python_model, predict), because
a real registered classifier takes about 20 s to train, log, register and load, and a fake can
fail exactly where a test needs it to. Real versions behind a real server are exercised in
tests/integration/test_serve.py.
"""

from __future__ import annotations

import io
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import RegistryError, TrackingUnavailable
from pipeline.registry import classifier_signature
from pipeline.serving import holder as holder_module
from pipeline.serving.holder import VersionHolder
from pipeline.serving.model import IMAGE_COLUMN, PIXELS_COLUMN
from tests.serving_models import tracking_store

NAME = "digits-classifier"
SHAPE = (8, 8, 1)
SCHEMA = classifier_signature(["cat", "dog"]).inputs
HOLDER_LOGGER = "pipeline.serving.holder"


# --- fixtures built in the tests ---------------------------------------------------------------


class Registry:
    """A registered model with versions 1..3 (no real model behind them: the load is faked)."""

    def __init__(self, uri: str, source: Path) -> None:
        self.uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.client.create_registered_model(NAME)
        for _ in range(3):
            self.client.create_model_version(NAME, source=source.as_uri())

    def point(self, version: str, alias: str = "champion") -> None:
        self.client.set_registered_model_alias(NAME, alias, version)


@pytest.fixture
def registry(tmp_path, template_store) -> Iterator[Registry]:
    shutil.copy(template_store, tmp_path / "mlflow.db")
    source = tmp_path / "source"
    source.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_store(uri):
        yield Registry(uri, source)


class LegacyClassifier:
    """The unwrapped python model of a version registered before answers were recorded: what
    the holder sets (identity, observer) and reads (image_shape), and no embed."""

    def __init__(self, image_shape=SHAPE) -> None:
        if image_shape is not None:
            self.image_shape = image_shape
        self.identity = (None, None, None)
        self.observer = None


class FakeClassifier(LegacyClassifier):
    """Today's served classifier: it can also predict embeddings for the recorder."""

    def __init__(self, image_shape=SHAPE) -> None:
        super().__init__(image_shape)
        self.embedded: list[tuple] = []

    def embed(self, images: np.ndarray):
        self.embedded.append(images.shape)
        return np.zeros((len(images), 2), np.float32)


class FakeVersion:
    """A loaded version as mlflow.pyfunc.PyFuncModel offers it to the holder. `predict`
    decodes what it is given as the served model does (pixels, a uint8 batch, PNG files),
    records each call with the observer active at the time, and calls that observer."""

    def __init__(self, uri: str, python_model, schema, fail_on: str | None = None) -> None:
        self.uri = uri
        self.python_model = python_model
        self.metadata = SimpleNamespace(get_input_schema=lambda: schema, metadata={})
        self.fail_on = fail_on
        self.calls: list[tuple[str, tuple, object]] = []
        self.hold: threading.Event | None = None
        self.entered = threading.Event()

    def unwrap_python_model(self):
        if self.python_model is None:
            raise ValueError("not a python_model flavor")
        return self.python_model

    def predict(self, data, params=None) -> pd.DataFrame:
        python_model = self.python_model
        kind, images = _decode(data)
        observer = python_model.observer if python_model is not None else None
        self.calls.append((kind, images.shape, observer))
        if self.fail_on == kind:
            raise ValueError(f"cannot read the {kind} input")
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(5), "the test never released the request"
        version = python_model.identity[1] if python_model is not None else None
        answer = pd.DataFrame({"predicted_class": ["cat"] * len(images), "model_version": version})
        if observer is not None:
            observer(images, np.full((len(images), 2), 0.5))
        return answer


def _decode(data) -> tuple[str, np.ndarray]:
    if isinstance(data, np.ndarray):
        return "array", data
    if PIXELS_COLUMN in data.columns:
        return "pixels", np.stack(list(data[PIXELS_COLUMN]))
    (encoded,) = data[IMAGE_COLUMN]
    pixels = np.asarray(Image.open(io.BytesIO(encoded)))
    return "image", pixels[None]


class Loader:
    """The holder's `load(uri, folder)`: writes a file into the download folder, as MLflow does,
    and returns a FakeVersion; `failing[version]` makes that version fail ("load", "image" for
    its warm-up on a PNG file, "no_shape" for a model that is not the pipeline's)."""

    def __init__(self, schema=SCHEMA, python_model=FakeClassifier) -> None:
        self.schema = schema
        self.python_model = python_model
        self.failing: dict[str, str] = {}
        self.loaded: list[str] = []
        self.folders: dict[str, Path] = {}
        self.versions: dict[str, FakeVersion] = {}

    def __call__(self, uri: str, folder: Path) -> FakeVersion:
        version = uri.rsplit("/", 1)[-1]
        self.loaded.append(uri)
        assert folder.is_dir()
        (folder / "MLmodel").write_text(f"downloaded {uri}")
        self.folders[version] = folder
        failure = self.failing.get(version)
        if failure == "load":
            raise OSError(f"the artifacts of {uri} are gone\nsecond line")
        if failure == "no_shape":
            model = FakeVersion(uri, FakeClassifier(image_shape=None), self.schema)
        else:
            model = FakeVersion(uri, self.python_model(), self.schema, fail_on=failure)
        self.versions[version] = model
        return model


class Observed:
    """The holder's `observe(served)`: one callback per version, each call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.callbacks: dict[str, object] = {}

    def __call__(self, served):
        def callback(images, probabilities) -> None:
            self.calls.append((served.version, len(images)))

        self.callbacks[served.version] = callback
        return callback


def _holder(loader: Loader, observed: Observed | None = None, **options) -> VersionHolder:
    return VersionHolder(NAME, "champion", load=loader, observe=observed, **options)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable(monkeypatch) -> Iterator[None]:
    """MLflow pointed at a port nobody listens on, failing at once (no retries)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"http://127.0.0.1:{_closed_port()}")
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


# --- the first version --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "warm_up_calls"),
    [
        # Today's signature: pixels as a column, batches of one and two, then a PNG file.
        (SCHEMA, [("pixels", (1, *SHAPE)), ("pixels", (2, *SHAPE)), ("image", (1, 8, 8))]),
        # A version logged before encoded images: a bare uint8 batch, and no file.
        (None, [("array", (1, *SHAPE)), ("array", (2, *SHAPE))]),
    ],
    ids=["signature", "no-schema"],
)
def test_the_first_version_is_loaded_warmed_up_and_named(registry, schema, warm_up_calls) -> None:
    registry.point("2")
    loader, observed = Loader(schema), Observed()
    holder = _holder(loader, observed)
    try:
        served = holder.load_initial()
        assert (served.name, served.version, served.alias) == (NAME, "2", "champion")
        assert holder.current is served
        assert loader.loaded == [f"models:/{NAME}/2"]
        assert served.folder == loader.folders["2"] and (served.folder / "MLmodel").is_file()
        model = served.model
        assert model.python_model.identity == (NAME, "2", "champion")
        assert [(kind, shape) for kind, shape, _ in model.calls] == warm_up_calls
        # The warm-up ran the recording path with an observer that records nothing; the
        # version's own observer is set only afterwards.
        assert all(observer is holder_module._discard for *_, observer in model.calls)
        assert observed.calls == []
        assert model.python_model.observer is observed.callbacks["2"]
        model.predict(np.zeros((3, *SHAPE), np.uint8))
        assert observed.calls == [("2", 3)]
        status = holder.status()
        assert status["version"] == "2" and status["registered_model"] == NAME
        assert status["swaps"] == [{"version": "2", "at": served.loaded_at, "from": None}]
        assert status["failed_version"] is None and status["registry_error"] is None
    finally:
        holder.stop()


def test_a_version_without_an_observer_records_nothing(registry) -> None:
    registry.point("1")
    holder = _holder(Loader())
    try:
        model = holder.load_initial().model
        assert model.python_model.observer is None
        assert all(observer is None for *_, observer in model.calls)
    finally:
        holder.stop()


@pytest.mark.parametrize("create_model", [False, True], ids=["no-model", "no-alias"])
def test_no_version_under_the_alias_is_an_error_saying_what_to_do(
    tmp_path, template_store, create_model: bool
) -> None:
    shutil.copy(template_store, tmp_path / "mlflow.db")
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        if create_model:
            mlflow.MlflowClient().create_registered_model(NAME)
        holder = _holder(Loader())
        with pytest.raises(RegistryError) as refused:
            holder.load_initial()
        message = str(refused.value)
        assert f"{NAME} has no version aliased `champion`" in message
        assert "make repro" in message and "pipeline retrain" in message
        with pytest.raises(RegistryError, match=f"no version of {NAME} is loaded yet"):
            _ = holder.current
        holder.stop()


def test_a_first_version_that_cannot_be_loaded_is_an_error_naming_it(registry) -> None:
    registry.point("3")
    loader = Loader()
    loader.failing["3"] = "load"
    holder = _holder(loader)
    with pytest.raises(RegistryError) as refused:
        holder.load_initial()
    assert str(refused.value) == (
        f"version 3 of {NAME} (@champion) cannot be served: the artifacts of "
        f"models:/{NAME}/3 are gone"
    )
    # Its download folder is not left behind.
    assert not loader.folders["3"].exists()
    holder.stop()


def test_the_first_load_with_the_registry_unreachable_says_so(registry, unreachable) -> None:
    holder = _holder(Loader())
    with pytest.raises(TrackingUnavailable, match="127.0.0.1"):
        holder.load_initial()
    holder.stop()


# --- following the alias ------------------------------------------------------------------------


def test_the_holder_swaps_in_the_version_the_alias_moves_to(registry, caplog) -> None:
    registry.point("1")
    loader, observed = Loader(), Observed()
    holder = _holder(loader, observed)
    try:
        first = holder.load_initial()
        assert holder.poll_once() == "unchanged"
        assert loader.loaded == [f"models:/{NAME}/1"]

        registry.point("2")
        with caplog.at_level(logging.INFO, logger=HOLDER_LOGGER):
            assert holder.poll_once() == "swapped to version 2"
        second = holder.current
        assert second.version == "2" and second.model is loader.versions["2"]
        model = second.model
        assert model.python_model.identity == (NAME, "2", "champion")
        assert all(observer is holder_module._discard for *_, observer in model.calls)
        assert observed.calls == []
        assert model.python_model.observer is observed.callbacks["2"]
        # The recorder's embedding model is traced by the holder, not by the first flush.
        assert model.python_model.embedded == [(2, *SHAPE)]
        assert "now serving digits-classifier version 2 (was 1" in caplog.text
        # The old version's downloaded files are removed; the new one's stay.
        assert not first.folder.exists() and second.folder.is_dir()
        swap = holder.status()["swaps"][-1]
        assert {key: swap[key] for key in ("version", "from")} == {"version": "2", "from": "1"}
        # The swap's time is the assignment's, after the load and the warm-up.
        assert swap["at"] >= second.loaded_at and swap["load_seconds"] >= 0
        assert holder.poll_once() == "unchanged"
        assert len(loader.loaded) == 2
    finally:
        holder.stop()
    # Stopping removes every download.
    assert not second.folder.exists()


def test_a_request_under_way_finishes_on_the_version_it_started_with(registry) -> None:
    registry.point("1")
    loader = Loader()
    holder = _holder(loader)
    try:
        holder.load_initial()
        old = loader.versions["1"]
        old.hold = threading.Event()
        answers: list[pd.DataFrame] = []

        def request() -> None:
            served = holder.current  # read once, as the server's predict does
            answers.append(served.model.predict(np.zeros((1, *SHAPE), np.uint8)))

        worker = threading.Thread(target=request)
        worker.start()
        assert old.entered.wait(5)
        registry.point("2")
        # The swap does not wait for the request under way.
        assert holder.poll_once() == "swapped to version 2"
        assert holder.current.version == "2"
        old.hold.set()
        worker.join(5)
        assert answers[0]["model_version"].tolist() == ["1"]
        answer = holder.current.model.predict(np.zeros((1, *SHAPE), np.uint8))
        assert answer["model_version"].tolist() == ["2"]
    finally:
        holder.stop()


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ("load", f"the artifacts of models:/{NAME}/2 are gone"),
        ("image", "cannot read the image input"),
        ("no_shape", "the model has no image_shape: it is not the pipeline's classifier"),
    ],
    ids=["load", "warm-up", "not-a-classifier"],
)
def test_a_version_that_fails_never_serves_and_is_retried_only_when_the_alias_moves(
    registry, caplog, failure: str, reason: str
) -> None:
    registry.point("1")
    loader = Loader()
    loader.failing["2"] = failure
    holder = _holder(loader, Observed())
    try:
        first = holder.load_initial()
        registry.point("2")
        with caplog.at_level(logging.ERROR, logger=HOLDER_LOGGER):
            assert holder.poll_once() == f"version 2 failed: {reason}"
        assert holder.current is first
        assert (holder.state.failed_version, holder.state.failure) == ("2", reason)
        status = holder.status()
        assert (status["version"], status["failed_version"], status["failure"]) == (
            "1",
            "2",
            reason,
        )
        (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "version 2 of digits-classifier failed" in logged.getMessage()
        assert "version 1 keeps serving" in logged.getMessage()
        # The failed version's download is gone; the serving one's is kept.
        assert not loader.folders["2"].exists() and first.folder.is_dir()

        # Not tried again while the alias stays on it.
        assert holder.poll_once() == "version 2 failed before; waiting for the alias to move"
        assert loader.loaded.count(f"models:/{NAME}/2") == 1

        # The alias back on the version serving: the failure is moot.
        registry.point("1")
        assert holder.poll_once() == "unchanged"
        status = holder.status()
        assert status["failed_version"] is None and status["failure"] is None

        # And on the failed version again (fixed meanwhile): tried again, and served.
        del loader.failing["2"]
        registry.point("2")
        assert holder.poll_once() == "swapped to version 2"
        assert loader.loaded.count(f"models:/{NAME}/2") == 2
        assert holder.current.version == "2" and holder.state.failed_version is None
    finally:
        holder.stop()


def test_a_failed_version_is_retried_after_the_alias_tried_another(registry) -> None:
    registry.point("1")
    loader = Loader()
    loader.failing.update({"2": "load", "3": "image"})
    holder = _holder(loader)
    try:
        holder.load_initial()
        registry.point("2")
        assert holder.poll_once().startswith("version 2 failed:")
        registry.point("3")
        assert holder.poll_once() == "version 3 failed: cannot read the image input"
        assert holder.state.failed_version == "3"
        registry.point("2")
        assert holder.poll_once().startswith("version 2 failed:")
        assert loader.loaded.count(f"models:/{NAME}/2") == 2
        assert holder.current.version == "1"
    finally:
        holder.stop()


def test_a_version_that_cannot_record_serves_unrecorded_with_a_warning(registry, caplog) -> None:
    """A version registered before answers were recorded has no embed: it
    serves, with no observer, rather than failing on its first recorded request."""
    registry.point("1")
    observed = Observed()
    holder = _holder(Loader(python_model=LegacyClassifier), observed)
    try:
        with caplog.at_level(logging.WARNING, logger=HOLDER_LOGGER):
            model = holder.load_initial().model
        assert model.python_model.observer is None
        assert "registered before answers were recorded" in caplog.text
        model.predict(np.zeros((1, *SHAPE), np.uint8))
        assert observed.calls == []
    finally:
        holder.stop()


# --- an unreachable registry --------------------------------------------------------------------


def test_an_unreachable_registry_keeps_the_version_serving_and_warns_once(
    registry, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    registry.point("1")
    holder = _holder(Loader(), poll_seconds=7)
    try:
        first = holder.load_initial()
        mlflow.set_tracking_uri(f"http://127.0.0.1:{_closed_port()}")
        # Meanwhile the alias moves, in the store the holder cannot reach.
        registry.point("2")
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger=HOLDER_LOGGER):
            for _ in range(3):
                assert holder.poll_once() == "registry unreachable"
        assert time.monotonic() - started < 5, "MLflow retried the closed port"
        assert holder.current is first
        status = holder.status()
        assert status["version"] == "1" and "127.0.0.1" in status["registry_error"]
        assert status["last_poll_at"] is not None
        (warning,) = caplog.records
        assert warning.levelno == logging.WARNING
        assert "the registry cannot be reached (API request to http://127.0.0.1:" in (
            warning.getMessage()
        )
        assert "still serving digits-classifier version 1; asking again every 7 s" in (
            warning.getMessage()
        )

        caplog.clear()
        mlflow.set_tracking_uri(registry.uri)
        with caplog.at_level(logging.INFO, logger=HOLDER_LOGGER):
            assert holder.poll_once() == "swapped to version 2"
            assert holder.poll_once() == "unchanged"
        recovered = [r for r in caplog.records if r.getMessage() == "the registry answers again"]
        assert len(recovered) == 1 and holder.status()["registry_error"] is None
    finally:
        holder.stop()


def test_any_error_of_the_store_counts_as_unreachable(registry, monkeypatch) -> None:
    """The store's own errors (a database gone, a driver's exception) are not MlflowException."""
    registry.point("1")
    holder = _holder(Loader())
    try:
        holder.load_initial()

        def broken(self, name, alias):
            raise OSError("disk I/O error\nsecond line")

        monkeypatch.setattr(mlflow.MlflowClient, "get_model_version_by_alias", broken)
        assert holder.poll_once() == "registry unreachable"
        assert holder.state.registry_error == "disk I/O error"
        with pytest.raises(TrackingUnavailable, match="^disk I/O error$"):
            holder.resolve()
    finally:
        holder.stop()


def test_an_alias_removed_keeps_the_version_serving(registry) -> None:
    registry.point("1")
    holder = _holder(Loader())
    try:
        holder.load_initial()
        registry.client.delete_registered_model_alias(NAME, "champion")
        assert holder.resolve() is None
        assert holder.poll_once() == "unchanged"
        assert holder.current.version == "1"
    finally:
        holder.stop()


# --- the poller ---------------------------------------------------------------------------------


def _wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _pollers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "version-holder"]


def test_the_poller_follows_the_alias_in_the_background_until_stopped(registry) -> None:
    registry.point("1")
    loader = Loader()
    holder = _holder(loader, poll_seconds=0.02)
    first = holder.load_initial()
    downloads = first.folder.parent
    holder.start()
    holder.start()  # a second start is a no-op
    try:
        assert len(_pollers()) == 1
        registry.point("2")
        assert _wait_for(lambda: holder.current.version == "2")
        assert holder.state.last_poll_at is not None
    finally:
        holder.stop()
    assert _pollers() == []
    assert not downloads.exists()
    # Stopped: the alias moves and nothing follows it.
    registry.point("3")
    time.sleep(0.1)
    assert holder.current.version == "2" and f"models:/{NAME}/3" not in loader.loaded


def test_the_poller_outlives_a_poll_that_raises(registry, monkeypatch, caplog) -> None:
    registry.point("1")
    holder = _holder(Loader(), poll_seconds=0.02)
    holder.load_initial()
    real_poll = holder.poll_once
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a poll broke")
        return real_poll()

    monkeypatch.setattr(holder, "poll_once", flaky)
    with caplog.at_level(logging.ERROR, logger=HOLDER_LOGGER):
        holder.start()
        try:
            registry.point("2")
            assert _wait_for(lambda: holder.current.version == "2")
        finally:
            holder.stop()
    assert len(calls) >= 2
    assert "polling the registry failed; trying again in 0.02 s" in caplog.text
    assert "a poll broke" in caplog.text
