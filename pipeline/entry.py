"""What every entry point shares, the DVC stages and the `pipeline` command alike: a quiet log,
progress, a stage's start and result lines, and the one error boundary, which turns a
PipelineError into one message and exit 2.

The known chatter of TensorFlow, Great Expectations, MLflow, absl and Keras is dropped here and
nowhere else; a warning that asks something of the user still shows. `-v` (on any entry point)
or PIPELINE_LOG=debug brings everything back. Importing this module sets the environment that
TensorFlow and MLflow read as they load and filters TensorFlow's native start-up banner, so
entry points import it before them (pipeline.stages does, first).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass

from pipeline.errors import PipelineError

VERBOSE_FLAGS = ("-v", "--verbose")


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """Whether this process shows everything: `-v`, PIPELINE_LOG=debug, or the older
    PIPELINE_LOG_LEVEL=DEBUG."""
    argv = sys.argv[1:] if argv is None else argv
    return (
        os.environ.get("PIPELINE_LOG", "").strip().lower() == "debug"
        or os.environ.get("PIPELINE_LOG_LEVEL", "").strip().upper() == "DEBUG"
        or any(flag in argv for flag in VERBOSE_FLAGS)
    )


def log_level() -> str:
    """PIPELINE_LOG (debug, info, warning, error), else PIPELINE_LOG_LEVEL, else INFO."""
    level = os.environ.get("PIPELINE_LOG") or os.environ.get("PIPELINE_LOG_LEVEL") or "INFO"
    level = level.strip().upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"


# Third-party log records that are known chatter: (logger prefix, the highest level dropped,
# a pattern the message must match, or None for any message). Warnings from Python's
# `warnings` module arrive as records of `py.warnings` (logging.captureWarnings).
_CHATTER_RECORDS: tuple[tuple[str, int, re.Pattern | None], ...] = (
    # "Skipping registering function ... because it is a closure", "Multiple declarations of
    # metric ...", "Created temporary directory ...": GE explaining itself at INFO.
    ("great_expectations", logging.INFO, None),
    # "Creating initial MLflow database tables...", alembic's migrations.
    ("mlflow", logging.INFO, None),
    ("alembic", logging.INFO, None),
    ("absl", logging.INFO, None),
    ("tensorflow", logging.INFO, None),
    # Keras' predict function traced again for a new batch shape (scoring batches of several
    # sizes): a note on speed for TensorFlow developers, nothing a pipeline user can change.
    ("tensorflow", logging.WARNING, re.compile(r"triggered tf\.function retracing")),
    ("h5py", logging.INFO, None),
    ("matplotlib", logging.INFO, None),
    ("urllib3", logging.INFO, None),
    # "Retrying (Retry(total=1, ...)) after connection broken": MLflow's HTTP client retrying a
    # lost tracking server, twice a call; the caller says once that the server is lost
    # (pipeline serve's version holder, a stage's run recorder) and again when it is back.
    ("urllib3.connectionpool", logging.WARNING, re.compile(r"^Retrying \(")),
    ("py.warnings", logging.WARNING, re.compile(r"Add type hints to the `predict` method")),
)

# Python warnings that are chatter (message regex, category): they name the library's
# internals, not anything the user set. Dropped where they are raised, at import time too.
_CHATTER_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # MLflow's, once per logged pyfunc model (coloured: the message starts with an escape).
    (r"(\x1b\[[0-9;]*m)?Add type hints to the `predict` method", UserWarning),
    # Keras/absl on reloading a compiled model whose metrics are built lazily.
    (r"Compiled the loaded model, but the compiled metrics have yet to be built", UserWarning),
    # Keras' optimizer restore when variables of a saved optimizer are not all matched.
    (r"Skipping variable loading for optimizer", UserWarning),
)

# TensorFlow's native lines, written straight to file descriptor 2 (TF_CPP_MIN_LOG_LEVEL does not
# reach those written before absl's logging is initialised, nor its errors): its start-up banner,
# once per shared library, and errors that are not (device probing, graph attributes).
_NATIVE_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl INFO lines (oneDNN, no CUDA driver)
    r"|To enable the following instructions: .* with the appropriate compiler flags\."
    r"|[EW]\d{4} .*(Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered|TF-TRT Warning: Could not find TensorRT"
    # A CPU-only machine with TensorFlow's CUDA libraries: the stage logs the devices it uses.
    r"|failed call to cuInit"
    # Keras' tf.data graphs, made by a newer TensorFlow than the op registry knows (harmless).
    r"|NodeDef mentions attribute use_unbounded_threadpool))"
)

_QUIET_IMPORTS = ("tensorflow",)


def _keras_backend() -> str:
    """The backend Keras will load: KERAS_BACKEND, else keras.json's, else tensorflow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            return str(json.load(handle).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


