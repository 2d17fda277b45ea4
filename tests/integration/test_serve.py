"""`pipeline serve` as an operator runs it, in a subprocess on a free port: it follows the
champion alias under load without a failed or mixed answer, records every answered image, keeps
serving through a tracking server that goes away and a version that cannot load, refuses a port
that is taken, keeps answering when its records cannot be written, runs several workers that
each follow the alias and record into one day folder, and answers hostile requests (bodies over
the limit, deep JSON, invalid JSON, ragged pixels, junk base64) with short refusals, then a good
request on the same connection."""

from __future__ import annotations

import base64
import collections
import http.client
import json
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.servers import (
    SERVE_POLL_SECONDS,
    MlflowServer,
    PipelineServer,
    ServerStarter,
    run_to_exit,
)
from tests.serving_models import tracking_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PIPELINE = Path(sys.executable).parent / "pipeline"
CLASSES = [str(digit) for digit in range(10)]
POLL_SECONDS = SERVE_POLL_SECONDS
FLUSH_SECONDS = 0.5


# --- the registered versions ------------------------------------------------------------------


@dataclass(frozen=True)
class Digits:
    """sklearn's 8x8 digits as the split stores them (uint8, (N, 8, 8, 1)) and as PNG files."""

    images: np.ndarray
    labels: np.ndarray
    files: list[bytes]


@dataclass(frozen=True)
class Store:
    """A project folder (dvc.yaml, params.yaml) whose embedded SQLite store holds logged
    classifiers: `weak` (1 epoch), `strong` (3 epochs) and `spare` (a copy a test may break).
    Each test registers them under a registered model name of its own."""

    root: Path
    uri: str
    model_uris: dict[str, str]

    def register(self, name: str, model: str) -> str:
        """Register logged model `model` as the next version of `name`; return the version."""
        from pipeline import registry

        with tracking_store(self.uri):
            return str(registry.register_challenger(name, self.model_uris[model], {}).version)

    def set_champion(self, name: str, version: str, uri: str | None = None) -> None:
        """Point `champion` at `version`, through `uri` (default: the SQLite store itself)."""
        from pipeline import registry

        with tracking_store(uri or self.uri):
            registry.set_champion(name, version)


@pytest.fixture(scope="module")
def digits() -> Digits:
    from sklearn.datasets import load_digits

    from pipeline.registry import encode_png

    loaded = load_digits()
    images = np.round(loaded.images * 255 / 16).astype(np.uint8)[..., None]
    return Digits(images, loaded.target, [encode_png(image) for image in images])


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits: Digits) -> Store:
    """Two differently trained digit classifiers (and a spare copy), logged once per module
    with the project's own code into a project folder's embedded store."""
    import keras
    import mlflow

    from pipeline import registry
    from pipeline.models.builders import build_architecture, resolve_architecture
    from pipeline.store import MODEL_FILE, ArraySplit
    from pipeline.tracking.runs import ensure_experiment

    root = tmp_path_factory.mktemp("serve-project")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    images, labels = digits.images, digits.labels
    train = ArraySplit(images[:1200], labels[:1200], CLASSES)
    test = ArraySplit(images[1400:], labels[1400:], CLASSES)
    model_uris = {}
    keras.utils.set_random_seed(0)
    network = build_architecture(
        resolve_architecture("auto", "digits"), images.shape[1:], len(CLASSES), None
    )
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    files = {}
    # The strong model is the weak one trained further: two versions that answer differently,
    # for the price of one training.
    for model, epochs in (("weak", 1), ("strong", 2)):
        network.fit(train.x, train.y, epochs=epochs, batch_size=32, verbose=0)
        files[model] = root / "models" / model / MODEL_FILE
        files[model].parent.mkdir(parents=True)
        network.save(files[model])
    model_uris = {}
    with tracking_store(uri):
        experiment = ensure_experiment("serve", (root / "mlruns").as_uri())
        for copy, model in (("weak", "weak"), ("strong", "strong"), ("spare", "strong")):
            # The spare copy is there to be broken: it needs no monitoring reference.
            splits = None if copy == "spare" else (train, test)
            with mlflow.start_run(experiment_id=experiment, run_name=copy):
                info = registry.log_classifier(
                    files[model], CLASSES, images[:1], monitoring_splits=splits
                )
            model_uris[copy] = info.model_uri
    return Store(root, uri, model_uris)


@pytest.fixture(scope="module")
def broken_model(store: Store) -> str:
    """The spare logged model with its Keras file overwritten on disk: a version registered
    from it cannot load. Returns its key in `store.model_uris`."""
    from urllib.parse import urlparse

    import mlflow

    from pipeline.store import MODEL_FILE

    name = "broken-artifacts"
    version = store.register(name, "spare")
    with tracking_store(store.uri):
        download = mlflow.MlflowClient().get_model_version_download_uri(name, version)
    keras_files = list(Path(urlparse(download).path).rglob(MODEL_FILE))
    assert len(keras_files) == 1, (download, keras_files)
    keras_files[0].write_bytes(b"not a Keras archive")
    return "spare"


# --- the server under test --------------------------------------------------------------------


@pytest.fixture
def start_server(store: Store, tmp_path: Path) -> Iterator[Callable[..., PipelineServer]]:
    """Start `pipeline serve` of a registered model with extra options (started and ready):
    start(model_name, *options, tracking_uri=None); every server started is stopped at the end
    of the test, passed or failed."""

    def make(log: Path, model_name: str, *options: str, **keywords) -> PipelineServer:
        return PipelineServer(store, model_name, log, *options, **keywords)

    starter = ServerStarter(make, tmp_path)
    try:
        yield starter
    finally:
        starter.stop_all()


# --- clients ----------------------------------------------------------------------------------


def encode_request(digits: Digits, indices) -> dict:
    """MLflow's `dataframe_split` with one base64 PNG file per row of the `image` column."""
    rows = [[base64.b64encode(digits.files[index]).decode("ascii")] for index in indices]
    return {"dataframe_split": {"columns": ["image"], "data": rows}}


def predict(server: PipelineServer, digits: Digits, indices, session=requests) -> requests.Response:
    return session.post(
        f"{server.uri}/invocations", json=encode_request(digits, indices), timeout=60
    )


def read_versions(response: requests.Response) -> list[str]:
    return [row["model_version"] for row in response.json()["predictions"]]


@dataclass
class Answer:
    """One request of the load: when it started and ended (monotonic), the images it sent,
    its status code (None: no answer) and the answer's rows."""

    started: float
    ended: float
    indices: list[int]
    status: int | None
    rows: list[dict] = field(default_factory=list)
    error: str | None = None

    @property
    def versions(self) -> set[str]:
        return {row.get("model_version") for row in self.rows}


class Load:
    """`threads` clients posting 1 to 4 digits per request until stopped, each request timed;
    each client keeps its connection, or opens a new one per request (`new_connections`) so
    that the requests spread over a server's worker processes."""

    def __init__(
        self,
        server: PipelineServer,
        digits: Digits,
        threads: int = 4,
        new_connections: bool = False,
    ) -> None:
        self.server, self.digits = server, digits
        self.new_connections = new_connections
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(seed,), daemon=True)
            for seed in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def _client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with requests.Session() as kept:
            session = requests if self.new_connections else kept
            while not self._stop.is_set():
                indices = rng.integers(0, len(self.digits.files), rng.integers(1, 5)).tolist()
                started = time.monotonic()
                try:
                    response = predict(self.server, self.digits, indices, session)
                except requests.RequestException as error:
                    answer = Answer(started, time.monotonic(), indices, None, error=str(error))
                    # A server that is gone refuses at once: pause rather than spin.
                    time.sleep(0.05)
                else:
                    answer = Answer(started, time.monotonic(), indices, response.status_code)
                    if response.status_code == 200:
                        answer.rows = response.json()["predictions"]
                    else:
                        answer.error = response.text[:500]
                with self._lock:
                    self.answers.append(answer)

    def first(self, version: str) -> Answer | None:
        """The earliest-ending answer by `version`."""
        with self._lock:
            answered = [answer for answer in self.answers if version in answer.versions]
        return min(answered, key=lambda answer: answer.ended, default=None)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# --- the tests --------------------------------------------------------------------------------


