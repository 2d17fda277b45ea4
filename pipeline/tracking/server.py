"""Where runs go, and whether that place answers: checked before any training starts.

MLflow's own client retries a dead server for minutes before it gives up with a traceback;
`check_tracking_server` answers in seconds, with the URI and what to do. Import-light on
purpose (no MLflow, no Keras): the train stage calls it before loading either.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.errors import TrackingUnavailable

DEFAULT_DB = "mlflow.db"
CHECK_TIMEOUT = 5.0

# MLflow's HTTP client defaults: 7 retries with exponential back-off (about four minutes on a
# closed port). A few quick retries ride out a blip; a server that is gone is reported at once,
# and a stage that loses it mid-run carries on without it (see pipeline.tracking.runs).
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


DEFAULT_ARTIFACTS = "mlruns"


def store_root(project_root: Path) -> Path:
    """The project whose embedded store this run uses: DVC's `DVC_ROOT`, else `project_root`.

    `dvc exp run --queue` runs the stages in a throwaway copy under .dvc/tmp/exps/; DVC sets
    DVC_ROOT to the main project's root there (dvc/repo/experiments/queue/base.py), and to the
    project's own root for every other stage, so every run lands in the main project's store.
    """
    root = os.environ.get("DVC_ROOT")
    return Path(root) if root else Path(project_root)


def tracking_uri(project_root: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store at the (main) project's
    root (see `store_root`)."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{(store_root(project_root) / DEFAULT_DB).resolve()}"
    )


def default_artifact_location(project_root: Path) -> str | None:
    """Where a new experiment keeps its artifacts with the embedded store: mlruns/ beside
    mlflow.db (not under the current folder, which may be a queue's throwaway copy); None for a
    store the user chose, whose server decides."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (store_root(project_root) / DEFAULT_ARTIFACTS).resolve().as_uri()


def limit_http_retries() -> None:
    """Shorten MLflow's HTTP retries, unless the user has set them; call at entry points."""
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def check_tracking_server(uri: str, timeout: float = CHECK_TIMEOUT) -> None:
    """Raise TrackingUnavailable, naming `uri` and the fix, when runs could not be recorded there.

    An HTTP server must answer its /health endpoint; a database URI must accept a connection;
    a SQLite file's folder must exist. Other schemes (databricks, ...) are left to MLflow.
    """
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme in ("http", "https"):
        reason = _http_problem(uri, timeout)
    elif scheme == "sqlite":
        reason = _sqlite_problem(uri)
    elif scheme in ("postgresql", "mysql", "mssql"):
        reason = _database_problem(uri, timeout)
    else:
        return
    if reason:
        raise TrackingUnavailable(
            f"the MLflow tracking store at {uri} cannot be reached ({reason}). Start the server "
            "or database, or fix MLFLOW_TRACKING_URI; unset it to track in the project's own "
            f"{DEFAULT_DB}."
        )


def _http_problem(uri: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"GET /health answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"GET /health answered {error.code} {error.reason}"
    except urllib.error.URLError as error:
        return str(error.reason)
    except (TimeoutError, OSError) as error:
        return str(error) or type(error).__name__


def _sqlite_problem(uri: str) -> str | None:
    path = uri.removeprefix("sqlite:///")
    if path in ("", ":memory:"):
        return None
    folder = Path(path).parent
    if not folder.is_dir():
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"the folder {folder} is not writable"
    return None


def _database_problem(uri: str, timeout: float) -> str | None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": int(timeout)})
    try:
        with engine.connect():
            return None
    except Exception as error:  # noqa: BLE001 - every driver has its own errors; report any
        return str(error).splitlines()[0]
    finally:
        engine.dispose()


def git_commit(project_root: Path) -> str:
    """The checked-out commit, with '-dirty' when tracked files differ; 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit
