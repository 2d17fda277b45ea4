"""Real servers for the tests: a throwaway PostgreSQL cluster, an MLflow tracking server and an
MLflow model server, each on 127.0.0.1 and a free port. Plain helpers, no pytest fixtures
(those live in tests/conftest.py).

Every server is started in its own process group and stopped with the whole group; `stop()` is
safe to call twice, the context managers stop on any exception, and an atexit hook stops
whatever a crashed test session left running. Standard library only, so importing this module
costs nothing: MLflow runs in the server processes, never in this one.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import requests

HOST = "127.0.0.1"
LOG_TAIL_LINES = 60


class ServerUnavailable(RuntimeError):
    """The server cannot run on this machine (software missing); the message says what to do.

    Fixtures turn it into `pytest.skip`; any other failure to start is a real error."""


class ServerError(RuntimeError):
    """A server was there to run but did not start (or stop); the message holds its log tail."""


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty log)"


# --- the atexit safety net ------------------------------------------------------------------

_LIVE: dict[int, object] = {}


def _register(server: object) -> None:
    _LIVE[id(server)] = server


def _unregister(server: object) -> None:
    _LIVE.pop(id(server), None)


@atexit.register
def _stop_everything() -> None:
    for server in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            server.stop()  # type: ignore[attr-defined]


# --- processes in their own group -----------------------------------------------------------


def _venv_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ with `env` on top, this interpreter's bin folder first on PATH (MLflow runs
    `uvicorn` by name) and MLflow's telemetry off."""
    merged = {**os.environ, **(env or {})}
    bin_dir = str(Path(sys.executable).parent)
    merged["PATH"] = os.pathsep.join([bin_dir, merged.get("PATH", os.defpath)])
    merged.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    merged.setdefault("DO_NOT_TRACK", "true")
    return merged


def _mlflow_command() -> list[str]:
    """The `mlflow` executable next to sys.executable, else `python -m mlflow`."""
    exe = Path(sys.executable).parent / "mlflow"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]


class _GroupProcess:
    """A command started in a new session, logging to a file, waited for over HTTP and stopped
    with its whole process group."""

    name = "server"
    health_path = "/health"

    def __init__(self, *, port: int | None, log_path: Path, startup_timeout: float) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _log_tail(self.log_path, lines)

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return _venv_env()

    def start(self):
        """Start the server and wait until GET <uri><health_path> answers 200; return self."""
        if self.running:
            return self
        if port_in_use(self.port):
            raise ServerError(f"{self.name}: port {self.port} on {HOST} is already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {command}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                cwd=self.log_path.parent,
                start_new_session=True,
            )
        _register(self)
        deadline = time.monotonic() + self.startup_timeout
        url = self.uri + self.health_path
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise ServerError(
                        f"{self.name} exited with code {code} before answering {url}; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                if http_ok(url):
                    return self
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self.name} did not answer {url} within {self.startup_timeout:.0f} s; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after `timeout` s. Idempotent."""
        self._signal_group(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would."""
        self._signal_group(signal.SIGKILL, 5.0)

    def _signal_group(self, signum: int, timeout: float) -> None:
        proc, self._proc = self._proc, None
        _unregister(self)
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the leader's pid is the group's id
        for sig in (signum, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
            if _group_gone(pgid, timeout=timeout if sig != signal.SIGKILL else 5.0):
                break
        with contextlib.suppress(ProcessLookupError):  # stragglers of a leader that died first
            os.killpg(pgid, signal.SIGKILL)
        _wait_until(lambda: not port_in_use(self.port), timeout=5.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _group_gone(pgid: int, timeout: float) -> bool:
    """Whether no live process is left in group `pgid` (zombies count as gone)."""

    def gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return not _live_members(pgid)

    return _wait_until(gone, timeout)


def _live_members(pgid: int) -> list[int]:
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(Path(stat).parent.name))
    return members


def _wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


# --- MLflow tracking server -----------------------------------------------------------------


class MlflowServer(_GroupProcess):
    """`mlflow server` on 127.0.0.1:<port> over `backend_uri`, proxying artifacts to a local
    folder (`--artifacts-destination`), so clients log artifacts over HTTP as they would to a
    shared server.

    The port is chosen once: `stop()` then `start()` (or `restart()`) brings the same server
    back on the same port and backend, as a server that drops mid-run and returns would.
    MLflow's background job runner is off (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`) unless
    `env` turns it on: these tests need no GenAI jobs, and it is one process fewer.
    """

    name = "mlflow server"
    health_path = "/health"

    def __init__(
        self,
        backend_uri: str,
        workdir: Path,
        *,
        port: int | None = None,
        artifacts_destination: Path | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        workdir = Path(workdir)
        super().__init__(
            port=port, log_path=workdir / "mlflow-server.log", startup_timeout=startup_timeout
        )
        self.backend_uri = backend_uri
        self.backend = backend_uri.split(":", 1)[0].split("+", 1)[0]  # sqlite, postgresql, ...
        self.workdir = workdir
        self.artifacts_destination = Path(artifacts_destination or workdir / "artifacts")
        self.env = dict(env or {})

    def _command(self) -> list[str]:
        self.artifacts_destination.mkdir(parents=True, exist_ok=True)
        return [
            *_mlflow_command(),
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts_destination),
        ]

    def _environment(self) -> dict[str, str]:
        return _venv_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env})

    def restart(self) -> MlflowServer:
        self.stop()
        return self.start()

    def __repr__(self) -> str:
        return f"MlflowServer({self.uri}, backend={self.backend_uri!r})"


