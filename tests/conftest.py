"""Pytest fixtures shared by every test folder: a local HTTP server and real MLflow tracking
servers (SQLite- and PostgreSQL-backed). Plain helpers live in tests/fixtures.py,
tests/project.py and tests/servers.py, imported by name."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.pretrained import hed_vgg16_weights  # noqa: F401 - a fixture, shared
from tests.servers import MlflowServer, ServerUnavailable, postgres_cluster

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


TRACKING_BACKENDS = ["sqlite", "postgresql"]


def _start_tracking_server(backend: str, workdir: Path) -> Iterator[MlflowServer]:
    """A started MlflowServer over a fresh `backend` store (a SQLite file, or a database in a
    throwaway PostgreSQL cluster), artifacts proxied into `workdir`; stopped, cluster and all,
    when the generator is closed. Skips only where PostgreSQL cannot run on this machine."""
    with ExitStack() as stack:
        if backend == "sqlite":
            backend_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        elif backend == "postgresql":
            try:
                backend_uri = stack.enter_context(postgres_cluster(workdir))
            except ServerUnavailable as exc:
                # CI installs PostgreSQL (.ci/run) and sets this: there, a missing server is a
                # failure, never a silent skip.
                if os.environ.get("PIPELINE_TESTS_REQUIRE_POSTGRES") == "1":
                    raise
                pytest.skip(f"PostgreSQL-backed tracking server: {exc}")
        else:
            raise ValueError(f"unknown tracking backend {backend!r}")
        server = stack.enter_context(MlflowServer(backend_uri, workdir))
        yield server


@pytest.fixture(scope="module", params=TRACKING_BACKENDS, ids=TRACKING_BACKENDS)
def tracking_server(request, tmp_path_factory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on 127.0.0.1 (`.uri`), once per backend: SQLite and PostgreSQL
    (`.backend` says which; `.backend_uri` is the store). Artifacts go over HTTP through the
    server's proxy. One server per module and backend: use unique experiment and model names.
    A test may `stop()` and `start()` it (same port, same store); it is left running."""
    yield from _start_tracking_server(
        request.param, tmp_path_factory.mktemp(f"tracking-{request.param}")
    )


@pytest.fixture(scope="module")
def sqlite_tracking_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """Like `tracking_server`, SQLite only, for tests that need not run on both backends."""
    yield from _start_tracking_server("sqlite", tmp_path_factory.mktemp("tracking-sqlite"))


@pytest.fixture
def http_server() -> Iterator:
    """Serve files from a directory on 127.0.0.1; call it with the directory, get the base URL.

    `truncate` names paths (e.g. "/mnist/mnist.npz") whose responses announce the whole file
    but stop halfway, as an interrupted download does; `truncate_once` does that only for the
    first request. The server binds to loopback only, on a free port, and stops when the test
    ends. `start.requests` counts the GET requests per path.
    """
    servers = []
    requests: dict[str, int] = {}

    def start(
        directory: Path, truncate: tuple[str, ...] = (), truncate_once: tuple[str, ...] = ()
    ) -> str:
        handler = functools.partial(
            _FaultyHandler,
            directory=str(directory),
            truncate=truncate,
            truncate_once=truncate_once,
            requests=requests,
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    start.requests = requests
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _FaultyHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, truncate, truncate_once, requests, **kwargs) -> None:
        self.truncate, self.truncate_once, self.requests = truncate, truncate_once, requests
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.requests[self.path] = self.requests.get(self.path, 0) + 1
        first = self.requests[self.path] == 1
        if self.path in self.truncate or (self.path in self.truncate_once and first):
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


def pytest_collection_modifyitems(config, items) -> None:
    """`@pytest.mark.sqlite_only` tests use the `tracking_server` project but check code that
    does not depend on the backend: they are not collected for PostgreSQL (not skipped).

    Under pytest-xdist (`-n auto --dist loadscope`, pyproject's addopts) a worker takes a whole
    module at a time, so a module fixture (a whole pipeline run) is built once; the modules are
    handed out in the order given here, the long ones first."""
    keep, drop = [], []
    for item in items:
        backend = getattr(getattr(item, "callspec", None), "params", {}).get("tracking_server")
        if item.get_closest_marker("sqlite_only") and backend not in (None, "sqlite"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if hasattr(config, "workerinput"):  # an xdist worker: its order is the schedule's
        _long_modules_first(items)


def _long_modules_first(items: list) -> None:
    """Order the modules e2e first, then slow or `long_module`, then the rest, so that no
    whole-pipeline module is left to start last; within a module, and within each kind,
    pytest's order is kept."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def kind(members: list) -> int:
        if any(item.get_closest_marker("e2e") for item in members):
            return 0
        long = ("slow", "long_module")
        return 1 if any(item.get_closest_marker(m) for item in members for m in long) else 2

    items[:] = [item for members in sorted(modules.values(), key=kind) for item in members]


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """An empty, migrated MLflow database to copy for each test that needs a registry of its
    own: creating one takes about 2 s, copying it 5 ms."""
    import mlflow

    from tests.serving_models import tracking_store

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    with tracking_store(f"sqlite:///{path}"):
        mlflow.MlflowClient().search_registered_models()
    return path
