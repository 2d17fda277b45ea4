"""`pipeline serve`: MLflow's own scoring app on uvicorn, answering with the version the
champion alias points at now (pipeline.serving.holder), and recording every answered image
(pipeline.serving.recorder).

The request and response formats are MLflow's (`mlflow.pyfunc.scoring_server.init`): the same
`/invocations`, `/ping`, `/health` and `/version` as `mlflow models serve`, so the README's
`curl` call and Python client work unchanged. The app is handed a stand-in model whose
`predict` reads the holder's current version once, so a swap never splits a request (and
whose metadata hands the app base64 as text, for the model to decode strictly). The port
is bound before anything loads: a second server on the same port exits at once, saying so.
Requests pass through pipeline.serving.limits first: a body over `max_body_bytes` gets 413
before it is read, JSON deeper than `max_json_depth` gets 400 before it is parsed, and every
error answer is short, without the request's data or a stack trace.
`backend` picks what computes the answers: the Keras model, or the version's ONNX export through
onnxruntime (pipeline.serving.model); /status says which answers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import ConfigError, PipelineError
from pipeline.serving.holder import DEFAULT_POLL_SECONDS, Served, VersionHolder
from pipeline.serving.limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_JSON_DEPTH, RequestLimits

logger = logging.getLogger(__name__)

SERVE_BACKENDS = ("keras", "onnx")
"""pipeline.serving.model.BACKENDS, repeated so that options are checked without importing
MLflow (test_serving_backend keeps the two equal)."""
OPTIONS_ENV = "PIPELINE_SERVE_OPTIONS"
"""How the parent hands its options to uvicorn's worker processes (--workers N > 1)."""
DEFAULT_PORT = 5001


@dataclass(frozen=True)
class ServeOptions:
    registered_model: str
    tracking_uri: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = 1
    poll_seconds: float = DEFAULT_POLL_SECONDS
    alias: str = "champion"
    predictions_dir: str | None = None
    """Where answers are recorded (None: not recorded)."""
    keep_images: bool = False
    flush_seconds: float = 2.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Bodies over this get 413 before they are read (64 MB: 256 photos of 190 KB, base64)."""
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    """JSON nested deeper gets 400 before it is parsed. The deepest legitimate body, a
    `dataframe_split` batch of (H, W, C) pixel arrays, is 7 levels; 32 leaves room for any
    client's wrapping and stays far below the recursion that breaks `json.loads`."""
    backend: str = "keras"
    """What computes the answers: `keras`, or `onnx` (each version's ONNX export, run by
    onnxruntime; a version registered without one is refused, and never swapped in)."""

    def __post_init__(self) -> None:
        if self.backend not in SERVE_BACKENDS:
            raise ConfigError(
                f"serve backend {self.backend!r} is not one of {', '.join(SERVE_BACKENDS)}: "
                "set serve.backend in params.yaml (or --backend) to one of them"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))


class FollowingModel:
    """What MLflow's scoring app calls as its model: the holder's current version."""

    def __init__(self, holder: VersionHolder) -> None:
        self.holder = holder

    @property
    def metadata(self):
        # Every version of the pipeline's classifier has the same input schema and params.
        return TextImages(self.holder.current.model.metadata)

    def predict(self, data, params=None):
        served = self.holder.current  # read once: the request finishes on this version
        answer = served.model.predict(data, params=params)
        return answer_records(answer) if isinstance(answer, pd.DataFrame) else answer