# Optional imports that TensorFlow and Keras make as they load and the pipeline never uses,
# each in a `try: ... except ImportError`: JAX for TensorFlow Lite's `jax.jit` hook and Keras'
# Orbax callback (almost a second), Keras' scikit-learn wrappers (almost a second) and
# matplotlib's pyplot for keras.visualization's galleries (almost half a second), at the
# start of every stage that imports Keras. Skipped only while that library loads: imported
# anywhere else (the evaluate stage's figures), they load as usual. JAX is never skipped
# when it is Keras' backend.
_SKIPPED_OPTIONAL_IMPORTS: dict[str, tuple[str, ...]] = {
    "tensorflow": ("jax",),
    "keras": ("sklearn", "jax", "matplotlib"),
}


def _skipped_while_loading(name: str) -> tuple[str, ...]:
    """What `name` loads without, decided as it starts loading (the backend may be set late)."""
    skipped = _SKIPPED_OPTIONAL_IMPORTS.get(name, ())
    if "jax" in skipped and _keras_backend() == "jax":
        skipped = tuple(package for package in skipped if package != "jax")
    return skipped


def is_chatter_record(record: logging.LogRecord) -> bool:
    """Whether `record` is known third-party chatter (never an error, never the pipeline's)."""
    for prefix, highest, pattern in _CHATTER_RECORDS:
        named = record.name == prefix or record.name.startswith(f"{prefix}.")
        if (
            named
            and record.levelno <= highest
            and (pattern is None or pattern.search(record.getMessage()))
        ):
            return True
    return False


def is_native_chatter(line: str) -> bool:
    """Whether one line TensorFlow's C++ code wrote to stderr is its known start-up banner."""
    return bool(_NATIVE_CHATTER.match(line))


class ChatterFilter(logging.Filter):
    """Drops known third-party chatter; in debug mode, drops nothing."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        return self.debug or not is_chatter_record(record)


class QuietFormatter(logging.Formatter):
    """The pipeline's own INFO lines as they are; anything else with its level and source."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno == logging.INFO and record.name.startswith("pipeline"):
            return message
        return f"{record.levelname} {record.name}: {message}"


DEBUG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(debug: bool | None = None) -> None:
    """One stderr handler on the root logger, filtered (unless debug) and formatted; Python
    warnings go through it too. Does nothing to a root logger that has handlers already."""
    debug = debug_requested() if debug is None else debug
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ChatterFilter(debug))
    handler.setFormatter(logging.Formatter(DEBUG_FORMAT) if debug else QuietFormatter())
    root.addHandler(handler)
    root.setLevel("DEBUG" if debug else log_level())
    logging.captureWarnings(True)


def quiet_environment(debug: bool) -> None:
    """What third-party libraries read as they load: TensorFlow's native log threshold,
    MLflow's own logging set-up (off, so its records reach the filter) and progress bars,
    Great Expectations' analytics and MLflow's usage telemetry. The pipeline runs offline: in
    every process MLflow 3 would otherwise look up its telemetry host and start a thread that
    sends usage events, and wait up to a second at exit for what is still queued. A user who
    sets MLFLOW_DISABLE_TELEMETRY or GX_ANALYTICS_ENABLED keeps their own choice."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if debug else "2")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not debug:
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
        # Its "Downloading artifacts" bars: one per local file of a model it registers.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for message, category in _CHATTER_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def stderr_is_terminal() -> bool:
    """Whether standard error was a terminal when the process started (it is a pipe while
    `filtered_native_stderr` filters it)."""
    return _STDERR_TERMINAL


@contextmanager
def filtered_native_stderr(keep: Callable[[str], bool]) -> Iterator[None]:
    """Pass what native code writes to file descriptor 2 through `keep`, line by line, as it
    comes (a crash still shows what was written before it)."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()

    def relay() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                segments = (pending + chunk).splitlines(keepends=True)
                # The last piece waits for the rest of its line.
                ended = segments[-1].endswith((b"\r", b"\n"))
                pending = b"" if ended else segments.pop()
                for segment in segments:
                    # A segment ending in a carriage return (a progress bar redrawn in place)
                    # goes out at once; a whole line only if `keep` keeps it.
                    if segment.endswith(b"\r") or keep(
                        segment.decode(errors="replace").rstrip("\r\n")
                    ):
                        _write_all(original, segment)
            if pending and keep(pending.decode(errors="replace")):
                _write_all(original, pending)

    thread = threading.Thread(target=relay, name="native-stderr", daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # The pipe's last writer closes: the relay reads to its end.
        thread.join(timeout=5)
        os.close(original)


class _QuietLoader(importlib.abc.Loader):
    """Loads a module as its own loader would, with its native stderr filtered (`quiet`) and
    its unused optional imports skipped (_SKIPPED_OPTIONAL_IMPORTS) while it executes."""

    def __init__(self, loader: importlib.abc.Loader, name: str, quiet: bool) -> None:
        self.loader, self.name, self.quiet = loader, name, quiet

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Introspection (importlib.resources, TensorFlow's lazy loaders) sees the real loader.
        module.__loader__ = module.__spec__.loader = self.loader
        native = (
            filtered_native_stderr(lambda line: not is_native_chatter(line))
            if self.quiet
            else nullcontext()
        )
        loading = (self.name, _skipped_while_loading(self.name))
        _loading.append(loading)
        try:
            with native:
                self.loader.exec_module(module)
        finally:
            _loading.remove(loading)


_loading: list[tuple[str, tuple[str, ...]]] = []
"""The modules of _QUIET_IMPORTS and _SKIPPED_OPTIONAL_IMPORTS executing now (nested), each
with the packages it loads without."""


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Finds _QUIET_IMPORTS and _SKIPPED_OPTIONAL_IMPORTS' modules as the other finders do and
    loads them through _QuietLoader; while one executes, its skipped optional imports fail as
    if they were not installed (each library catches that ImportError)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        for _, skipped in _loading:
            if top in skipped and top not in sys.modules:
                raise ModuleNotFoundError(f"{top} is not used by the pipeline", name=name)
        quiet = self.quiet and name in _QUIET_IMPORTS
        if not quiet and name not in _SKIPPED_OPTIONAL_IMPORTS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader, name, quiet)
        return spec


def install_quiet_imports(quiet: bool = True) -> None:
    """Filter the native start-up banner of the modules in _QUIET_IMPORTS (`quiet`), once
    each, and skip the optional imports in _SKIPPED_OPTIONAL_IMPORTS."""
    if not any(isinstance(finder, _QuietImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder(quiet))


@dataclass
class _Run:
    label: str
    started: float


_run = _Run("pipeline", time.monotonic())


def log_start(message: str) -> None:
    """The stage's start line: `<stage>: <message>`."""
    logging.getLogger(f"pipeline.{_run.label}").info("%s: %s", _run.label, message)


def log_result(message: str) -> None:
    """The stage's one result line: `<stage>: <message> (<seconds> s)`."""
    elapsed = time.monotonic() - _run.started
    logging.getLogger(f"pipeline.{_run.label}").info(
        "%s: %s (%.1f s)", _run.label, message, elapsed
    )


class Progress:
    """A bar on a terminal; elsewhere (DVC's log, CI) a plain line at every 10%."""

    def __init__(self, total: int, what: str, unit: str = "images") -> None:
        self.total, self.what, self.unit = max(0, int(total)), what, unit
        self.done, self.reported = 0, 0
        self.bar = None
        if stderr_is_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=what, unit=unit, file=sys.stderr, leave=False)

    def update(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        if self.bar is not None:
            self.bar.update(count)
            return
        tenths = self.done * 10 // self.total if self.total else 10
        if tenths > self.reported:
            self.reported = tenths
            logging.getLogger(f"pipeline.{_run.label}").info(
                "%s: %s %d%% (%d/%d %s)",
                _run.label, self.what, tenths * 10, self.done, self.total, self.unit,
            )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stage_label(name: str) -> str:
    """ "stage 'split'" -> "split"; any other name as it is."""
    match = re.fullmatch(r"stage '([^']+)'", name)
    return match.group(1) if match else name


def run_entry(
    main: Callable[[Sequence[str]], int | None], name: str, argv: Sequence[str] | None = None
) -> None:
    """Run `main(argv)` (without -v) and exit with its status; a PipelineError exits 2 with
    its message. Run as the process's entry point (`argv` None: its own command line), the
    process then ends at once (`end_process`) instead of tearing the interpreter down."""
    own_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    configure_logging(debug)
    _run.label, _run.started = stage_label(name), time.monotonic()
    native = (
        nullcontext() if debug else filtered_native_stderr(lambda line: not is_native_chatter(line))
    )
    leave = end_process if own_process else sys.exit
    try:
        with native:
            status = main([arg for arg in argv if arg not in VERBOSE_FLAGS])
    except PipelineError as error:
        print(f"error in {name}: {error}", file=sys.stderr)
        leave(2)
    except BrokenPipeError:
        # The reader went away (`pipeline deps | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    leave(status or 0)


def end_process(status: int) -> None:
    """Exit with `status` now, as an exit would but without the interpreter's teardown.

    Everything a normal exit does for the files and servers the stage leaves is done first:
    the atexit handlers run (logging's flush, MLflow's, the finalizers that delete temporary
    folders), then stdout and stderr are flushed. What is skipped is the interpreter's
    destruction of every module and object, which with TensorFlow, Keras and MLflow loaded
    takes about 2 s, a stage, for nothing (measured in bench/bench_repro.py). The normal exit
    is kept where something still runs or watches: a thread that is not a daemon (a normal
    exit waits for it), a profiler or tracer (`python -m cProfile` writes its figures after
    the module returns), or an interpreter without atexit's runner."""
    import atexit

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    running = [
        thread.name
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
    ]
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if run_exit_handlers is None or running or watched:
        logging.getLogger(__name__).debug(
            "a normal exit: threads %s still run, profiled or traced: %s", running, watched
        )
        sys.exit(status)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


# Before any entry point imports TensorFlow or MLflow: they read this as they load.
_STDERR_TERMINAL = os.isatty(2)
_DEBUG = debug_requested()
quiet_environment(_DEBUG)
install_quiet_imports(quiet=not _DEBUG)
