"""The version holder: which registered version answers, following an alias of the registry.

`pipeline serve` answers with `models:/<name>@champion`, but MLflow reads an alias once, when it
loads a model. The holder polls the registry instead: when the alias moves, it loads the new
version beside the one serving, warms it up (the first predictions trace Keras' functions), and
only then swaps it in with one assignment. A request reads `current` once, so it finishes on the
version it started with. A version that fails to load or warm up is never swapped in: the old
one keeps serving, the reason is logged, and the holder tries again when the alias next moves.
A version whose model file no longer matches the SHA-256 it was registered with is such a
failure (pipeline.serving.verification): it never serves, and /status says why.
A registry that cannot be reached changes nothing but a warning: the holder keeps serving what
it has and asks again at the next poll.
Every version is loaded with the holder's backend (`keras`, or `onnx`: the version's ONNX
export through onnxruntime, pipeline.serving.model); a version that cannot serve with it (no
ONNX export) is such a failed load, and /status names the backend that answers.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import RegistryError, TrackingUnavailable

logger = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 10.0


@dataclass(frozen=True)
class Served:
    """One loaded version, as requests see it."""

    name: str
    version: str
    alias: str
    model: Any
    """The mlflow.pyfunc.PyFuncModel."""
    loaded_at: str
    folder: Path | None = None
    """Where its artifacts were downloaded (removed once another version serves)."""
    backend: str = "keras"
    """What computes its answers (pipeline.serving.model.BACKENDS)."""


@dataclass
class HolderState:
    """What the holder has seen, for the server's /status and its logs."""

    last_poll_at: str | None = None
    registry_error: str | None = None
    failed_version: str | None = None
    failure: str | None = None
    swaps: list[dict] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class VersionHolder:
    """Holds the version `alias` points at and follows it (see the module's docstring).

    `observe(served)` returns the callback a loaded version calls after each prediction (the
    prediction recorder's), or None to record nothing; `load(uri, folder)` loads a pyfunc model
    (mlflow.pyfunc.load_model by default; a test passes its own to make a load fail);
    `backend` is what every version answers with (pipeline.serving.model.BACKENDS), handed to
    the default load as its model config.
    """

    def __init__(
        self,
        name: str,
        alias: str = "champion",
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        observe: Callable[[Served], Callable | None] | None = None,
        load: Callable[[str, Path], Any] | None = None,
        backend: str = "keras",
    ) -> None:
        self.name = name
        self.alias = alias
        self.poll_seconds = float(poll_seconds)
        self.backend = backend
        self.state = HolderState()
        self._observe = observe
        self._load = load or partial(_load_pyfunc, backend=backend)
        self._current: Served | None = None
        self._downloads = Path(tempfile.mkdtemp(prefix="pipeline-serve-"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._swap_lock = threading.Lock()

    @property
    def current(self) -> Served:
        """The version answering now: read it once per request."""
        if self._current is None:
            raise RegistryError(f"no version of {self.name} is loaded yet")
        return self._current

    def resolve(self) -> str | None:
        """The version the alias points at now (None when the alias is not set); raises
        TrackingUnavailable when the registry cannot be reached."""
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            found = mlflow.MlflowClient().get_model_version_by_alias(self.name, self.alias)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise TrackingUnavailable(_first_line(error)) from None
        except Exception as error:  # noqa: BLE001 - requests' and the store's own errors
            raise TrackingUnavailable(_first_line(error)) from None
        return str(found.version)

    def load_initial(self) -> Served:
        """Load the version the alias points at now, or raise naming what to do."""
        version = self.resolve()
        if version is None:
            raise RegistryError(
                f"{self.name} has no version aliased `{self.alias}` in the registry: run "
                "`make repro` or `pipeline retrain` until the promotion gate passes, or set "
                "the alias by hand"
            )
        try:
            served = self._prepare(version)
        except Exception as error:  # noqa: BLE001 - any failure to load is the user's to fix
            raise RegistryError(
                f"version {version} of {self.name} (@{self.alias}) cannot be served: "
                f"{_first_line(error)}"
            ) from None
        self._current = served
        self.state.swaps.append({"version": version, "at": served.loaded_at, "from": None})
        return served

    def poll_once(self) -> str:
        """Ask the registry once and follow the alias; return what happened, in a few words."""
        with self._swap_lock:
            return self._poll()

    def _poll(self) -> str:
        state = self.state
        state.last_poll_at = _now()
        try:
            version = self.resolve()
        except TrackingUnavailable as error:
            if state.registry_error is None:
                logger.warning(
                    "the registry cannot be reached (%s): still serving %s version %s; "
                    "asking again every %g s",
                    error,
                    self.name,
                    self._current.version if self._current else "-",
                    self.poll_seconds,
                )
            state.registry_error = str(error)
            return "registry unreachable"
        if state.registry_error is not None:
            logger.info("the registry answers again")
            state.registry_error = None
        current = self._current
        if version is None or (current is not None and version == current.version):
            if current is not None and version == current.version:
                # The alias is back on the version serving: a failure before is moot, and
                # /status must not show its reason without the version it belongs to.
                state.failed_version = state.failure = None
            return "unchanged"
        if version == state.failed_version:
            return f"version {version} failed before; waiting for the alias to move"
        logger.info("%s@%s moved to version %s: loading it", self.name, self.alias, version)
        started = time.monotonic()
        try:
            served = self._prepare(version)
        except Exception as error:  # noqa: BLE001 - whatever breaks, the old version serves
            state.failed_version, state.failure = version, _first_line(error)
            logger.error(
                "version %s of %s failed to load or warm up, so version %s keeps serving: %s",
                version,
                self.name,
                current.version if current else "-",
                state.failure,
            )
            return f"version {version} failed: {state.failure}"
        self._current = served
        # "at" is the swap itself: requests that start later get this version.
        swapped_at, seconds = _now(), round(time.monotonic() - started, 2)
        state.failed_version = state.failure = None
        state.swaps.append(
            {
                "version": version,
                "at": swapped_at,
                "from": current and current.version,
                "load_seconds": seconds,
            }
        )
        logger.info(
            "now serving %s version %s (was %s; loaded and warmed up in %.1f s)",
            self.name,
            version,
            current.version if current else "-",
            seconds,
        )
        if current is not None and current.folder is not None:
            # Requests still on the old version hold its model in memory, not its files.
            shutil.rmtree(current.folder, ignore_errors=True)
        return f"swapped to version {version}"

    def _prepare(self, version: str) -> Served:
        """Load `version`, give it its identity and observer, and warm it up."""
        folder = self._downloads / f"v{version}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        try:
            model = self._load(f"models:/{self.name}/{version}", folder)
            python_model = _python_model(model)
            backend = str(getattr(python_model, "backend", "keras"))
            served = Served(self.name, version, self.alias, model, _now(), folder, backend)
            if python_model is not None and hasattr(python_model, "identity"):
                python_model.identity = (self.name, version, self.alias)
            observer = self._observe(served) if self._observe is not None else None
            if observer is not None and not hasattr(python_model, "embed"):
                logger.warning(
                    "version %s of %s was registered before answers were recorded: its answers "
                    "are served but not recorded (retrain to register a version that records)",
                    version,
                    self.name,
                )
                observer = None
            if python_model is not None and observer is not None:
                # Warm up the recording path too (it predicts embeddings), recording nothing.
                python_model.observer = _discard
            warm_up(model)
            if python_model is not None and observer is not None:
                # The recorder embeds in its own thread: trace that model now, not there.
                python_model.embed(np.zeros((2, *_image_shape(model)), dtype=np.uint8))
                python_model.observer = observer
            return served
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def start(self) -> None:
        """Poll in a daemon thread until stop()."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="version-holder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - the poller must outlive any one poll
                logger.exception(
                    "polling the registry failed; trying again in %g s", self.poll_seconds
                )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 5)
            self._thread = None
        shutil.rmtree(self._downloads, ignore_errors=True)

    def status(self) -> dict:
        current = self._current
        return {
            "registered_model": self.name,
            "alias": self.alias,
            "version": current.version if current else None,
            "backend": current.backend if current else None,
            "backend_asked": self.backend,
            "loaded_at": current.loaded_at if current else None,
            "poll_seconds": self.poll_seconds,
            "last_poll_at": self.state.last_poll_at,
            "registry_error": self.state.registry_error,
            "failed_version": self.state.failed_version,
            "failure": self.state.failure,
            "swaps": list(self.state.swaps[-20:]),
        }


def warm_up(model: Any) -> None:
    """Predict a batch of one and of two black images, as pixels and as a PNG file, so that
    the version's first requests pay for no tracing and a broken version fails here."""
    from PIL import Image

    from pipeline.serving.model import IMAGE_COLUMN, served_input

    shape = _image_shape(model)
    schema = model.metadata.get_input_schema()
    for size in (1, 2):
        model.predict(served_input(schema, np.zeros((size, *shape), dtype=np.uint8)))
    if schema is not None and not schema.is_tensor_spec():
        buffer = io.BytesIO()
        pixels = np.zeros(shape[:2] if shape[2] == 1 else shape, dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        model.predict(pd.DataFrame({IMAGE_COLUMN: [buffer.getvalue()]}))


def _image_shape(model: Any) -> tuple[int, int, int]:
    python_model = _python_model(model)
    shape = getattr(python_model, "image_shape", None)
    if shape is None:
        shape = (model.metadata.metadata or {}).get("image_shape")
    if shape is None:
        raise RegistryError("the model has no image_shape: it is not the pipeline's classifier")
    return tuple(int(dim) for dim in shape)


def _discard(*_: Any) -> None:
    """An observer that records nothing (the warm-up's)."""


def _python_model(model: Any) -> Any:
    try:
        return model.unwrap_python_model()
    except Exception:  # noqa: BLE001 - not a python_model flavor (a bare Keras model)
        return None


def _load_pyfunc(uri: str, folder: Path, backend: str = "keras") -> Any:
    """models:/<name>/<version>, downloaded into `folder` and loaded with `backend` only once
    its model file matches the SHA-256 it was registered with (a mismatch, or a version that
    cannot serve with `backend`, fails like any failed load)."""
    from pipeline.serving.model import BACKEND_CONFIG
    from pipeline.serving.verification import load_verified_version

    name, version = uri.removeprefix("models:/").rsplit("/", 1)
    return load_verified_version(name, version, folder, model_config={BACKEND_CONFIG: backend})


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:500] if text else type(error).__name__