def test_promotion_under_load_switches_versions_without_a_failed_or_mixed_answer(
    store: Store, digits: Digits, start_server, tmp_path: Path
) -> None:
    from pipeline.datasets.images import decode_image
    from pipeline.monitoring.records import read_window
    from pipeline.store import image_digest

    name = "promoted-under-load"
    old = store.register(name, "weak")
    store.set_champion(name, old)
    new = store.register(name, "strong")
    predictions = tmp_path / "predictions"
    server = start_server(
        name, "--flush-seconds", str(FLUSH_SECONDS), "--predictions-dir", str(predictions)
    )
    assert server.status()["version"] == old, server.explain()

    with Load(server, digits) as load:
        time.sleep(3.0)
        promoting = time.monotonic()
        store.set_champion(name, new)
        promoted = time.monotonic()
        # Two polls, the load and warm-up, and then some: the bound is asserted below.
        wait_until(lambda: load.first(new) is not None, timeout=2 * POLL_SECONDS + 60)
        time.sleep(1.5)
        status = server.status()
        # Stopped under load: what it answered while it shut down must be recorded too.
        stopping = time.monotonic()
        returncode = server.terminate()
    answers = sorted(load.answers, key=lambda answer: answer.started)
    assert returncode == 0, f"SIGTERM: exit {returncode}\n{server.explain()}"

    before_stop = [answer for answer in answers if answer.ended < stopping]
    failed = [answer for answer in before_stop if answer.status != 200]
    assert before_stop and not failed, (
        f"{len(failed)} of {len(before_stop)} requests failed, e.g. {failed[:3]}\n"
        f"{server.explain()}"
    )
    # While it stops, a request is answered or refused, never answered with an error.
    assert {answer.status for answer in answers} <= {200, None}, server.explain()
    answered = [answer for answer in answers if answer.status == 200]
    rows = [row for answer in answered for row in answer.rows]
    assert all(row.get("model_version") in (old, new) for row in rows), {
        row.get("model_version") for row in rows
    }
    mixed = [answer for answer in answered if len(answer.versions) != 1]
    assert not mixed, f"requests answered by two versions at once: {mixed[:3]}"
    first_new = load.first(new)
    assert first_new is not None, f"no answer from version {new}: {status}\n{server.explain()}"
    assert any(old in answer.versions for answer in answered), "no answer from the old version"
    late_old = [
        answer for answer in answered if answer.started > first_new.ended and old in answer.versions
    ]
    assert not late_old, (
        f"{len(late_old)} requests started after version {new} first answered (at "
        f"{first_new.ended:.3f}) were answered by version {old}: {late_old[:3]}"
    )
    assert [swap["version"] for swap in status["swaps"]] == [old, new], status
    # The label is the model: an image gets one answer from each version (whatever the batch
    # it came in), and different answers from the two.
    answers_of: dict[tuple[int, str], list[np.ndarray]] = collections.defaultdict(list)
    for answer in answered:
        for index, row in zip(answer.indices, answer.rows, strict=True):
            vector = np.array([row[name] for name in CLASSES])
            answers_of[index, row["model_version"]].append(vector)
    for vectors in answers_of.values():
        np.testing.assert_allclose(
            vectors, np.broadcast_to(vectors[0], np.shape(vectors)), atol=1e-5
        )
    both = [index for index, version in answers_of if version == old and (index, new) in answers_of]
    assert both, "no image was answered by both versions"
    same = [
        index
        for index in both
        if np.allclose(answers_of[index, old][0], answers_of[index, new][0], atol=1e-4)
    ]
    assert not same, f"versions {old} and {new} give the same answers for images {same[:5]}"
    switch = first_new.ended - promoted
    warm_up = status["swaps"][-1]["load_seconds"]
    bound = 2 * POLL_SECONDS + warm_up + 1.5
    assert switch <= bound, (
        f"version {new} first answered {switch:.2f} s after the alias moved (set_champion took "
        f"{promoted - promoting:.2f} s); two polls and its {warm_up:.1f} s load allow "
        f"{bound:.2f} s\n{server.explain()}"
    )

    records = read_window(predictions, last_n=10**6)
    expected = collections.Counter(
        (
            image_digest(decode_image(digits.files[index], 8, "stretch", 1)),
            row["model_version"],
            row["predicted_class"],
        )
        for answer in answered
        for index, row in zip(answer.indices, answer.rows, strict=True)
    )
    recorded = collections.Counter(
        zip(records["digest"], records["model_version"], records["predicted_class"], strict=True)
    )
    answered_images = sum(len(answer.indices) for answer in answered)
    assert len(records) == answered_images, (
        f"{len(records)} records for {answered_images} answered images\n{server.explain()}"
    )
    assert recorded == expected, (
        f"records and answers differ: only recorded {list((recorded - expected).items())[:3]}, "
        f"only answered {list((expected - recorded).items())[:3]}"
    )
    widths = {len(embedding) for embedding in records["embedding"]}
    assert widths and max(widths) <= 32 and min(widths) >= 1, widths
    assert set(records["source"]) == {"serve"}
    assert set(records["model_alias"]) == {"champion"}