def answer_records(frame: pd.DataFrame) -> list[dict]:
    """The answer's rows as MLflow's scoring app writes a DataFrame (`to_dict(orient=
    "records")`), built column by column: the same JSON in about half the time, since to_dict
    boxes every cell on its own (0.6 to 0.8 ms of a batch-1 request, against 0.3 to 0.5)."""
    names = list(frame.columns)
    columns = [frame[name].tolist() for name in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


class TextImages:
    """A version's metadata as MLflow's scoring app reads it, its binary columns (`image`)
    declared as text.

    With the binary type the app decodes base64 itself, with `base64.decodebytes`, which skips
    any character outside the alphabet (junk inside base64 was answered), and fails the whole
    request on one bad row, `row_errors` or not. As text, the model gets the base64 as sent and
    decodes it strictly, image by image; the model still checks its own schema.
    """

    def __init__(self, metadata) -> None:
        self._metadata = metadata

    def get_input_schema(self):
        from mlflow.types import ColSpec, DataType, Schema

        schema = self._metadata.get_input_schema()
        if schema is None or schema.is_tensor_spec():
            return schema
        return Schema(
            [
                ColSpec(DataType.string, spec.name, required=spec.required)
                if isinstance(spec, ColSpec) and spec.type == DataType.binary
                else spec
                for spec in schema.inputs
            ]
        )

    def __getattr__(self, name: str):
        return getattr(self._metadata, name)


def recording_observer(recorder) -> Callable[[Served], Callable]:
    """For each loaded version, the callback its model calls after each prediction."""
    from pipeline.serving.observers import observer_for

    def for_version(served: Served) -> Callable:
        python_model = served.model.unwrap_python_model()
        return observer_for(
            recorder,
            served.name,
            served.version,
            served.alias,
            list(python_model.classes),
            python_model.embed if getattr(python_model, "projection", None) is not None else None,
        )

    return for_version


class _Lifespan:
    """Runs `startup` and `shutdown` callables around an ASGI app's life (uvicorn's lifespan
    protocol), so each worker process starts and stops its own poller and recorder."""

    def __init__(self, app, startup: list[Callable], shutdown: list[Callable]) -> None:
        self.app, self.startup, self.shutdown = app, startup, shutdown

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                for action in self.startup:
                    action()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for action in self.shutdown:
                    try:
                        action()
                    except Exception:  # noqa: BLE001 - stop the rest whatever one does
                        logger.exception("stopping the server")
                await send({"type": "lifespan.shutdown.complete"})
                return


def build_app(options: ServeOptions):
    """The ASGI app of one server process: load the alias's version, then serve it."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    from pipeline.serving.model import keep_nagle_off

    mlflow.set_tracking_uri(options.tracking_uri)
    recorder = None
    if options.predictions_dir is not None:
        from pipeline.serving.recorder import PredictionRecorder

        recorder = PredictionRecorder(
            Path(options.predictions_dir),
            source="serve",
            flush_seconds=options.flush_seconds,
            keep_images=options.keep_images,
        )
    holder = VersionHolder(
        options.registered_model,
        options.alias,
        poll_seconds=options.poll_seconds,
        observe=recording_observer(recorder) if recorder is not None else None,
        backend=options.backend,
    )
    try:
        served = holder.load_initial()
    except BaseException:
        # Its download folder goes too: a server that cannot start leaves nothing in /tmp.
        holder.stop()
        raise
    logger.info(
        "serving %s version %s (@%s) on http://%s:%d%s with the %s backend; following the "
        "alias every %g s",
        served.name,
        served.version,
        served.alias,
        options.host,
        options.port,
        f" (worker process {os.getpid()})" if options.workers > 1 else "",
        served.backend,
        options.poll_seconds,
    )
    app = scoring_server.init(FollowingModel(holder))

    @app.get("/status")
    async def status() -> dict[str, Any]:
        """The version serving and the backend answering, the holder's last poll and swaps,
        and the recorder's counts."""
        answer = holder.status()
        answer["pid"] = os.getpid()
        answer["recorder"] = recorder.status() if recorder is not None else None
        if answer["recorder"] is not None:
            answer["recorder"]["directory"] = str(answer["recorder"]["directory"])
        return answer

    # uvicorn's workers get listening sockets whose TCP_NODELAY asyncio does not set.
    keep_nagle_off()
    startup = [holder.start] + ([recorder.start] if recorder is not None else [])
    shutdown = [holder.stop] + ([recorder.close] if recorder is not None else [])
    limited = RequestLimits(app, options.max_body_bytes, options.max_json_depth)
    return _Lifespan(limited, startup, shutdown)


def app_from_environment():
    """The app factory uvicorn's worker processes import (--workers N > 1).

    A worker is a new process that the `pipeline` command's entry point never ran in: it
    configures logging as that entry point did in the parent, or the versions the worker swaps
    in and its recorder's warnings would go nowhere, and MLflow's chatter would not be dropped.
    """
    from uvicorn.config import STARTUP_FAILURE

    from pipeline.entry import configure_logging, end_process

    configure_logging()
    try:
        return build_app(ServeOptions.from_json(os.environ[OPTIONS_ENV]))
    except PipelineError as error:
        logger.error("worker process %d cannot start: %s", os.getpid(), error)
    except Exception:  # noqa: BLE001 - a bug: its traceback, and no restart loop either
        logger.exception("worker process %d cannot start", os.getpid())
    # uvicorn restarts a worker that dies, forever, unless it exits with STARTUP_FAILURE: then
    # the supervisor stops, and serve() exits non-zero as one process would. At once, without
    # TensorFlow's slow teardown: a worker that takes longer than the supervisor's health check
    # to exit is killed (-9) and restarted instead.
    end_process(STARTUP_FAILURE)


def bind_port(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a PipelineError saying who holds it and what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now, so that a second server's bind fails even before this one serves.
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PipelineError(
                f"{host}:{port} is already in use (another `pipeline serve`, or another "
                "server): stop it, or serve on another --port"
            ) from None
        raise PipelineError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(options: ServeOptions) -> None:
    """Serve until SIGINT or SIGTERM; a clean stop flushes every recorded answer."""
    import uvicorn

    sock = bind_port(options.host, options.port)
    common = {
        "host": options.host,
        "port": options.port,
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }
    try:
        if options.workers == 1:
            server = uvicorn.Server(uvicorn.Config(build_app(options), **common))
            with _signals_end_normally(server):
                server.run(sockets=[sock])
            return
        from uvicorn.config import STARTUP_FAILURE
        from uvicorn.supervisors import Multiprocess

        _check_alias(options)
        os.environ[OPTIONS_ENV] = options.to_json()
        config = uvicorn.Config(
            f"{__name__}:app_from_environment", factory=True, workers=options.workers, **common
        )
        supervisor = Multiprocess(config, sockets=[sock])
        supervisor.run()
        failed = [
            process.pid for process in supervisor.processes if process.exitcode == STARTUP_FAILURE
        ]
        if failed:
            raise PipelineError(
                f"worker process {failed[0]} could not start (its error is above), so the "
                "server stopped"
            )
    finally:
        sock.close()


@contextlib.contextmanager
def _signals_end_normally(server) -> Iterator[None]:
    """Let SIGINT and SIGTERM end `server.run` as a normal return (exit 0).

    uvicorn stops gracefully on either, then raises the signal again for the handler that was
    there before it ran: by default SIGTERM then kills the process (exit -15) before the entry
    point flushes its filtered stderr, losing the shutdown's last log lines, and SIGINT ends in
    a KeyboardInterrupt traceback. Its handlers replace this one while it serves; one that
    arrives before uvicorn takes over asks it to stop as soon as it has started.
    """

    def handle(signum: int, frame) -> None:
        if not server.started:
            server.handle_exit(signum, frame)

    stopping = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, handle) for signum in stopping}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_alias(options: ServeOptions) -> None:
    """Fail in the parent, with the reason, before N workers each fail to load."""
    import mlflow

    mlflow.set_tracking_uri(options.tracking_uri)
    holder = VersionHolder(options.registered_model, options.alias, backend=options.backend)
    try:
        if holder.resolve() is None:
            holder.load_initial()  # raises, naming what to do
    finally:
        holder.stop()