# --- MLflow model server --------------------------------------------------------------------


class ModelServer(_GroupProcess):
    """`mlflow models serve -m <model_uri> --env-manager local` on 127.0.0.1:<port>.

    `env` is laid over os.environ (give it MLFLOW_TRACKING_URI for models:/ and runs:/ URIs).
    Ready when GET /ping answers 200, i.e. once the model has loaded: TensorFlow takes a while,
    hence the long default timeout. The log goes to `workdir`, or to a temporary file removed
    on stop.
    """

    name = "mlflow models serve"
    health_path = "/ping"

    def __init__(
        self,
        model_uri: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        startup_timeout: float = 240.0,
        workers: int = 1,
    ) -> None:
        self.workers = workers
        self._own_dir = None if workdir else Path(tempfile.mkdtemp(prefix="model-server-"))
        log_dir = Path(workdir) if workdir else self._own_dir
        super().__init__(
            port=port, log_path=log_dir / "model-server.log", startup_timeout=startup_timeout
        )
        self.model_uri = model_uri
        self.env = dict(env or {})

    def _command(self) -> list[str]:
        return [
            *_mlflow_command(),
            "models",
            "serve",
            "-m",
            self.model_uri,
            "--env-manager",
            "local",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def _environment(self) -> dict[str, str]:
        return _venv_env(self.env)

    def close(self) -> None:
        """Stop, and remove the temporary log folder if this server made one."""
        self.stop()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelServer({self.uri}, model={self.model_uri!r})"


@contextlib.contextmanager
def model_server(
    model_uri: str,
    env: Mapping[str, str] | None = None,
    workdir: Path | None = None,
    *,
    startup_timeout: float = 240.0,
) -> Iterator[str]:
    """Serve `model_uri` (see ModelServer); yield its base URL, stop it on the way out."""
    server = ModelServer(model_uri, env, workdir, startup_timeout=startup_timeout)
    try:
        server.start()
        yield server.uri
    finally:
        server.close()


# --- PostgreSQL -----------------------------------------------------------------------------

_INSTALL_HINT = (
    "install PostgreSQL's server binaries (Debian/Ubuntu: `apt-get install postgresql`) "
    "to run the PostgreSQL-backed tests"
)
_PG_TOOLS = ("initdb", "pg_ctl", "postgres")


def postgres_bin_dir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: the one `initdb` on PATH resolves to,
    else the newest /usr/lib/postgresql/<version>/bin. Raises ServerUnavailable if none."""
    candidates: list[Path] = []
    for tool in ("initdb", "pg_ctl"):
        found = shutil.which(tool)
        if found:
            candidates.append(Path(os.path.realpath(found)).parent)
            candidates.append(Path(found).parent)

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))

    installed = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(installed, key=version, reverse=True)]
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in _PG_TOOLS):
            return folder
    raise ServerUnavailable(
        "PostgreSQL is not installed (no initdb, pg_ctl and postgres on PATH or under "
        f"/usr/lib/postgresql/*/bin): {_INSTALL_HINT}"
    )


class PostgresCluster:
    """A throwaway PostgreSQL cluster: initdb into a fresh temporary folder, trust auth, user
    `postgres`, listening on 127.0.0.1:<free port> only (its unix socket inside that folder),
    with one database (`mlflow`). `start()` returns the SQLAlchemy URI for psycopg 3:
    postgresql+psycopg://postgres@127.0.0.1:<port>/mlflow.

    PostgreSQL refuses to run as root, so as root initdb and pg_ctl run as the `postgres`
    user (`runuser -u postgres --`), in a folder made by tempfile.mkdtemp and owned by it.
    `stop()` shuts it down (`pg_ctl stop -m fast`), copies its log to `workdir/postgres.log`
    and deletes the cluster. Durability is off (fsync, full-page writes, synchronous commit):
    it is test data.
    """

    def __init__(
        self, workdir: Path, *, database: str = "mlflow", startup_timeout: float = 60.0
    ) -> None:
        self.workdir = Path(workdir)
        self.database = database
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.root: Path | None = None
        self.bin_dir: Path | None = None
        self._as_postgres: list[str] = []
        self._started = False

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{self.database}"

    def start(self) -> str:
        if self._started:
            return self.uri
        if importlib.util.find_spec("psycopg") is None:
            raise ServerUnavailable(
                "psycopg 3 is not installed: `pip install -c constraints.txt 'psycopg[binary]'`"
            )
        self.bin_dir = postgres_bin_dir()
        self._as_postgres = self._runner()
        self.root = self._make_root()
        _register(self)
        try:
            self._run([self.bin_dir / "initdb", *self._initdb_args()], "initdb", as_owner=True)
            for attempt in range(3):  # another process may take the free port before we do
                self.port = free_port()
                try:
                    self._run(self._pg_ctl("start"), "pg_ctl start", as_owner=True)
                    break
                except ServerError as exc:
                    if attempt == 2 or "already in use" not in str(exc):
                        raise
            self._started = True
            self._run(
                [
                    self.bin_dir / "createdb",
                    "-h",
                    HOST,
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    self.database,
                ],
                "createdb",
                as_owner=False,
            )
        except BaseException:
            self.stop()
            raise
        return self.uri

    def stop(self) -> None:
        """Shut the cluster down (fast, then immediate) and delete it. Idempotent."""
        _unregister(self)
        if self.root is None:
            return
        try:
            if self._started:
                self._started = False
                try:
                    self._run(self._pg_ctl("stop", "-m", "fast"), "pg_ctl stop", as_owner=True)
                except (ServerError, subprocess.TimeoutExpired):
                    self._run(self._pg_ctl("stop", "-m", "immediate"), "pg_ctl stop", as_owner=True)
            if self.log_path.exists():
                with contextlib.suppress(OSError):
                    self.workdir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(self.log_path, self.workdir / "postgres.log")
        finally:
            root, self.root = self.root, None
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- internals --

    def _runner(self) -> list[str]:
        """The prefix that runs a command as the cluster's owner: none unless we are root."""
        if os.geteuid() != 0:
            return []
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ServerUnavailable(
                "PostgreSQL will not run as root and there is no `postgres` user to run it as: "
                f"{_INSTALL_HINT}, which creates that user"
            ) from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ServerUnavailable(
                "running as root, PostgreSQL must run as the `postgres` user, but `runuser` "
                "(util-linux) is missing: install util-linux or run the tests as another user"
            )
        return [runuser, "-u", "postgres", "--"]

    def _make_root(self) -> Path:
        """A fresh folder the cluster's owner can reach and owns (pytest's tmp folders under
        /tmp/pytest-of-root are mode 700, so not there)."""
        for base in (None, "/tmp"):
            root = Path(tempfile.mkdtemp(prefix="pg-cluster-", dir=base))
            if not self._as_postgres:
                return root
            owner = pwd.getpwnam("postgres")
            os.chown(root, owner.pw_uid, owner.pw_gid)
            check = subprocess.run([*self._as_postgres, "test", "-w", str(root)], check=False)
            if check.returncode == 0:
                return root
            shutil.rmtree(root, ignore_errors=True)
        raise ServerError("no temporary folder the `postgres` user can write to")

    def _initdb_args(self) -> list[str]:
        return [
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]

    def _pg_ctl(self, action: str, *args: str) -> list:
        assert self.bin_dir is not None
        command = [self.bin_dir / "pg_ctl", action, "-D", str(self.data_dir), "-w"]
        command += ["-t", str(int(self.startup_timeout)), *args]
        if action == "start":
            options = (
                f"-c listen_addresses={HOST} -c port={self.port} "
                f"-c unix_socket_directories={self.root} "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
            )
            command += ["-l", str(self.log_path), "-o", options]
        return command

    def _run(self, command: list, what: str, *, as_owner: bool) -> None:
        prefix = self._as_postgres if as_owner else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.setdefault("LC_ALL", "C")
        result = subprocess.run(
            [*prefix, *map(str, command)],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.startup_timeout + 30,
            check=False,
        )
        if result.returncode != 0:
            log = _log_tail(self.log_path) if self.root else "(no log)"
            busy = "port already in use; " if "Address already in use" in log else ""
            raise ServerError(
                f"{what} failed (exit {result.returncode}; {busy}cluster {self.root}):\n"
                f"{result.stdout}{result.stderr}\nserver log:\n{log}"
            )


@contextlib.contextmanager
def postgres_cluster(workdir: Path, *, database: str = "mlflow") -> Iterator[str]:
    """A throwaway PostgreSQL cluster (see PostgresCluster); yield its SQLAlchemy URI."""
    cluster = PostgresCluster(workdir, database=database)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def run_to_exit(
    command: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Run a command that should exit by itself, in its own process group; fail the test
    (with its output) if it does not within `timeout`, and leave no process of it behind."""
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        late = f"{command[:2]} still ran after {timeout:.0f} s:\n{stdout}{stderr}"
        raise AssertionError(late) from None
    finally:
        # A worker process its leader left behind would hold the port and the CPUs.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


PIPELINE = Path(sys.executable).parent / "pipeline"
SERVE_POLL_SECONDS = 1.0


class PipelineServer(_GroupProcess):
    """`pipeline serve --root <project>` on 127.0.0.1:<free port>, polling every second, its
    stdout and stderr in `log_path`; ready once GET /status answers (the first version is
    loaded). Stopped with its whole process group, like the servers above. `store` is the
    project and its registry: anything with `root` (the project) and `uri` (its store)."""

    name = "pipeline serve"
    health_path = "/status"

    def __init__(
        self,
        store,
        model_name: str,
        log_path: Path,
        *options: str,
        tracking_uri: str | None = None,
        port: int | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        super().__init__(port=port, log_path=log_path, startup_timeout=startup_timeout)
        self.store = store
        self.model_name = model_name
        self.options = options
        self.tracking_uri = tracking_uri or store.uri
        self.returncode: int | None = None

    def _command(self) -> list[str]:
        return [str(PIPELINE), "serve", *self.serve_arguments(), *self.options]

    def serve_arguments(self) -> list[str]:
        """Root, model, port and poll: what every server of this module is given."""
        return [
            "--model-name",
            self.model_name,
            "--root",
            str(self.store.root),
            "--port",
            str(self.port),
            "--poll",
            str(SERVE_POLL_SECONDS),
        ]

    def _environment(self) -> dict[str, str]:
        return self.environment()

    def environment(self) -> dict[str, str]:
        """What the server runs with: this environment, its store as MLFLOW_TRACKING_URI."""
        return _venv_env({"MLFLOW_TRACKING_URI": self.tracking_uri})

    def status(self) -> dict:
        response = requests.get(f"{self.uri}/status", timeout=30)
        response.raise_for_status()
        return response.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM to the server's own process, as `kill` or systemd sends it; its exit code.
        Whatever is left of its group is then stopped."""
        proc = self._proc
        assert proc is not None, "the server is not running"
        proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.returncode = None
        self.stop()
        return self.returncode

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """Poll /status until `predicate(status)`; fail with the last status and the log."""
        deadline = time.monotonic() + timeout
        status: dict = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.2)
        last = f"last /status {status}\n{self.explain()}"
        raise AssertionError(f"{what} within {timeout:.0f} s; {last}")

    def explain(self) -> str:
        return f"log {self.log_path}:\n{self.log_tail()}"


class ServerStarter:
    """Starts servers made by `make(log_path, *args, **options)`, each logging to its own file
    under `folder`, and stops every one it started (a fixture calls stop_all at teardown)."""

    def __init__(self, make: Callable[..., _GroupProcess], folder: Path) -> None:
        self.make = make
        self.folder = folder
        self.servers: list[_GroupProcess] = []

    def __call__(self, *args, **options):
        server = self.make(self.folder / f"serve-{len(self.servers)}.log", *args, **options)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