def test_a_lost_tracking_server_changes_nothing_but_a_warning_and_the_alias_is_followed_after(
    store: Store, digits: Digits, start_server, tmp_path: Path
) -> None:
    name = "registry-outage"
    old = store.register(name, "weak")
    store.set_champion(name, old)
    new = store.register(name, "strong")
    # The module's own SQLite store behind a real tracking server.
    with MlflowServer(store.uri, tmp_path / "tracking") as tracking:
        server = start_server(name, "--no-record", tracking_uri=tracking.uri)
        assert read_versions(predict(server, digits, [0])) == [old]

        tracking.kill()
        lost = time.monotonic()
        polls_without_registry: set[str] = set()
        answers: list[requests.Response] = []
        while len(polls_without_registry) < 3 and time.monotonic() < lost + 90:
            answers.append(predict(server, digits, [len(answers) % 100, 7]))
            status = server.status()
            if status["registry_error"] is not None:
                polls_without_registry.add(status["last_poll_at"])
            time.sleep(0.2)
        assert len(polls_without_registry) >= 3, (
            f"{len(polls_without_registry)} polls saw the registry gone in 90 s: {status}\n"
            f"{server.explain()}"
        )
        assert all(response.status_code == 200 for response in answers), server.explain()
        assert {version for response in answers for version in read_versions(response)} == {old}

        tracking.start()
        store.set_champion(name, new, uri=tracking.uri)
        server.wait_for(
            lambda status: status["version"] == new and status["registry_error"] is None,
            timeout=2 * POLL_SECONDS + 60,
            what=f"version {new} did not serve once the registry was back",
        )
        assert read_versions(predict(server, digits, [3, 4])) == [new, new]
        # Stopped while the registry is still there, so that its log ends with this test.
        assert server.terminate() == 0, server.explain()
    log = server.log()
    assert log.count("the registry cannot be reached") == 1, server.explain()
    assert log.count("the registry answers again") == 1, server.explain()


def test_a_version_that_cannot_load_never_serves_and_the_next_good_one_does(
    store: Store, digits: Digits, start_server, broken_model: str
) -> None:
    name = "broken-version"
    old = store.register(name, "weak")
    store.set_champion(name, old)
    good = store.register(name, "strong")
    broken = store.register(name, broken_model)
    server = start_server(name, "--no-record")

    store.set_champion(name, broken)
    status = server.wait_for(
        lambda status: status["failed_version"] == broken,
        timeout=2 * POLL_SECONDS + 60,
        what=f"version {broken} was not reported as failed",
    )
    assert status["version"] == old and status["failure"], status
    # Several polls later: still the old version, and the failure was tried and logged once.
    deadline = time.monotonic() + 3 * POLL_SECONDS
    while time.monotonic() < deadline:
        assert read_versions(predict(server, digits, [5, 6])) == [old, old]
        time.sleep(0.2)
    assert server.status()["failed_version"] == broken
    failures = re.findall(rf"version {broken} of {name} failed to load.*", server.log())
    assert len(failures) == 1 and f"version {old} keeps serving" in failures[0], (
        f"{failures}\n{server.explain()}"
    )

    store.set_champion(name, good)
    status = server.wait_for(
        lambda status: status["version"] == good,
        timeout=2 * POLL_SECONDS + 60,
        what=f"version {good} did not replace the failed version {broken}",
    )
    assert status["failed_version"] is None and status["failure"] is None, status
    assert read_versions(predict(server, digits, [8])) == [good]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_champion_that_cannot_load_stops_the_server_at_start_with_the_reason(
    store: Store, broken_model: str, workers: int, tmp_path: Path
) -> None:
    name = f"broken-at-start-{workers}"
    version = store.register(name, broken_model)
    store.set_champion(name, version)
    server = PipelineServer(store, name, tmp_path / "serve.log", "--workers", str(workers))

    stopped = run_to_exit(
        [str(PIPELINE), "serve", *server.serve_arguments(), "--workers", str(workers)],
        server.environment(),
        timeout=120,
    )
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 2, f"exit {stopped.returncode}:\n{output}"
    assert f"version {version} of {name} (@champion) cannot be served" in output, output
    assert "Traceback" not in output, output
    # No worker was started again: at most each of the first `workers` said why it could not
    # start (one may be stopped before it gets that far).
    assert 1 <= output.count("cannot be served") <= workers, output


def test_a_second_server_on_a_taken_port_exits_at_once_saying_so(
    store: Store, start_server
) -> None:
    name = "one-port"
    version = store.register(name, "weak")
    store.set_champion(name, version)
    first = start_server(name, "--no-record")

    started = time.monotonic()
    second = run_to_exit(
        [str(PIPELINE), "serve", *first.serve_arguments(), "--no-record"],
        first.environment(),
        timeout=120,
    )
    elapsed = time.monotonic() - started
    output = second.stdout + second.stderr
    assert second.returncode != 0, output
    assert f":{first.port} is already in use" in output, output
    assert "Traceback" not in output, output
    # It stopped before loading a model: it never said what it serves, and it took a fraction
    # of a model's load (TensorFlow's import alone takes several seconds here).
    assert "serving" not in output and elapsed < 10, f"{elapsed:.1f} s:\n{output}"
    assert first.status()["version"] == version, first.explain()


def test_records_that_cannot_be_written_are_dropped_and_requests_still_succeed(
    store: Store, digits: Digits, start_server, tmp_path: Path
) -> None:
    name = "unrecorded"
    version = store.register(name, "weak")
    store.set_champion(name, version)
    # A regular file where a folder should be: root writes anywhere, so no chmod would do.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, not the predictions folder's parent\n")
    server = start_server(
        name, "--flush-seconds", str(FLUSH_SECONDS), "--predictions-dir", str(blocker / "preds")
    )

    dropped = []
    for index in range(4):
        # Each round outlasts a flush, so the recorder fails several times over.
        for _ in range(3):
            response = predict(server, digits, [index, index + 1])
            assert response.status_code == 200, f"{response.text}\n{server.explain()}"
        time.sleep(2 * FLUSH_SECONDS)
        dropped.append(server.status()["recorder"]["dropped"])
    recorder = server.status()["recorder"]
    assert dropped == sorted(dropped) and dropped[-1] > dropped[0] > 0, (dropped, recorder)
    assert dropped[-1] == 4 * 3 * 2 and recorder["written"] == 0, recorder
    assert recorder["failing"] and recorder["last_error"], recorder
    warnings = re.findall(r".*prediction records cannot be written.*", server.log())
    assert len(warnings) == 1 and str(blocker) in warnings[0], f"{warnings}\n{server.explain()}"
    assert blocker.is_file()


def collect_worker_statuses(server: PipelineServer, wanted: int, timeout: float) -> dict[int, dict]:
    """/status from `wanted` different worker processes, each asked on a new connection."""
    statuses: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(statuses) < wanted and time.monotonic() < deadline:
        status = server.status()
        statuses[status["pid"]] = status
        time.sleep(0.05)  # The other worker may still be loading: leave it the CPU.
    return statuses


def test_each_worker_follows_the_alias_and_records_into_the_same_day_folder(
    store: Store, digits: Digits, start_server, tmp_path: Path
) -> None:
    from pipeline.monitoring.records import read_window

    name = "two-workers"
    old = store.register(name, "weak")
    store.set_champion(name, old)
    new = store.register(name, "strong")
    predictions = tmp_path / "predictions"
    server = start_server(
        name,
        "--workers",
        "2",
        "--flush-seconds",
        str(FLUSH_SECONDS),
        "--predictions-dir",
        str(predictions),
    )
    workers = collect_worker_statuses(server, 2, timeout=120)
    assert len(workers) == 2, f"{workers}\n{server.explain()}"
    assert {status["version"] for status in workers.values()} == {old}, workers

    with Load(server, digits, new_connections=True) as load:
        time.sleep(2.0)
        store.set_champion(name, new)
        deadline = time.monotonic() + 2 * POLL_SECONDS + 60
        following: dict[int, dict] = {}
        while len(following) < 2 and time.monotonic() < deadline:
            status = server.status()
            if status["version"] == new:
                following[status["pid"]] = status
            time.sleep(0.05)
        time.sleep(1.0)
    assert set(following) == set(workers), (
        f"workers {sorted(workers)}; serving version {new}: {sorted(following)}\n{server.explain()}"
    )
    answers = load.answers
    assert all(answer.status == 200 for answer in answers), server.explain()
    assert {version for answer in answers for version in answer.versions} == {old, new}

    assert server.terminate() == 0, f"SIGTERM: exit {server.returncode}\n{server.explain()}"
    # Each worker logs as the parent does: its own first version and its own swap.
    log = server.log()
    for pid in workers:
        assert f"version {old} (@champion) on {server.uri} (worker process {pid})" in log, log
    assert log.count(f"now serving {name} version {new} (was {old}") == 2, log
    assert "UserWarning" not in log, log
    files = list(predictions.rglob("part-*.parquet"))
    days = {path.parent.name for path in files}
    writers = {int(path.name.split("-")[-2]) for path in files}
    assert len(days) == 1, days
    assert writers == set(workers), f"files from pids {writers}, workers {sorted(workers)}"
    records = read_window(predictions, last_n=10**6)
    assert len(records) == sum(len(answer.indices) for answer in answers)


# --- hostile requests -------------------------------------------------------------------------


def post_headers_only(server: PipelineServer, content_length: int) -> tuple[int, bytes, float]:
    """POST /invocations declaring `content_length` bytes and sending none of them: (status,
    body, seconds). Only a server that answers from the headers alone answers at all."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    started = time.monotonic()
    try:
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(content_length))
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        connection.close()


def assert_short_refusal(status: int, body: bytes, expected: int) -> str:
    """The answer is `expected`, at most 1 KB of JSON, with no stack trace or file path;
    returns its message."""
    text = body.decode(errors="replace")
    assert status == expected, f"{status}: {text[:500]}"
    assert len(body) <= 1024, f"{len(body)} bytes: {text[:500]}"
    for leak in ("Traceback", "stack_trace", ".py", 'File "'):
        assert leak not in text, f"{leak!r} in {text}"
    return json.loads(body)["message"]


def test_hostile_requests_get_short_refusals_and_the_next_good_request_succeeds(
    store: Store, digits: Digits, start_server
) -> None:
    name = "hostile-requests"
    version = store.register(name, "weak")
    store.set_champion(name, version)
    server = start_server(name, "--no-record", "--max-body-mb", "1", "--max-json-depth", "32")
    limit = 1 << 20
    pid = server.status()["pid"]
    url = f"{server.uri}/invocations"
    headers = {"Content-Type": "application/json"}

    # Over the limit by its Content-Length: 413 from the headers, before a byte of 176 MB.
    status, body, seconds = post_headers_only(server, 176 << 20)
    assert "over the server's limit of 1,048,576 bytes" in assert_short_refusal(status, body, 413)
    assert seconds < 5, f"{seconds:.1f} s for a refusal by the headers"
    with requests.Session() as session:
        # Sent whole: 413, and the server drops the rest as it comes, keeping the connection.
        oversize = session.post(url, data=b"[" + b"0," * limit + b"0]", headers=headers, timeout=60)
        assert_short_refusal(oversize.status_code, oversize.content, 413)
        # Streamed without a Content-Length (chunked): refused once its bytes pass the limit.
        chunks = (b"0," * 32768 for _ in range(64))
        streamed = session.post(url, data=chunks, headers=headers, timeout=60)
        assert_short_refusal(streamed.status_code, streamed.content, 413)
        # 100,000 deep: 400 from the byte scan, where the parser's recursion answered 500.
        deep = session.post(url, data=b"[" * 100_000 + b"]" * 100_000, headers=headers, timeout=60)
        assert "deeper than 32 levels" in assert_short_refusal(deep.status_code, deep.content, 400)
        # Invalid JSON under the limit: the reason, not the body echoed back.
        invalid = session.post(url, data=b"{" + b"x" * (limit // 2), headers=headers, timeout=60)
        message = assert_short_refusal(invalid.status_code, invalid.content, 400)
        assert "xxxx" not in message and "not valid JSON" in message, message
        # Ragged pixel rows: a short 400, without the server's stack trace.
        ragged = digits.images[0].tolist()
        ragged[3] = ragged[3][:5]
        body = {"dataframe_split": {"columns": ["pixels"], "data": [[ragged]]}}
        answer = session.post(url, json=body, timeout=60)
        assert_short_refusal(answer.status_code, answer.content, 400)
        # Junk characters inside base64: refused, naming the image.
        encoded = base64.b64encode(digits.files[1]).decode("ascii")
        junk = {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[encoded], [encoded[:8] + "!*" + encoded[8:]]],
            }
        }
        answer = session.post(url, json=junk, timeout=60)
        assert "image 1" in assert_short_refusal(answer.status_code, answer.content, 400)

        # The same connection and the same worker process answer a good request after all that.
        good = predict(server, digits, [0, 1, 2], session)
        assert good.status_code == 200, f"{good.text[:500]}\n{server.explain()}"
        assert read_versions(good) == [version] * 3
    assert server.status()["pid"] == pid, f"the worker was replaced\n{server.explain()}"
    assert "Traceback" not in server.log(), server.explain()
